"""Signed webhook delivery, for job callbacks and Twilio transcripts alike.

Each delivery is an HTTP POST (or PUT) of the JSON result with these headers:

- ``X-Streamproxy-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Streamproxy-Signature``: ``sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>``
  (when a secret is configured);
- ``X-Streamproxy-Delivery``: what is delivered (a job id, or ``<session>:<event id>``), the same
  on every retry: use it to de-duplicate;
- ``X-Streamproxy-Event``: ``transcription.completed``/``transcription.failed`` for jobs, the SSE
  event name for Twilio sessions.

A receiver recomputes the HMAC over the raw body it received (:func:`verify`), compares in
constant time and rejects timestamps older than a few minutes (replay). Any 2xx ends the
delivery; anything else (or no answer) is retried with exponential backoff, as its own job.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import aiohttp

from .fetch import UrlPolicy, check_peer, check_url

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryFailed",
    "deliver",
    "new_secret",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Streamproxy-Signature"
TIMESTAMP_HEADER = "X-Streamproxy-Timestamp"
DELIVERY_HEADER = "X-Streamproxy-Delivery"
EVENT_HEADER = "X-Streamproxy-Event"


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx; the job is retried."""


def new_secret() -> str:
    return secrets.token_hex(32)


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: True only for an untampered body signed recently with ``secret``."""
    if not timestamp or not signature:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


async def deliver(
    session: aiohttp.ClientSession,
    policy: UrlPolicy,
    url: str,
    body: bytes,
    *,
    secret: str,
    delivery_id: str,
    event: str,
    method: str = "POST",
) -> int:
    """One attempt; returns the 2xx status or raises DeliveryFailed (redirects are not followed;
    a URL the policy refuses raises FetchError)."""
    host = check_url(url, policy)
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "streamproxy-webhooks/1",
        TIMESTAMP_HEADER: str(ts),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, ts, body)
    try:
        async with session.request(method, url, data=body, headers=headers, allow_redirects=False) as resp:
            check_peer(resp, policy, host)
            await resp.read()
            if 200 <= resp.status < 300:
                return resp.status
            raise DeliveryFailed(f"callback {url} answered HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DeliveryFailed(f"callback {url} failed: {exc or type(exc).__name__}") from None
