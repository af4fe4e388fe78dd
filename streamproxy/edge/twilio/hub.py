"""One Twilio session's events: a bounded backlog, live fan-out to SSE subscribers and a webhook,
and the runner-side client that publishes into it."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .webhook import Event, Webhook

#: Events kept per session for subscribers that connect late (plus the ``start`` event, always kept),
#: and at most this many bytes of them: the oldest go first (a sender controls mark/dtmf sizes).
BACKLOG_EVENTS = 500
BACKLOG_BYTES = 1 << 20
#: How long a finished session's events stay readable.
RETAIN_S = 60.0
#: A subscriber this far behind is disconnected (it may reconnect with Last-Event-ID).
SUBSCRIBER_QUEUE_MAX = 1000
SSE_HEARTBEAT_S = 15.0


@dataclass
class EventHub:
    """One session's events: a bounded backlog plus live fan-out to SSE subscribers and a webhook."""

    session_id: str
    owner: str = ""
    backlog: deque[Event] = field(default_factory=deque)
    backlog_bytes: int = 0
    start_event: Event | None = None
    subscribers: set[asyncio.Queue[Event | None]] = field(default_factory=set)
    closed: bool = False
    webhook: Webhook | None = None
    _next_id: int = 1

    def publish(self, name: str, data: str | dict[str, Any]) -> Event | None:
        if self.closed:
            return None
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        ev = Event(self._next_id, name, text)
        self._next_id += 1
        if name == "start":
            self.start_event = ev
        else:
            self.backlog.append(ev)
            self.backlog_bytes += len(ev.data)
            while len(self.backlog) > BACKLOG_EVENTS or self.backlog_bytes > BACKLOG_BYTES:
                self.backlog_bytes -= len(self.backlog.popleft().data)
        for q in list(self.subscribers):
            if q.qsize() >= SUBSCRIBER_QUEUE_MAX:
                self.subscribers.discard(q)  # too slow: cut it off; it can resume with Last-Event-ID
                q.put_nowait(None)
            else:
                q.put_nowait(ev)
        if self.webhook is not None:
            self.webhook.offer(ev)
        return ev

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for q in self.subscribers:
            q.put_nowait(None)
        self.subscribers.clear()
        if self.webhook is not None:
            self.webhook.close()

    async def events(self, after: int = 0) -> AsyncIterator[Event | None]:
        """Backlog after ``after`` then live events; None is a heartbeat tick; ends with the session."""
        q: asyncio.Queue[Event | None] = asyncio.Queue()
        held = ([self.start_event] if self.start_event else []) + list(self.backlog)
        if not self.closed:
            self.subscribers.add(q)
        try:
            for ev in held:
                if ev.id > after:
                    yield ev
            if self.closed:
                return
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), SSE_HEARTBEAT_S)
                except TimeoutError:
                    yield None
                    continue
                if item is None:
                    return
                yield item
        finally:
            self.subscribers.discard(q)


class HubRegistry:
    """Hubs by (owner, ``streamSid``) and (owner, ``callSid``); a subscriber may wait briefly for a
    call to start.

    Ids are chosen by the sender, so they are namespaced by the key that started the stream: another
    key naming the same callSid or streamSid gets a hub of its own and never shadows the owner's.
    Anonymous streams (owner "") are visible to every caller, after the caller's own.
    """

    def __init__(self) -> None:
        self.hubs: dict[tuple[str, str], EventHub] = {}
        self._changed = asyncio.Event()

    def add(self, hub: EventHub, *ids: str) -> None:
        for i in ids:
            if i:
                self.hubs[(hub.owner, i)] = hub  # a callSid names its owner's latest stream
        self._changed.set()
        self._changed = asyncio.Event()

    def get(self, owner: str, sid: str) -> EventHub | None:
        """``owner``'s session ``sid``, else an anonymous one of that id."""
        return self.hubs.get((owner, sid)) or self.hubs.get(("", sid))

    def retire(self, hub: EventHub, after_s: float = RETAIN_S) -> None:
        """Keep a finished session's events readable for a while, then forget them."""
        hub.close()

        def drop() -> None:
            for k in [k for k, v in self.hubs.items() if v is hub]:
                del self.hubs[k]

        asyncio.get_running_loop().call_later(after_s, drop)

    async def wait_for(self, owner: str, sid: str, timeout: float) -> EventHub | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (hub := self.get(owner, sid)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return hub


class HubClient:
    """The session runner's client: publishes what a socket would carry; binary frames are dropped."""

    def __init__(self, hub: EventHub, on_close: Callable[[int], None] | None = None) -> None:
        self.hub = hub
        self.on_close = on_close
        self.close_code: int | None = None

    async def send_str(self, data: str) -> None:
        self.hub.publish("message", data)

    async def send_bytes(self, data: bytes) -> None:
        return None

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """The session ended (after its trailing results): end the Twilio socket too (drain, fatal error)."""
        self.close_code = code
        if self.on_close is not None:
            self.on_close(code)
        return True
