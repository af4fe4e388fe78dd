"""Final results of a Twilio session POSTed to its ``callback``, in order, off the audio path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import aiohttp
import orjson

from ...outbound.fetch import FetchError, UrlPolicy, safe_session
from ...outbound.webhooks import DeliveryFailed, deliver

log = logging.getLogger("streamproxy.twilio")

WEBHOOK_QUEUE_MAX = 1000


@dataclass(slots=True)
class Event:
    id: int
    name: str  # SSE event name; "message" carries the session's Deepgram JSON
    data: str


class Webhook:
    """POSTs final results (and the start/end events) to ``callback`` in order, off the audio path.

    Same safety and signing as job callbacks: the URL must pass ``queue.url_allow`` (public
    addresses only by default, checked again on the connected peer), redirects are not followed, and
    with ``queue.webhook_secret`` set each POST carries ``X-Streamproxy-Timestamp`` and
    ``X-Streamproxy-Signature: sha256=HMAC(secret, "<timestamp>." + body)``.
    """

    def __init__(self, url: str, session_id: str, policy: UrlPolicy, secret: str, timeout_s: float) -> None:
        self.url = url
        self.session_id = session_id
        self.policy = policy
        self.secret = secret
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=WEBHOOK_QUEUE_MAX)
        self.delivered = 0
        self.failed = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, ev: Event) -> None:
        if ev.name == "message" and not _is_final_or_metadata(ev.data):
            return  # interim results are not worth an HTTP request each
        if ev.name in ("mark", "dtmf"):
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.failed += 1

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def _post(self, http: aiohttp.ClientSession, ev: Event) -> None:
        await deliver(
            http, self.policy, self.url, ev.data.encode(), secret=self.secret,
            delivery_id=f"{self.session_id}:{ev.id}", event=ev.name,
        )  # fmt: skip

    async def _run(self) -> None:
        async with safe_session(self.policy, self.timeout_s) as http:
            while (ev := await self.queue.get()) is not None:
                for attempt in range(2):  # one retry: a live transcript is not worth holding up for long
                    try:
                        await self._post(http, ev)
                        self.delivered += 1
                        break
                    except (DeliveryFailed, FetchError):
                        pass
                    if attempt == 1:
                        self.failed += 1
                        log.warning(
                            "webhook delivery failed",
                            extra={"event": "webhook_failed", "session_id": self.session_id, "event_id": ev.id},
                        )
                    else:
                        await asyncio.sleep(0.5)


def _is_final_or_metadata(data: str) -> bool:
    with contextlib.suppress(orjson.JSONDecodeError):
        msg = orjson.loads(data)
        if isinstance(msg, dict):
            return bool(msg.get("is_final")) or msg.get("type") in ("Metadata", "Error")
    return False
