"""Interoperability and operations: a Node BullMQ producer feeding a streamproxy worker, ``serve``
on a machine without Redis (embedded redis-server), and the ``streamproxy transcribe`` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from streamproxy.engine.supervisor import free_port
from streamproxy.jobs.redis_embedded import socket_path
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.jobs import (
    REPO,
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

NODE_DIR = REPO / "tests" / "node"
AUDIO = marker_wav([31, 32, 33])
WORDS = ["w31", "w32", "w33"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMPROXY_", "DEEPGRAM_"))}
    env.pop("STATE_DIRECTORY", None)
    env.update(extra)
    return env


async def _ensure_node_modules() -> None:
    """The test setup installs npm ``bullmq`` (from tests/node/package-lock.json) when missing."""
    if (NODE_DIR / "node_modules" / "bullmq" / "package.json").exists():
        return
    npm = shutil.which("npm")
    assert npm, "npm is required for the Node interop test (Node 20 + npm)"
    proc = await asyncio.create_subprocess_exec(
        npm, "ci", "--no-audit", "--no-fund", cwd=str(NODE_DIR),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, out.decode()[-2000:]


@pytest.mark.timeout(300)
async def test_node_bullmq_producer_jobs_are_processed_by_a_streamproxy_worker(tmp_path: Path) -> None:
    """npm ``bullmq`` enqueues two jobs per the documented schema (inline base64, and a Redis
    audio key); a ``streamproxy worker`` completes both; Node reads the Deepgram-shaped results."""
    await _ensure_node_modules()
    node = shutil.which("node")
    assert node, "node is required"
    prefix = unique_prefix()
    wav_file = tmp_path / "a.wav"
    wav_file.write_bytes(AUDIO)
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        w = await start_worker(
            write_config(tmp_path / "w.toml", queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}"))
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                node, "producer.mjs", rs.url, prefix, str(wav_file), cwd=str(NODE_DIR),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
        finally:
            await w.stop()
    doc = json.loads(out)
    assert doc.pop("keyLeft") == 0, "the worker deletes the audio key once the job is done"
    assert len(doc) == 2
    for job_id, res in doc.items():
        assert res["state"] == "completed", res
        assert words_of(res["result"]) == WORDS and res["result"]["metadata"]["request_id"] == job_id
        assert res["attemptsMade"] == 1


async def _read_lines(stream: asyncio.StreamReader, sink: list[dict[str, Any]], ready: asyncio.Event) -> None:
    async for raw in stream:
        try:
            line = json.loads(raw)
        except ValueError:
            line = {"raw": raw.decode(errors="replace")}
        sink.append(line)
        if line.get("event") == "worker_started":  # after "listening": jobs start right after the port
            ready.set()
    ready.set()


async def test_serve_without_redis_spawns_embedded_redis(tmp_path: Path) -> None:
    """``streamproxy serve`` with ``[queue] redis_url`` unset, engine kind marker, a fresh data dir:
    it starts redis-server on a unix socket (append-only) in the data dir, its in-process worker
    completes an async job, and SIGTERM stops it all cleanly."""
    data = tmp_path / "data"
    port = free_port()
    cfg = write_config(
        tmp_path / "serve.toml",
        {"server": {"port": port, "data_dir": str(data)}, "engine": {"kind": "marker"}, "log": {"format": "json"}},
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamproxy", "serve", "--config", str(cfg), cwd=str(REPO), env=_clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    lines: list[dict[str, Any]] = []
    ready = asyncio.Event()
    assert proc.stdout is not None
    reader = asyncio.create_task(_read_lines(proc.stdout, lines, ready))
    sock = socket_path(data)
    try:
        await asyncio.wait_for(ready.wait(), 60)
        assert proc.returncode is None, lines[-5:]
        assert any(x.get("event") == "redis_embedded_started" for x in lines), lines
        assert sock.exists() and (data / "redis" / "appendonlydir").is_dir()
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/transcribe?mode=async", data=AUDIO) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["job_id"]

            async def done() -> bool:
                async with http.get(f"{base}/v1/jobs/{job_id}") as r:
                    return (await r.json())["state"] == "completed"

            await wait_for(done, 30, "the job on the embedded Redis")
            async with http.get(f"{base}/v1/jobs/{job_id}") as r:
                assert words_of((await r.json())["result"]) == WORDS
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(reader, 5)
    assert code == 0, lines[-10:]
    assert any(x.get("event") == "redis_embedded_stopped" for x in lines)
    client = aioredis.from_url(f"unix://{sock}", socket_connect_timeout=1)
    with pytest.raises((OSError, aioredis.RedisError)):
        await client.ping()
    await client.aclose()


async def test_unreachable_redis_falls_back_to_embedded(tmp_path: Path) -> None:
    """A configured Redis that is down at start: the gateway warns and uses the embedded one (its
    in-process worker completes the job) rather than failing every file request."""
    dead = free_port()
    async with engine("marker") as eport:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{eport}"],
            **{"queue.redis_url": f"redis://127.0.0.1:{dead}", "server.data_dir": str(tmp_path / "d")},
        )
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{gw.port}"
            async with http.post(f"{base}/v1/transcribe?mode=async", data=AUDIO) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["job_id"]

            async def done() -> bool:
                async with http.get(f"{base}/v1/jobs/{job_id}") as r:
                    return (await r.json())["state"] == "completed"

            await wait_for(done, 20, "the job on the fallback Redis")


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamproxy", "transcribe", *args, cwd=str(REPO), env=_clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_transcribe(tmp_path: Path) -> None:
    """``streamproxy transcribe``: a file (auto: sync), a queued job with --wait (progress bar on
    stderr, JSON on stdout), a job id without --wait, a URL, and a clear error for bad input."""
    wav_file = tmp_path / "a.wav"
    wav_file.write_bytes(AUDIO)
    (tmp_path / "bad.txt").write_text("not audio")

    async def serve_wav(request: web.Request) -> web.Response:
        return web.Response(body=AUDIO, content_type="audio/wav")

    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport, http_server(serve_wav) as wport:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{eport}"],
            **{"queue.redis_url": rs.url, "queue.prefix": unique_prefix(), "queue.url_allow": "127.0.0.1"},
        )
        async with gateway(cfg) as gw:  # serve_worker = true: the gateway processes its own jobs
            url = f"http://127.0.0.1:{gw.port}"
            code, out, _ = await _cli(str(wav_file), "--url", url)
            assert code == 0 and out.strip() == "w31 w32 w33"
            code, out, err = await _cli(str(wav_file), "--url", url, "--mode", "async", "--wait", "--json")
            assert code == 0, err
            assert words_of(orjson.loads(out)) == WORDS
            assert "100.0%" in err and "completed" in err and "[" in err
            code, out, _ = await _cli(str(wav_file), "--url", url, "--mode", "async")
            assert code == 0 and len(out.strip()) == 36  # a job id (UUID)
            code, out, _ = await _cli(f"http://127.0.0.1:{wport}/x.wav", "--url", url)
            assert code == 0 and out.strip() == "w31 w32 w33"
            code, out, err = await _cli(str(tmp_path / "bad.txt"), "--url", url)
            assert code == 1 and "HTTP 400" in err and "unrecognised audio" in err
