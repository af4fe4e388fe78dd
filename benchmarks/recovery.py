"""Recovery after an upstream failure, and catch-up after a long outage, against a fault-free baseline.

Everything runs in one process on loopback (client, gateway, fault relays, marker engine), so all
timestamps share one clock. The client streams marker audio in real time, 100 ms frames, a word
every 300 ms (100 ms word, 200 ms silence, ``endpointing=150``, interim results on), so a result
arrives about every 100 ms when nothing is wrong. The gateway runs with its default reconnect
settings (first retry within 250 ms, then 1, 2, 4, 8 ... s, full jitter).

* baseline: fault-free final-result latency (last audio byte of the result sent -> result received);
* recovery: the relay closes with 1011 (or resets TCP) mid-stream at a random audio offset; time from
  the fault to the next result the client receives. One upstream (it accepts the reconnect), and
  two upstreams where A stays down and B is healthy;
* catch-up: at ~3 s the upstream fails and refuses every handshake for 10 s while the client keeps
  streaming; time from the outage's end until the client holds the finals of every word sent
  before it ended (split into the wait for the next reconnect attempt and the replay after it).
* many sessions through one outage (``--sessions 20,200``): N real-time sessions share the only
  upstream, a marker engine process; it is killed (every connection drops, every connect is
  refused) and ``--outage`` seconds later started again.
  Per session: time from the upstream's return to the next result delivered, and to "caught up"
  (the finals of every word sent before the return), words lost and duplicated; the fault-free
  final latency of the same sessions before the outage is the baseline. The gateway runs as its own
  process (``streamproxy serve``) from ``--gateway-tree`` (default: ``$PYTHONPATH`` if set, else
  this checkout), so an older commit's gateway can be measured with this harness; the engine
  (its own process) and the clients (this process) always run this checkout's code.

    python benchmarks/recovery.py [--reps 10] [--outage 10]
    python benchmarks/recovery.py --sessions 20,200 --outage 10 --label after
    git worktree add /tmp/wt-before 2480dfc
    PYTHONPATH=/tmp/wt-before python benchmarks/recovery.py --sessions 20,200 --outage 10 --label before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamproxy.config import Config, load_config  # noqa: E402
from streamproxy.engine.app import start_engine  # noqa: E402
from streamproxy.faults import Fault, FaultKind, FaultRelay  # noqa: E402
from streamproxy.serve import Running, start  # noqa: E402

SR = 16000
BPS = 2 * SR
FRAME = BPS // 10  # 100 ms
PERIOD = int(0.3 * SR)  # a word every 300 ms
WORD = int(0.1 * SR)
QUERY = f"encoding=linear16&sample_rate={SR}&interim_results=true&endpointing=150"


def marker_audio(seconds: float, first_word: int) -> tuple[bytes, list[tuple[str, int]]]:
    """Words w<k> of 100 ms every 300 ms; returns the audio and (word, end sample) pairs."""
    n = int(seconds * SR)
    a = np.zeros(n, dtype="<i2")
    words = []
    for i, s in enumerate(range(PERIOD // 3, n - WORD, PERIOD)):
        k = first_word + i
        a[s : s + WORD] = k
        words.append((f"w{k}", s + WORD))
    return a.tobytes(), words


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


@dataclass
class Trace:
    sent: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes sent so far)
    recv: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    close_code: int | None = None

    def sent_time(self, end_byte: int) -> float | None:
        """When the frame holding byte ``end_byte - 1`` was sent."""
        for t, pos in self.sent:
            if pos >= end_byte:
                return t
        return None

    def finals(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.recv if m.get("type") == "Results" and m.get("is_final")]

    def final_words(self) -> list[str]:
        return [w["word"] for _, m in self.finals() for w in m["channel"]["alternatives"][0]["words"]]

    def word_delivered_at(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, m in self.finals():
            for w in m["channel"]["alternatives"][0]["words"]:
                out.setdefault(w["word"], t)
        return out


async def stream(port: int, audio: bytes, stop_when: Any = None) -> Trace:
    """Real-time client: a 100 ms frame every 100 ms; ``stop_when(trace)`` ends the stream early."""
    loop = asyncio.get_running_loop()
    tr = Trace()
    async with connect(f"ws://127.0.0.1:{port}/v1/listen?{QUERY}", compression=None, max_size=None) as ws:

        async def reader() -> None:
            try:
                async for m in ws:
                    tr.recv.append((loop.time(), orjson.loads(m)))
            except ConnectionClosed:
                pass

        task = asyncio.create_task(reader())
        t0 = loop.time()
        for i in range(0, len(audio), FRAME):
            await asyncio.sleep(max(0.0, t0 + i / BPS - loop.time()))
            await ws.send(audio[i : i + FRAME])
            tr.sent.append((loop.time(), min(len(audio), i + FRAME)))
            if stop_when is not None and stop_when(tr):
                break
        await ws.send('{"type":"CloseStream"}')
        await asyncio.wait_for(task, 60)
        tr.close_code = ws.close_code
    return tr


def gateway_cfg(urls: dict[str, str]) -> Config:
    o: dict[str, Any] = {"server.port": 0}
    for i, (name, url) in enumerate(urls.items()):
        o[f"upstream.{name}.url"] = url
        o[f"upstream.{name}.priority"] = i
    return load_config(None, env={}, overrides=o)


@dataclass
class Rep:
    value_s: float | None
    exact: bool
    extra: dict[str, float] = field(default_factory=dict)


async def baseline_rep(engine_url: str, seed: int) -> tuple[list[float], list[float], bool]:
    audio, words = marker_audio(6.0, 1000 + 100 * seed)
    gw: Running = await start(gateway_cfg({"e": engine_url}))
    try:
        tr = await stream(gw.port, audio)
    finally:
        await gw.stop()
    lat = []
    for t, m in tr.finals():
        if m["channel"]["alternatives"][0]["words"]:
            end = round((m["start"] + m["duration"]) * SR) * 2
            sent = tr.sent_time(end)
            if sent is not None:
                lat.append(t - sent)
    results = [t for t, m in tr.recv if m.get("type") == "Results"]
    gaps = [b - a for a, b in itertools.pairwise(results)]
    return lat, gaps, tr.final_words() == [w for w, _ in words]


async def recovery_rep(engine_url: str, seed: int, kind: FaultKind, two: bool) -> Rep:
    rng = random.Random(seed)
    audio, words = marker_audio(6.0, 1000 + 100 * seed)
    at = 2 * rng.randrange(int(2.5 * SR), int(3.5 * SR))  # random sample offset: audio is in flight
    a = FaultRelay(engine_url)
    await a.start()
    relays = [a]
    if two:
        b = FaultRelay(engine_url)
        await b.start()
        relays.append(b)
        a.set_plan([Fault(kind, at_bytes=at, outage_s=600.0)])  # A stays down
    else:
        a.set_plan([Fault(kind, at_bytes=at)])
    gw = await start(gateway_cfg({f"r{i}": r.url for i, r in enumerate(relays)}))
    try:
        tr = await stream(gw.port, audio)
    finally:
        await gw.stop()
        for r in relays:
            await r.stop()
    fault = a.fired()[0]
    after = [t for t, m in tr.recv if m.get("type") == "Results" and t > fault.t]
    reconnect = next((e.t for r in relays for e in r.events if e.event == "accept" and e.t > fault.t), None)
    extra = {"reconnect_s": reconnect - fault.t} if reconnect is not None else {}
    return Rep(after[0] - fault.t if after else None, tr.final_words() == [w for w, _ in words], extra)


async def catchup_rep(engine_url: str, seed: int, outage_s: float) -> Rep:
    rng = random.Random(seed)
    audio, words = marker_audio(60.0, 1000 + 1000 * seed)
    at = 2 * rng.randrange(int(2.5 * SR), int(3.5 * SR))
    relay = FaultRelay(engine_url)
    await relay.start()
    relay.set_plan([Fault("close", at_bytes=at, outage_s=outage_s)])
    state: dict[str, Any] = {}

    def caught_up(tr: Trace) -> bool:
        fired = relay.fired("close")
        if not fired:
            return False
        end = fired[0].t + outage_s
        if "need" not in state:
            if tr.sent[-1][0] < end:
                return False
            sent_then = max((pos for t, pos in tr.sent if t <= end), default=0)
            state["end"] = end
            state["need"] = [w for w, e in words if 2 * e <= sent_then]
        got = tr.word_delivered_at()
        if all(w in got for w in state["need"]):
            state.setdefault("done", max(got[w] for w in state["need"]))
            return tr.sent[-1][0] > state["done"] + 1.0  # a little more audio, then close
        return False

    gw = await start(gateway_cfg({"e": relay.url}))
    try:
        tr = await stream(gw.port, audio, stop_when=caught_up)
    finally:
        await gw.stop()
        await relay.stop()
    sent_words = {w for w, e in words if 2 * e <= tr.sent[-1][1]}
    exact = [w for w in tr.final_words() if w in sent_words] == [w for w, _ in words if w in sent_words]
    if "done" not in state:
        return Rep(None, exact)
    end = state["end"]
    reconnect = next(e.t for e in relay.events if e.event == "accept" and e.t >= end)
    return Rep(
        state["done"] - end,
        exact,
        {"reconnect_wait_s": reconnect - end, "replay_to_caught_up_s": state["done"] - reconnect},
    )


def row(name: str, xs: list[float], base: float | None, exact: str) -> dict[str, Any]:
    r: dict[str, Any] = {"scenario": name, "n": len(xs), "exact": exact}
    if xs:
        r["median_ms"] = round(statistics.median(xs) * 1000, 1)
        r["p95_ms"] = round(pct(xs, 0.95) * 1000, 1)
        r["max_ms"] = round(max(xs) * 1000, 1)
        if base:
            r["x_baseline"] = round(statistics.median(xs) / base, 1)
    return r


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runner, eport = await start_engine("127.0.0.1", 0, "marker")
    engine_url = f"ws://127.0.0.1:{eport}"
    rows = []
    try:
        t = time.monotonic()
        base = await asyncio.gather(*(baseline_rep(engine_url, i) for i in range(args.reps)))
        lat = [x for xs, _, _ in base for x in xs]
        b = statistics.median(lat)
        ok = f"{sum(ok for _, _, ok in base)}/{len(base)}"
        rows.append(row("baseline: final latency, fault-free", lat, None, ok))
        rows.append(row("baseline: gap between results, fault-free", [x for _, g, _ in base for x in g], None, ""))
        print(f"  baseline done in {time.monotonic() - t:.0f} s", file=sys.stderr)
        scenarios: list[tuple[FaultKind, bool]] = [("close", False), ("reset", False), ("close", True), ("reset", True)]
        for kind, two in scenarios:
            t = time.monotonic()
            reps = await asyncio.gather(*(recovery_rep(engine_url, i, kind, two) for i in range(args.reps)))
            what = "close 1011" if kind == "close" else "TCP reset"
            where = "2 upstreams, A down, B healthy" if two else "1 upstream"
            vals = [r.value_s for r in reps if r.value_s is not None]
            ok = f"{sum(r.exact for r in reps)}/{len(reps)}"
            rows.append(row(f"recovery: {what}, {where}", vals, b, ok))
            rc = [r.extra["reconnect_s"] for r in reps if "reconnect_s" in r.extra]
            rows.append(row("  of which: fault -> reconnect accepted", rc, None, ""))
            print(f"  {kind} two={two} done in {time.monotonic() - t:.0f} s", file=sys.stderr)
        t = time.monotonic()
        reps = await asyncio.gather(*(catchup_rep(engine_url, i, args.outage) for i in range(args.reps)))
        vals = [r.value_s for r in reps if r.value_s is not None]
        ok = f"{sum(r.exact for r in reps)}/{len(reps)}"
        rows.append(row(f"catch-up after a {args.outage:g} s outage (1 upstream)", vals, b, ok))
        for key, label in (
            ("reconnect_wait_s", "outage end -> reconnect"),
            ("replay_to_caught_up_s", "reconnect -> caught up"),
        ):
            rows.append(row(f"  of which: {label}", [r.extra[key] for r in reps if key in r.extra], None, ""))
        print(f"  catch-up done in {time.monotonic() - t:.0f} s", file=sys.stderr)
    finally:
        await runner.cleanup()
    return {
        "rows": rows,
        "baseline_final_latency_median_ms": round(b * 1000, 2),
        "reps": args.reps,
        "outage_s": args.outage,
        "config": "gateway defaults: first_retry_s=0.25, base_s=1, cap_s=30, stall_timeout_s=10",
        "audio": "marker, 100 ms frames in real time, a 100 ms word every 300 ms, endpointing=150, interim results",
    }


# ----------------------------------------------------------------------------- many sessions, one outage
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_tree(arg: str | None) -> Path:
    """Which checkout's gateway to run: ``--gateway-tree``, else the first ``$PYTHONPATH`` entry."""
    if arg:
        return Path(arg).resolve()
    first = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    return Path(first).resolve() if first else ROOT


def tree_commit(tree: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


class GatewayProcess:
    """``streamproxy serve`` from ``tree`` in its own process (its RSS and CPU are its own), one
    upstream named ``engine``; stopped by its pid. Runs in an empty directory with
    ``PYTHONPATH=tree`` so the checkout on the path, not the current directory, is imported."""

    def __init__(self, tree: Path, upstream_url: str, env: dict[str, str] | None = None) -> None:
        self.tree = tree
        self.port = free_port()
        self.tmp = tempfile.TemporaryDirectory(prefix="sp-bench-")
        e = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROXY_") and k != "DEEPGRAM_API_KEY"}
        e.update(
            PYTHONPATH=str(tree),
            STREAMPROXY_UPSTREAM_ENGINE_URL=upstream_url,
            STREAMPROXY_LIMITS_MAX_SESSIONS="100000",
            STREAMPROXY_LOG_LEVEL="warning",
        )
        e.update(env or {})
        self.log_path = Path(self.tmp.name) / "gateway.log"
        self._log = open(self.log_path, "wb")  # lives as long as the process
        cmd = [sys.executable, "-m", "streamproxy", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=e, cwd=self.tmp.name)

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gateway exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            if await asyncio.to_thread(self._ready):
                return
            await asyncio.sleep(0.1)
        raise SystemExit("gateway not ready in time")

    def _ready(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r,
        ):
            return r.status == 200
        return False

    def metric(self, name: str) -> float:
        """Sum of a metric's samples from ``/metrics`` (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.tmp.cleanup()


class EngineProcess:
    """The marker engine of this checkout in its own process (so the harness is not what limits a
    catch-up of 200 sessions); ``kill`` is an upstream that dies, ``start`` one that comes back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> float:
        """Start listening on the same port; returns the loop time at which it accepts connections."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROXY_")}
        env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, "-m", "streamproxy", "engine", "--kind", "marker", "--port", str(self.port)]
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the wait below is async
            [*cmd, "--idle-timeout", "600"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return loop.time()
            except OSError:
                await asyncio.sleep(0.01)
        raise SystemExit("engine did not listen in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def outage(relay: FaultRelay, seconds: float, status: int = 503) -> float:
    """The upstream goes down: every live connection is cut and every handshake refused for
    ``seconds``. Returns the loop time at which it answers again."""
    port = relay.port
    relay.refuse_for(seconds, status)
    back = asyncio.get_running_loop().time() + seconds
    await relay.stop()  # cuts what is connected (the gateway sees its upstream sockets die)
    await relay.start(port=port)  # listening again at once, refusing until ``back``
    return back


@dataclass
class SessionTrace:
    trace: Trace
    words: list[tuple[str, int]]  # (word, end sample) of the audio
    error: str = ""


async def realtime_session(port: int, audio: bytes, words: list[tuple[str, int]], t0: float) -> SessionTrace:
    """One real-time client (100 ms frames on an absolute schedule from ``t0``), then CloseStream."""
    loop = asyncio.get_running_loop()
    tr = Trace()
    out = SessionTrace(tr, words)
    try:
        async with connect(
            f"ws://127.0.0.1:{port}/v1/listen?{QUERY}", compression=None, max_size=None, open_timeout=60
        ) as ws:

            async def reader() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for m in ws:
                        tr.recv.append((loop.time(), orjson.loads(m)))

            task = asyncio.create_task(reader())
            try:
                for i in range(0, len(audio), FRAME):
                    await asyncio.sleep(max(0.0, t0 + i / BPS - loop.time()))
                    await ws.send(audio[i : i + FRAME])
                    tr.sent.append((loop.time(), min(len(audio), i + FRAME)))
                await ws.send('{"type":"CloseStream"}')
            except ConnectionClosed as e:
                out.error = f"closed while sending: {e}"
            await asyncio.wait_for(task, 120)
            tr.close_code = ws.close_code
    except (OSError, TimeoutError, ConnectionClosed) as e:
        out.error = f"{type(e).__name__}: {e}"
    return out


def word_accounting(st: SessionTrace) -> tuple[int, int, int]:
    """(words sent, lost, duplicated): every word whose audio was sent must be a final exactly once."""
    sent_bytes = st.trace.sent[-1][1] if st.trace.sent else 0
    sent = [w for w, e in st.words if 2 * e <= sent_bytes]
    got = st.trace.final_words()
    counts: dict[str, int] = {}
    for w in got:
        counts[w] = counts.get(w, 0) + 1
    lost = sum(1 for w in sent if counts.get(w, 0) == 0)
    dup = sum(c - 1 for c in counts.values() if c > 1)
    return len(sent), lost, dup


def final_latencies(st: SessionTrace, until: float) -> list[float]:
    """Fault-free final latency (last byte of the result sent -> result received) before ``until``."""
    out = []
    for t, m in st.trace.finals():
        if t >= until or not m["channel"]["alternatives"][0]["words"]:
            continue
        sent = st.trace.sent_time(round((m["start"] + m["duration"]) * SR) * 2)
        if sent is not None:
            out.append(t - sent)
    return out


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of a process so far (``/proc``; this process when ``pid`` is None)."""
    with open(f"/proc/{pid or 'self'}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def many_sessions_rep(
    n: int, outage_s: float, tree: Path, env: dict[str, str], lead_s: float = 4.0, tail_s: float = 8.0
) -> dict:
    """``n`` real-time sessions; ``lead_s`` after the last one started, the engine (the only
    upstream) is killed - every connection drops, every connect is refused - and ``outage_s``
    later started again; "back" is the moment it accepts connections."""
    eng = EngineProcess()
    await eng.start()
    gw = GatewayProcess(tree, eng.url, env)
    try:
        await gw.ready()
        loop = asyncio.get_running_loop()
        stagger = 1.0
        seconds = stagger + lead_s + outage_s + tail_s
        t0 = loop.time() + 0.5
        audios = [marker_audio(seconds, 1000 + 100 * i) for i in range(n)]
        tasks = [
            asyncio.create_task(realtime_session(gw.port, a, w, t0 + stagger * i / n))
            for i, (a, w) in enumerate(audios)
        ]
        await asyncio.sleep(max(0.0, t0 + stagger + lead_s - loop.time()))
        t_down = loop.time()
        eng.kill()
        await asyncio.sleep(max(0.0, t_down + outage_s - loop.time()))
        back = await eng.start()
        assert eng.proc is not None
        cpu0 = (cpu_seconds(), cpu_seconds(gw.proc.pid), cpu_seconds(eng.proc.pid), time.monotonic())
        await asyncio.sleep(3.0)  # the catch-up: CPU of the harness, the gateway and the engine over it
        cpu1 = (cpu_seconds(), cpu_seconds(gw.proc.pid), cpu_seconds(eng.proc.pid), time.monotonic())
        sessions = await asyncio.gather(*tasks)
        await asyncio.sleep(1.0)  # the last session's accounting
        reconnects = await asyncio.to_thread(gw.metric, "streamproxy_upstream_reconnects_total")
        active = await asyncio.to_thread(gw.metric, "streamproxy_sessions_active")
    finally:
        gw.stop()
        eng.kill()
    next_result, caught_up, base = [], [], []
    sent = lost = dup = failed = 0
    for st in sessions:
        base += final_latencies(st, t_down)
        after = [t for t, m in st.trace.recv if m.get("type") == "Results" and t >= back]
        if after:
            next_result.append(after[0] - back)
        sent_then = max((pos for t, pos in st.trace.sent if t <= back), default=0)
        need = [w for w, e in st.words if 2 * e <= sent_then]
        got = st.trace.word_delivered_at()
        if need and all(w in got for w in need):
            caught_up.append(max(0.0, max(got[w] for w in need) - back))
        s, lo, du = word_accounting(st)
        sent, lost, dup = sent + s, lost + lo, dup + du
        failed += st.trace.close_code != 1000
    b = statistics.median(base) if base else None
    return {
        "sessions": n,
        "outage_s": outage_s,
        "baseline_final_latency_ms": {"p50": ms(base, 0.5), "p95": ms(base, 0.95)},
        "next_result_after_return_ms": {"p50": ms(next_result, 0.5), "p95": ms(next_result, 0.95),
                                        "max": ms(next_result, 1.0), "n": len(next_result)},
        "caught_up_after_return_ms": {"p50": ms(caught_up, 0.5), "p95": ms(caught_up, 0.95),
                                      "max": ms(caught_up, 1.0), "n": len(caught_up)},
        "x_baseline_p95_next_result": round(pct(next_result, 0.95) / b, 1) if b and next_result else None,
        "words_sent": sent,
        "words_lost": lost,
        "words_duplicated": dup,
        "sessions_not_closed_1000": failed,
        "sessions_never_caught_up": n - len(caught_up),
        "upstream_reconnects": reconnects,
        "sessions_active_after": active,
        "cpu_first_3s_after_return": {
            "harness_cores": round((cpu1[0] - cpu0[0]) / (cpu1[3] - cpu0[3]), 2),
            "gateway_cores": round((cpu1[1] - cpu0[1]) / (cpu1[3] - cpu0[3]), 2),
            "engine_cores": round((cpu1[2] - cpu0[2]) / (cpu1[3] - cpu0[3]), 2),
        },
        "gateway_env": env,
        "client_errors": sorted({st.error[:120] for st in sessions if st.error})[:5],
    }  # fmt: skip


def ms(xs: list[float], q: float) -> float | None:
    return round(pct(xs, q) * 1000, 1) if xs else None


def run_many(args: argparse.Namespace) -> dict[str, Any]:
    tree = gateway_tree(args.gateway_tree)
    reps = []
    for n in [int(x) for x in args.sessions.split(",")]:
        t = time.monotonic()
        env = dict(kv.split("=", 1) for kv in args.gateway_env)
        reps.append(asyncio.run(many_sessions_rep(n, args.outage, tree, env)))
        print(f"  {n} sessions done in {time.monotonic() - t:.0f} s", file=sys.stderr)
    return {
        "label": args.label,
        "gateway_tree": str(tree),
        "gateway_commit": tree_commit(tree),
        "rows": reps,
        "config": "gateway defaults of that commit (env: one upstream, log level warning)",
        "audio": "marker, 100 ms frames in real time, a 100 ms word every 300 ms, endpointing=150, interim results",
    }


def print_many(res: dict[str, Any]) -> None:
    print(f"gateway: {res['gateway_tree']} @ {res['gateway_commit']} ({res['label'] or 'unlabelled'})")
    head = f"{'sessions':>8} {'next result p50/p95/max ms':>28} {'caught up p50/p95/max ms':>26} "
    print(head + f"{'x base':>7} {'words lost':>11} {'dup':>4} {'not 1000':>9} {'reconnects':>11}")
    for r in res["rows"]:
        nr, cu = r["next_result_after_return_ms"], r["caught_up_after_return_ms"]
        a = f"{nr['p50']}/{nr['p95']}/{nr['max']}"
        c = f"{cu['p50']}/{cu['p95']}/{cu['max']}"
        lost = f"{r['words_lost']}/{r['words_sent']}"
        print(
            f"{r['sessions']:>8} {a:>28} {c:>26} {r['x_baseline_p95_next_result']!s:>7} {lost:>11} "
            f"{r['words_duplicated']:>4} {r['sessions_not_closed_1000']:>9} {r['upstream_reconnects']:>11.0f}"
        )
        print(f"{'':>8} baseline (fault-free final latency) p50/p95 ms: {r['baseline_final_latency_ms']}")
        print(f"{'':>8} CPU over the first 3 s after the return (cores): {r['cpu_first_3s_after_return']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10, help="repetitions per scenario (run concurrently)")
    p.add_argument("--outage", type=float, default=10.0, help="outage length for the catch-up scenario, s")
    p.add_argument("--sessions", help="comma-separated session counts: the many-sessions outage mode")
    p.add_argument("--gateway-tree", help="checkout whose gateway runs (default: $PYTHONPATH, else this one)")
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway, e.g. STREAMPROXY_RECONNECT_MAX_CONNECTS_PER_S=200",
    )
    p.add_argument("--label", default="", help="names the run in the output (e.g. before, after)")
    p.add_argument(
        "--out", help="JSON output (default: benchmarks/results/recovery.json, or recovery-outage-LABEL.json)"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The engine logs a traceback each time the relay cuts a socket it is writing to: expected here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    command = "python benchmarks/recovery.py " + " ".join(sys.argv[1:])
    print(f"$ {command.strip()}")
    t0 = time.monotonic()
    if args.sessions:
        res = run_many(args)
        res["command"] = command.strip()
        res["wall_s"] = round(time.monotonic() - t0, 1)
        print_many(res)
        out = Path(args.out or ROOT / "benchmarks" / "results" / f"recovery-outage-{args.label or 'run'}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
        return
    args.out = args.out or str(ROOT / "benchmarks" / "results" / "recovery.json")
    res = asyncio.run(run(args))
    res["command"] = command.strip()
    res["wall_s"] = round(time.monotonic() - t0, 1)
    print(f"{'scenario':<52}{'n':>4}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}{'x base':>8}  exact words")
    nan = float("nan")
    for r in res["rows"]:
        print(
            f"{r['scenario']:<52}{r['n']:>4}{r.get('median_ms', nan):>11.1f}{r.get('p95_ms', nan):>9.1f}"
            f"{r.get('max_ms', nan):>9.1f}{r.get('x_baseline', ''):>8}  {r['exact']}"
        )
    print(f"total {res['wall_s']} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
