"""``streamproxy config init [PATH]``: the documented example, written where systemd reads it,
loads to exactly the defaults and starts ``serve``; existing files are never overwritten by
accident; bad paths get a clear error."""

from __future__ import annotations

import os
import signal
import stat
import tomllib
from pathlib import Path

from streamproxy.config import Config, load_config
from streamproxy.config_init import example_text
from tests.helpers.serve_proc import REPO, cli, serve_proc


def test_packaged_example_is_the_documented_one() -> None:
    """The package carries the repository's config.toml (a link to it), so an installed wheel writes it."""
    assert example_text() == (REPO / "config.toml").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "config.example.toml" in pyproject["tool"]["setuptools"]["package-data"]["streamproxy"]


def test_config_init_writes_defaults_and_serve_starts_with_it(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "streamproxy" / "config.toml"  # parents do not exist yet
    r = cli(tmp_path, "config", "init", str(target))
    assert r.returncode == 0, r.stderr
    assert f"wrote {target}" in r.stderr
    assert target.read_text() == (REPO / "config.toml").read_text()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644  # readable by the service's dynamic user
    assert load_config(target, env={}) == Config()
    assert not [p for p in target.parent.iterdir() if p.name != "config.toml"], "no temporary file left"

    # What the systemd unit runs: serve --config <that file> (marker engine and port 0 from the env).
    with serve_proc(tmp_path / "data", "--config", str(target)) as sp:
        assert sp.port > 0
        sp.signal(signal.SIGTERM)
        assert sp.wait(20) == 0


def test_config_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    assert cli(tmp_path, "config", "init", str(target)).returncode == 0
    target.write_text("[server]\nport = 9000\n")
    again = cli(tmp_path, "config", "init", str(target))
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert target.read_text() == "[server]\nport = 9000\n"
    forced = cli(tmp_path, "config", "init", "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    assert load_config(target, env={}) == Config()


def test_config_init_stdout_and_bad_paths(tmp_path: Path) -> None:
    out = cli(tmp_path, "config", "init", "-")
    assert out.returncode == 0 and out.stdout == (REPO / "config.toml").read_text()

    d = cli(tmp_path, "config", "init", str(tmp_path))
    assert d.returncode == 1 and "is a directory" in d.stderr and str(tmp_path / "config.toml") in d.stderr

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    bad = cli(tmp_path, "config", "init", str(blocker / "config.toml"))
    assert bad.returncode == 1 and "cannot write" in bad.stderr and str(blocker) in bad.stderr

    missing = cli(tmp_path, "config")
    assert missing.returncode == 2 and "init" in missing.stderr
    helptext = cli(tmp_path, "config", "init", "--help").stdout
    assert "/etc/streamproxy/config.toml" in helptext and "--force" in helptext
