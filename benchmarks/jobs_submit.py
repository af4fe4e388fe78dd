"""CPU of ``JobQueue.submit`` alone (the producer side of a queued job: audio + BullMQ add), this
checkout vs an older one (``--before``), interleaved in one run on one private redis-server.

Each side runs in its own subprocess (importing streamproxy from its checkout), submits ``--jobs``
files of ``--seconds`` s of 16 kHz marker audio at concurrency ``--concurrency``, and reports its
own CPU and Redis's per submit; rounds alternate A B, B A, ... Medians per side.

    git worktree add /tmp/jobs-before 5afd19f
    python3 benchmarks/jobs_submit.py --before /tmp/jobs-before --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


async def _side(url: str, prefix: str, jobs: int, conc: int, seconds: float) -> dict[str, float]:
    import psutil
    import redis.asyncio as aioredis

    from streamproxy.config import load_config
    from streamproxy.jobs.queue import JobQueue
    from tests.helpers.jobs import marker_wav

    cfg = load_config(None, env={}, overrides={"queue.redis_url": url, "queue.prefix": prefix})
    jq = JobQueue(url, cfg.queue)
    files = [marker_wav([1 + i % 200], sr=16000, tail_ms=max(0, int(seconds * 1000) - 900)) for i in range(jobs)]
    admin = aioredis.from_url(url)
    redis_pid = int((await admin.info("server"))["process_id"])
    rproc, me = psutil.Process(redis_pid), psutil.Process()
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            await jq.submit(params={}, mode="async", audio=files[i])

    await asyncio.gather(*(one(i) for i in range(min(20, jobs))))  # warm-up (scripts loaded)
    c0, r0, t0 = sum(me.cpu_times()[:2]), sum(rproc.cpu_times()[:2]), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    c1, r1, t1 = sum(me.cpu_times()[:2]), sum(rproc.cpu_times()[:2]), time.perf_counter()
    await admin.flushdb()  # a private server: the next side starts from an empty queue
    await admin.aclose()
    await jq.close()
    return {
        "submits_per_s": jobs / (t1 - t0),
        "producer_cpu_us_per_submit": 1e6 * (c1 - c0) / jobs,
        "redis_cpu_us_per_submit": 1e6 * (r1 - r0) / jobs,
        "audio_bytes": len(files[0]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="checkout of the baseline revision")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", default=str(HERE / "results" / "jobs-submit.json"))
    p.add_argument("--side", help=argparse.SUPPRESS)  # internal: url,prefix of one side's run
    args = p.parse_args()
    if args.side:
        url, prefix = args.side.split(",", 1)
        print(json.dumps(asyncio.run(_side(url, prefix, args.jobs, args.concurrency, args.seconds))))
        return
    sys.path.insert(0, str(REPO))
    from tests.helpers.jobs import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="spsubmit-"))
    redis = RedisServer(tmp / "redis")
    asyncio.run(redis.start())
    subprocess.run(["redis-cli", "-p", str(redis.port), "config", "set", "appendfsync", "everysec"], check=False,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    sides = {"before": Path(args.before).resolve(), "after": REPO}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    try:
        for rnd in range(args.rounds):
            for side in ["before", "after"] if rnd % 2 == 0 else ["after", "before"]:
                cmd = [sys.executable, __file__, "--before", args.before, "--jobs", str(args.jobs),
                       "--concurrency", str(args.concurrency), "--seconds", str(args.seconds),
                       "--side", f"{redis.url},{{spsubmit}}"]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": str(sides[side])}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=sides[side])
                s = json.loads(out.stdout.strip().splitlines()[-1])
                runs[side].append(s)
                print(
                    f"round {rnd + 1} {side:<6} {s['submits_per_s']:7.0f} submits/s, producer "
                    f"{s['producer_cpu_us_per_submit']:6.1f} us, redis "
                    f"{s['redis_cpu_us_per_submit']:5.1f} us per submit",
                    flush=True,
                )
    finally:
        redis.stop()
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    print(f"\n{'median of ' + str(args.rounds) + ' rounds':<28} {'before':>9} {'after':>9} {'after/before':>13}")
    for k in med["after"]:
        b, a = med["before"][k], med["after"][k]
        print(f"{k:<28} {b:9.1f} {a:9.1f} {a / b if b else float('nan'):13.2f}")
    doc = {
        "benchmark": "jobs-submit",
        "before": str(sides["before"]),
        "params": vars(args),
        "runs": runs,
        "median": med,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
