"""Load-generator worker: many real-time Deepgram Live sessions on one uvloop, in one process.

The orchestrator (``load.py``) starts several of these processes and drives them over a pipe, so
the client side is spread over processes and never the bottleneck it measures. Every session
sends 100 ms frames of 16 kHz linear16 *marker* audio (a word every ~0.4-0.6 s, followed by more
than the 300 ms endpointing silence, so each word yields a final) on an absolute schedule, and
times each ``Results`` message against the send time of the frame holding the result's last
audio byte (``start + duration``): the frame whose arrival let the engine emit it. The same code
runs against every path (direct, streamproxy, nginx), so the differences are the relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import numpy as np
import orjson

SR = 16000
FRAME_MS = 100
FRAME_BYTES = SR * 2 * FRAME_MS // 1000
CLOSE_STREAM = '{"type":"CloseStream"}'


def make_pattern(seconds: float, seed: int) -> bytes:
    """Cyclic marker audio: silence, then words of 100-200 ms each followed by 320-420 ms of zeros.

    Starts and ends in silence, so a session may start at any frame and wrap around.
    """
    rng = random.Random(seed)
    parts = [np.zeros(SR // 10, dtype="<i2")]
    total = SR // 10
    while total < seconds * SR:
        w = rng.randint(100, 200) * SR // 1000
        s = rng.randint(320, 420) * SR // 1000
        parts += [np.full(w, rng.randint(1, 32767), dtype="<i2"), np.zeros(s, dtype="<i2")]
        total += w + s
    pcm = np.concatenate(parts)
    pcm = pcm[: len(pcm) - len(pcm) % (FRAME_BYTES // 2)]  # whole frames
    return pcm.tobytes()


@functools.lru_cache(maxsize=2)
def pattern(seed: int, seconds: float) -> bytes:
    return make_pattern(seconds, seed)


@dataclass
class Stats:
    """What one worker reports for one phase (plain types: it crosses a pipe)."""

    sessions: int = 0
    connected: int = 0
    connect_errors: int = 0
    connect_s: list[float] = field(default_factory=list)
    closed_ok: int = 0
    errors: list[str] = field(default_factory=list)
    no_results: int = 0
    interim_ms: array = field(default_factory=lambda: array("d"))
    final_ms: array = field(default_factory=lambda: array("d"))
    results: int = 0
    unmatched: int = 0
    close_results: int = 0
    send_lag_ms: array = field(default_factory=lambda: array("d"))
    frames: int = 0
    trace: list[tuple[float, float, int]] = field(default_factory=list)  # (sent, latency ms, session) if asked

    def report(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("interim_ms", "final_ms", "send_lag_ms"):
            d[k] = d[k].tolist()
        d["errors"] = self.errors[:20]
        d["n_errors"] = len(self.errors)
        return d


class Phase:
    """One worker's share of one benchmark phase."""

    def __init__(self, conn: Connection, spec: dict[str, Any]) -> None:
        self.conn = conn
        self.spec = spec
        self.stats = Stats(sessions=spec["n"])
        self.loop = asyncio.get_running_loop()
        self.go: asyncio.Future[float] = self.loop.create_future()
        self.release = asyncio.Event()
        self.pattern = pattern(spec.get("pattern_seed", 1), spec.get("pattern_s", 60.0))
        self.frames_in_pattern = len(self.pattern) // FRAME_BYTES

    def _on_pipe(self) -> None:
        if not self.conn.poll():
            return
        msg = self.conn.recv()
        if msg[0] == "go" and not self.go.done():
            # Wall clock -> loop clock: all workers start on the same wall-clock instant.
            self.go.set_result(self.loop.time() + (msg[1] - time.time()))
        elif msg[0] == "release":
            self.release.set()

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        self.loop.add_reader(self.conn.fileno(), self._on_pipe)
        conn = aiohttp.TCPConnector(limit=0, force_close=True)
        sem = asyncio.Semaphore(spec.get("connect_concurrency", 64))
        async with aiohttp.ClientSession(connector=conn) as http:
            socks: list[aiohttp.ClientWebSocketResponse | None] = await asyncio.gather(
                *(self._connect(http, sem) for _ in range(spec["n"]))
            )
            self.conn.send(("ready", {"connected": self.stats.connected}))
            if spec["mode"] == "idle":
                await self.release.wait()
                await asyncio.gather(*(ws.close() for ws in socks if ws is not None), return_exceptions=True)
            else:
                start = await self.go
                rng = random.Random(spec["seed"])
                await asyncio.gather(
                    *(
                        self._session(ws, start + rng.random() * FRAME_MS / 1000, rng.randrange(self.frames_in_pattern))
                        for ws in socks
                        if ws is not None
                    )
                )
        self.loop.remove_reader(self.conn.fileno())
        os.set_blocking(self.conn.fileno(), True)  # add_reader made the pipe non-blocking
        return self.stats.report()

    async def _connect(
        self, http: aiohttp.ClientSession, sem: asyncio.Semaphore
    ) -> aiohttp.ClientWebSocketResponse | None:
        async with sem:
            t0 = time.perf_counter()
            try:
                ws = await http.ws_connect(self.spec["url"], autoping=True, heartbeat=None, compress=0, max_msg_size=0)
            except Exception as e:
                self.stats.connect_errors += 1
                self.stats.errors.append(f"connect: {type(e).__name__}: {e}"[:200])
                return None
            self.stats.connect_s.append(time.perf_counter() - t0)
            self.stats.connected += 1
            return ws

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, t0: float, first_frame: int) -> None:
        spec = self.spec
        nframes: int = spec["frames"]
        measure_from: int = spec["warmup_frames"]
        sent = array("d", bytes(8 * nframes))  # perf_counter at each frame's send
        pattern, nf = self.pattern, self.frames_in_pattern
        st = self.stats
        got = 0
        perf = time.perf_counter
        trace = bool(spec.get("trace"))
        sid = id(ws)

        async def reader() -> None:
            nonlocal got
            async for msg in ws:
                now = perf()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = orjson.loads(msg.data)
                if m.get("type") != "Results":
                    continue
                got += 1
                st.results += 1
                if m.get("from_finalize"):
                    # The answer to CloseStream: every session closes at the same moment, so this
                    # times a close burst, not streaming. Counted, not timed.
                    st.close_results += 1
                    continue
                end_bytes = round((m["start"] + m["duration"]) * SR) * 2
                fi = math.ceil(end_bytes / FRAME_BYTES) - 1
                if fi < measure_from:
                    continue
                if fi >= nframes or sent[fi] == 0.0:
                    st.unmatched += 1
                    continue
                ms = (now - sent[fi]) * 1000
                (st.final_ms if m.get("is_final") else st.interim_ms).append(ms)
                if trace:
                    st.trace.append((sent[fi], ms, sid))

        rtask = self.loop.create_task(reader())
        loop = self.loop
        try:
            for k in range(nframes):
                target = t0 + k * FRAME_MS / 1000
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif k >= measure_from:
                    st.send_lag_ms.append(-delay * 1000)
                i = (first_frame + k) % nf
                sent[k] = perf()
                await ws.send_bytes(pattern[i * FRAME_BYTES : (i + 1) * FRAME_BYTES])
                st.frames += 1
            await ws.send_str(CLOSE_STREAM)
            await asyncio.wait_for(asyncio.shield(rtask), 15)
            if ws.close_code == 1000:
                st.closed_ok += 1
            else:
                st.errors.append(f"close code {ws.close_code}")
        except Exception as e:
            st.errors.append(f"stream: {type(e).__name__}: {e}"[:200])
        finally:
            rtask.cancel()
            with contextlib.suppress(BaseException):
                await rtask
            await ws.close()
        if got == 0:
            st.no_results += 1


def worker_main(conn: Connection, cpus: list[int] | None) -> None:
    """Process entry: serve phases from the orchestrator until told to exit."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    import uvloop

    while True:
        cmd = conn.recv()
        if cmd[0] == "exit":
            return

        async def main(spec: dict[str, Any] = cmd[1]) -> dict[str, Any]:
            return await Phase(conn, spec).run()

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            report = r.run(main())
        conn.send(("done", report))
