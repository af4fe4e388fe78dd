"""``streamproxy stream FILE.wav``: play a WAV through a running gateway in real time, print captions.

Finals are printed one line each; on a terminal the current interim result is shown below them
and replaced in place (``terminal.Captions``).
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

from .terminal import Captions


def stream_file(
    path: str,
    url: str,
    *,
    key: str | None = None,
    realtime: bool = True,
    interim: bool = True,
    chunk_ms: int = 100,
    out: TextIO | None = None,
    flux: bool = False,
) -> int:
    """``flux``: stream to ``/v2/listen`` and print turns (each ``EndOfTurn`` a line, ``Update`` as
    the line in progress)."""
    return asyncio.run(
        _stream(path, url, key=key, realtime=realtime, interim=interim, chunk_ms=chunk_ms, out=out, flux=flux)
    )


async def _stream(
    path: str,
    url: str,
    *,
    key: str | None,
    realtime: bool,
    interim: bool,
    chunk_ms: int,
    out: TextIO | None,
    flux: bool = False,
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
    query: dict[str, str | int]
    if flux:
        if channels != 1:
            print(f"streamproxy: {path}: Flux takes mono audio", file=sys.stderr)
            return 2
        query = {"model": "flux-general-en", "encoding": "linear16", "sample_rate": rate}
    else:
        query = {"encoding": "linear16", "sample_rate": rate, "channels": channels}
        query["interim_results"] = str(interim).lower()
    target = url.rstrip("/")
    if target.startswith("http"):
        target = "ws" + target[4:]
    for known in ("/v1/listen", "/v2/listen"):
        target = target.removesuffix(known)
    target += "/v2/listen" if flux else "/v1/listen"
    headers = {"Authorization": f"Token {key}"} if key else None
    step = rate * channels * 2 * chunk_ms // 1000
    try:
        async with (
            websockets.connect(f"{target}?{urlencode(query)}", additional_headers=headers) as ws,
            Captions(out) as printer,
        ):

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
                elif kind == "TurnInfo":
                    if msg["event"] == "EndOfTurn":
                        printer.final(msg["audio_window_start"], msg["transcript"])
                    elif interim and msg["transcript"]:
                        printer.interim(msg["transcript"])
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
