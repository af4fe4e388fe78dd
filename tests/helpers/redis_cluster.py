"""A real 3-master Redis Cluster on free loopback ports, for tests that need one.

Three ``redis-server --cluster-enabled yes`` processes in a temporary directory (no persistence),
joined by ``redis-cli --cluster create`` with no replicas; ready once every node reports
``cluster_state:ok``.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from streamproxy.jobs.redis_embedded import find_redis_server

__all__ = ["RedisCluster", "redis_cluster"]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (port + 10000, fixed by Redis) is free and valid too."""
    for _ in range(1000):
        p = random.randint(20000, 55000)
        if p not in taken and p + 10000 not in taken and _bindable(p) and _bindable(p + 10000):
            return p
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class RedisCluster:
    dir: Path
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, i: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[i]}"

    def owner_of(self, key: str) -> int:
        """Index of the node serving ``key``'s slot."""
        with redis.Redis(port=self.ports[0]) as r:
            slot = int(r.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.ports.index(int(primary[1]))
        raise AssertionError(f"no node serves slot {slot}")

    def not_owner_of(self, key: str) -> int:
        """Index of a node that does *not* serve ``key``: connecting there needs a redirection."""
        return (self.owner_of(key) + 1) % len(self.ports)

    def start(self, n: int = 3) -> None:
        binary = find_redis_server()
        assert binary, "redis-server is required (.ci/run installs it)"
        cli = Path(binary).with_name("redis-cli")
        cli_path = str(cli) if cli.is_file() else shutil.which("redis-cli")
        assert cli_path, "redis-cli is required (Debian package redis-tools; .ci/run installs it)"
        for _ in range(n):
            self.ports.append(cluster_port(self.ports))
        for port in self.ports:
            d = self.dir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d)]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf")]
            args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(d / "log")]
            self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(port, lambda r: bool(r.ping()), "redis-server did not start")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli_path, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for port in self.ports:
            self._wait(port, lambda r: r.cluster("info")["cluster_state"] == "ok", "cluster_state never became ok")

    @staticmethod
    def _wait(port: int, ready: Callable[[redis.Redis], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True) as r:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError, OSError, KeyError):
                    if ready(r):
                        return
                time.sleep(0.05)
        raise RuntimeError(f"{what} (port {port})")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs = []


@contextlib.contextmanager
def redis_cluster(dir: Path, n: int = 3) -> Iterator[RedisCluster]:
    c = RedisCluster(dir)
    try:
        c.start(n)
        yield c
    finally:
        c.stop()
