"""One prerecorded transcription on an upstream: ``POST {upstream}/v1/listen`` with the audio.

The recognition itself runs in the upstream (Deepgram, or the embedded engine's process), so the
gateway's and the worker's event loops only move bytes. Upstreams are tried in the pool's ranking
(the one live sessions use); a transport error or 5xx/429 moves on to the next one, a 4xx is the
caller's fault and is returned as such (not retried).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from .pool import UpstreamPool

__all__ = ["UpstreamRejected", "UpstreamUnavailable", "http_base", "recognize"]

log = logging.getLogger("streamproxy.upstream")

_USER_AGENT = f"streamproxy/{socket.gethostname()}:{os.getpid()}"


@dataclass
class UpstreamRejected(Exception):
    """The upstream refused the request itself (4xx): retrying will not help."""

    status: int
    body: bytes
    upstream: str

    def __str__(self) -> str:
        msg = ""
        try:
            parsed = orjson.loads(self.body)
            msg = parsed.get("err_msg") or parsed.get("message") or ""
        except (orjson.JSONDecodeError, AttributeError):
            msg = self.body[:300].decode(errors="replace")
        return f"upstream {self.upstream} rejected the audio (HTTP {self.status}): {msg}"


class UpstreamUnavailable(Exception):
    """No upstream produced a transcript (connection refused, 5xx, timeout): worth a retry.

    The message names upstreams and what failed, never their addresses (it reaches clients)."""


def _what_failed(exc: BaseException) -> str:
    """What the client may know of a transport failure: the kind, not the internal address."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused" if exc.os_error.errno == errno.ECONNREFUSED else "cannot connect"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, orjson.JSONDecodeError | aiohttp.ContentTypeError):
        return "invalid response"
    return "connection lost"


def http_base(url: str) -> str:
    """``ws://h:p`` -> ``http://h:p`` (and wss -> https), without a trailing /v1/listen."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if path.endswith("/v1/listen"):
        path = path[: -len("/v1/listen")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def recognize(
    session: aiohttp.ClientSession,
    pool: UpstreamPool,
    audio: bytes,
    params: Mapping[str, str | list[str]],
    *,
    content_type: str = "application/octet-stream",
    timeout_s: float = 3600.0,
    user_agent: str = _USER_AGENT,
) -> dict[str, Any]:
    """The upstream's Deepgram prerecorded response for ``audio``; raises UpstreamRejected/Unavailable."""
    query = urlencode(params, doseq=True)
    errors: list[str] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
    for u in pool.ranked():
        url = f"{http_base(u.url)}/v1/listen" + (f"?{query}" if query else "")
        headers = {"Content-Type": content_type, "User-Agent": user_agent}
        if u.api_key:
            headers["Authorization"] = f"Token {u.api_key}"
        u.active += 1
        try:
            async with session.post(url, data=audio, headers=headers, timeout=timeout) as resp:
                body = await resp.read()
                if resp.status == 200:
                    pool.success(u.name)
                    result: dict[str, Any] = orjson.loads(body)
                    return result
                if 400 <= resp.status < 500 and resp.status not in (408, 429):
                    pool.success(u.name)  # it answered: healthy, our request was wrong
                    raise UpstreamRejected(resp.status, body, u.name)
                errors.append(f"{u.name}: HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            errors.append(f"{u.name}: {_what_failed(exc)}")
            log.warning(
                "prerecorded upstream failed: %s: %s", type(exc).__name__, exc,
                extra={"event": "upstream_prerecorded_failed", "upstream": u.name},
            )  # fmt: skip
        finally:
            u.active -= 1
        pool.failure(u.name)
    raise UpstreamUnavailable("no upstream could transcribe the audio (" + "; ".join(errors) + ")")
