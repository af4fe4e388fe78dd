"""A single Redis vs a 3-master Redis Cluster, same run, interleaved rounds.

Rows per target:
- ``jobs``: async jobs (POST /v1/transcribe?mode=async, then GET /v1/jobs/{id} until all are
  completed) through the in-process gateway and one ``streamproxy worker`` subprocess on the
  marker engine: jobs/s and BullMQ's created -> finished latency;
- ``admit``: per-key session admissions (``Limiter.open_session`` + ``close_session``: the Lua
  lease script, the rate script, ZREM) at a concurrency of 50: admissions/s.

Both Redis targets run without persistence (the cluster's nodes as the tests start them, the
single server with ``appendonly no``), so the difference is the cluster client (slot routing,
``redis_url`` naming a node that does not serve the prefix's slot) and nothing else.

    python3 benchmarks/redis_cluster.py --jobs 200 --rounds 3
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
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamproxy.config import Config, load_config
from streamproxy.gateway.limits import Limiter
from streamproxy.serve import start
from tests.helpers.gateway import engine
from tests.helpers.jobs import RedisServer, marker_wav, queue_sections, start_worker, write_config
from tests.helpers.redis_cluster import RedisCluster

RESULTS = Path(__file__).resolve().parent / "results"


def _cfg(target: dict[str, Any], prefix: str, eport: int, **extra: Any) -> Config:
    o = {"server.port": 0, "upstream.engine.url": f"ws://127.0.0.1:{eport}", "log.level": "warning", **extra}
    o.update({"queue.prefix": prefix, "queue.serve_worker": False, **target})
    return load_config(None, env={}, overrides=o)


async def _jobs(
    target: dict[str, Any], prefix: str, eport: int, files: list[bytes], conc: int, tmp: Path
) -> dict[str, Any]:
    running = await start(_cfg(target, prefix, eport))
    sections = queue_sections(
        target["queue.redis_url"],
        prefix,
        f"ws://127.0.0.1:{eport}",
        concurrency=conc,
        redis_cluster=target["queue.redis_cluster"],
    )
    worker = await start_worker(write_config(tmp / f"w-{prefix[1:-1]}.toml", sections))
    base = f"http://127.0.0.1:{running.port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
            sem = asyncio.Semaphore(conc)
            ids: list[str] = []

            async def submit(body: bytes) -> None:
                async with sem, http.post(f"{base}/v1/transcribe?mode=async", data=body) as r:
                    assert r.status == 202, await r.text()
                    ids.append((await r.json())["job_id"])

            t0 = time.perf_counter()
            await asyncio.gather(*(submit(f) for f in files))
            pending, lat = set(ids), []
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
    finally:
        await worker.stop()
        await running.stop()
    return {"jobs_per_s": len(files) / wall, "p50_ms": 1000 * statistics.median(lat), "wall_s": wall}


async def _admit(target: dict[str, Any], prefix: str, n: int, conc: int) -> dict[str, Any]:
    cfg = _cfg(target, prefix, 1, **{"limits.max_sessions_per_key": 1000})
    lim = Limiter(cfg)
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            sid = f"s{i}"
            assert await lim.open_session(f"key{i % 20}", sid) is None
            await lim.close_session(f"key{i % 20}", sid)

    try:
        await asyncio.gather(*(one(i) for i in range(50)))  # warm-up: connections, script load
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    finally:
        await lim.aclose()
    return {"admits_per_s": n / wall, "wall_s": wall}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="spcluster-"))
    single = RedisServer(tmp / "single")
    await single.start()
    import redis.asyncio as aioredis

    c = aioredis.from_url(single.url)
    await c.config_set("appendonly", "no")
    await c.aclose()
    cluster = RedisCluster(tmp / "cluster")
    files = [marker_wav([1 + i % 200, 2 + i % 200], sr=16000) for i in range(args.jobs)]
    rows: dict[str, list[dict[str, Any]]] = {"single": [], "cluster": []}
    try:
        cluster.start()

        def target(name: str, prefix: str) -> dict[str, Any]:
            if name == "single":
                return {"queue.redis_url": single.url, "queue.redis_cluster": False}
            # A node that does not serve the prefix's slot: the client must follow the redirection.
            return {"queue.redis_url": cluster.url(cluster.not_owner_of(prefix)), "queue.redis_cluster": True}

        async with engine("marker") as eport:
            for rnd in range(args.rounds):
                order = ["single", "cluster"] if rnd % 2 == 0 else ["cluster", "single"]
                for name in order:
                    prefix = "{spb-" + uuid.uuid4().hex[:8] + "}"
                    jobs = await _jobs(target(name, prefix), prefix, eport, files, args.concurrency, tmp)
                    admit = await _admit(target(name, prefix), prefix, args.admits, 50)
                    rows[name].append({**jobs, **admit})
                    print(f"round {rnd} {name:<8} {jobs['jobs_per_s']:7.1f} jobs/s  p50 {jobs['p50_ms']:6.1f} ms  "
                          f"{admit['admits_per_s']:7.0f} admissions/s", flush=True)  # fmt: skip
    finally:
        cluster.stop()
        single.stop()

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    summary = {
        name: {k: med(name, k) for k in ("jobs_per_s", "p50_ms", "admits_per_s")} for name in ("single", "cluster")
    }
    out = {
        "benchmark": "redis_cluster",
        "params": {**vars(args), "cpus": os.cpu_count()},
        "rounds": rows,
        "median": summary,
        "ratio_cluster_vs_single": {
            "jobs_per_s": summary["cluster"]["jobs_per_s"] / summary["single"]["jobs_per_s"],
            "admits_per_s": summary["cluster"]["admits_per_s"] / summary["single"]["admits_per_s"],
        },
    }
    print(json.dumps(out["median"], indent=1), "\nratio cluster/single:", out["ratio_cluster_vs_single"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "redis_cluster.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'redis_cluster.json'}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200, help="async jobs per round and target")
    p.add_argument("--admits", type=int, default=2000, help="session admissions per round and target")
    p.add_argument("--concurrency", type=int, default=10, help="client and worker concurrency")
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(p.parse_args()))
