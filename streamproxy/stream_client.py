"""``streamproxy stream FILE.wav``: play a WAV through a running gateway in real time, print captions.

Interim results overwrite the current line in place; finals are kept, one line each.
"""

from __future__ import annotations

import asyncio
import sys
import time
import wave
from typing import TextIO
from urllib.parse import urlencode

import orjson
import websockets


class CaptionPrinter:
    """Terminal captions: the interim line is redrawn, finals scroll."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._interim = False

    def interim(self, text: str) -> None:
        if not self.tty or not text:
            return
        self.out.write("\r\x1b[2K\x1b[2m" + text + "\x1b[0m")
        self.out.flush()
        self._interim = True

    def final(self, start: float, text: str) -> None:
        if self._interim:
            self.out.write("\r\x1b[2K")
            self._interim = False
        if text:
            self.out.write(f"[{start:7.2f}] {text}\n")
            self.out.flush()


def stream_file(
    path: str,
    url: str,
    *,
    key: str | None = None,
    realtime: bool = True,
    interim: bool = True,
    chunk_ms: int = 100,
    out: TextIO | None = None,
) -> int:
    return asyncio.run(_stream(path, url, key=key, realtime=realtime, interim=interim, chunk_ms=chunk_ms, out=out))


async def _stream(
    path: str, url: str, *, key: str | None, realtime: bool, interim: bool, chunk_ms: int, out: TextIO | None
) -> int:
    out = out or sys.stdout
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                print(f"streamproxy: {path}: only 16-bit PCM WAV is supported", file=sys.stderr)
                return 2
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as e:
        print(f"streamproxy: cannot read {path}: {e}", file=sys.stderr)
        return 2
    query = {"encoding": "linear16", "sample_rate": rate, "channels": channels, "interim_results": str(interim).lower()}
    target = url.rstrip("/")
    if target.startswith("http"):
        target = "ws" + target[4:]
    if not target.endswith("/v1/listen"):
        target += "/v1/listen"
    headers = {"Authorization": f"Token {key}"} if key else None
    printer = CaptionPrinter(out, out.isatty())
    step = rate * channels * 2 * chunk_ms // 1000
    try:
        async with websockets.connect(f"{target}?{urlencode(query)}", additional_headers=headers) as ws:

            async def send() -> None:
                t0 = time.monotonic()
                for i, pos in enumerate(range(0, len(pcm), step)):
                    await ws.send(pcm[pos : pos + step])
                    if realtime:
                        await asyncio.sleep(max(0.0, t0 + (i + 1) * chunk_ms / 1000 - time.monotonic()))
                await ws.send('{"type":"CloseStream"}')

            sender = asyncio.create_task(send())
            async for raw in ws:
                msg = orjson.loads(raw)
                kind = msg.get("type")
                if kind == "Results":
                    alt = msg["channel"]["alternatives"][0]
                    if msg.get("is_final"):
                        printer.final(msg["start"], alt["transcript"])
                    else:
                        printer.interim(alt["transcript"])
                elif kind == "Error":
                    print(f"streamproxy: error: {msg.get('description') or msg}", file=sys.stderr)
            await sender
            if ws.close_code not in (1000, None):
                print(f"streamproxy: closed with {ws.close_code} {ws.close_reason}", file=sys.stderr)
                return 1
    except (OSError, websockets.WebSocketException) as e:
        print(f"streamproxy: cannot stream to {target}: {e}", file=sys.stderr)
        return 1
    return 0
