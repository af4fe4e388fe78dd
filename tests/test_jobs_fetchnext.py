"""The worker's fetchNext (streamproxy.jobs.bullworker): completing a job fetches the next one in
the same script, as Node BullMQ does. Real Redis, real bullmq Queue and scripts: the fetched job is
locked by the worker before it runs, jobs run in order, failures and closing leave no job behind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from bullmq import Job, Queue, Worker

from streamproxy.jobs.bullworker import FetchNextWorker
from streamproxy.jobs.queue import bullmq_connection
from tests.helpers.jobs import redis_server, unique_prefix, wait_for

QUEUE = "fetchnext"


class Counting(FetchNextWorker):
    """Counts the separate fetches (``moveToActive``) the run loop still makes."""

    fetches = 0

    async def moveToActive(self, token: str) -> Any:
        self.fetches += 1
        return await super().moveToActive(token)


class StockCounting(Worker):
    fetches = 0

    async def moveToActive(self, token: str) -> Any:
        self.fetches += 1
        return await super().moveToActive(token)


async def _run(
    url: str, cls: type[Any], n: int, fail: frozenset[int] = frozenset()
) -> tuple[Any, list[str], dict[str, Any]]:
    prefix = unique_prefix()
    q = Queue(QUEUE, {"connection": bullmq_connection(url), "prefix": prefix})
    r = aioredis.from_url(url, decode_responses=True)
    ids = [(await q.add("t", {"i": i}, {"jobId": f"j{i}"})).id for i in range(n)]
    ran: list[str] = []
    locks: dict[str, Any] = {}

    async def process(job: Job, token: str) -> dict[str, int]:
        # The job is locked by this worker (its token) before its processor runs, fetched either way.
        locks[job.id] = (await r.get(f"{prefix}:{QUEUE}:{job.id}:lock")) == token
        ran.append(job.id)
        if job.data["i"] in fail:
            raise ValueError(f"job {job.data['i']} is bad")
        return {"i": job.data["i"]}

    w = cls(QUEUE, process, {"connection": bullmq_connection(url), "prefix": prefix, "concurrency": 1})
    errors: list[Any] = []
    w.on("error", lambda err, *a: errors.append(err))
    try:

        async def finished() -> bool:
            counts = await q.getJobCounts("completed", "failed")
            return sum(counts.values()) == n

        await wait_for(finished, 20, f"{n} jobs to finish")
        states = {j: await q.getJobState(j) for j in ids}
        values = {j: (await Job.fromId(q, j)).returnvalue for j in ids}
    finally:
        await w.close()
        active = await r.llen(f"{prefix}:{QUEUE}:active")
        await q.close()
        await r.aclose()
    return w, ran, {"ids": ids, "states": states, "values": values, "locks": locks, "active": active, "errors": errors}


async def test_completing_a_job_fetches_the_next_one_locked(tmp_path: Path) -> None:
    async with redis_server(tmp_path / "redis") as rs:
        w, ran, out = await _run(rs.url, Counting, 12)
        stock, stock_ran, _ = await _run(rs.url, StockCounting, 12)
    assert w.fetch_next  # the installed bullmq has what it relies on
    assert ran == out["ids"] == stock_ran  # in order, each once
    assert set(out["states"].values()) == {"completed"}
    assert [out["values"][j] for j in out["ids"]] == [{"i": i} for i in range(12)]
    assert all(out["locks"].values()), out["locks"]
    # One fetch to start (and one after the last job, on the drained queue) instead of one per job.
    assert w.fetches <= 3 < 12 <= stock.fetches, (w.fetches, stock.fetches)
    assert out["active"] == 0 and out["errors"] == []


async def test_a_failed_job_does_not_stop_the_next_ones(tmp_path: Path) -> None:
    """A processor error (the bad input tried: job 3 raises) fails that job; the rest complete."""
    async with redis_server(tmp_path / "redis") as rs:
        _, ran, out = await _run(rs.url, Counting, 8, fail=frozenset({3}))
    assert ran == out["ids"]
    assert out["states"] == {j: ("failed" if j == "j3" else "completed") for j in out["ids"]}
    assert out["active"] == 0 and out["errors"] == []


async def test_closing_on_a_busy_queue_leaves_no_job_active(tmp_path: Path) -> None:
    """A close while jobs keep coming: nothing is fetched for a worker that is closing, so no job is
    left locked in ``active`` (it would wait for the stalled check); the rest stay waiting."""
    async with redis_server(tmp_path / "redis") as rs:
        prefix = unique_prefix()
        q = Queue(QUEUE, {"connection": bullmq_connection(rs.url), "prefix": prefix})
        for i in range(200):
            await q.add("t", {"i": i}, {"jobId": f"j{i}"})
        done: list[int] = []

        async def process(job: Job, token: str) -> int:
            await asyncio.sleep(0.002)
            done.append(job.data["i"])
            return 1

        w = FetchNextWorker(
            QUEUE, process, {"connection": bullmq_connection(rs.url), "prefix": prefix, "concurrency": 4}
        )
        errors: list[Any] = []
        w.on("error", lambda err, *a: errors.append(err))
        await wait_for(lambda: _at_least(done, 20), 20, "some jobs done")
        await w.close()
        counts = await q.getJobCounts("active", "completed", "waiting")
        await q.close()
    assert counts["active"] == 0 and errors == [], (counts, errors)
    assert counts["completed"] == len(done) and counts["completed"] + counts["waiting"] == 200, counts
    assert len(set(done)) == len(done)  # each job ran once


async def _at_least(xs: list[int], n: int) -> bool:
    return len(xs) >= n
