"""Soak: many real-time sessions for minutes with a fault every few seconds; gateway RSS and words lost.

The gateway runs as its own process (``streamproxy serve``, see ``recovery.GatewayProcess``) so the
RSS sampled is the gateway's alone; the marker engine, the fault relay and the clients share this
process. ``--sessions`` slots each run back-to-back sessions of 20-60 s of real-time marker audio
(so sessions also open and close all the time); every ``--fault-every`` seconds one fault, drawn at
random:

* ``cut``: the relay drops every live upstream connection (all sessions reconnect and replay);
* ``outage``: the same, and every handshake is refused (503) for 1-5 s;
* ``plan``: the next 20 upstream connections get a classic fault each (close with a retryable
  code, TCP reset, stall, refused handshake, delayed messages) at a random audio offset.

Reported, not asserted: RSS of the first minute vs the last minute (mean of the samples, and the
ratio), words sent/lost/duplicated over every session (a word whose audio was sent must arrive as a
final exactly once), sessions not closed with 1000, ``streamproxy_sessions_active`` after the end.

    python benchmarks/soak.py --sessions 200 --minutes 10 [--fault-every 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.recovery import (  # noqa: E402
    BPS,
    GatewayProcess,
    SessionTrace,
    cpu_seconds,
    gateway_tree,
    marker_audio,
    outage,
    realtime_session,
    tree_commit,
    word_accounting,
)
from streamproxy.engine.app import start_engine  # noqa: E402
from streamproxy.faults import Fault, FaultRelay  # noqa: E402


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``: psutil if installed, else ``/proc/<pid>/statm``."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fault_plan(rng: random.Random, n: int) -> list[Fault]:
    plan = []
    for _ in range(n):
        at = rng.randrange(0, 3 * BPS)
        kind = rng.choice(["close", "reset", "stall", "refuse", "delay"])
        if kind == "close":
            plan.append(Fault("close", at, code=rng.choice([1011, 1001, 1012, 1013, 1014])))
        elif kind in ("reset", "stall"):
            plan.append(Fault(kind, at))
        elif kind == "refuse":
            plan.append(Fault("refuse", status=rng.choice([429, 500, 502, 503])))
        else:
            plan.append(Fault("delay", delay_ms=rng.uniform(10, 250)))
    return plan


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tree = gateway_tree(args.gateway_tree)
    runner, eport = await start_engine("127.0.0.1", 0, "marker")
    relay = FaultRelay(f"ws://127.0.0.1:{eport}")
    await relay.start()
    gw = GatewayProcess(tree, relay.url)
    loop = asyncio.get_running_loop()
    done: list[SessionTrace] = []
    faults: Counter[str] = Counter()
    rss: list[tuple[float, int]] = []
    duration = args.minutes * 60.0
    try:
        await gw.ready()
        t_start = loop.time()
        stop_at = t_start + duration
        word_base = iter(range(10**9))

        async def slot(i: int) -> None:
            await asyncio.sleep(rng.random() * 2.0)  # spread the starts
            while loop.time() < stop_at:
                seconds = min(rng.uniform(20, 60), max(1.0, stop_at - loop.time()))
                audio, words = marker_audio(seconds, 1000 + (next(word_base) % 300) * 100)
                done.append(await realtime_session(gw.port, audio, words, loop.time()))

        async def faulter() -> None:
            while loop.time() < stop_at - args.fault_every:
                await asyncio.sleep(args.fault_every)
                kind = rng.choice(["cut", "outage", "plan"])
                faults[kind] += 1
                if kind == "cut":
                    await outage(relay, 0.0)
                elif kind == "outage":
                    await outage(relay, rng.uniform(1.0, 5.0))
                else:
                    relay.set_plan(fault_plan(rng, 20))

        async def sampler() -> None:
            while loop.time() < stop_at + 5:
                rss.append((loop.time() - t_start, rss_bytes(gw.proc.pid)))
                await asyncio.sleep(args.sample_every)

        sampling = asyncio.create_task(sampler())
        cpu0 = (cpu_seconds(), cpu_seconds(gw.proc.pid), time.monotonic())
        await asyncio.gather(faulter(), *(slot(i) for i in range(args.sessions)))
        cpu1 = (cpu_seconds(), cpu_seconds(gw.proc.pid), time.monotonic())
        await sampling
        await asyncio.sleep(1.0)
        active = await asyncio.to_thread(gw.metric, "streamproxy_sessions_active")
        reconnects = await asyncio.to_thread(gw.metric, "streamproxy_upstream_reconnects_total")
    finally:
        gw.stop()
        await relay.stop()
        await runner.cleanup()
    sent = lost = dup = 0
    for st in done:
        s, lo, du = word_accounting(st)
        sent, lost, dup = sent + s, lost + lo, dup + du
    first = [r for t, r in rss if t < 60.0]
    last = [r for t, r in rss if t >= duration - 60.0]
    mib = 1024 * 1024
    return {
        "gateway_tree": str(tree),
        "gateway_commit": tree_commit(tree),
        "sessions_concurrent": args.sessions,
        "minutes": args.minutes,
        "fault_every_s": args.fault_every,
        "faults": dict(faults),
        "relay_faults_fired": dict(Counter(e.detail.get("kind") for e in relay.fired())),
        "sessions_run": len(done),
        "sessions_not_closed_1000": sum(1 for st in done if st.trace.close_code != 1000),
        "words_sent": sent,
        "words_lost": lost,
        "words_duplicated": dup,
        "upstream_reconnects": reconnects,
        "sessions_active_after": active,
        "rss_first_minute_mib": round(statistics.mean(first) / mib, 1) if first else None,
        "rss_last_minute_mib": round(statistics.mean(last) / mib, 1) if last else None,
        "rss_last_over_first": round(statistics.mean(last) / statistics.mean(first), 3) if first and last else None,
        "rss_max_mib": round(max(r for _, r in rss) / mib, 1) if rss else None,
        "cpu_cores_mean": {
            "harness (clients, relay, engine)": round((cpu1[0] - cpu0[0]) / (cpu1[2] - cpu0[2]), 2),
            "gateway": round((cpu1[1] - cpu0[1]) / (cpu1[2] - cpu0[2]), 2),
        },
        "rss_samples": [(round(t, 1), round(r / mib, 1)) for t, r in rss],
        "client_errors": sorted({st.error[:120] for st in done if st.error})[:5],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=200, help="concurrent real-time sessions")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fault-every", type=float, default=4.0, help="seconds between faults")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gateway-tree", help="checkout whose gateway runs (default: $PYTHONPATH, else this one)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # the relay's cut sockets
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
    print(f"$ {command.strip()}")
    t0 = time.monotonic()
    res = asyncio.run(soak(args))
    res["command"] = command.strip()
    res["wall_s"] = round(time.monotonic() - t0, 1)
    for k, v in res.items():
        if k != "rss_samples":
            print(f"{k:>26}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
