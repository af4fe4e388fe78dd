"""Redis CPU per stored or read job audio (a file's bytes, ``--kb`` KB): plain commands vs the same
command inside a Lua script, with and without the append-only file.

Why: a queued job's audio is SET by the gateway and read by the worker; each alternative (a Lua
script doing the SET and BullMQ's add together, the worker's start reading the audio in a script)
moves those bytes through Lua instead. A private redis-server per persistence mode: ``off``
(``appendonly no``), ``everysec`` (as the embedded Redis and ``benchmarks/jobs.py``) and ``nofsync``
(``appendonly yes``, ``appendfsync no``: the AOF's write() without its fsync). Client concurrency
10; CPU is the server process's utime+stime over ``--calls`` calls (and this client's, per call).
Each case runs on a fresh server: Lua's garbage (every call leaves its copy of the value) would
otherwise be collected during the next case's calls.

    python3 benchmarks/redis_audio.py --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.jobs import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"off": ("no", "everysec"), "everysec": ("yes", "everysec"), "nofsync": ("yes", "no")}


async def _cpu_per_call(rp: psutil.Process, calls: int, fn: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    sem = asyncio.Semaphore(10)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    r0, c0 = sum(rp.cpu_times()[:2]), time.process_time()
    await asyncio.gather(*(one(i) for i in range(calls)))
    return 1e6 * (sum(rp.cpu_times()[:2]) - r0) / calls, 1e6 * (time.process_time() - c0) / calls


CASES = ("SET", "SET in Lua", "GET", "GET in Lua")


async def _case(mode: str, case: str, args: argparse.Namespace) -> tuple[float, float]:
    """(Redis, client) CPU us per call of ``case`` on a fresh server in persistence ``mode``."""
    appendonly, fsync = MODES[mode]
    rs = RedisServer(Path(tempfile.mkdtemp(prefix="spredis-")))
    await rs.start()
    assert rs.proc is not None
    c = aioredis.from_url(rs.url, socket_timeout=None)
    try:
        await c.config_set("appendfsync", fsync)
        await c.config_set("appendonly", appendonly)
        while int((await c.info("persistence")).get("aof_rewrite_in_progress", 0)):
            await asyncio.sleep(0.05)  # appendonly no -> yes rewrites the AOF first
        audio = os.urandom(args.kb * 1024)
        await c.set("audio", audio)
        lua_set = c.register_script("return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])")
        lua_get = c.register_script("return redis.call('GET', KEYS[1])")
        fns: dict[str, Callable[[int], Awaitable[Any]]] = {
            "SET": lambda i: c.set(f"a{i % 100}", audio, ex=3600),
            "SET in Lua": lambda i: lua_set(keys=[f"a{i % 100}"], args=[audio, 3600]),
            "GET": lambda i: c.get("audio"),
            "GET in Lua": lambda i: lua_get(keys=["audio"]),
        }
        return await _cpu_per_call(psutil.Process(rs.proc.pid), args.calls, fns[case])
    finally:
        await c.aclose()
        rs.stop()


async def main(args: argparse.Namespace) -> None:
    doc: dict[str, Any] = {"benchmark": "redis_audio", "params": vars(args), "modes": {}}
    print(f"{args.kb} KB per value, {args.calls} calls per case, medians of {args.rounds} rounds (us per call)\n")
    print(f"{'AOF':<9} {'case':<11} {'redis':>7} {'client':>7}")
    for mode in MODES:
        rows: dict[str, dict[str, list[float]]] = {}
        for case in CASES:
            runs = [await _case(mode, case, args) for _ in range(args.rounds)]
            rows[case] = {"redis_us": [round(r, 1) for r, _ in runs], "client_us": [round(c, 1) for _, c in runs]}
            r, cl = statistics.median(rows[case]["redis_us"]), statistics.median(rows[case]["client_us"])
            print(f"{mode:<9} {case:<11} {r:7.1f} {cl:7.1f}", flush=True)
        doc["modes"][mode] = rows
    dest = Path(args.out) if args.out else RESULTS / "redis-audio.json"
    dest.write_text(json.dumps(doc, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", type=int, default=94, help="value size (a 3 s 16 kHz WAV: 94 KB)")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="result file (default: benchmarks/results/redis-audio.json)")
    asyncio.run(main(p.parse_args()))
