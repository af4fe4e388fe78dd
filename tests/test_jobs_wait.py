"""How the gateway awaits a queued job (the sync routes for long audio): woken by BullMQ's event
stream (QueueEvents), with a slow state poll only as a fallback. Real Redis, a real ``streamproxy
worker`` process and the marker engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streamproxy.config import load_config
from streamproxy.jobs.queue import JobQueue
from tests.helpers.gateway import engine
from tests.helpers.jobs import (
    marker_wav,
    queue_sections,
    redis_server,
    start_worker,
    unique_prefix,
    words_of,
    write_config,
)

AUDIO = marker_wav([31, 32])


def _queue(url: str, prefix: str) -> JobQueue:
    cfg = load_config(None, env={}, overrides={"queue.redis_url": url, "queue.prefix": prefix})
    return JobQueue(url, cfg.queue)


async def test_a_finished_job_wakes_its_waiter_through_the_event_stream(tmp_path: Path) -> None:
    """The state poll is set to every 60 s: only the completed event can end these waits in 20 s.
    Three jobs awaited at once (one stream for all), then one more (the stream, closed when nobody
    waits, starts again); a job id that does not exist ends its wait at once."""
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        jq = _queue(rs.url, prefix)
        jq.first_poll_s = jq.fallback_poll_s = 60.0
        w = await start_worker(
            write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}"))
        )
        try:
            for batch in (3, 1):
                ids = [await jq.submit(params={}, mode="sync", audio=AUDIO) for _ in range(batch)]
                done = await asyncio.wait_for(asyncio.gather(*(jq.wait(j, 120) for j in ids)), 20)
                for st in done:
                    assert st is not None and st["state"] == "completed", st
                    assert words_of(st["result"]) == ["w31", "w32"]
                assert jq.finishes._events is None and not jq.finishes._waiters  # closed when idle
            gone = await asyncio.wait_for(jq.wait("00000000-0000-4000-8000-000000000000", 120), 5)
            assert gone is None
        finally:
            await w.stop()
            await jq.close()


async def test_without_events_the_fallback_poll_still_ends_the_wait(tmp_path: Path) -> None:
    """The event stream is lost (its Redis connection killed, as in a Redis restart): the job is
    still seen finished, by the state poll."""
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        jq = _queue(rs.url, prefix)
        jq.first_poll_s = jq.fallback_poll_s = 0.5
        job = await jq.submit(params={}, mode="sync", audio=AUDIO)
        waiting = asyncio.ensure_future(jq.wait(job, 120))
        await asyncio.sleep(0.3)
        events = jq.finishes._events
        assert events is not None
        await events.close()  # no completed event will ever come from it
        w = await start_worker(
            write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}"))
        )
        try:
            st = await asyncio.wait_for(waiting, 20)
            assert st is not None and st["state"] == "completed"
        finally:
            await w.stop()
            await jq.close()


async def test_submit_is_one_multi_and_survives_a_script_flush(tmp_path: Path) -> None:
    """submit stores the audio and adds the job in one MULTI (a plain EVALSHA of bullmq's
    addStandardJob): the job is a BullMQ job like Queue.add's (waiting, its data and options, the
    audio beside it with its TTL), also after Redis lost its scripts (NOSCRIPT: loaded, sent again),
    and a worker completes it."""
    import redis.asyncio as aioredis
    from bullmq import Job

    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        jq = _queue(rs.url, prefix)
        admin = aioredis.from_url(rs.url)
        try:
            await jq.submit(params={}, mode="async", audio=AUDIO)  # a fresh Redis: NOSCRIPT, loaded
            await admin.config_resetstat()
            first = await jq.submit(params={"model": "nova-3"}, mode="async", audio=AUDIO)
            stats = await admin.info("commandstats")
            assert stats["cmdstat_exec"]["calls"] == 1 and stats["cmdstat_evalsha"]["calls"] == 1, stats
            assert not any(k.startswith("cmdstat_script") for k in stats), stats  # no SCRIPT EXISTS
            await admin.script_flush()
            await admin.config_resetstat()
            second = await jq.submit(params={}, mode="async", audio=AUDIO)
            stats = await admin.info("commandstats")
            assert stats["cmdstat_exec"]["calls"] == 2 and stats["cmdstat_script|load"]["calls"] == 1, stats
            for job_id in (first, second):
                assert await jq.transcribe.getJobState(job_id) == "waiting"
                job = await Job.fromId(jq.transcribe, job_id)
                assert job is not None and job.name == "transcribe"
                assert job.data["audio_key"] == jq.keys.audio(job_id) and job.data["bytes"] == len(AUDIO)
                assert job.opts["attempts"] == jq.cfg.attempts
                assert await admin.get(jq.keys.audio(job_id)) == AUDIO
                assert 0 < await admin.ttl(jq.keys.audio(job_id)) <= jq.cfg.result_ttl_s
            assert (await jq.status(first) or {}).get("state") == "waiting"
            w = await start_worker(
                write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}"))
            )
            try:
                done = await asyncio.wait_for(asyncio.gather(*(jq.wait(j, 60) for j in (first, second))), 30)
            finally:
                await w.stop()
            for st in done:
                assert st is not None and st["state"] == "completed", st
                assert words_of(st["result"]) == ["w31", "w32"]
        finally:
            await admin.aclose()
            await jq.close()
