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

    python benchmarks/recovery.py [--reps 10] [--outage 10]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import statistics
import sys
import time
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10, help="repetitions per scenario (run concurrently)")
    p.add_argument("--outage", type=float, default=10.0, help="outage length for the catch-up scenario, s")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recovery.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The engine logs a traceback each time the relay cuts a socket it is writing to: expected here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    command = "python benchmarks/recovery.py " + " ".join(sys.argv[1:])
    print(f"$ {command.strip()}")
    t0 = time.monotonic()
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
