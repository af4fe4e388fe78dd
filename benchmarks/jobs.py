"""Jobs per second through the queue (gateway -> Redis/BullMQ -> worker processes -> engine),
against the same files transcribed synchronously in the same run.

Everything is real and on loopback: a private redis-server (append-only, fsync every second, as
the embedded one), the marker engine as its own process, the gateway in this process, and
``streamproxy worker`` subprocesses. The marker engine costs almost nothing, so the figures are
the overhead of the path itself (upload, Redis round trips, BullMQ scripts, polling).

Rows:
- ``direct``: POST /v1/listen straight to the engine (no gateway);
- ``sync``: POST /v1/listen through the gateway (audio under sync_max_seconds: no queue);
- ``queued``: POST /v1/transcribe?mode=async, then GET /v1/jobs/{id} until every job completed;
- ``latency``: one short file at a time through the queue (no backlog): BullMQ's created ->
  finished, and what the client sees (submit -> GET says completed, polling every 2 ms).

The gateway runs on uvloop, as ``streamproxy serve`` does (``--loop asyncio``: asyncio's own loop).
Each row also gives the CPU it cost per job (utime+stime of this process, i.e. client and gateway,
of the engine, worker(s) and Redis) and how busy the whole machine was meanwhile: on a shared
machine that CPU figure is the steadier one.

    python3 benchmarks/jobs.py --jobs 100 --workers 2 --concurrency 10
    python3 benchmarks/jobs.py --jobs 600 --workers 0   # the gateway's in-process worker, as `serve` defaults
    python3 benchmarks/jobs.py --code /path/to/old/checkout --out /tmp/old.json   # same harness, older code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil


def _code_dir(argv: list[str]) -> Path:
    """``--code DIR``: import streamproxy and the test helpers from DIR (an A/B of an older revision
    under this harness); its subprocesses (engine, workers) import from there too."""
    for i, a in enumerate(argv):
        if a == "--code" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--code="):
            return Path(a.split("=", 1)[1]).resolve()
    return Path(__file__).resolve().parents[1]


CODE = _code_dir(sys.argv)
sys.path.insert(0, str(CODE))
os.environ["PYTHONPATH"] = os.pathsep.join([str(CODE), *filter(None, [os.environ.get("PYTHONPATH")])])

from streamproxy.config import load_config  # noqa: E402
from streamproxy.engine.supervisor import free_port  # noqa: E402
from streamproxy.loop import run  # noqa: E402
from streamproxy.serve import start  # noqa: E402
from tests.helpers.jobs import RedisServer, marker_wav, queue_sections, start_worker, write_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class Cpu:
    """CPU seconds of the processes on the job path, and the machine's busy share, over a row."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs

    def _sample(self) -> tuple[dict[str, float], float, float]:
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return {k: sum(p.cpu_times()[:2]) for k, p in self.procs.items()}, busy, time.perf_counter()

    def start(self) -> None:
        self._t0 = self._sample()

    def stop(self, jobs: int) -> dict[str, Any]:
        (p0, b0, w0), (p1, b1, w1) = self._t0, self._sample()
        wall = w1 - w0
        per = {k: round(1e6 * (p1[k] - p0[k]) / jobs) for k in p0}
        ours = sum(p1[k] - p0[k] for k in p0)
        return {
            "cpu_us_per_job": {**per, "total": round(1e6 * ours / jobs)},
            "ours_cores": round(ours / wall, 2),
            "machine_busy_cores": round((b1 - b0) / wall, 2),
        }


async def _commandstats(url: str, reset: bool) -> dict[str, dict[str, float]]:
    """Redis's per-command counters (``INFO commandstats``); ``reset`` zeroes them first."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        if reset:
            await client.config_resetstat()
            return {}
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]} for k, v in info.items()}


def _per_job(stats: dict[str, dict[str, float]], jobs: int) -> dict[str, Any]:
    """Commands per job and Redis CPU (usec) per job, by command, biggest first (INFO itself left out)."""
    rows = {k: v for k, v in stats.items() if k not in ("info", "config|resetstat")}
    by = sorted(rows.items(), key=lambda kv: -kv[1]["usec"])
    return {
        "calls_per_job": round(sum(v["calls"] for v in rows.values()) / jobs, 2),
        "usec_per_job": round(sum(v["usec"] for v in rows.values()) / jobs, 1),
        "by_command": {k: {"calls": round(v["calls"] / jobs, 2), "usec": round(v["usec"] / jobs, 1)} for k, v in by},
    }


class PySpy:
    """``py-spy record`` (collapsed stacks) of the given processes while a row runs (``--pyspy DIR``)."""

    def __init__(self, out: Path | None, procs: dict[str, int]) -> None:
        self.out, self.procs, self.running = out, procs, []

    def start(self, row: str) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name, pid in self.procs.items():
            dest = self.out / f"{row}-{name}.txt"
            cmd = ["py-spy", "record", "-r", "1000", "-f", "raw", "-o", str(dest), "-p", str(pid)]
            self.running.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> None:
        for p in self.running:
            p.send_signal(signal.SIGINT)
        for p in self.running:
            p.wait(30)
        self.running = []


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
    gets = 0
    while pending:
        for j in list(pending):
            gets += 1
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
        "gets_per_job": gets / len(files),
        "jobs_per_s": len(files) / wall,
        "latency": _pct(lat),
    }


async def _latency_run(http: aiohttp.ClientSession, base: str, files: list[bytes]) -> dict[str, Any]:
    """One job at a time: the queue's own latency for a short file, without a backlog."""
    bull: list[float] = []
    seen: list[float] = []
    t0 = time.perf_counter()
    for body in files:
        t = time.perf_counter()
        async with http.post(f"{base}/v1/transcribe?mode=async", data=body) as r:
            assert r.status == 202, await r.text()
            job = (await r.json())["job_id"]
        while True:
            async with http.get(f"{base}/v1/jobs/{job}") as r:
                st = await r.json()
            if st["state"] == "completed":
                seen.append(time.perf_counter() - t)
                bull.append(st["finished_at"] - st["created_at"])
                break
            if st["state"] == "failed":
                raise RuntimeError(f"job {job} failed: {st.get('error')}")
            await asyncio.sleep(0.002)
    wall = time.perf_counter() - t0
    return {
        "jobs": len(files),
        "wall_s": wall,
        "jobs_per_s": len(files) / wall,
        "latency": _pct(bull),
        "client_latency": _pct(seen),
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
                "queue.serve_worker": args.workers == 0,  # 0: the in-process worker, as `serve` runs it by default
                "log.level": "warning",
            },
        )
        running = await start(cfg)
        wcfg = write_config(
            tmp / "w.toml",
            queue_sections(
                redis.url, prefix, f"ws://127.0.0.1:{eport}", concurrency=args.worker_concurrency or args.concurrency
            ),
        )
        workers = [await start_worker(wcfg) for _ in range(args.workers)]
        base = f"http://127.0.0.1:{running.port}"
        procs = {"client+gateway": psutil.Process(), "engine": psutil.Process(engine.pid)}
        assert redis.proc is not None
        procs["redis"] = psutil.Process(redis.proc.pid)
        for i, w in enumerate(workers):
            procs[f"worker{i}"] = psutil.Process(w.proc.pid)
        cpu = Cpu(procs)
        spy = PySpy(
            Path(args.pyspy) if args.pyspy else None,
            {"gateway": os.getpid(), **{f"worker{i}": w.proc.pid for i, w in enumerate(workers)}},
        )
        rows: dict[str, dict[str, Any]] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
            await _sync_run(http, f"{base}/v1/listen", files[:5], 5)  # warm-up
            await _queued_run(http, base, files[:5], 5)
            for name, row in (
                ("direct", lambda: _sync_run(http, f"http://127.0.0.1:{eport}/v1/listen", files, args.concurrency)),
                ("sync", lambda: _sync_run(http, f"{base}/v1/listen", files, args.concurrency)),
                ("queued", lambda: _queued_run(http, base, files, args.concurrency)),
                ("latency", lambda: _latency_run(http, base, files[: args.latency_jobs])),
            ):
                if name == "queued":
                    spy.start(name)
                await _commandstats(redis.url, reset=True)
                cpu.start()
                rows[name] = await row()
                rows[name].update(cpu.stop(rows[name]["jobs"]))
                rows[name]["redis"] = _per_job(await _commandstats(redis.url, reset=False), rows[name]["jobs"])
                spy.stop()
    finally:
        for w in workers:
            await w.stop()
        if running is not None:
            await running.stop()
        engine.terminate()
        await engine.wait()
        redis.stop()
    audio_s = args.seconds
    sync, queued = rows["sync"], rows["queued"]
    out = {
        "benchmark": "jobs",
        "code": str(CODE),
        "params": {**vars(args), "audio_s_per_file": audio_s, "cpus": os.cpu_count()},
        "rows": rows,
        "ratio_queued_vs_sync": queued["jobs_per_s"] / sync["jobs_per_s"],
        "ratio_sync_vs_direct": sync["jobs_per_s"] / rows["direct"]["jobs_per_s"],
        "ratio_cpu_queued_vs_sync": queued["cpu_us_per_job"]["total"] / sync["cpu_us_per_job"]["total"],
    }
    print(f"\n{args.jobs} files of {audio_s:g} s marker audio, client concurrency {args.concurrency}, "
          f"{args.workers} worker process(es) x concurrency {args.concurrency}; code: {CODE}\n")  # fmt: skip
    print(
        f"{'path':<8} {'jobs/s':>8} {'vs sync':>8} {'p50 ms':>8} {'p95 ms':>8} {'wall s':>7} "
        f"{'CPU us/job':>11} {'machine':>8}"
    )
    for name, row in rows.items():
        lat = row["latency"]
        print(
            f"{name:<8} {row['jobs_per_s']:8.1f} {row['jobs_per_s'] / sync['jobs_per_s']:8.2f} "
            f"{lat.get('p50_ms', 0):8.1f} {lat.get('p95_ms', 0):8.1f} {row['wall_s']:7.2f} "
            f"{row['cpu_us_per_job']['total']:11d} {row['machine_busy_cores']:7.2f}c"
        )
    rq = rows["queued"]["redis"]
    top = ", ".join(f"{k} {v['calls']:g}x {v['usec']:g}us" for k, v in list(rq["by_command"].items())[:8])
    print(f"\nRedis per queued job: {rq['calls_per_job']:g} commands, {rq['usec_per_job']:g} us ({top})")
    seen = rows["latency"]["client_latency"]
    print(
        "\nqueued/latency p50/p95 = job created -> finished, as recorded by BullMQ (excludes polling); "
        f"latency as the client saw it (submit -> GET completed): p50 {seen['p50_ms']:.1f} ms, "
        f"p95 {seen['p95_ms']:.1f} ms."
        "\nCPU us/job: all processes on the path; machine: busy cores of the whole machine (others' work included)."
    )
    dest = Path(args.out) if args.out else RESULTS / "jobs.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"wrote {dest}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=60, help="files per row")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0: the gateway's in-process worker)")
    p.add_argument("--concurrency", type=int, default=10, help="client and per-worker concurrency")
    p.add_argument("--worker-concurrency", type=int, default=0, help="per-worker concurrency (default: --concurrency)")
    p.add_argument("--seconds", type=float, default=3.0, help="audio per file (>= 1.4)")
    p.add_argument("--latency-jobs", type=int, default=50, help="files of the one-at-a-time latency row")
    p.add_argument("--code", help="checkout to import streamproxy from (default: this one)")
    p.add_argument("--out", help="result file (default: benchmarks/results/jobs.json)")
    p.add_argument("--pyspy", help="directory: py-spy the gateway and workers during the queued row")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="this process's event loop")
    a = p.parse_args()
    if a.loop == "asyncio":
        asyncio.run(main(a))
    else:
        run(main(a))
