"""Command line: ``streamproxy serve | engine | stream``; each subcommand has ``--help``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .config import ENV_CONFIG_FILE, Config, ConfigError, load_config


def _load(args: argparse.Namespace, overrides: dict[str, Any]) -> Config:
    path = getattr(args, "config", None) or os.environ.get(ENV_CONFIG_FILE)
    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .serve import run

    cfg = _load(
        args,
        {
            "server.port": args.port,
            "server.host": args.host,
            "engine.kind": args.engine,
            "engine.processes": args.processes,
        },
    )
    setup_logging(cfg.log.level, cfg.log.format)
    run(cfg)
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from .engine.server import run_engine
    from .logs import setup_logging

    setup_logging("info", "json")
    kind = args.kind
    if kind == "auto":
        kind = "pocketsphinx"
    run_engine(args.host, args.port, kind, idle_timeout_s=args.idle_timeout)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from .stream_client import stream_file

    return stream_file(args.file, args.url, key=args.key, realtime=not args.fast, interim=not args.no_interim)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamproxy",
        description="Streaming transcription gateway speaking Deepgram's protocol on both sides.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (and the embedded engine when no upstream is set)")
    s.add_argument(
        "--config", help=f"TOML config file (default: ${ENV_CONFIG_FILE} if set, else built-in defaults)"
    )
    s.add_argument("--port", type=int, help="listen port (server.port)")
    s.add_argument("--host", help="listen address (server.host)")
    s.add_argument("--engine", help="embedded engine kind: auto, pocketsphinx, marker (engine.kind)")
    s.add_argument("--processes", type=int, help="embedded engine processes (engine.processes)")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("engine", help="run one embedded recogniser process speaking Deepgram Live")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8081)
    e.add_argument("--kind", default="auto", choices=("auto", "pocketsphinx", "marker"))
    e.add_argument("--idle-timeout", type=float, default=10.0, help="close idle streams (s), like Deepgram")
    e.add_argument("--model-dir", default="", help="model directory (reserved for the whisper kind)")
    e.set_defaults(func=cmd_engine)

    st = sub.add_parser("stream", help="stream a WAV file in real time and print live captions")
    st.add_argument("file", help="WAV file (PCM 16-bit)")
    st.add_argument("--url", default="ws://127.0.0.1:8080", help="gateway base URL")
    st.add_argument("--key", default=os.environ.get("STREAMPROXY_KEY"), help="client key ($STREAMPROXY_KEY)")
    st.add_argument("--fast", action="store_true", help="send as fast as possible instead of real time")
    st.add_argument("--no-interim", action="store_true", help="finals only")
    st.set_defaults(func=cmd_stream)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"streamproxy: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
