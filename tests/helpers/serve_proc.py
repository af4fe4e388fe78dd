"""Run ``streamproxy serve`` (or any CLI command) as a real subprocess, capturing its log lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Variables of ours or of systemd that must not leak from the test runner into a child.
_STRIP_PREFIXES = ("STREAMPROXY_", "DEEPGRAM_")
_STRIP = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY"}


def child_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP}
    env.update(
        {
            "STREAMPROXY_SERVER_DATA_DIR": str(data_dir),
            "STREAMPROXY_ENGINE_KIND": "marker",
            "STREAMPROXY_SERVER_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def cli(
    data_dir: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m streamproxy ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "streamproxy", *args],
        env=child_env(data_dir, env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServeProc:
    """A running ``streamproxy serve``; stdout and stderr lines are collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def wait_event(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.records():
                    if rec.get("event") == event:
                        return rec
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {event!r} log line; output:\n" + "\n".join(self.lines[-30:]))
                self._cond.wait(min(left, 0.2))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def serve_proc(
    data_dir: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    own_group: bool = False,
) -> Iterator[ServeProc]:
    """Start ``streamproxy serve ARGS``; yields once it logged ``listening`` (port filled in).
    ``own_group``: in a process group of its own (with its engines), so a test can SIGKILL them all."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproxy", "serve", *args],
        start_new_session=own_group,
        env=child_env(data_dir, env),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sp = ServeProc(proc)
    try:
        if wait_ready:
            sp.port = int(sp.wait_event("listening")["port"])
        yield sp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if own_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # engines left behind by a killed gateway
        sp._reader.join(5)


class NotifySocket:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def recv_until(self, predicate: Any, timeout: float) -> str:
        """Collect datagrams until one satisfies ``predicate``; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"notify: timed out; got {[m for _, m in self.messages]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data))
            if predicate(data):
                return data

    def close(self) -> None:
        self.sock.close()
