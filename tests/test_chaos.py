"""A randomized fault test over real sockets: a new seed each run, printed and in every assertion.

``STREAMPROXY_CHAOS_SEED=<n> pytest tests/test_chaos.py -s`` replays a run's schedule: the same
audio, clients, per-session garbage plan, classic-fault plan and outage timeline. (The order in
which concurrent sessions reach the relay, and so which connection takes which classic fault, is
up to the event loop, so a replay is the same experiment, not the same packet trace.)

Topology, all in one process on loopback::

    clients -> gateway -> FaultRelay -> GarbageRelay -> marker engine
    (reference) -> clean gateway -------------------> marker engine

* ``FaultRelay`` (``streamproxy.faults``) takes the next entry of one shared random plan per
  connection: close with a retryable code, TCP reset, stall, refused handshake (429/5xx), delayed
  messages. Outages of 1-20 s refuse every handshake (``refuse_for``) and cut every live upstream
  connection at the same moment (the GarbageRelay aborts them), for all sessions at once.
* ``GarbageRelay`` (below) sends each kind of invalid upstream message the issue lists (unknown
  type, no type, null type, a bare Results, a non-numeric start, a word without times, not JSON,
  a binary frame) on the connections a session's plan names, chosen by the Deepgram ``tag``
  parameter (which the gateway passes through): a per-session plan, independent of timing.
* Clients: *normal* (real time or 2x, some with a KeepAlive-only pause, some reading sluggishly),
  *fast* (no pacing, odd chunk sizes), *silent* (some audio, then nothing, still reading),
  *slow* (never keeps up with what it is sent: reads one message in 0.25 s while provoking tens a
  second, then stops reading, then resets its connection), *half-open* (a raw socket that sends
  audio without ever reading, then stops and never sends a FIN: to the gateway, a vanished peer).

What must hold: normal and fast clients get only valid Deepgram, close 1000 and final words and
timestamps ``==`` the fault-free run's (which ``==`` the marker contract); a silent client gets
the words of what it sent, then NET-0001 and 1011; slow and half-open clients are not expected to
get anything (they are gone), but their sessions end. At the end no session is left: the registry
is empty, ``streamproxy_sessions_active`` is 0 and no upstream connection is open.

Shortened for CI (each keeps the semantics it tests, only sooner):

* ``session.stall_timeout_s`` 1.5 s (default 10): a stall fault is detected in 1.5 s;
* ``session.client_idle_timeout_s`` 3 s (10): the silent client's NET-0001, and how a half-open
  socket is found (with the idle timeout on, the gateway sends no pings: a vanished client sends
  nothing, so the idle timer ends it);
* ``session.client_write_timeout_s`` 1 s (5): a slow client is detached sooner;
* ``session.close_timeout_s`` 5 s (10): how long a gone client's session waits at close;
* ``reconnect.first_retry_s`` 0.1, ``base_s`` 0.5, ``cap_s`` 4 (0.25, 1, 30): still long against
  the 1-3 s outages, so the coordinated wake-up after an outage is what ends the wait;

Outages: one long (10-20 s), one medium (3-8 s) and two short (1-2.5 s), in random order with
1.5-3 s between; sessions start at random times over that timeline, so every outage hits live
sessions (and some sessions send CloseStream in the middle of one). About 60-80 s on the 2-core box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from aiohttp import WSMsgType, web
from websockets.exceptions import ConnectionClosed

from streamproxy.faults import Fault, FaultRelay
from tests.helpers.gateway import engine, gateway, gateway_config, metric, validate_strict
from tests.helpers.marker import Segment, TimedWord, expected_words, final_words, marker_audio
from tests.helpers.rawws import frame, header, upgrade

SEED = int(os.environ.get("STREAMPROXY_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
SR = 16000
BPS = 2 * SR
CHAOS_CFG: dict[str, Any] = {
    "session.stall_timeout_s": 1.5,
    "session.client_idle_timeout_s": 3.0,
    "session.client_write_timeout_s": 1.0,
    "session.close_timeout_s": 5.0,
    "reconnect.first_retry_s": 0.1,
    "reconnect.base_s": 0.5,
    "reconnect.cap_s": 4.0,
}
KINDS = {"normal": 11, "fast": 6, "silent": 3, "slow": 3, "half_open": 4}

# (name, frame, the gateway's invalid-message kind): every kind of upstream garbage of the issue.
GARBAGE: list[tuple[str, str | bytes]] = [
    ("unknown_type", '{"type":"Whatever"}'),
    ("no_type", '{"hello":"world"}'),
    ("null_type", '{"type":null}'),
    ("bare_results", '{"type":"Results"}'),
    ("non_numeric_start", '{"type":"Results","start":"soon","duration":1,"channel":{"alternatives":[]}}'),
    ("word_without_times", '{"type":"Results","start":0,"duration":1,"is_final":true,'
     '"channel":{"alternatives":[{"transcript":"x","words":[{"word":"x"}]}]}}'),
    ("not_json", "{not json"),
    ("binary", b"\x00\x01\x02"),
]  # fmt: skip


def why(msg: str) -> str:
    """Every assertion message names the seed, so any failure can be replayed."""
    return f"[STREAMPROXY_CHAOS_SEED={SEED}] {msg}"


# ----------------------------------------------------------------------------- garbage upstream
@dataclass
class Garbage:
    name: str
    frame: str | bytes
    at_bytes: int  # sent once this many audio bytes have been relayed on the connection


class GarbageRelay:
    """``/v1/listen`` relay to the engine that sends invalid messages where a session's plan says.

    ``plans[tag]`` holds one entry per upstream connection of the session tagged ``tag`` (None:
    a clean connection). An entry whose connection ends before it fires goes back to the front,
    so every planned kind is sent unless its session ends first. ``drop_all`` cuts every live
    connection without a close frame (the upstream half of an outage).
    """

    def __init__(self, target: str, plans: dict[str, deque[Garbage | None]]) -> None:
        self.target = target
        self.plans = plans
        self.fired: list[tuple[str, str]] = []  # (tag, garbage name)
        self.live: dict[int, tuple[web.Request, aiohttp.ClientWebSocketResponse]] = {}
        self.accepted = 0
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/v1/listen", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.drop_all()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def drop_all(self) -> None:
        for request, up in list(self.live.values()):
            if request.transport is not None:
                request.transport.abort()
            asyncio.get_running_loop().create_task(up.close())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        tag = request.query.get("tag", "")
        plan = self.plans.get(tag)
        g = plan.popleft() if plan else None
        auth = request.headers.get("Authorization")
        try:
            up = await self._http.ws_connect(
                f"{self.target}/v1/listen?{request.query_string}",
                headers={"Authorization": auth} if auth else None,
                autoping=True,
                max_msg_size=0,
            )
        except aiohttp.ClientError as e:
            if g is not None and plan is not None:
                plan.appendleft(g)
            return web.Response(status=502, text=str(e))
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError):
            await up.close()
            raise
        self.accepted += 1
        key = id(ws)
        self.live[key] = (request, up)
        fired = g is None

        async def down() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                async for m in up:
                    if m.type == WSMsgType.TEXT:
                        await ws.send_str(m.data)
                    elif m.type == WSMsgType.BINARY:
                        await ws.send_bytes(m.data)
                    else:
                        break
                await ws.close(code=up.close_code or 1011)

        task = asyncio.create_task(down())
        forwarded = 0
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await up.send_bytes(msg.data)
                    forwarded += len(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await up.send_str(msg.data)
                else:
                    break
                if not fired and g is not None and forwarded >= g.at_bytes:
                    fired = True
                    self.fired.append((tag, g.name))
                    await (ws.send_bytes(g.frame) if isinstance(g.frame, bytes) else ws.send_str(g.frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass
        finally:
            if not fired and plan is not None:
                plan.appendleft(g)
            self.live.pop(key, None)
            task.cancel()
            with contextlib.suppress(BaseException):
                await up.close()
        return ws


# ----------------------------------------------------------------------------- the schedule
@dataclass
class Plan:
    """One client: who it is, what it sends and what it should get."""

    index: int
    kind: str
    segments: list[Segment]
    audio: bytes
    expected: list[TimedWord]
    start_s: float  # when it connects, from the start of the chaos phase
    chunk: int
    speed: float | None  # None: as fast as possible
    interim: bool
    pause_at: int = -1  # byte offset of a KeepAlive-only pause (normal clients)
    pause_s: float = 0.0  # the pause's length; for a slow client how long it reads at all
    read_delay_s: float = 0.0  # a sluggish (but keeping-up) reader
    garbage: list[Garbage | None] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"chaos{self.index}"

    @property
    def query(self) -> str:
        interim = "true" if self.interim else "false"
        return f"/v1/listen?encoding=linear16&sample_rate={SR}&interim_results={interim}&tag={self.tag}"


def random_segments(rng: random.Random, seconds: float) -> list[Segment]:
    """Random marker audio: words (values >= 1000, never equal to a noise sample), silences short
    and long (some end an utterance, some do not), bursts of noise; leading and trailing silence."""
    segs: list[Segment] = [("sil", 0, rng.randint(50, 400))]
    ms = segs[0][2]
    while ms < seconds * 1000:
        r = rng.random()
        if r < 0.5:
            k = rng.randint(1000, 30000)
            if segs[-1][0] == "word" and segs[-1][1] == k:
                k += 1
            segs.append(("word", k, rng.randint(25, 450)))
        elif r < 0.9:
            segs.append(("sil", 0, rng.choice([rng.randint(5, 250), rng.randint(300, 900)])))
        else:
            segs.append(("noise", 0, rng.randint(1, 15)))
        ms += segs[-1][2]
    segs.append(("sil", 0, rng.randint(100, 500)))
    return segs


def outage_timeline(rng: random.Random) -> list[tuple[float, float, int]]:
    """(start, length, refusal status) of each outage: one long, one medium, two short."""
    lengths = [rng.uniform(10, 20), rng.uniform(3, 8), rng.uniform(1, 2.5), rng.uniform(1, 2.5)]
    rng.shuffle(lengths)
    out, t = [], rng.uniform(1.5, 3.0)
    for length in lengths:
        out.append((round(t, 2), round(length, 2), rng.choice([503, 503, 502, 500, 429])))
        t += length + rng.uniform(1.5, 3.0)
    return out


def fault_plan(rng: random.Random, n: int) -> list[Fault]:
    """Classic faults for the relay's next ``n`` connections, about half of them clean."""
    plan: list[Fault] = []
    for _ in range(n):
        r = rng.random()
        at = rng.randrange(0, 3 * BPS)  # odd offsets too: a sample split across connections
        if r < 0.45:
            plan.append(Fault())
        elif r < 0.6:
            plan.append(Fault("close", at, code=rng.choice([1011, 1001, 1012, 1013, 1014, 4000])))
        elif r < 0.72:
            plan.append(Fault("reset", at))
        elif r < 0.8:
            plan.append(Fault("stall", at))
        elif r < 0.9:
            plan.append(Fault("refuse", status=rng.choice([429, 500, 502, 503])))
        else:
            plan.append(Fault("delay", delay_ms=rng.uniform(10, 250)))
    return plan


def client_plans(rng: random.Random, span_s: float) -> list[Plan]:
    kinds = [k for k, n in KINDS.items() for _ in range(n)]
    rng.shuffle(kinds)
    # Every garbage kind is planned on the first connection of some well-behaved client (so it is
    # sure to be sent), and more garbage at random on later connections of any client.
    behaved = [i for i, k in enumerate(kinds) if k in ("normal", "fast")]
    first_garbage = dict(zip(behaved, GARBAGE, strict=False))
    plans = []
    for i, kind in enumerate(kinds):
        seconds = {"normal": (5, 14), "fast": (4, 14), "silent": (1.5, 4), "slow": (6, 12), "half_open": (2, 6)}[kind]
        segs = random_segments(rng, rng.uniform(*seconds))
        audio = marker_audio(segs, SR, seed=rng.randrange(1000))
        dur = len(audio) / BPS
        speed: float | None = None if kind == "fast" else rng.choice([1.0, 1.0, 2.0]) if kind == "normal" else 1.0
        wall = dur / speed if speed else 1.0
        p = Plan(
            index=i,
            kind=kind,
            segments=segs,
            audio=audio,
            expected=expected_words(segs, SR),
            start_s=round(rng.uniform(0.0, max(0.5, span_s - wall)), 2),
            chunk=rng.choice([640, 1600, 3200, 3200, 8000, 15360]) + rng.choice([0, 0, 1]),
            speed=speed,
            interim=rng.random() < 0.5,
        )
        if kind == "normal" and rng.random() < 0.5:
            p.pause_at, p.pause_s = rng.randrange(0, len(audio)), rng.uniform(1.0, 4.0)
        if kind == "slow":
            p.pause_s = rng.uniform(1.0, 4.0)  # how long it reads (slowly) before it stops reading
        if kind == "normal" and rng.random() < 0.3:
            p.read_delay_s = rng.uniform(0.01, 0.04)
        first = first_garbage.get(i)
        if first is not None:
            p.garbage.append(Garbage(first[0], first[1], rng.randrange(0, BPS // 2)))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.5:
                name, frame = rng.choice(GARBAGE)
                p.garbage.append(Garbage(name, frame, rng.randrange(0, 2 * BPS)))
            else:
                p.garbage.append(None)
        plans.append(p)
    return plans


# ----------------------------------------------------------------------------- clients
@dataclass
class Got:
    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    session_id: str = ""
    error: str = ""
    done_at: float = 0.0  # when the client was done, from the start of the chaos phase


async def ws_client(port: int, p: Plan, *, silent: bool = False) -> Got:
    """A websockets client that reads everything; ``silent`` stops sending after its audio (no
    CloseStream, no KeepAlive) and waits for the gateway to end the session."""
    got = Got()
    loop = asyncio.get_running_loop()
    async with websockets.connect(f"ws://127.0.0.1:{port}{p.query}", max_size=None, compression=None) as ws:
        got.session_id = ws.response.headers.get("dg-request-id", "") if ws.response else ""

        async def reader() -> None:
            try:
                async for raw in ws:
                    got.messages.append(orjson.loads(raw))
                    if p.read_delay_s:
                        await asyncio.sleep(p.read_delay_s)
            except ConnectionClosed as e:
                got.error = str(e)

        task = asyncio.create_task(reader())
        t0, paused = loop.time(), 0.0
        try:
            for i in range(0, len(p.audio), p.chunk):
                if p.pause_at >= 0 and i <= p.pause_at < i + p.chunk:  # KeepAlive only, then go on
                    end = loop.time() + p.pause_s
                    while loop.time() < end:
                        await ws.send('{"type":"KeepAlive"}')
                        await asyncio.sleep(min(0.7, max(0.0, end - loop.time())))
                    paused += p.pause_s
                await ws.send(p.audio[i : i + p.chunk])
                if p.speed:
                    due = t0 + paused + (i + p.chunk) / BPS / p.speed
                    await asyncio.sleep(max(0.0, due - loop.time()))
            if not silent:
                await ws.send('{"type":"CloseStream"}')
        except ConnectionClosed as e:
            got.error = f"send: {e}"
        await asyncio.wait_for(task, 80)
        got.close_code = ws.close_code
    return got


async def slow_client(port: int, p: Plan) -> Got:
    """Real-time audio plus a burst of unsupported text frames with each chunk (each is answered
    with an Error, so it is sent tens of messages a second) while reading one message per 0.25 s
    through a 2 KB receive buffer for ``p.pause_s``; then it stops reading altogether, sends while
    it can, and finally drops its TCP connection (reset). It never keeps up and never says
    goodbye: whatever the gateway does about it (pause reading it, detach it), the session ends."""
    got = Got()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}{p.query}", sock=sock, max_size=None, compression=None, max_queue=1,
            ping_interval=None, close_timeout=1,
        ) as ws:  # fmt: skip
            got.session_id = ws.response.headers.get("dg-request-id", "") if ws.response else ""

            async def reader() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        got.messages.append(orjson.loads(raw))
                        await asyncio.sleep(0.25)

            task = asyncio.create_task(reader())
            t0 = loop.time()
            try:
                for i in range(0, len(p.audio), p.chunk):
                    if not task.done() and loop.time() > t0 + p.pause_s:
                        task.cancel()  # from here on nothing is read
                    async with asyncio.timeout(3.0):  # reading paused by the gateway: stop sending
                        await ws.send(p.audio[i : i + p.chunk])
                        for _ in range(10):
                            await ws.send('{"type":"Bogus"}')
                    await asyncio.sleep(max(0.0, t0 + (i + p.chunk) / BPS - loop.time()))
            except (ConnectionClosed, TimeoutError) as e:
                got.error = f"send: {type(e).__name__}"
            task.cancel()
            await asyncio.sleep(1.0)
            got.close_code = ws.close_code
            ws.transport.abort()  # gone without a close frame or a FIN
    except (ConnectionClosed, OSError) as e:
        got.error = got.error or f"{type(e).__name__}: {e}"
    return got


def _half_open_client(port: int, p: Plan, held: list[socket.socket]) -> Got:
    """Handshake, real-time audio without ever reading, then nothing at all and no FIN: the socket
    stays open (kept in ``held``) until the test ends, as if the client's host had vanished."""
    got = Got()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    held.append(s)
    s.settimeout(5.0)
    got.session_id = header(upgrade(s, port, p.query), "dg-request-id") or ""
    t0 = time.monotonic()
    s.settimeout(1.0)
    try:
        for i in range(0, len(p.audio), p.chunk):
            s.sendall(frame(0x2, p.audio[i : i + p.chunk]))
            time.sleep(max(0.0, t0 + (i + p.chunk) / BPS - time.monotonic()))
    except OSError as e:
        got.error = f"send: {e}"
    return got


# ----------------------------------------------------------------------------- helpers
class SessionEnds(logging.Handler):
    """The gateway's one ``session end`` record per session, by session id."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ends: dict[str, dict[str, Any]] = {}
        self.repeated: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "session_end":
            sid = str(getattr(record, "session_id", ""))
            if sid in self.ends:
                self.repeated.append(sid)
            self.ends[sid] = {k: getattr(record, k, None) for k in ("outcome", "close_code", "lost_s", "error")}


async def reference(port: int, p: Plan) -> list[TimedWord]:
    """The fault-free run: same audio, chunking and options, as fast as possible, clean gateway."""
    fast = Plan(p.index, "fast", p.segments, p.audio, p.expected, 0.0, p.chunk, None, p.interim)
    got = await ws_client(port, fast)
    assert got.close_code == 1000, why(f"reference run of client {p.index} closed {got.close_code}: {got.error}")
    return final_words(got.messages)


async def wait_until(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.1)
    return bool(cond())


# ----------------------------------------------------------------------------- the test
@pytest.mark.timeout(200)
async def test_chaos_random_faults_lose_nothing_and_leave_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage, classic faults and 1-20 s outages against normal, fast, silent, slow and half-open
    clients at once: the behaved clients' words and timestamps equal the fault-free run's, every
    session ends exactly once, and nothing is left behind."""
    print(f"\nSTREAMPROXY_CHAOS_SEED={SEED}")
    rng = random.Random(SEED)
    outages = outage_timeline(rng)
    span = outages[-1][0] + outages[-1][1] + 1.0
    plans = client_plans(rng, span)
    faults = fault_plan(rng, 400)
    ends = SessionEnds()
    edge_log = logging.getLogger("streamproxy.edge")
    edge_log.addHandler(ends)
    old_level = edge_log.level
    edge_log.setLevel(logging.INFO)
    for noisy in ("aiohttp.server", "aiohttp.access", "aiohttp.websocket"):  # the cut sockets' tracebacks
        monkeypatch.setattr(logging.getLogger(noisy), "disabled", True)
    held: list[socket.socket] = []
    t_start = time.monotonic()
    try:
        async with engine("marker") as eport:
            eurl = f"ws://127.0.0.1:{eport}"
            # ------------------------------------------------------------ fault-free reference
            async with gateway(gateway_config([eurl], **CHAOS_CFG)) as clean:
                checked = [p for p in plans if p.kind in ("normal", "fast", "silent")]
                sem = asyncio.Semaphore(8)

                async def ref(p: Plan) -> list[TimedWord]:
                    async with sem:
                        return await reference(clean.port, p)

                refs = dict(zip((p.index for p in checked), await asyncio.gather(*map(ref, checked)), strict=True))
            for p in checked:
                assert refs[p.index] == p.expected, why(f"client {p.index}: the fault-free run breaks the contract")
            t_ref = time.monotonic() - t_start

            # ------------------------------------------------------------ chaos
            garbage = GarbageRelay(eurl, {p.tag: deque(p.garbage) for p in plans})
            await garbage.start()
            relay = FaultRelay(garbage.url)
            await relay.start()
            relay.set_plan(faults)
            try:
                async with gateway(gateway_config([relay.url], **CHAOS_CFG)) as gw:
                    loop = asyncio.get_running_loop()
                    t0 = loop.time()
                    peak = 0

                    async def outage_driver() -> None:
                        for start, length, status in outages:
                            await asyncio.sleep(max(0.0, t0 + start - loop.time()))
                            relay.refuse_for(length, status)
                            garbage.drop_all()  # an outage also cuts what is connected

                    async def run(p: Plan) -> Got:
                        nonlocal peak
                        await asyncio.sleep(p.start_s)
                        peak = max(peak, len(gw.gateway.sessions) + 1)
                        try:
                            if p.kind in ("normal", "fast"):
                                got = await ws_client(gw.port, p)
                            elif p.kind == "silent":
                                got = await ws_client(gw.port, p, silent=True)
                            elif p.kind == "slow":
                                got = await slow_client(gw.port, p)
                            else:
                                got = await asyncio.to_thread(_half_open_client, gw.port, p, held)
                        except Exception as e:  # reported per client below, with the seed
                            got = Got(error=f"client raised {type(e).__name__}: {e}")
                        got.done_at = round(loop.time() - t0, 1)
                        return got

                    driver = asyncio.create_task(outage_driver())
                    gots = await asyncio.gather(*(run(p) for p in plans))
                    await driver
                    t_clients = loop.time() - t0
                    left = await wait_until(lambda: len(gw.gateway.sessions) == 0, 40.0)
                    t_drained = loop.time() - t0
                    upstream_free = await wait_until(lambda: not garbage.live, 10.0)
                    summary: dict[str, Any] = {
                        "seed": SEED,
                        "clients": dict(Counter(p.kind for p in plans)),
                        "peak_sessions": peak,
                        "outages": outages,
                        "faults_fired": dict(Counter(e.detail.get("kind") for e in relay.fired())),
                        "upstream_connections": relay.connections,
                        "garbage_fired": dict(Counter(name for _, name in garbage.fired)),
                        "invalid_counted": metric(gw, "streamproxy_upstream_invalid_messages_total"),
                        "reconnects": metric(gw, "streamproxy_upstream_reconnects_total"),
                        "outcomes": dict(Counter(ends.ends.get(g.session_id, {}).get("outcome") for g in gots)),
                        "reference_s": round(t_ref, 1),
                        "clients_done_s": round(t_clients, 1),
                        "all_ended_s": round(t_drained, 1),
                    }
                    print(summary)
                    for p, got in zip(plans, gots, strict=True):
                        end = ends.ends.get(got.session_id, {})
                        print(f"  client {p.index:2} {p.kind:9} start {p.start_s:5.1f} done {got.done_at:5.1f} "
                              f"close {got.close_code} session end {end} {got.error[:60]}")  # fmt: skip
                    still = [(r.core.session_id, r.core.phase.value, r.outcome) for r in gw.gateway.sessions]
                    assert left, why(f"sessions left behind: {still}; {summary}")
                    assert metric(gw, "streamproxy_sessions_active") == 0, why(f"sessions_active != 0; {summary}")
                    assert upstream_free, why(f"{len(garbage.live)} upstream connections still open; {summary}")
            finally:
                await relay.stop()
                await garbage.stop()
    finally:
        edge_log.removeHandler(ends)
        edge_log.setLevel(old_level)
        for s in held:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

    # ---------------------------------------------------------------- per client
    assert not ends.repeated, why(f"sessions that ended twice: {ends.repeated}")
    for p, got in zip(plans, gots, strict=True):
        where = f"client {p.index} ({p.kind}, start {p.start_s} s, {len(p.audio) / BPS:.2f} s audio, chunk {p.chunk}, "
        where += f"speed {p.speed}, interim {p.interim}, garbage {[g and g.name for g in p.garbage]}): "
        end_or_none = ends.ends.get(got.session_id)
        assert got.session_id and end_or_none is not None, why(where + f"no session end recorded ({got.error})")
        end = end_or_none
        if p.kind in ("normal", "fast"):
            for m in got.messages:
                try:
                    validate_strict(m)
                except Exception as e:
                    raise AssertionError(why(where + f"invalid message reached a strict client: {m}")) from e
            assert got.close_code == 1000, why(where + f"close {got.close_code}, {got.error}, end {end}")
            assert got.messages and got.messages[-1]["type"] == "Metadata", why(where + f"last {got.messages[-1:]}")
            words, want = final_words(got.messages), refs[p.index]
            assert words == want, why(where + f"words differ from the fault-free run: {words} != {want}")
            assert end["outcome"] == "ok" and not end["lost_s"], why(where + f"session end {end}")
        elif p.kind == "silent":
            assert got.close_code == 1011, why(where + f"close {got.close_code}, {got.error}, end {end}")
            assert got.messages and got.messages[-1].get("err_code") == "NET-0001", why(where + f"{got.messages[-1:]}")
            assert end["outcome"] == "client_idle", why(where + f"session end {end}")
            words, want = final_words(got.messages), refs[p.index]
            assert words == want, why(where + f"words differ from the fault-free run: {words} != {want}")
    # The garbage reached the gateway and was counted, never shown (checked per client above).
    assert summary["garbage_fired"] and summary["invalid_counted"] >= 1, why(f"{summary}")
    assert set(summary["garbage_fired"]) == {g[0] for g in GARBAGE}, why(f"not every garbage kind was sent: {summary}")


# ----------------------------------------------------------------------------- found by the chaos test
async def test_idle_timeout_close_is_not_counted_as_ok() -> None:
    """Found by the chaos test (seed 1): a client that goes silent is closed with NET-0001 and 1011;
    ``streamproxy_sessions_total`` and the ``session end`` record say so (``client_idle``), not
    ``ok`` like a clean CloseStream."""
    ends = SessionEnds()
    edge_log = logging.getLogger("streamproxy.edge")
    edge_log.addHandler(ends)
    old_level = edge_log.level
    edge_log.setLevel(logging.INFO)
    try:
        async with engine("marker") as eport:
            cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.client_idle_timeout_s": 1.0})
            async with gateway(cfg) as gw:
                url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate={SR}"
                async with websockets.connect(url) as ws:
                    assert ws.response is not None
                    sid = ws.response.headers["dg-request-id"]
                    await ws.send(marker_audio([("sil", 0, 100), ("word", 1234, 200), ("sil", 0, 400)], SR))
                    with contextlib.suppress(ConnectionClosed):
                        async for _ in ws:
                            pass
                    assert ws.close_code == 1011
                assert await wait_until(lambda: len(gw.gateway.sessions) == 0, 5.0)
                ok = metric(gw, "streamproxy_sessions_total", {"outcome": "ok"})
    finally:
        edge_log.removeHandler(ends)
        edge_log.setLevel(old_level)
    assert ends.ends[sid]["close_code"] == 1011
    assert ends.ends[sid]["outcome"] != "ok", ends.ends[sid]
    assert ok == 0
