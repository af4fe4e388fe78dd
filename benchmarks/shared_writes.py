"""Gateway CPU per stored checkpoint (the shared session state's write per final), in isolation.

N sessions each store a checkpoint every second and await it, as a gated final does; the same loop
without the write is the baseline, measured in the same run (interleaved rounds), so the figure is
the write's own cost: serialising, sending, reading the reply, waking the session.

    python3 benchmarks/shared_writes.py --redis redis://127.0.0.1:6379 --sessions 400 --seconds 8
    python3 benchmarks/shared_writes.py --before /path/to/older/checkout   # A/B against older code

``--before`` runs the same harness with the older checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


async def _session(shared: Any, sid: str, stop: float, counter: list[int], write: bool, gate_s: float) -> None:
    from streamproxy.session.checkpoint import Checkpoint

    seq = 0
    await asyncio.sleep(random.random())
    while time.monotonic() < stop:
        seq += 1
        if write:
            text = '{"type":"Results","channel":{"alternatives":[{"transcript":"hello world"}]}}'
            fut = shared.save(sid, Checkpoint(seq, (seq - 1) * 32000, seq * 32000, {0: seq * 16000}, seq - 1, text))
            if fut is not None and not fut.done():
                try:
                    async with asyncio.timeout(gate_s):
                        await fut
                except TimeoutError:
                    pass
        counter[0] += 1
        await asyncio.sleep(1.0)


async def _round(url: str, sessions: int, seconds: float, write: bool) -> tuple[float, int]:
    from redis.asyncio import Redis

    from streamproxy.gateway.shared import GATE_S, SharedSessions

    shared = SharedSessions(
        Redis.from_url(url), prefix="{bench" + os.urandom(4).hex() + "}", resume_grace_s=30, release_timeout_s=1
    )
    shared.start()
    for i in range(sessions):
        shared.opened(f"s{i}", owner="bench", protocol="v1", query="")
    await asyncio.sleep(0.5)
    counter = [0]
    stop = time.monotonic() + seconds
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(_session(shared, f"s{i}", stop, counter, write, GATE_S) for i in range(sessions)))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(sessions):
        shared.ended(f"s{i}")
    await asyncio.sleep(0.3)
    await shared.close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return cpu, counter[0]


async def _measure(args: argparse.Namespace) -> dict[str, float]:
    base: list[float] = []
    wrote: list[float] = []
    for _ in range(args.rounds):
        cpu, n = await _round(args.redis, args.sessions, args.seconds, False)
        base.append(cpu / n)
        cpu, n = await _round(args.redis, args.sessions, args.seconds, True)
        wrote.append(cpu / n)
    b, w = statistics.median(base), statistics.median(wrote)
    return {"loop_us": 1e6 * b, "with_write_us": 1e6 * w, "per_write_us": 1e6 * (w - b)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", default="redis://127.0.0.1:6379")
    p.add_argument("--sessions", type=int, default=400)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--before", type=Path, default=None, help="an older checkout to measure first")
    p.add_argument("--json", action="store_true", help="print only this checkout's figures as JSON")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import uvloop

    if args.json:
        print(json.dumps(uvloop.run(_measure(args))))
        return
    rows: dict[str, Any] = {}
    here = Path(__file__).resolve().parents[1]
    trees = ([("before", args.before.resolve())] if args.before else []) + [("after", here)]
    for label, tree in trees:
        cmd = [sys.executable, __file__, "--json", "--redis", args.redis, "--sessions", str(args.sessions)]
        cmd += ["--seconds", str(args.seconds), "--rounds", str(args.rounds)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{label:>7}: {rows[label]['per_write_us']:.1f} us per write", flush=True)
    if "before" in rows:
        rows["ratio"] = rows["after"]["per_write_us"] / rows["before"]["per_write_us"]
        print(f"after / before: {rows['ratio']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
