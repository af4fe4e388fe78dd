"""Command line: ``streamproxy serve | engine | stream | eval | keys | worker | transcribe | config`` (``--help``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .config import ENV_CONFIG_FILE, Config, ConfigError, ServerConfig, load_config, resolve_data_dir


def _load(args: argparse.Namespace, overrides: dict[str, Any]) -> Config:
    path = getattr(args, "config", None) or os.environ.get(ENV_CONFIG_FILE)
    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .serve import run

    overrides = {
        "server.port": args.port,
        "server.host": args.host,
        "engine.kind": args.engine,
        "engine.processes": args.processes,
    }
    cfg = _load(args, overrides)
    setup_logging(cfg.log.level, cfg.log.format)
    run(cfg, lambda: _load(args, overrides))  # the loader re-reads config on SIGHUP
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Client keys: stored as salted scrypt hashes; the secret is printed once, on create."""
    import json

    from .auth.keys import KeyStore, keys_path

    store = KeyStore(keys_path(_load(args, {})))
    if args.keys_command == "create":
        rec, secret = store.create(args.name)
        print(secret)
        print(
            f"created key {rec.id}{f' ({rec.name})' if rec.name else ''} in {store.path}; the secret above is "
            "shown only once. Reload the server to use it: systemctl reload streamproxy (SIGHUP).",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "revoke":
        revoked = store.revoke(args.id)
        if revoked is None:
            print(f"streamproxy: no key with id {args.id!r} in {store.path}", file=sys.stderr)
            return 1
        print(f"revoked key {revoked.id}; reload the server to apply: systemctl reload streamproxy", file=sys.stderr)
        return 0
    records = store.load()
    if args.json:
        print(json.dumps([r.public() for r in records], indent=2))
        return 0
    if not records:
        print(f"no keys in {store.path}", file=sys.stderr)
        return 0
    print(f"{'ID':<14} {'STATUS':<8} {'CREATED':<21} NAME")
    for r in records:
        print(f"{r.id:<14} {'active' if r.active else 'revoked':<8} {r.created:<21} {r.name}")
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from .engine.app import run_engine
    from .engine.whisper.model import ModelNotFound, auto_kind
    from .engine.whisper.pool import WhisperOptions
    from .logs import setup_logging

    setup_logging("info", "json")
    data_dir = args.data_dir or str(resolve_data_dir(ServerConfig()))
    kind = args.kind
    if kind == "auto":
        kind, why = auto_kind(args.model_dir, args.model_package, model=args.model, data_dir=data_dir)
        logging.getLogger("streamproxy.engine").info(
            f"engine kind auto -> {kind}: {why}", extra={"event": "engine_kind", "kind": kind, "reason": why}
        )
    whisper = WhisperOptions(
        model_dir=args.model_dir,
        model_package=args.model_package,
        model=args.model,
        data_dir=data_dir,
        interim_every_s=args.interim_every,
        max_concurrent_decodes=args.max_concurrent_decodes,
        max_decode_wait_s=args.max_decode_wait,
        max_batch=args.max_batch,
    )
    try:
        run_engine(
            args.host, args.port, kind, idle_timeout_s=args.idle_timeout, max_streams=args.max_streams, whisper=whisper
        )
    except ModelNotFound as e:
        print(f"streamproxy engine: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from .stream_client import stream_file

    return stream_file(
        args.file, args.url, key=args.key, realtime=not args.fast, interim=not args.no_interim, flux=args.flux
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamproxy",
        description="Streaming transcription gateway speaking Deepgram's protocol on both sides.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (and the embedded engine when no upstream is set)")
    s.add_argument("--config", help=f"TOML config file (default: ${ENV_CONFIG_FILE} if set, else built-in defaults)")
    s.add_argument("--port", type=int, help="listen port (server.port)")
    s.add_argument("--host", help="listen address (server.host)")
    s.add_argument("--engine", help="embedded engine kind: auto, whisper, pocketsphinx, marker (engine.kind)")
    s.add_argument("--processes", type=int, help="embedded engine processes (engine.processes)")
    s.set_defaults(func=cmd_serve)

    e = sub.add_parser("engine", help="run one embedded recogniser process speaking Deepgram Live")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8081)
    e.add_argument(
        "--kind",
        default="auto",
        choices=("auto", "whisper", "pocketsphinx", "marker"),
        help="auto = whisper when its model is available, else pocketsphinx",
    )
    e.add_argument("--idle-timeout", type=float, default=10.0, help="close idle streams (s), like Deepgram")
    e.add_argument("--model-dir", default="", help="CTranslate2 Whisper model directory (engine.model_dir)")
    e.add_argument(
        "--model-package",
        default="auto",
        help='Whisper weights package: auto = the one of --model, "" = do not look (engine.model_package)',
    )
    e.add_argument("--model", default="tiny.en", choices=("tiny.en", "base"), help="Whisper model (engine.model)")
    e.add_argument("--data-dir", default="", help="where a split model package is put together (server.data_dir)")
    e.add_argument("--max-streams", type=int, default=0, help="streams before 429, 0 = unlimited (engine.max_streams)")
    e.add_argument(
        "--max-concurrent-decodes", type=int, default=2, help="whisper decodes at once (engine.max_concurrent_decodes)"
    )
    e.add_argument(
        "--max-decode-wait", type=float, default=5.0, help="seconds before Error + 1013 (engine.max_decode_wait_s)"
    )
    e.add_argument(
        "--max-batch", type=int, default=8, help="utterances of several streams per decode (engine.max_batch)"
    )
    e.add_argument(
        "--interim-every", type=float, default=0.0, help="whisper interims, 0 = off (engine.interim_every_s)"
    )
    e.set_defaults(func=cmd_engine)

    st = sub.add_parser("stream", help="stream a WAV file in real time and print live captions")
    st.add_argument("file", help="WAV file (PCM 16-bit)")
    st.add_argument("--url", default="ws://127.0.0.1:8080", help="gateway base URL")
    st.add_argument("--key", default=os.environ.get("STREAMPROXY_KEY"), help="client key ($STREAMPROXY_KEY)")
    st.add_argument("--fast", action="store_true", help="send as fast as possible instead of real time")
    st.add_argument("--no-interim", action="store_true", help="finals only")
    st.add_argument("--flux", action="store_true", help="use Flux (/v2/listen): one line per turn")
    st.set_defaults(func=cmd_stream)

    k = sub.add_parser("keys", help="manage client API keys (create, list, revoke)")
    k.add_argument("--config", help=f"TOML config file (default: ${ENV_CONFIG_FILE} if set); keys go to auth.keys_file")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key and print its secret (shown only once)")
    kc.add_argument("--name", default="", help="a label for the key, e.g. who uses it")
    kl = ksub.add_parser("list", help="list keys (ids, names, status; never secrets)")
    kl.add_argument("--json", action="store_true", help="machine-readable output")
    kr = ksub.add_parser("revoke", help="revoke a key by id (tokens granted with it stop working too)")
    kr.add_argument("id", help="key id, as shown by keys list")
    k.set_defaults(func=cmd_keys)
    from .config_init import add_config_commands
    from .eval.cli import add_eval_command
    from .jobs.cli import add_job_commands  # worker, transcribe

    add_eval_command(sub)
    add_job_commands(sub, _load)
    add_config_commands(sub)
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
