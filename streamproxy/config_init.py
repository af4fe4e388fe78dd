"""``streamproxy config init [PATH]``: write the documented example configuration.

The example is the repository's ``config.toml``, shipped inside the package as
``streamproxy/config.example.toml`` so that it works from an installed wheel too. It lists every
key at its default, so the written file starts the service exactly as no file would, and is the
place to edit (for systemd: ``/etc/streamproxy/config.toml``, which the units read).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PATH", "add_config_commands", "example_text", "write_example"]

DEFAULT_PATH = "/etc/streamproxy/config.toml"


def example_text() -> str:
    return files("streamproxy").joinpath("config.example.toml").read_text(encoding="utf-8")


class InitError(Exception):
    """What stops ``config init``, as a sentence for the operator."""


def write_example(path: Path, *, force: bool = False) -> None:
    """Write the example to ``path`` (parents created), atomically; never overwrite unless ``force``."""
    if path.is_dir():
        raise InitError(f"{path} is a directory; give the file name, e.g. {path / 'config.toml'}")
    if path.exists() and not force:
        raise InitError(f"{path} already exists; not overwriting it (use --force to replace it)")
    text = example_text()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            # Readable by the service's dynamic user (secrets belong in /etc/streamproxy/env, 0600).
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise InitError(f"cannot write {path}: {exc.strerror or exc}") from None


def add_config_commands(sub: Any) -> None:
    c = sub.add_parser("config", help="configuration files: init writes the documented example")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="init")
    i = csub.add_parser(
        "init",
        help="write the documented example config (every key at its default)",
        description="Write the documented example configuration: every key with its default and what it means.",
    )
    i.add_argument(
        "path", nargs="?", default=DEFAULT_PATH, help=f"where to write it (default {DEFAULT_PATH}; - = stdout)"
    )
    i.add_argument("--force", action="store_true", help="replace the file if it exists")

    def cmd_config_init(args: argparse.Namespace) -> int:
        if args.path == "-":
            sys.stdout.write(example_text())
            return 0
        path = Path(args.path)
        try:
            write_example(path, force=args.force)
        except InitError as exc:
            print(f"streamproxy config init: {exc}", file=sys.stderr)
            return 1
        print(
            f"wrote {path}: every key at its default. Edit it, then start (or restart) streamproxy with "
            f"--config {path}.",
            file=sys.stderr,
        )
        return 0

    i.set_defaults(func=cmd_config_init)
