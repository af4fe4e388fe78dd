"""The units' hardening as systemd itself scores it (``systemd-analyze security --offline``).

Left open: the network (it is a gateway), AF_UNIX (the embedded Redis), and @resources syscalls,
writable-executable memory and /proc's non-process files, which the native ASR libraries may use.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_systemd_units import UNITS, parse_unit

MAX_EXPOSURE = 1.2  # was 1.5 before PrivateMounts/PrivateUsers


@pytest.mark.parametrize("name", ["streamproxy.service", "streamproxy-worker.service"])
def test_systemd_analyze_security_exposure(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (Debian: apt-get install systemd; .ci/run installs it)"
    unit = tmp_path / name
    unit.write_text((UNITS / name).read_text().replace("/usr/local/bin/streamproxy", "/bin/true"))
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout
    service = parse_unit(UNITS / name)["Service"]
    assert service["PrivateMounts"] == ["yes"] and service["PrivateUsers"] == ["yes"]


def test_worker_unit_exports_metrics() -> None:
    service = parse_unit(UNITS / "streamproxy-worker.service")["Service"]
    assert "--metrics-port 9101" in service["ExecStart"][0]
