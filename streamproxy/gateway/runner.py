"""The thin asyncio shell around the sans-I/O ``Session``: sockets, timers and metrics.

One runner per client stream. It feeds the core what the client socket, the upstream socket
and the clock say, and performs the actions the core returns, in order. All decisions (what to
buffer, when to reconnect, what to deliver) are the core's; the runner speaks only its public API.

A session ends in exactly one place, ``_finish`` (reached through the core's ``CloseClient`` or
``shutdown(force=True)``), which releases everything the session holds and calls ``on_done``
once. ``shutdown(code)`` is the one way anything else (drain, max duration, close wait) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from ..metrics import Metrics
from ..session.checkpoint import Checkpoint
from ..session.core import (
    Action,
    CloseClient,
    Connect,
    Count,
    Counter,
    DropUpstream,
    Final,
    Latency,
    Observe,
    SaveCheckpoint,
    SendClient,
    SendUpstream,
    Session,
)
from ..tracing import Tracer
from ..upstream.connection import LISTEN_PATH, HandshakeError, UpstreamSocket, open_upstream
from ..upstream.pool import Upstream, UpstreamPool
from ..upstream.recovery import Recovery
from .limits import Lease

log = logging.getLogger("streamproxy.session")

#: The core's clock. Not ``loop.time()``: uvloop's has millisecond resolution, which would
#: quantise every latency measurement to whole milliseconds.
clock = time.monotonic

#: Client backlog (bytes queued for a client that is not reading): reading from it pauses above
#: HIGH and resumes below LOW; past MAX the client is detached as if its writes had timed out.
CLIENT_BACKLOG_HIGH = 256 * 1024
CLIENT_BACKLOG_LOW = 64 * 1024
CLIENT_BACKLOG_MAX = 4 * 1024 * 1024


class ClientSocket(Protocol):
    """What the runner needs of the client connection (aiohttp's WebSocketResponse fits)."""

    async def send_str(self, data: str) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class SessionRunner:
    def __init__(
        self,
        core: Session,
        client: ClientSocket | None,
        pool: UpstreamPool,
        upstream_query: str,
        metrics: Metrics,
        *,
        on_done: Callable[[SessionRunner], None] | None = None,
        max_message_bytes: int = 1_048_576,
        max_duration_s: float = 0.0,
        client_write_timeout_s: float = 5.0,
        recovery: Recovery | None = None,
        listen_path: str = LISTEN_PATH,
        upstream_ping_s: float | None = None,
        http: aiohttp.ClientSession,
        tracer: Tracer | None = None,
    ) -> None:
        self.core = core
        self.tracer = tracer or Tracer()
        self.span: Any = None  # the session's trace span (None: tracing off)
        self.listen_path = listen_path
        self.upstream_ping_s = upstream_ping_s
        self.recovery = recovery
        self.client_write_timeout_s = client_write_timeout_s
        self.client_abort: Callable[[], None] | None = None  # drops the client's socket without a close
        self._client_bytes = 0  # queued for the client, not yet written
        self._client_writable = asyncio.Event()
        self._client_writable.set()
        self._invalid_logged = 0  # the connection generation whose invalid message was logged
        self.max_duration_s = max_duration_s  # > 0: finalised and closed (1000) at this age
        self._max_timer: asyncio.TimerHandle | None = None
        self.lease: Lease | None = None  # the per-key slot, released when the session ends
        self.max_message_bytes = max_message_bytes
        self.http = http  # the gateway's client for upstream connections
        self.client: ClientSocket | None = client
        self.owner = ""  # the client key that opened the session (who may resume it)
        self.protocol = "v1"  # metric label: v1, v2 or twilio
        self.outcome = "ok"
        self.pool = pool
        self.query = upstream_query
        self.metrics = metrics
        self.on_done = on_done
        self.on_final: Callable[[dict[str, Any]], None] | None = None  # each final, for the transcript store
        self.loop = asyncio.get_running_loop()
        self.up: UpstreamSocket | None = None
        self.upstream: Upstream | None = None
        self._up_task: asyncio.Task[None] | None = None
        self._to_up: deque[bytes | str] = deque()
        # Client-bound data; a future holds what follows it until a final's checkpoint is stored.
        self._to_client: deque[str | bytes | asyncio.Future[bool]] = deque()
        # Stores a checkpoint where another instance can find it (None: no shared state); a future
        # it returns gates the final that follows.
        self.on_checkpoint: Callable[[Checkpoint], asyncio.Future[bool] | None] | None = None
        self.checkpoint_gate_s = 0.25
        self._up_flusher: object | None = None  # the upstream socket a flusher is writing to
        self._client_flushing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.finished = asyncio.Event()
        self.close_code: int | None = None
        self._last_upstream: str | None = None

    # ------------------------------------------------------------------ actions
    def apply(self, actions: list[Action], *, inline: bool = False) -> None:
        """Perform the core's actions; with ``inline`` the caller awaits ``flush()`` itself."""
        for a in actions:
            if type(a) is SendUpstream:
                self._to_up.append(a.data)
            elif type(a) is SendClient:
                self._to_client.append(a.data)
                self._client_bytes += len(a.data)
            elif type(a) is Observe:
                if a.kind is Latency.FIRST_WORD:
                    self.metrics.first_word.observe(a.seconds)
                elif a.kind is Latency.END_OF_TURN:
                    self.metrics.end_of_turn.observe(a.seconds)
                else:
                    self.metrics.latency_by_kind[a.kind.value].observe(a.seconds)
            elif type(a) is Count:
                self._count(a)
            elif type(a) is Final:
                if self.on_final is not None:
                    self.on_final(a.msg)
            elif type(a) is Connect:
                self._start_upstream(a)
            elif type(a) is DropUpstream:
                self._drop_upstream()
            elif type(a) is CloseClient:
                self._close_client(a)
            elif type(a) is SaveCheckpoint:
                gate = self.on_checkpoint(a.record) if self.on_checkpoint is not None else None
                if gate is not None:
                    self._to_client.append(gate)
        self._reschedule()
        if inline:
            return
        up = self.up
        if self._to_up and up is not None and self._up_flusher is not up:
            self._up_flusher = up
            self.loop.create_task(self._flush_up(up))
        self._kick_client()

    async def flush(self) -> None:
        """Write upstream-bound data from the calling task (no task per frame on the hot path);
        client-bound data goes to the client's own writer, so a client that stops reading can
        never hold up the upstream side."""
        up = self.up
        if self._to_up and up is not None and self._up_flusher is not up:
            self._up_flusher = up
            await self._flush_up(up)
        self._kick_client()

    def _kick_client(self) -> None:
        if self._to_client and not self._client_flushing:
            self._client_flushing = True
            self.loop.create_task(self._flush_client())
        if self._client_bytes > CLIENT_BACKLOG_HIGH:
            self._client_writable.clear()
            if self._client_bytes > CLIENT_BACKLOG_MAX:
                self._client_stuck("backlog")

    @property
    def client_backlogged(self) -> bool:
        return not self._client_writable.is_set()

    async def client_writable(self) -> None:
        """Wait until the client has read enough of its backlog (or was detached)."""
        await self._client_writable.wait()

    def _client_stuck(self, why: str) -> None:
        """The client stopped reading: drop its socket; the session stays resumable if it can be."""
        if self.client is None or self.finished.is_set():
            return
        log.info(
            "client not reading: detached",
            extra={"event": "client_slow", "session_id": self.core.session_id, "reason": why},
        )
        abort, self.client_abort = self.client_abort, None
        self.outcome = "client_slow"
        self._drop_client_queue()
        if abort is not None:
            abort()
        self.client_gone()
        if self.outcome == "client_gone":
            self.outcome = "client_slow"

    def _drop_client_queue(self) -> None:
        self._to_client.clear()
        self._client_bytes = 0
        self._client_writable.set()

    def _count(self, a: Count) -> None:
        m = self.metrics
        # The failed connection is already cleared when its reconnect is counted: label it by the
        # upstream last tried, never "".
        name = self.upstream.name if self.upstream else (self._last_upstream or "")
        match a.name:
            case Counter.INVALID:
                m.upstream_invalid.labels(name, a.label).inc()
                if self._invalid_logged != self.core.gen:
                    self._invalid_logged = self.core.gen  # once per connection
                    log.warning(
                        "invalid upstream message: connection dropped",
                        extra={"event": "upstream_invalid", "upstream": name, "kind": a.label},
                    )
            case Counter.LOST_S:
                m.audio_lost.inc(a.value)
            case Counter.TURN:
                m.turns.labels(a.label if a.label in ("model", "manual", "timeout") else "other").inc()
            case Counter.RECONNECT:
                m.upstream_reconnects.labels(name, a.label, self.pool.region_of(name)).inc()
            case Counter.REPLAYED_S:
                m.audio_replayed.inc(a.value)
                self.tracer.end(self.tracer.start("replay", self.span, upstream=name, replay_s=round(a.value, 3)))
            case Counter.DROPPED_S:
                m.audio_dropped.inc(a.value)
                log.warning(
                    "ring buffer overflow: oldest audio dropped",
                    extra={"event": "buffer_overflow", "session_id": self.core.session_id, "dropped_s": a.value},
                )
            case Counter.DUPLICATE:
                m.duplicates.inc()
            case Counter.FATAL:
                m.fatal.inc()

    async def _flush_up(self, up: UpstreamSocket) -> None:
        """Write queued frames to ``up`` only: a flusher blocked on a dead (stalled) socket must
        never touch frames queued for the connection that replaced it."""
        try:
            while self._to_up and self.up is up:
                data = self._to_up.popleft()
                try:
                    await up.send(data)
                except ConnectionError:
                    if self.up is up:
                        self._to_up.clear()  # the core replays from its ring after the reconnect
                    break
        finally:
            if self._up_flusher is up:
                self._up_flusher = None

    async def _flush_client(self) -> None:
        try:
            while self._to_client:
                data = self._to_client.popleft()
                if isinstance(data, asyncio.Future):
                    if not data.done():  # the final after it waits until its checkpoint is stored
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.checkpoint_gate_s):
                                await data  # a timeout cancels it: its writer then sees it done
                    continue
                self._client_bytes -= len(data)
                if self._client_bytes < CLIENT_BACKLOG_LOW:
                    self._client_writable.set()
                client = self.client
                if client is None:
                    self._drop_client_queue()  # detached: a resumed client gets it from the outbox
                    break
                try:
                    async with asyncio.timeout(self.client_write_timeout_s):
                        if isinstance(data, str):
                            await client.send_str(data)
                        else:
                            await client.send_bytes(data)
                except TimeoutError:
                    self._client_stuck("write timeout")
                    break
                except (ConnectionError, RuntimeError):
                    self._drop_client_queue()  # the socket is gone: its reader ends the session
                    break
        finally:
            self._client_flushing = False

    # ------------------------------------------------------------------ timer
    def _reschedule(self) -> None:
        """Keep one timer armed no later than the core's next deadline.

        Most inputs only push deadlines later (KeepAlive after each frame), so an armed timer that
        fires earlier is kept: it wakes, finds nothing due, and re-arms. That avoids re-creating a
        timer for every audio frame.
        """
        at = self.core.next_deadline()
        if at is None or self.core.done:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_later(max(0.0, at - clock()), self._on_timer)

    def _on_timer(self) -> None:
        # Event loops may fire a timer a hair early (uvloop has millisecond resolution); treat
        # it as on time rather than spinning until the deadline has strictly passed.
        at = self._timer_at or 0.0
        self._timer = None
        self._timer_at = None
        self.apply(self.core.tick(max(clock(), at)))

    # ------------------------------------------------------------------ upstream
    def _start_upstream(self, a: Connect) -> None:
        self._drop_upstream()
        self._up_task = self.loop.create_task(self._upstream_loop(a))

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        self._to_up.clear()
        if self.upstream is not None:
            self.upstream.active -= 1
            self.upstream = None
        if up is not None:
            up.abort()  # no closing handshake: a stalled peer would not answer it anyway
        task, self._up_task = self._up_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _upstream_loop(self, a: Connect) -> None:
        core = self.core
        recovery = self.recovery
        if recovery is not None:
            await recovery.wait(a.delay, self)  # cut short when an upstream answers again
        elif a.delay > 0:
            await asyncio.sleep(a.delay)
        upstream = self.pool.choose(avoid=self._last_upstream if a.reason != "initial" else None)
        if recovery is not None and a.reason != "initial":
            await recovery.pace(upstream.name)  # reconnects after an outage arrive spread out
        if self._last_upstream and upstream.name != self._last_upstream:
            self.metrics.upstream_failovers.labels(upstream.name, upstream.region).inc()
        self._last_upstream = upstream.name
        span = self.tracer.start("upstream.connect", self.span, upstream=upstream.name, reason=a.reason)
        try:
            ws = await open_upstream(
                self.http, upstream, self.query, max_size=self.max_message_bytes, path=self.listen_path,
                heartbeat=self.upstream_ping_s,
            )  # fmt: skip
        except HandshakeError as e:
            self.tracer.end(span, error=str(e), attributes={"status": e.status or 0})
            self.pool.failure(upstream.name)
            log.info(
                "upstream connect failed",
                extra={"event": "upstream_connect_failed", "upstream": upstream.name, "status": e.status},
            )
            self.apply(core.upstream_failed(a.gen, e.status, e.reason, clock()))
            return
        self.tracer.end(span)
        if a.gen != core.gen or core.done:
            ws.abort()
            return
        self.up = ws
        self.upstream = upstream
        upstream.active += 1
        self.metrics.upstream_connects.labels(upstream.name, upstream.region).inc()
        if recovery is not None and a.reason != "initial":
            recovery.reconnected(self)  # it accepts connections again: wake the other waiters now
        self.apply(core.upstream_connected(a.gen, upstream.name, clock()))
        got_message = False
        while (msg := await ws.receive()) is not None:
            t0 = time.perf_counter()
            try:
                actions = core.upstream_message(a.gen, msg, clock())
            except Exception:  # a bug must not end the read loop silently: fail this connection
                log.exception("upstream message handling failed", extra={"event": "upstream_message_error"})
                actions = core.upstream_invalid(a.gen, "exception", clock())
            if not got_message and core.gen == a.gen:
                got_message = True
                self.pool.success(upstream.name)
            self.apply(actions, inline=True)
            await self.flush()
            self.metrics.overhead_downstream.observe(time.perf_counter() - t0)
            if core.gen != a.gen:
                return  # the core dropped this connection (an invalid message): replaced already
        code, reason = ws.close_code, ws.close_reason  # code None: died without a close frame
        if a.gen != core.gen:
            return  # dropped on purpose (stall, new connection): the core already moved on
        if self.up is ws:
            self.up = None
            upstream.active -= 1
            self.upstream = None
        if code != 1000:
            self.pool.failure(upstream.name)
        self.apply(core.upstream_closed(a.gen, code, reason, clock()))

    # ------------------------------------------------------------------ client
    def _close_client(self, a: CloseClient) -> None:
        self.close_code = a.code
        self.loop.create_task(self._close_client_after_flush(a))

    async def _close_client_after_flush(self, a: CloseClient) -> None:
        # Deliver what is queued (trailing results, Metadata) before the close frame.
        while self._client_flushing or self._to_client:
            if self.finished.is_set():
                return  # forced shut meanwhile
            if not self._client_flushing:
                await self._flush_client()
            else:
                await asyncio.sleep(0)
        await self._close_socket(a.code, a.reason)
        self._finish()

    async def _close_socket(self, code: int, reason: str) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.close(code=code, message=reason.encode()[:120])
            except Exception:  # the client may already be gone
                pass

    def _finish(self) -> None:
        """Release everything the session holds; runs once, however the session ended."""
        if self.finished.is_set():
            return
        for t in (self._timer, self._max_timer):
            if t is not None:
                t.cancel()
        self._drop_upstream()
        self._drop_client_queue()
        if self.recovery is not None:
            self.recovery.release(self)
        self.finished.set()
        if self.on_done is not None:
            self.on_done(self)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.max_duration_s > 0:
            self._max_timer = self.loop.call_later(self.max_duration_s, self._max_duration)
        self.apply(self.core.start(clock()))

    def _max_duration(self) -> None:
        if not self.core.closing:
            log.info(
                "maximum session duration reached",
                extra={"event": "session_max_duration", "max_s": self.max_duration_s},
            )
            self.shutdown(1000)

    def shutdown(self, code: int, *, force: bool = False, outcome: str | None = None) -> None:
        """End the session with close ``code``: finalised first (trailing results and Metadata
        delivered) unless ``force``, which ends it now (a client that does not take the close)."""
        if self.finished.is_set():
            return
        if outcome is not None:
            self.outcome = outcome
        if not force and not self.core.closing:
            self.apply(self.core.drain(clock(), code))
            return
        self.apply(self.core.abort(code, "closed by the gateway"), inline=True)
        self.close_code = self.close_code or code
        self.loop.create_task(self._close_socket(code, "closed by the gateway"))
        self._finish()

    def announce_draining(self) -> None:
        self.apply(self.core.announce_draining())

    async def client_ended(self, client: ClientSocket) -> None:
        """The client's socket is done reading (closed, errored or raised): the session ends or,
        if resumable, waits for the client. Always called, so no exit path skips the session's end."""
        if self.client is not client:
            return  # a resumed connection took the session over
        if not self.core.closing:
            self.client_gone()
            if self.core.detached:
                return  # resumable: the session waits for the client without this handler
        try:
            await asyncio.wait_for(self.finished.wait(), self.core.s.close_timeout_s + 5.0)
        except TimeoutError:
            self.shutdown(1011, force=True, outcome="timeout")

    def client_audio(self, data: bytes) -> None:
        self.apply(self.core.client_audio(data, clock()))

    async def feed_audio(self, data: bytes) -> None:
        """Client audio on the hot path: process and write upstream from the reading task."""
        t0 = time.perf_counter()
        self.apply(self.core.client_audio(data, clock()), inline=True)
        await self.flush()
        self.metrics.overhead_upstream.observe(time.perf_counter() - t0)

    def client_text(self, text: str) -> None:
        self.apply(self.core.client_text(text, clock()))

    def client_closed(self) -> None:
        self.apply(self.core.client_closed(clock()))

    def client_gone(self) -> None:
        """The socket dropped without CloseStream: hold the session if resumable, else finish it."""
        if self.outcome == "ok":
            self.outcome = "client_gone"
        self.apply(self.core.client_detached(clock()))
        if self.core.detached:
            self.client = None
            self.client_abort = None
            self._drop_client_queue()

    def resume(
        self,
        client: ClientSocket,
        last_seq: int,
        audio_offset: int | None,
        abort: Callable[[], None] | None = None,
    ) -> None:
        """Attach a reconnected client; raises ResumeError (and leaves the session as it was)."""
        now = clock()
        old = self.client
        if not self.core.detached:
            self.apply(self.core.client_detached(now))  # the old socket has not noticed its drop yet
            self.client = None
            self._drop_client_queue()
            if old is not None:
                self.loop.create_task(old.close(code=4000, message=b"session resumed elsewhere"))
        actions = self.core.client_resumed(last_seq, audio_offset, now)
        self.client = client
        self.client_abort = abort
        self.outcome = "ok"
        self.apply(actions)

    def summary(self) -> dict[str, Any]:
        st = self.core.stats
        lat = sorted(st.latencies)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

        fmt = self.core.fmt
        return {
            "session_id": self.core.session_id,
            "duration_s": round(clock() - self.core.created, 3),
            "audio_s": round(fmt.bytes_to_seconds(st.audio_bytes), 3),
            "reconnects": st.reconnects,
            "replayed_s": round(fmt.bytes_to_seconds(st.replayed_bytes), 3),
            "dropped_s": round(fmt.bytes_to_seconds(st.dropped_bytes), 3),
            "duplicates": st.duplicates,
            "results": st.results,
            "latency_p50_ms": pct(0.5),
            "latency_p95_ms": pct(0.95),
            "first_word_ms": None if st.first_word_latency is None else round(st.first_word_latency * 1000, 1),
            "close_code": self.close_code,
            "lost_s": round(fmt.bytes_to_seconds(st.lost_bytes), 3),
            "invalid_messages": st.invalid,
            "error": st.fatal,
        }
