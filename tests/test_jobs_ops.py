"""Jobs you can watch and stop: worker metrics (in ``serve`` and ``worker --metrics-port``), Node
BullMQ's ``Queue.getWorkers()`` seeing streamproxy workers, and an honest cancel of a running job.

Real components throughout: a private redis-server, the marker engine, gateways in-process, worker
subprocesses, npm ``bullmq`` under Node, and for the cancel a slow Deepgram-protocol upstream on
loopback that records when its request is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from bullmq import Job, Worker

from streamproxy.jobs.queue import bullmq_connection
from streamproxy.jobs.routes import start_jobs
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.jobs import (
    REPO,
    RedisServer,
    http_server,
    marker_wav,
    queue_sections,
    redis_server,
    start_worker,
    unique_prefix,
    words_of,
    write_config,
)
from tests.test_jobs_interop import _ensure_node_modules
from tests.test_metrics import Scrape, scrape

AUDIO = marker_wav([41, 42])
NODE_DIR = REPO / "tests" / "node"


def _overrides(r: RedisServer, prefix: str, tmp: Path, **queue: Any) -> dict[str, Any]:
    o: dict[str, Any] = {
        "queue.redis_url": r.url,
        "queue.prefix": prefix,
        "queue.serve_worker": False,
        "queue.url_allow": "127.0.0.1",
        "queue.webhook_secret": "test-secret",
        "queue.backoff_s": 0.1,
        "server.data_dir": str(tmp / "data"),
    }
    o.update({f"queue.{k}": v for k, v in queue.items()})
    return o


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await resp.read())


async def _submit(http: aiohttp.ClientSession, base: str, **body: Any) -> str:
    if "url" in body:
        req: dict[str, Any] = {"json": {"url": body["url"]}}
    else:
        req = {"data": body.get("audio", AUDIO)}
    async with http.post(f"{base}/v1/transcribe?mode=async", **req) as r:
        assert r.status == 202, await r.text()
        return str((await _json(r))["job_id"])


async def _state(http: aiohttp.ClientSession, base: str, job_id: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/jobs/{job_id}") as r:
        assert r.status == 200, await r.text()
        out: dict[str, Any] = await _json(r)
        return out


async def _until_state(http: aiohttp.ClientSession, base: str, job_id: str, states: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        st = await _state(http, base, job_id)
        if st["state"] in states or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.05)


async def _missing_file(request: web.Request) -> web.Response:
    return web.Response(status=404, text="no such file")


def _assert_job_metrics(s: Scrape, *, completed: int, failed: int, retries: int) -> None:
    """The worker families after ``completed`` good async jobs and ``failed`` ones of 3 attempts each."""
    w = "streamproxy_worker_"
    assert s.value(w + "jobs_total", mode="async", status="completed") == completed
    assert s.value(w + "jobs_total", mode="async", status="failed") == failed
    assert s.value(w + "jobs_total", mode="async", status="cancelled") == 0
    assert s.value(w + "job_retries_total", mode="async") == retries
    assert s.value(w + "job_duration_seconds_count", mode="async", status="completed") == completed
    assert s.value(w + "job_duration_seconds_count", mode="async", status="failed") == failed
    assert (s.value(w + "job_duration_seconds_sum", mode="async", status="completed") > 0) is (completed > 0)
    # Attempts: good jobs took 1 (bucket le=1), failed ones all 3 (only in le >= 3).
    assert s.value(w + "job_attempts_count", mode="async") == completed + failed
    assert s.value(w + "job_attempts_bucket", mode="async", le="1.0") == completed
    assert s.value(w + "job_attempts_bucket", mode="async", le="3.0") == completed + failed
    assert s.value(w + "job_attempts_sum", mode="async") == completed + 3 * failed
    assert s.value(w + "jobs_active") == 0
    assert s.value(w + "stalled_jobs_total") == 0
    assert "streamproxy_upstream_breaker_open" in s.families


async def _run_jobs(base: str, bad_url: str) -> None:
    """One job that completes, then one whose URL answers 404 (fails all 3 attempts)."""
    async with aiohttp.ClientSession() as http:
        good = await _submit(http, base)
        st = await _until_state(http, base, good, {"completed", "failed"})
        assert st["state"] == "completed" and words_of(st["result"]) == ["w41", "w42"]
        bad = await _submit(http, base, url=bad_url)
        st = await _until_state(http, base, bad, {"completed", "failed"})
        assert st["state"] == "failed" and "HTTP 404" in st["error"] and st["attempts"] == 3, st


async def _metrics_settle(port: int, want_failed: int) -> Scrape:
    """The failed job's counters move right after bullmq marks it failed: poll briefly."""
    deadline = time.monotonic() + 5
    while True:
        s = await scrape(port)
        if s.value("streamproxy_worker_jobs_total", status="failed") >= want_failed or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.05)


async def test_in_process_worker_counts_into_serves_registry(tmp_path: Path) -> None:
    """``serve``'s own worker: completion and failure move the worker families on the gateway's /metrics."""
    prefix = unique_prefix()
    async with (
        redis_server(tmp_path / "redis") as r,
        engine("marker") as eport,
        http_server(_missing_file) as file_port,
    ):
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **_overrides(r, prefix, tmp_path, serve_worker=True))
        async with gateway(cfg) as gw:
            await start_jobs(gw.runner.app)
            before = await scrape(gw.port)
            _assert_job_metrics(before, completed=0, failed=0, retries=0)
            await _run_jobs(f"http://127.0.0.1:{gw.port}", f"http://127.0.0.1:{file_port}/gone.wav")
            after = await _metrics_settle(gw.port, 1)
    _assert_job_metrics(after, completed=1, failed=1, retries=2)
    # The gateway's own family still counts submissions, once per job.
    assert after.value("streamproxy_jobs_total", mode="async", status="submitted") == 2


async def test_queue_depth_is_read_when_scraped(tmp_path: Path) -> None:
    """No worker: three submitted jobs are in ``streamproxy_queue_depth`` at the very next scrape
    (it is read then, not by a timer that wakes every gateway). Bad input: Redis stopped — /metrics
    still answers within the collectors' bound, the gauge as it was."""
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as r, engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **_overrides(r, prefix, tmp_path))
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
            await start_jobs(gw.runner.app)
            base = f"http://127.0.0.1:{gw.port}"
            assert (await scrape(gw.port)).value("streamproxy_queue_depth") == 0
            for _ in range(3):
                await _submit(http, base)
            assert (await scrape(gw.port)).value("streamproxy_queue_depth") == 3
            r.stop()
            t0 = time.monotonic()
            s = await scrape(gw.port)
            assert time.monotonic() - t0 < 3.0
            assert s.value("streamproxy_queue_depth") == 3


async def test_worker_metrics_port_serves_its_own_families(tmp_path: Path) -> None:
    """``streamproxy worker --metrics-port 0``: the worker's /metrics (port from its log line) moves on
    completion and failure; the gateway (no in-process worker) has no worker families at all."""
    prefix = unique_prefix()
    async with (
        redis_server(tmp_path / "redis") as r,
        engine("marker") as eport,
        http_server(_missing_file) as file_port,
    ):
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **_overrides(r, prefix, tmp_path))
        sections = queue_sections(r.url, prefix, f"ws://127.0.0.1:{eport}", backoff_s=0.1)
        worker = await start_worker(write_config(tmp_path / "w.toml", sections), "--metrics-port", "0")
        try:
            (line,) = [x for x in worker.lines if x.get("event") == "worker_metrics"]
            wport = int(line["port"])
            _assert_job_metrics(await scrape(wport), completed=0, failed=0, retries=0)
            async with gateway(cfg) as gw:
                await _run_jobs(f"http://127.0.0.1:{gw.port}", f"http://127.0.0.1:{file_port}/gone.wav")
                gw_scrape = await scrape(gw.port)
            after = await _metrics_settle(wport, 1)
        finally:
            assert await worker.stop() == 0
    _assert_job_metrics(after, completed=1, failed=1, retries=0 + 2)
    assert not any(n.startswith("streamproxy_worker_") for n in gw_scrape.families)
    assert after.value("streamproxy_upstream_breaker_open", upstream="u0") == 0


def test_worker_metrics_port_bad_value(tmp_path: Path) -> None:
    import subprocess
    import sys

    for bad in ("abc", "70000"):
        r = subprocess.run(
            [sys.executable, "-m", "streamproxy", "worker", "--metrics-port", bad],
            capture_output=True, text=True, timeout=30, cwd=str(REPO), check=False,
        )  # fmt: skip
        assert r.returncode == 2 and "--metrics-port" in r.stderr and "port number" in r.stderr, r.stderr


# ---------------------------------------------------------------------- Node BullMQ / Bull Board


@pytest.mark.timeout(300)
async def test_node_bullmq_get_workers_lists_the_python_worker(tmp_path: Path) -> None:
    """Bull Board lists workers with Node's ``Queue.getWorkers()``: a running ``streamproxy worker``
    is there for both queues, under its name; once stopped it is gone."""
    await _ensure_node_modules()
    node = shutil.which("node")
    assert node, "node is required"
    prefix = unique_prefix()

    async def node_workers(url: str) -> dict[str, list[str]]:
        proc = await asyncio.create_subprocess_exec(
            node, "workers.mjs", url, prefix, cwd=str(NODE_DIR),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        got: dict[str, list[str]] = json.loads(out.decode().strip().splitlines()[-1])
        return got

    async with redis_server(tmp_path / "redis") as r, engine("marker") as eport:
        assert await node_workers(r.url) == {"transcribe": [], "webhooks": []}
        worker = await start_worker(
            write_config(tmp_path / "w.toml", queue_sections(r.url, prefix, f"ws://127.0.0.1:{eport}"))
        )
        try:
            (started,) = [x for x in worker.lines if x.get("event") == "worker_started"]
            name = started["worker"]
            assert re.fullmatch(r".+:\d+", name) and name.endswith(f":{worker.pid}")
            seen = await node_workers(r.url)
        finally:
            assert await worker.stop() == 0
        gone = await node_workers(r.url)
    assert seen["transcribe"] and set(seen["transcribe"]) == {f"{prefix}:dHJhbnNjcmliZQ==:w:{name}"}, seen
    assert seen["webhooks"] and set(seen["webhooks"]) == {f"{prefix}:d2ViaG9va3M=:w:{name}"}, seen
    assert gone == {"transcribe": [], "webhooks": []}


# ---------------------------------------------------------------------- cancel


class SlowUpstream:
    """A Deepgram-protocol upstream whose prerecorded answer never comes: records the request and
    the moment the client (the worker) aborts it."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.aborted = asyncio.Event()
        self.received_at = 0.0
        self.aborted_at = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.received_at = time.monotonic()
        self.received.set()
        try:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
        finally:
            self.aborted_at = time.monotonic()
            self.aborted.set()
        return web.Response(status=500)


@contextlib.asynccontextmanager
async def _cancel_stack(tmp_path: Path, upstream_port: int) -> AsyncIterator[tuple[RedisServer, str, int]]:
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as r:
        cfg = gateway_config([f"ws://127.0.0.1:{upstream_port}"], **_overrides(r, prefix, tmp_path))
        async with gateway(cfg) as gw:
            yield r, prefix, gw.port


async def test_cancel_running_job_aborts_upstream_request(tmp_path: Path) -> None:
    """DELETE on a job whose recognition is in flight: the worker's upstream request is aborted at
    once, the answer is 200 ``cancelled`` (not a promise), the job stays cancelled, nothing retries,
    and the worker's metrics count it as cancelled."""
    slow = SlowUpstream()
    async with http_server(slow.handle, "/v1/listen") as up_port, _cancel_stack(tmp_path, up_port) as (r, prefix, port):
        sections = queue_sections(r.url, prefix, f"ws://127.0.0.1:{up_port}", backoff_s=0.1)
        worker = await start_worker(write_config(tmp_path / "w.toml", sections), "--metrics-port", "0")
        wport = int(next(x for x in worker.lines if x.get("event") == "worker_metrics")["port"])
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                job_id = await _submit(http, base)
                await asyncio.wait_for(slow.received.wait(), 15)
                assert (await _state(http, base, job_id))["state"] == "active"
                t0 = time.monotonic()
                async with http.delete(f"{base}/v1/jobs/{job_id}") as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await _json(resp))["state"] == "cancelled"
                answered = time.monotonic() - t0
                await asyncio.wait_for(slow.aborted.wait(), 2)
                assert answered < 2.0 and slow.aborted_at - t0 < 2.0
                await asyncio.sleep(1.0)  # a retry (backoff 0.1 s) would have reached the upstream again
                st = await _state(http, base, job_id)
                assert st["state"] == "cancelled" and st["attempts"] == 1, st
                s = await scrape(wport)
                assert s.value("streamproxy_worker_jobs_total", mode="async", status="cancelled") == 1
                assert s.value("streamproxy_worker_jobs_total", status="completed") == 0
                assert s.value("streamproxy_worker_job_retries_total") == 0
                # A cancelled job is finished: a second DELETE deletes it, like any finished job.
                async with http.delete(f"{base}/v1/jobs/{job_id}") as resp:
                    assert resp.status == 200 and (await _json(resp))["state"] == "deleted"
        finally:
            assert await worker.stop() == 0
        events = [x.get("event") for x in worker.lines]
        assert "job_cancel" in events and "job_cancelled" in events


async def test_cancel_too_late_is_refused_not_pretended(tmp_path: Path) -> None:
    """A worker that does not honour cancels (a plain BullMQ worker, as a Node one would be) completes
    the job while DELETE waits: the answer is 409 saying it completed, and the result is kept."""
    async with engine("marker") as eport, _cancel_stack(tmp_path, eport) as (r, prefix, port):
        release = asyncio.Event()

        async def process(job: Job, token: str) -> dict[str, Any]:
            await release.wait()
            return {"metadata": {"request_id": job.id}, "results": {"channels": []}}

        foreign = Worker("transcribe", process, {"connection": bullmq_connection(r.url), "prefix": prefix})
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                job_id = await _submit(http, base)
                await _until_state(http, base, job_id, {"active"})
                asyncio.get_running_loop().call_later(0.5, release.set)
                async with http.delete(f"{base}/v1/jobs/{job_id}") as resp:
                    assert resp.status == 409, await resp.text()
                    body = await _json(resp)
                assert "completed before the cancel reached its worker" in body["err_msg"]
                st = await _state(http, base, job_id)
                assert st["state"] == "completed" and st["result"]["metadata"]["request_id"] == job_id
        finally:
            await foreign.close()


# ---------------------------------------------------------------------- stalled recovery


async def test_stalled_recovery_is_counted_by_the_worker_that_recovers(tmp_path: Path) -> None:
    """A worker is SIGKILLed mid-job; the survivor's stalled check takes the job over and counts it
    (``streamproxy_worker_stalled_jobs_total`` 1 on its ``--metrics-port``), and completes it."""
    from tests.test_jobs_durability import Upstream, gateway_on, submit

    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        up = Upstream(eport, hold_first=True)
        async with http_server(up.handle) as uport, gateway_on(rs.url, prefix, uport) as gw:
            cfg = write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{uport}"))
            victim = await start_worker(cfg)
            async with aiohttp.ClientSession() as http:
                job = await submit(http, gw)
                await asyncio.wait_for(up.first.wait(), 15)
                victim.kill()
                await victim.stop()
                survivor = await start_worker(cfg, "--metrics-port", "0")
                try:
                    wport = int(next(x for x in survivor.lines if x.get("event") == "worker_metrics")["port"])
                    st = await _until_state(http, f"http://127.0.0.1:{gw.port}", job, {"completed", "failed"})
                    assert st["state"] == "completed", st
                    s = await scrape(wport)
                finally:
                    up.release.set()
                    assert await survivor.stop() == 0
    assert s.value("streamproxy_worker_stalled_jobs_total") == 1
    assert s.value("streamproxy_worker_jobs_total", mode="async", status="completed") == 1
    assert s.value("streamproxy_worker_job_retries_total") == 0  # a stall is not a failed attempt
