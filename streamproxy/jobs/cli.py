"""``streamproxy worker`` and ``streamproxy transcribe FILE|URL``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..config import Config
from ..terminal import ProgressDisplay

__all__ = ["add_job_commands", "transcribe_main"]

Loader = Callable[[argparse.Namespace, dict[str, Any]], Config]


def add_job_commands(sub: Any, load: Loader) -> None:
    w = sub.add_parser("worker", help="process queued file jobs (BullMQ on the configured Redis)")
    w.add_argument("--config", help="TOML config file (default: $STREAMPROXY_CONFIG if set, else built-in defaults)")
    w.add_argument("--concurrency", type=int, help="jobs processed at once (queue.concurrency, default 10)")
    w.add_argument(
        "--metrics-port", type=_port, metavar="N",
        help="serve this worker's Prometheus metrics at http://HOST:N/metrics (0 = any free port; default: off)",
    )  # fmt: skip
    w.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")

    def cmd_worker(args: argparse.Namespace) -> int:
        from ..logs import setup_logging
        from .worker import run_worker

        cfg = load(args, {"queue.concurrency": args.concurrency})
        setup_logging(cfg.log.level, cfg.log.format)
        run_worker(cfg, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
        return 0

    w.set_defaults(func=cmd_worker)

    t = sub.add_parser("transcribe", help="transcribe a file or URL through a gateway, with a progress bar")
    t.add_argument("source", metavar="FILE|URL", help="audio file (WAV, FLAC, ...) or an http(s) URL")
    t.add_argument("--mode", choices=("auto", "sync", "async"), default="auto", help="routing (default: auto)")
    t.add_argument("--wait", action="store_true", help="for a queued (async) job, wait and print the result")
    t.add_argument("--json", action="store_true", help="print the full JSON response instead of the transcript")
    t.add_argument("--url", default="http://127.0.0.1:8080", help="gateway base URL")
    t.add_argument("--key", default=os.environ.get("STREAMPROXY_KEY"), help="client key ($STREAMPROXY_KEY)")
    t.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="Deepgram query parameter, repeatable (e.g. model=nova-3, encoding=linear16, sample_rate=16000)",
    )  # fmt: skip

    def cmd_transcribe(args: argparse.Namespace) -> int:
        return asyncio.run(transcribe_main(args))

    t.set_defaults(func=cmd_transcribe)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {port}")
    return port


def _transcript(result: Any) -> str:
    try:
        return str(result["results"]["channels"][0]["alternatives"][0]["transcript"])
    except (KeyError, IndexError, TypeError):
        return ""


async def _chunks(data: bytes, bar: ProgressDisplay, size: int = 1 << 16) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        bar.show((i + size) / max(len(data), 1), "uploading")
        yield data[i : i + size]
        await asyncio.sleep(0)


async def _spin(bar: ProgressDisplay, label: str) -> None:
    while True:
        bar.show(None, label)
        await asyncio.sleep(0.25)


def _emit(result: Any, as_json: bool) -> None:
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if as_json else _transcript(result))


async def transcribe_main(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/").replace("ws://", "http://").replace("wss://", "https://")
    headers = {"Authorization": f"Token {args.key}"} if args.key else {}
    query: list[tuple[str, str]] = [("mode", args.mode)]
    for p in args.param:
        k, sep, v = p.partition("=")
        if not sep:
            print(f"streamproxy: --param expects KEY=VALUE, got {p!r}", file=sys.stderr)
            return 2
        query.append((k, v))
    bar = ProgressDisplay()  # rich on a terminal, plain lines otherwise
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        src: str = args.source
        if src.startswith(("http://", "https://")):
            req: dict[str, Any] = {"json": {"url": src}}
        else:
            try:
                data = await asyncio.to_thread(Path(src).read_bytes)
            except OSError as exc:
                print(f"streamproxy: cannot read {src}: {exc.strerror or exc}", file=sys.stderr)
                return 2
            ctype = "audio/wav" if data.startswith(b"RIFF") else "application/octet-stream"
            req = {"data": _chunks(data, bar), "headers": {"Content-Type": ctype}}
        spinner: asyncio.Task[None] | None = None
        try:
            async with http.post(f"{base}/v1/transcribe", params=query, **req) as resp:
                spinner = asyncio.create_task(_spin(bar, "transcribing"))
                body = await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            bar.done()
            print(f"streamproxy: cannot reach {base}: {exc}", file=sys.stderr)
            return 1
        finally:
            if spinner is not None:
                spinner.cancel()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = {"err_msg": body[:300].decode(errors="replace")}
        if status == 200:
            bar.done()
            _emit(doc, args.json)
            return 0
        if status != 202:
            bar.done()
            print(f"streamproxy: HTTP {status}: {doc.get('err_msg', doc)}", file=sys.stderr)
            return 1
        job_id = str(doc["job_id"])
        if not args.wait:
            bar.done()
            print(orjson.dumps(doc).decode() if args.json else job_id)
            return 0
        while True:
            async with http.get(f"{base}/v1/jobs/{job_id}") as r:
                st = orjson.loads(await r.read())
                if r.status != 200:
                    bar.done()
                    print(f"streamproxy: HTTP {r.status}: {st.get('err_msg', st)}", file=sys.stderr)
                    return 1
            state = st.get("state")
            label = f"{state} (attempt {max(st.get('attempts', 0), 0) + (state == 'active')}/{st.get('max_attempts')})"
            bar.show(float(st.get("progress") or 0) / 100, label)
            if state == "completed":
                bar.done()
                _emit(st["result"], args.json)
                return 0
            if state in ("failed", "cancelled", "deleted"):
                bar.done()
                print(f"streamproxy: job {job_id} {state}: {st.get('error', '')}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
