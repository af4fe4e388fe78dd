"""Durability of the job queue with real processes: a worker SIGKILLed mid-job, Redis killed and
restarted from its AOF, retries with backoff, webhook retries and signatures, and two gateways
plus two workers sharing one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from streamproxy.engine.supervisor import free_port
from streamproxy.outbound.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    verify,
)
from streamproxy.serve import Running
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.jobs import (
    Receiver,
    RedisServer,
    http_server,
    marker_wav,
    queue_sections,
    redis_server,
    start_worker,
    unique_prefix,
    wait_for,
    words_of,
    write_config,
)

AUDIO = marker_wav([21, 22])
WORDS = ["w21", "w22"]


@dataclass
class Upstream:
    """A fake upstream in front of the marker engine: records who called when, can stall or fail."""

    engine_port: int
    delay_s: float = 0.0
    hold_first: bool = False  # the first request hangs until released (a job "in progress")
    fail_status: int = 0  # answer every request with this status instead
    calls: list[tuple[float, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((time.monotonic(), request.headers.get("User-Agent", "")))
        if len(self.calls) == 1 and self.hold_first:
            self.first.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30)
            return web.Response(status=503, text="released")
        if self.fail_status:
            return web.json_response({"err_code": "X", "err_msg": "refusing"}, status=self.fail_status)
        await asyncio.sleep(self.delay_s)
        url = f"http://127.0.0.1:{self.engine_port}/v1/listen?{request.query_string}"
        async with aiohttp.ClientSession() as http, http.post(url, data=body) as r:
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")

    def pids(self) -> set[str]:
        return {ua.rsplit(":", 1)[-1] for _, ua in self.calls}


@contextlib.asynccontextmanager
async def gateway_on(redis_url: str, prefix: str, upstream_port: int, **queue: Any) -> AsyncIterator[Running]:
    overrides = {
        "queue.redis_url": redis_url,
        "queue.prefix": prefix,
        "queue.serve_worker": False,
        "queue.url_allow": "127.0.0.1",
        "queue.webhook_secret": "test-secret",
        **{f"queue.{k}": v for k, v in queue.items()},
    }
    async with gateway(gateway_config([f"ws://127.0.0.1:{upstream_port}"], **overrides)) as gw:
        yield gw


async def submit(http: aiohttp.ClientSession, gw: Running, audio: bytes = AUDIO, query: str = "mode=async") -> str:
    async with http.post(f"http://127.0.0.1:{gw.port}/v1/transcribe?{query}", data=audio) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["job_id"])


async def status(http: aiohttp.ClientSession, gw: Running, job_id: str) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{gw.port}/v1/jobs/{job_id}") as r:
        assert r.status == 200, await r.text()
        return dict(orjson.loads(await r.read()))


async def all_done(http: aiohttp.ClientSession, gw: Running, ids: list[str], state: str = "completed") -> bool:
    for j in ids:
        if (await status(http, gw, j))["state"] != state:
            return False
    return True


async def completed_events(redis_url: str, prefix: str, job_id: str) -> int:
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = await r.xrange(f"{prefix}:transcribe:events")  # type: ignore[assignment]
    finally:
        await r.aclose()
    return sum(1 for _, e in entries if e.get("event") == "completed" and e.get("jobId") == job_id)


async def test_worker_sigkill_mid_job_completes_elsewhere_exactly_once(tmp_path: Path) -> None:
    """Worker A is SIGKILLed while its upstream request is in flight; worker B takes the job over
    when A's lock expires. One completion, one callback, no attempt consumed by the crash."""
    prefix = unique_prefix()
    receiver = Receiver()
    async with (
        redis_server(tmp_path / "redis") as rs,
        engine("marker") as eport,
    ):
        up = Upstream(eport, hold_first=True)
        async with http_server(up.handle) as uport, http_server(receiver.handle) as cb_port:
            cfg = write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{uport}"))
            async with gateway_on(rs.url, prefix, uport) as gw, aiohttp.ClientSession() as http:
                a = await start_worker(cfg)
                b = None
                try:
                    job = await submit(http, gw, query=f"mode=async&callback=http://127.0.0.1:{cb_port}/cb")
                    await asyncio.wait_for(up.first.wait(), 15)
                    assert (await status(http, gw, job))["state"] == "active"
                    a.kill()
                    assert await asyncio.wait_for(a.proc.wait(), 5) == -9
                    b = await start_worker(cfg)
                    await wait_for(lambda: all_done(http, gw, [job]), 30, "the job to complete on worker B")
                    st = await status(http, gw, job)
                    assert words_of(st["result"]) == WORDS
                    assert st["attempts"] == 1, "a crash is a stall, not a failed attempt"
                    by = [line for line in st["log"] if "by worker" in line]
                    assert len(by) == 2 and str(a.pid) in by[0] and str(b.pid) in by[1], by
                    await asyncio.wait_for(receiver.event.wait(), 10)
                    await asyncio.sleep(1.0)  # nothing more arrives
                    assert len(receiver.calls) == 1, "exactly one callback"
                    assert await completed_events(rs.url, prefix, job) == 1, "exactly one result"
                    assert up.pids() == {str(a.pid), str(b.pid)}
                finally:
                    up.release.set()
                    a.kill()
                    if b is not None:
                        await b.stop()


async def test_cancel_an_active_job(tmp_path: Path) -> None:
    """DELETE on a job in progress: the worker aborts it (no retry, no callback) before DELETE answers
    200 "cancelled"; GET says "cancelled" too; the worker goes on with the next job."""
    prefix = unique_prefix()
    receiver = Receiver()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        up = Upstream(eport, hold_first=True)
        async with http_server(up.handle) as uport, http_server(receiver.handle) as cb_port:
            cfg = write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{uport}"))
            async with gateway_on(rs.url, prefix, uport) as gw, aiohttp.ClientSession() as http:
                w = await start_worker(cfg)
                try:
                    job = await submit(http, gw, query=f"mode=async&callback=http://127.0.0.1:{cb_port}/cb")
                    await asyncio.wait_for(up.first.wait(), 15)
                    async with http.delete(f"http://127.0.0.1:{gw.port}/v1/jobs/{job}") as r:
                        assert r.status == 200 and (await r.json())["state"] == "cancelled"
                    assert await all_done(http, gw, [job], "cancelled")
                    st = await status(http, gw, job)
                    assert st["error"] == "cancelled by the client" and st["attempts"] == 1
                    nxt = await submit(http, gw)
                    await wait_for(lambda: all_done(http, gw, [nxt]), 10, "the next job")
                    await asyncio.sleep(0.5)
                    assert receiver.calls == [] and len(up.calls) == 2
                finally:
                    up.release.set()
                    await w.stop()


async def test_redis_killed_and_restarted_from_aof_loses_no_waiting_job(tmp_path: Path) -> None:
    """Jobs wait (no worker); Redis is SIGKILLed and restarted from its append-only file; then a
    worker starts: every job completes, and the gateway keeps answering on the new connection."""
    prefix = unique_prefix()
    rs = RedisServer(tmp_path / "redis")
    await rs.start()
    try:
        async with engine("marker") as eport, gateway_on(rs.url, prefix, eport) as gw:
            async with aiohttp.ClientSession() as http:
                ids = [await submit(http, gw) for _ in range(5)]
                assert [(await status(http, gw, j))["state"] for j in ids] == ["waiting"] * 5
                rs.kill()
                async with http.get(f"http://127.0.0.1:{gw.port}/readyz") as r:
                    assert r.status == 503 and (await r.json())["redis"] is False
                await rs.start()  # same port, same dir: replays the AOF
                await wait_for(lambda: _answers(http, gw, ids[0]), 10, "the gateway to reconnect")
                async with http.get(f"http://127.0.0.1:{gw.port}/readyz") as r:
                    assert r.status == 200 and (await r.json())["redis"] is True
                assert [(await status(http, gw, j))["state"] for j in ids] == ["waiting"] * 5
                cfg = write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}"))
                w = await start_worker(cfg)
                try:
                    await wait_for(lambda: all_done(http, gw, ids), 30, "all jobs after the restart")
                    for j in ids:
                        assert words_of((await status(http, gw, j))["result"]) == WORDS
                finally:
                    await w.stop()
    finally:
        rs.stop()


async def _answers(http: aiohttp.ClientSession, gw: Running, job_id: str) -> bool:
    async with http.get(f"http://127.0.0.1:{gw.port}/v1/jobs/{job_id}") as r:
        return r.status == 200


async def test_failing_jobs_retry_with_backoff_then_fail_clearly(tmp_path: Path) -> None:
    """Upstreams refusing (a dead port, and a server answering 503): 3 attempts spaced by the
    exponential backoff (0.3 s, 0.6 s), then a failed job whose error names both causes, and one
    failure callback."""
    prefix = unique_prefix()
    receiver = Receiver()
    dead = free_port()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        up = Upstream(eport, fail_status=503)
        async with http_server(up.handle) as uport, http_server(receiver.handle) as cb_port:
            sections = queue_sections(rs.url, prefix, f"ws://127.0.0.1:{dead}", backoff_s=0.3, attempts=3)
            sections["upstream.u1"] = {"url": f"ws://127.0.0.1:{uport}", "priority": 1}
            cfg = write_config(tmp_path / "w.toml", sections)
            # attempts/backoff are job options: the producer (the gateway) sets them from its [queue].
            async with (
                gateway_on(rs.url, prefix, eport, backoff_s=0.3, attempts=3) as gw,
                aiohttp.ClientSession() as http,
            ):
                w = await start_worker(cfg)
                try:
                    job = await submit(http, gw, query=f"mode=async&callback=http://127.0.0.1:{cb_port}/cb")
                    await wait_for(lambda: all_done(http, gw, [job], "failed"), 20, "the job to fail")
                    st = await status(http, gw, job)
                    assert st["attempts"] == 3 and st["max_attempts"] == 3
                    assert "no upstream could transcribe" in st["error"]
                    assert "u0: connection refused" in st["error"] and "u1: HTTP 503" in st["error"], st["error"]
                    times = [t for t, _ in up.calls]
                    assert len(times) == 3
                    gaps = [b - a for a, b in itertools.pairwise(times)]
                    assert 0.3 * 0.9 <= gaps[0] < 3.0 and 0.6 * 0.9 <= gaps[1] < 3.0, gaps
                    await asyncio.wait_for(receiver.event.wait(), 10)
                    await asyncio.sleep(0.5)
                    assert len(receiver.calls) == 1
                    _, _, headers, raw = receiver.calls[0]
                    assert headers[EVENT_HEADER] == "transcription.failed"
                    body = orjson.loads(raw)
                    assert body["request_id"] == job and body["err_code"] == "TRANSCRIPTION_FAILED"
                    assert "HTTP 503" in body["err_msg"]
                    async with http.get(f"http://127.0.0.1:{gw.port}/v1/listen") as r:  # the gateway is fine
                        assert r.status in (400, 426)
                finally:
                    await w.stop()


async def test_webhook_retried_until_2xx_signed_and_tamper_evident(tmp_path: Path) -> None:
    """The receiver answers 500 twice, then 200: three deliveries with backoff, each signed with
    its own timestamp, then none; a modified body, wrong secret or stale timestamp fails verify."""
    prefix = unique_prefix()
    receiver = Receiver(fail_first=2)
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        async with http_server(receiver.handle) as cb_port:
            sections = queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}", callback_backoff_s=0.2)
            cfg = write_config(tmp_path / "w.toml", sections)
            async with (
                gateway_on(rs.url, prefix, eport, callback_backoff_s=0.2) as gw,
                aiohttp.ClientSession() as http,
            ):
                w = await start_worker(cfg)
                try:
                    async with http.post(
                        f"http://127.0.0.1:{gw.port}/v1/listen?callback=http://127.0.0.1:{cb_port}/cb&model=x",
                        data=AUDIO,
                    ) as r:
                        assert r.status == 200
                        request_id = (await r.json())["request_id"]
                    await asyncio.wait_for(receiver.event.wait(), 15)
                    await asyncio.sleep(1.0)
                finally:
                    await w.stop()
    assert [c[1] for c in receiver.calls] == [500, 500, 200]
    gaps = [b[0] - a[0] for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert 0.18 <= gaps[0] < 2.0 and 0.36 <= gaps[1] < 3.0, gaps
    bodies = {c[3] for c in receiver.calls}
    assert len(bodies) == 1, "every retry carries the same body"
    for _, _, headers, raw in receiver.calls:
        ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
        assert sig.startswith("sha256=") and verify("test-secret", raw, ts, sig)
        assert headers[DELIVERY_HEADER] == request_id and headers[EVENT_HEADER] == "transcription.completed"
        tampered = raw.replace(b"w21", b"w99")
        assert tampered != raw and not verify("test-secret", tampered, ts, sig)
        assert not verify("other-secret", raw, ts, sig)
        assert not verify("test-secret", raw, str(int(ts) - 3600), sign("test-secret", int(ts) - 3600, raw))
    result = orjson.loads(receiver.delivered[0][3])
    assert words_of(result) == WORDS and result["metadata"]["request_id"] == request_id


async def test_two_gateways_two_workers_share_one_redis(tmp_path: Path) -> None:
    """Jobs submitted to either gateway are processed by either worker; stopping gateway A and
    worker A with jobs still queued loses none (worker B finishes them, gateway B reports them)."""
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        up = Upstream(eport, delay_s=0.15)
        async with http_server(up.handle) as uport:
            cfg = write_config(
                tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{uport}", concurrency=2)
            )
            wa = await start_worker(cfg)
            wb = await start_worker(cfg)
            try:
                async with (
                    gateway_on(rs.url, prefix, uport) as gb,
                    aiohttp.ClientSession() as http,
                ):
                    ga_cm = gateway_on(rs.url, prefix, uport)
                    ga = await ga_cm.__aenter__()
                    try:
                        ids_a = [await submit(http, ga) for _ in range(6)]
                        ids_b = [await submit(http, gb) for _ in range(6)]
                        await wait_for(lambda: all_done(http, gb, ids_a + ids_b), 30, "the first 12 jobs")
                        assert up.pids() == {str(wa.pid), str(wb.pid)}, "both workers took jobs"
                        for j in ids_a:  # gateway B sees gateway A's jobs and vice versa
                            assert words_of((await status(http, gb, j))["result"]) == WORDS
                        assert (await status(http, ga, ids_b[0]))["state"] == "completed"
                        # More jobs through A, then A (gateway and worker) goes away mid-stream.
                        late = [await submit(http, ga) for _ in range(8)]
                    finally:
                        await ga_cm.__aexit__(None, None, None)
                    assert await wa.stop() == 0
                    await wait_for(lambda: all_done(http, gb, late), 30, "the late jobs on worker B")
                    for j in late:
                        assert words_of((await status(http, gb, j))["result"]) == WORDS
            finally:
                await wa.stop()
                await wb.stop()


@pytest.fixture(autouse=True)
def _bounded() -> None:
    """Each test here starts worker processes; the module's tests take ~25 s together."""
