"""Runs the embedded engine as supervised child processes on loopback, restarting any that die.

Each process is an upstream of its own (``engine-0``, ``engine-1`` ...) at a fixed port, so a
restart keeps its URL and sessions on a dead process fail over through the normal reconnect path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field

from ..upstream.pool import Upstream

log = logging.getLogger("streamproxy.engine")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EngineProcess:
    index: int
    port: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


@dataclass
class EngineSupervisor:
    kind: str
    processes: int = 1
    host: str = "127.0.0.1"
    base_port: int = 0
    idle_timeout_s: float = 10.0
    model_dir: str = ""
    extra_args: list[str] = field(default_factory=list)  # more `streamproxy engine` flags (engine.launch.engine_args)
    children: list[EngineProcess] = field(default_factory=list)
    _watch: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def upstreams(self) -> list[Upstream]:
        return [Upstream(f"engine-{c.index}", f"ws://{self.host}:{c.port}", priority=100) for c in self.children]

    async def start(self, ready_timeout: float = 60.0) -> None:
        for i in range(self.processes):
            port = self.base_port + i if self.base_port else free_port(self.host)
            self.children.append(EngineProcess(i, port))
        await asyncio.gather(*(self._spawn(c) for c in self.children))
        await asyncio.gather(*(self._wait_ready(c, ready_timeout) for c in self.children))
        self._watch = [asyncio.create_task(self._supervise(c)) for c in self.children]
        log.info(
            "embedded engine started",
            extra={"event": "engine_started", "kind": self.kind, "ports": [c.port for c in self.children]},
        )

    async def _spawn(self, c: EngineProcess) -> None:
        cmd = [sys.executable, "-m", "streamproxy", "engine", "--host", self.host, "--port", str(c.port)]
        cmd += ["--kind", self.kind, "--idle-timeout", str(self.idle_timeout_s)]
        if self.model_dir:
            cmd += ["--model-dir", self.model_dir]
        cmd += self.extra_args
        c.proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL)

    async def _wait_ready(self, c: EngineProcess, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if c.proc is not None and c.proc.returncode is not None:
                raise RuntimeError(f"engine process {c.index} exited with {c.proc.returncode} during start")
            try:
                _, w = await asyncio.open_connection(self.host, c.port)
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
                return
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError(f"engine process {c.index} not listening on {c.port}") from None
                await asyncio.sleep(0.05)

    async def _supervise(self, c: EngineProcess) -> None:
        while not self._stopping:
            assert c.proc is not None
            code = await c.proc.wait()
            if self._stopping:
                return
            c.restarts += 1
            log.warning(
                "engine process died; restarting",
                extra={"event": "engine_restart", "index": c.index, "code": code, "restarts": c.restarts},
            )
            await asyncio.sleep(min(5.0, 0.2 * c.restarts))
            await self._spawn(c)
            with contextlib.suppress(RuntimeError):
                await self._wait_ready(c, 60.0)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._watch:
            t.cancel()
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        for c in self.children:
            if c.proc is None:
                continue
            try:
                await asyncio.wait_for(c.proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.proc.pid, signal.SIGKILL)
                await c.proc.wait()
