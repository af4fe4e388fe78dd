"""``streamproxy eval MANIFEST|DIR``: the recognition regression gate (WER, SER, latency, baseline).

Exit status: 0 = done (and no WER rise over the baseline), 1 = WER rose by ``--max-rise`` points or
more over ``--baseline``, or a stream failed; 2 = bad input (manifest, audio, baseline, options).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..terminal import ProgressDisplay
from . import corpus, report, runner

__all__ = ["add_eval_command", "eval_main"]


def _param(s: str) -> tuple[str, str]:
    key, sep, value = s.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    return key, value


def _positive(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_eval_command(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        help="stream WAVs with reference texts through a gateway (or Deepgram) in real time: WER, SER, latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "source",
        metavar="MANIFEST|DIR",
        help='JSONL ({"audio": "a.wav", "text": "..."} a line) or CSV (audio,text header) manifest, '
        "or a folder of *.wav with sibling .txt references; 'real' / 'phone': the built-in read / telephone sets",
    )
    e.add_argument("--url", default="ws://127.0.0.1:8080", help="gateway or Deepgram base URL (default: local serve)")
    e.add_argument(
        "--key",
        help="sent as 'Authorization: Token KEY' (default: $STREAMPROXY_KEY; for *.deepgram.com $DEEPGRAM_API_KEY)",
    )
    e.add_argument(
        "--param", action="append", default=[], type=_param, metavar="KEY=VALUE",
        help="extra Live query parameter, repeatable (e.g. model=nova-3, endpointing=300)",
    )  # fmt: skip
    e.add_argument("--concurrency", type=_positive, default=1, help="files streamed at once (default 1)")
    e.add_argument("--chunk-ms", type=_positive, default=100, help="audio per message in ms (default 100)")
    e.add_argument("--fast", action="store_true", help="send as fast as possible (latencies then mean nothing)")
    e.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the close after the audio")
    e.add_argument("--baseline", type=Path, help="a previous --json report: exit 1 if WER rose by --max-rise points")
    e.add_argument("--max-rise", type=float, default=1.0, help="WER rise in points that fails the gate (default 1)")
    e.add_argument("--json", type=Path, metavar="OUT", help="write the report (per file and overall) here")
    e.add_argument("--alignments", action="store_true", help="print the word alignment of each file with errors")
    e.set_defaults(func=eval_main)


def _key(args: argparse.Namespace) -> str | None:
    if args.key:
        return str(args.key)
    host = urlsplit(args.url if "//" in args.url else f"//{args.url}").hostname or ""
    if host == "deepgram.com" or host.endswith(".deepgram.com"):
        return os.environ.get("DEEPGRAM_API_KEY") or None  # only ever sent to Deepgram itself
    return os.environ.get("STREAMPROXY_KEY") or None


def _fail(msg: str) -> int:
    print(f"streamproxy eval: {msg}", file=sys.stderr)
    return 2


def eval_main(args: argparse.Namespace) -> int:
    try:
        items = corpus.load(args.source)
        baseline = report.load_baseline(args.baseline) if args.baseline else None
        runner.listen_url(args.url, {})
    except (corpus.CorpusError, report.BaselineError, ValueError) as e:
        return _fail(str(e))
    if args.timeout <= 0:
        return _fail(f"--timeout must be positive, got {args.timeout}")

    total_s = sum(u.read().seconds for u in items) or 1.0
    bar = ProgressDisplay()  # a rich bar on a terminal; nothing when piped (the table says it all)
    sent = [0.0]

    def progress(seconds: float) -> None:
        sent[0] += seconds
        if bar.tty:
            bar.show(sent[0] / total_s, f"eval: {len(items)} files, {sent[0]:.0f}/{total_s:.0f} s of audio sent")

    params = dict(args.param)
    started = time.time()
    streams = asyncio.run(
        runner.run(
            items,
            args.url,
            concurrency=args.concurrency,
            progress=progress,
            params=params,
            key=_key(args),
            chunk_ms=args.chunk_ms,
            realtime=not args.fast,
            timeout_s=args.timeout,
        )
    )
    bar.done()
    meta = {
        "url": args.url,
        "params": params,
        "source": str(args.source),
        "concurrency": args.concurrency,
        "chunk_ms": args.chunk_ms,
        "realtime": not args.fast,
        "started_unix": started,
        "wall_s": time.time() - started,
    }
    rep = report.build(streams, meta)
    status = 0
    if rep["overall"]["failed"]:
        status = 1
    g = report.gate(rep, baseline, args.max_rise) if baseline is not None else None
    if g is not None:
        rep["gate"] = g.as_dict()
    report.print_table(rep, sys.stdout, alignments=args.alignments)
    for f in rep["files"]:
        if f["error"]:
            print(f"streamproxy eval: {f['id']}: {f['error']}", file=sys.stderr)
    if g is not None:
        verdict = "FAIL" if g.failed else "ok"
        print(
            f"baseline: WER {g.baseline_wer * 100:.1f} % -> {g.wer * 100:.1f} % ({g.rise_points:+.1f} points; "
            f"fails at +{g.max_rise_points:g}): {verdict}"
        )
        if g.failed:
            status = 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")
    return status
