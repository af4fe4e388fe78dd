"""The systemd units carry the directives operations depend on (notify, watchdog, drain, hardening)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from streamproxy.config import SessionConfig

UNITS = Path(__file__).resolve().parent.parent / "systemd"
HARDENING = {
    "DynamicUser": "yes",
    "StateDirectory": "streamproxy",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "EnvironmentFile": "-/etc/streamproxy/env",
    "Environment": "STREAMPROXY_SERVER_DATA_DIR=%S/streamproxy",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Minimal unit parser: systemd allows repeated keys, which configparser rejects."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _has(service: dict[str, list[str]], key: str, value: str) -> bool:
    return value in service.get(key, [])


@pytest.mark.parametrize("name", ["streamproxy.service", "streamproxy-worker.service"])
def test_hardening(name: str) -> None:
    service = parse_unit(UNITS / name)["Service"]
    for key, value in HARDENING.items():
        assert _has(service, key, value), f"{name}: expected {key}={value}, got {service.get(key)}"
    assert "@system-service" in service["SystemCallFilter"]
    assert parse_unit(UNITS / name)["Install"]["WantedBy"] == ["multi-user.target"]


def test_gateway_unit() -> None:
    service = parse_unit(UNITS / "streamproxy.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == ["/usr/local/bin/streamproxy serve --config /etc/streamproxy/config.toml"]
    assert service["WatchdogSec"] == ["30"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["LimitNOFILE"] == ["262144"]
    # systemd must not SIGKILL before a default drain plus close can finish.
    defaults = SessionConfig()
    assert int(service["TimeoutStopSec"][0]) >= defaults.drain_timeout_s + defaults.close_timeout_s


def test_worker_unit() -> None:
    service = parse_unit(UNITS / "streamproxy-worker.service")["Service"]
    assert service["Type"][0] in ("simple", "notify", "exec")
    assert service["ExecStart"][0].split()[:2] == ["/usr/local/bin/streamproxy", "worker"]
    assert service["Restart"] == ["always"]
    assert int(service["TimeoutStopSec"][0]) >= 60


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The real binary is not installed in a dev checkout; verify checks ExecStart exists.
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace("/usr/local/bin/streamproxy", "/bin/true"))
        copies.append(str(target))
    proc = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
