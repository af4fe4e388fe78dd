"""A fault-injecting WebSocket relay for tests and benchmarks.

It sits between the gateway and an engine (the gateway's upstream URL points at the relay) and
forwards ``/v1/listen`` (query string and ``Authorization``) to a target base URL. Each incoming
connection takes the next :class:`Fault` from a plan queue (later connections are clean), so a
test can script "close with 1011 after 40 000 audio bytes, then refuse with 503, then stall" and
watch the gateway recover over real sockets. Faults are injected at exact audio byte offsets of
the connection, so they land mid-stream (audio in flight) or mid-replay on a reconnect.

Handshake failures of the target (e.g. the engine's own 401) are passed through with their status
and ``dg-error`` header, so the relay is transparent when the plan is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import WSMsgType, web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["Fault", "FaultKind", "FaultRelay", "RelayEvent"]

log = logging.getLogger("streamproxy.faults")

FaultKind = Literal["none", "close", "reset", "stall", "refuse", "delay"]


@dataclass(frozen=True, slots=True)
class Fault:
    """What one connection suffers.

    ``close``/``reset``/``stall`` fire when audio beyond ``at_bytes`` arrives on this connection:
    exactly ``at_bytes`` bytes reach the engine, the rest of that frame and everything after is in
    flight and lost. ``refuse`` answers the handshake with HTTP ``status``. ``delay_ms`` delays every
    upstream->client message (any kind; ``delay`` is just "nothing else"). After a fault fires,
    ``outage_s`` > 0 refuses every handshake with ``status`` for that long (an upstream that is down).
    """

    kind: FaultKind = "none"
    at_bytes: int = 0
    code: int = 1011
    status: int = 503
    delay_ms: float = 0.0
    outage_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RelayEvent:
    """``t`` is the event loop's clock (``loop.time()``), comparable with the caller's own stamps."""

    t: float
    conn: int
    event: str  # accept | refuse | fault | gateway_gone | closed
    detail: dict[str, Any] = field(default_factory=dict)


_ERR_CODES = {401: "INVALID_AUTH", 403: "INSUFFICIENT_PERMISSIONS", 429: "TOO_MANY_REQUESTS"}


def _error_response(status: int, message: str) -> web.Response:
    body = {"err_code": _ERR_CODES.get(status, "SERVICE_UNAVAILABLE"), "err_msg": message, "request_id": ""}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"dg-error": message})  # fmt: skip


class FaultRelay:
    """``/v1/listen`` relay to ``target`` (``ws://host:port``) that injects scripted faults."""

    def __init__(self, target: str, on_event: Callable[[RelayEvent], None] | None = None) -> None:
        """``on_event`` is called synchronously with each event (e.g. to snapshot gateway state)."""
        self.target = target.rstrip("/")
        self.on_event = on_event
        self.connections = 0
        self.events: list[RelayEvent] = []
        self._plan: deque[Fault] = deque()
        self._refuse_until = 0.0
        self._refuse_status = 503
        self._runner: web.AppRunner | None = None
        self._live: set[asyncio.Task[Any]] = set()
        self.port = 0

    # ------------------------------------------------------------------ control
    def set_plan(self, plan: list[Fault]) -> None:
        """Faults for the next connections, in order (replaces what is left of the old plan)."""
        self._plan = deque(plan)

    @property
    def pending(self) -> int:
        """Plan entries not yet used by a connection."""
        return len(self._plan)

    def refuse_for(self, seconds: float, status: int = 503) -> None:
        """Refuse every handshake with ``status`` for ``seconds`` from now (plan entries are kept)."""
        self._refuse_until = asyncio.get_running_loop().time() + seconds
        self._refuse_status = status

    def fired(self, kind: str | None = None) -> list[RelayEvent]:
        """Faults that actually fired (``close``/``reset``/``stall``/``refuse``), optionally one kind."""
        out = [e for e in self.events if e.event in ("fault", "refuse")]
        return [e for e in out if kind is None or e.detail.get("kind") == kind]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        app = web.Application()
        app.router.add_get("/v1/listen", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        for t in list(self._live):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _log(self, conn: int, event: str, **detail: Any) -> None:
        ev = RelayEvent(asyncio.get_running_loop().time(), conn, event, detail)
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)

    # ------------------------------------------------------------------ relay
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        self.connections += 1
        n = self.connections
        if loop.time() < self._refuse_until:
            self._log(n, "refuse", kind="refuse", status=self._refuse_status, outage=True)
            return _error_response(self._refuse_status, f"injected outage ({self._refuse_status})")
        fault = self._plan.popleft() if self._plan else Fault()
        if fault.kind == "refuse":
            self._log(n, "refuse", kind="refuse", status=fault.status)
            if fault.outage_s > 0:
                self.refuse_for(fault.outage_s, fault.status)
            return _error_response(fault.status, f"injected refusal ({fault.status})")
        url = f"{self.target}/v1/listen"
        if request.query_string:
            url += "?" + request.query_string
        auth = request.headers.get("Authorization")
        try:
            up = await connect(
                url,
                additional_headers={"Authorization": auth} if auth else None,
                ping_interval=None,
                compression=None,
                max_size=None,
                open_timeout=10,
                close_timeout=1,
            )
        except InvalidStatus as e:  # the target's own refusal passes through unchanged
            r = e.response
            self._log(n, "refuse", kind="target", status=r.status_code)
            message = r.headers.get("dg-error") or r.reason_phrase
            return _error_response(r.status_code, message)
        except (OSError, TimeoutError, InvalidHandshake) as e:
            self._log(n, "refuse", kind="target", status=502, error=str(e))
            return _error_response(502, f"relay could not reach {self.target}: {e}")
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True, heartbeat=None, compress=False)
        await ws.prepare(request)
        self._log(n, "accept", fault=fault.kind, at_bytes=fault.at_bytes)
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        conn = _Conn(self, n, fault, request, ws, up)
        try:
            await conn.run()
        finally:
            self._live.discard(task)
            up.transport.abort()
        return ws


class _Conn:
    """One relayed connection: gateway->engine (audio, faults) and engine->gateway (delays)."""

    def __init__(
        self,
        relay: FaultRelay,
        n: int,
        fault: Fault,
        request: web.Request,
        ws: web.WebSocketResponse,
        up: ClientConnection,
    ) -> None:
        self.relay = relay
        self.n = n
        self.fault = fault
        self.request = request
        self.ws = ws
        self.up = up
        self.dead = False  # a fault fired: nothing more is forwarded either way
        self.forwarded = 0  # audio bytes given to the engine on this connection
        self.queue: asyncio.Queue[tuple[float, str, Any]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    async def run(self) -> None:
        down = [
            asyncio.create_task(self._from_engine()),
            asyncio.create_task(self._to_gateway()),
        ]
        try:
            await self._from_gateway()
        finally:
            self.queue.put_nowait((0.0, "stop", None))  # after what is queued: delayed messages still go
            await asyncio.wait(down, timeout=2.0)
            for t in down:
                t.cancel()

    def _fire(self, **detail: Any) -> None:
        self.dead = True
        f = self.fault
        self.relay._log(self.n, "fault", kind=f.kind, at_bytes=f.at_bytes, forwarded=self.forwarded, **detail)
        if f.outage_s > 0:
            self.relay.refuse_for(f.outage_s, f.status)
        self.up.transport.abort()  # the engine side just goes away; the gateway sees the fault

    async def _from_gateway(self) -> None:
        f = self.fault
        armed = f.kind in ("close", "reset", "stall")
        async for msg in self.ws:
            if self.dead:
                continue  # stalled: swallow everything until the gateway gives up
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if armed and self.forwarded + len(data) > f.at_bytes:
                    cut = f.at_bytes - self.forwarded
                    if cut > 0:
                        await self._send_up(data[:cut])
                        self.forwarded += cut
                    self._fire(in_flight=len(data) - cut)
                    if f.kind == "close":
                        await self.ws.close(code=f.code, message=b"injected fault")
                        break
                    if f.kind == "reset":
                        transport = self.request.transport
                        if transport is not None:
                            transport.abort()
                        break
                    continue  # stall
                await self._send_up(data)
                self.forwarded += len(data)
            elif msg.type == WSMsgType.TEXT:
                await self._send_up(msg.data)
            else:
                break
        if self.dead:
            code = self.ws.close_code
            self.relay._log(self.n, "gateway_gone", code=None if code is None else int(code))
            return
        # The gateway closed (or vanished): pass it on to the engine.
        code = self.ws.close_code
        if code is not None and code not in (1004, 1005, 1006, 1015) and 1000 <= code < 5000:
            with contextlib.suppress(Exception):
                await self.up.close(code=code)
        else:
            self.up.transport.abort()

    async def _send_up(self, data: bytes | str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.up.send(data)

    async def _from_engine(self) -> None:
        delay = self.fault.delay_ms / 1000.0
        try:
            async for m in self.up:
                if self.dead:
                    return
                self.queue.put_nowait((self.loop.time() + delay, "msg", m))
        except ConnectionClosed:
            pass
        if self.dead:
            return
        rcvd = self.up.protocol.close_rcvd
        if rcvd is None:
            self.queue.put_nowait((self.loop.time() + delay, "reset", None))
        else:
            self.queue.put_nowait((self.loop.time() + delay, "close", (rcvd.code, rcvd.reason)))

    async def _to_gateway(self) -> None:
        """Deliver engine messages in order, each no earlier than its arrival plus the delay."""
        ws = self.ws
        while True:
            due, kind, payload = await self.queue.get()
            wait = due - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.dead or kind == "stop":
                return
            try:
                if kind == "msg":
                    if isinstance(payload, str):
                        await ws.send_str(payload)
                    else:
                        await ws.send_bytes(payload)
                elif kind == "close":
                    code, reason = payload
                    self.relay._log(self.n, "closed", code=code)
                    await ws.close(code=code, message=reason.encode()[:120])
                    return
                else:  # the engine vanished without a close frame: so does the relay
                    self.relay._log(self.n, "closed", code=None)
                    if self.request.transport is not None:
                        self.request.transport.abort()
                    return
            except (ConnectionError, RuntimeError):
                return
