"""Jobs per second through the queue (gateway -> Redis/BullMQ -> worker processes -> engine),
against the same files transcribed synchronously in the same run.

Everything is real and on loopback: a private redis-server (append-only, fsync every second, as
the embedded one), the marker engine as its own process, the gateway in this process, and
``streamproxy worker`` subprocesses. The marker engine costs almost nothing, so the figures are
the overhead of the path itself (upload, Redis round trips, BullMQ scripts, polling).

Rows:
- ``direct``: POST /v1/listen straight to the engine (no gateway);
- ``sync``: POST /v1/listen through the gateway (audio under sync_max_seconds: no queue);
- ``queued``: POST /v1/transcribe?mode=async, then GET /v1/jobs/{id} until every job completed.

    python3 benchmarks/jobs.py --jobs 100 --workers 2 --concurrency 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproxy.config import load_config
from streamproxy.engine.supervisor import free_port
from streamproxy.serve import start
from tests.helpers.jobs import RedisServer, marker_wav, queue_sections, start_worker, write_config

RESULTS = Path(__file__).resolve().parent / "results"


async def _engine(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamproxy", "engine", "--kind", "marker", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return proc
        await asyncio.sleep(0.05)
    raise RuntimeError("engine did not start")


async def _bounded(n: int, limit: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def _sync_run(http: aiohttp.ClientSession, url: str, files: list[bytes], conc: int) -> dict[str, Any]:
    lat: list[float] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        async with http.post(url, data=files[i % len(files)]) as r:
            assert r.status == 200, await r.text()
            await r.read()
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await _bounded(len(files), conc, one)
    wall = time.perf_counter() - t0
    return {"jobs": len(files), "wall_s": wall, "jobs_per_s": len(files) / wall, "latency": _pct(lat)}


async def _queued_run(http: aiohttp.ClientSession, base: str, files: list[bytes], conc: int) -> dict[str, Any]:
    ids: list[str] = []

    async def submit(i: int) -> None:
        async with http.post(f"{base}/v1/transcribe?mode=async", data=files[i]) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["job_id"])

    t0 = time.perf_counter()
    await _bounded(len(files), conc, submit)
    submitted = time.perf_counter() - t0
    pending = set(ids)
    lat: list[float] = []
    while pending:
        for j in list(pending):
            async with http.get(f"{base}/v1/jobs/{j}") as r:
                st = await r.json()
            if st["state"] == "completed":
                pending.discard(j)
                lat.append(st["finished_at"] - st["created_at"])
            elif st["state"] == "failed":
                raise RuntimeError(f"job {j} failed: {st.get('error')}")
        if pending:
            await asyncio.sleep(0.05)
    wall = time.perf_counter() - t0
    return {
        "jobs": len(files),
        "wall_s": wall,
        "submit_s": submitted,
        "jobs_per_s": len(files) / wall,
        "latency": _pct(lat),
    }


def _pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {}
    return {
        "p50_ms": 1000 * statistics.median(xs),
        "p95_ms": 1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))],
        "max_ms": 1000 * xs[-1],
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tail = max(0, int(args.seconds * 1000) - 1400)
    files = [marker_wav([1 + i % 200, 2 + i % 200], sr=16000, tail_ms=tail) for i in range(args.jobs)]
    tmp = Path(tempfile.mkdtemp(prefix="spjobs-"))
    redis = RedisServer(tmp / "redis")
    await redis.start()
    # everysec like the embedded Redis (RedisServer's default is fsync always, for the crash tests).
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis.url)
    await client.config_set("appendfsync", "everysec")
    await client.aclose()
    eport = free_port()
    engine = await _engine(eport)
    prefix = "{spbench}"
    workers = []
    running = None
    try:
        cfg = load_config(
            None,
            env={},
            overrides={
                "server.port": 0,
                "upstream.engine.url": f"ws://127.0.0.1:{eport}",
                "queue.redis_url": redis.url,
                "queue.prefix": prefix,
                "queue.serve_worker": False,
                "log.level": "warning",
            },
        )
        running = await start(cfg)
        wcfg = write_config(
            tmp / "w.toml", queue_sections(redis.url, prefix, f"ws://127.0.0.1:{eport}", concurrency=args.concurrency)
        )
        workers = [await start_worker(wcfg) for _ in range(args.workers)]
        base = f"http://127.0.0.1:{running.port}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
            await _sync_run(http, f"{base}/v1/listen", files[:5], 5)  # warm-up
            direct = await _sync_run(http, f"http://127.0.0.1:{eport}/v1/listen", files, args.concurrency)
            sync = await _sync_run(http, f"{base}/v1/listen", files, args.concurrency)
            queued = await _queued_run(http, base, files, args.concurrency)
    finally:
        for w in workers:
            await w.stop()
        if running is not None:
            await running.stop()
        engine.terminate()
        await engine.wait()
        redis.stop()
    audio_s = args.seconds
    out = {
        "benchmark": "jobs",
        "params": {**vars(args), "audio_s_per_file": audio_s, "cpus": os.cpu_count()},
        "rows": {"direct": direct, "sync": sync, "queued": queued},
        "ratio_queued_vs_sync": queued["jobs_per_s"] / sync["jobs_per_s"],
        "ratio_sync_vs_direct": sync["jobs_per_s"] / direct["jobs_per_s"],
    }
    print(f"\n{args.jobs} files of {audio_s:g} s marker audio, client concurrency {args.concurrency}, "
          f"{args.workers} worker process(es) x concurrency {args.concurrency}\n")  # fmt: skip
    print(f"{'path':<8} {'jobs/s':>8} {'vs sync':>8} {'p50 ms':>8} {'p95 ms':>8} {'wall s':>7}")
    for name, row in out["rows"].items():
        lat = row["latency"]
        print(
            f"{name:<8} {row['jobs_per_s']:8.1f} {row['jobs_per_s'] / sync['jobs_per_s']:8.2f} "
            f"{lat.get('p50_ms', 0):8.1f} {lat.get('p95_ms', 0):8.1f} {row['wall_s']:7.2f}"
        )
    print("\nqueued latency = job created -> finished, as recorded by BullMQ (excludes polling).")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "jobs.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'jobs.json'}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=60, help="files per row")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--concurrency", type=int, default=10, help="client and per-worker concurrency")
    p.add_argument("--seconds", type=float, default=3.0, help="audio per file (>= 1.4)")
    asyncio.run(main(p.parse_args()))
