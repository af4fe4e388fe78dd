"""Stream utterances through a Deepgram Live endpoint at real time and time what comes back.

Each file is one ``/v1/listen`` session: linear16 at the WAV's rate and channels, ``chunk_ms``
chunks on an absolute real-time schedule, then ``CloseStream``. The send time of every chunk is
stamped on the client's monotonic clock, and every result is stamped on arrival, so latencies are
measured by the client alone and mean the same against the gateway or Deepgram itself:

* **final latency** (one per final that has words): arrival of the final minus the send time of
  the chunk holding the end of its last word;
* **first-word latency** (one per file): arrival of the first result, interim or final, that has a
  word, minus the send time of the chunk holding the end of that word.

Word ends are the results' own timestamps, so a recogniser with coarse timestamps shifts these
figures by its error (Whisper's word times are within ~0.1 s on speech).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import websockets

from .corpus import Utterance

ProgressFn = Callable[[float], None]  # called with audio seconds just sent


@dataclass
class Stream:
    """What one file's session produced."""

    id: str
    reference: str
    audio_s: float
    finals: list[str] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)
    first_word_latency: float | None = None
    error: str | None = None

    @property
    def hypothesis(self) -> str:
        return " ".join(t for t in self.finals if t)


def listen_url(base: str, query: dict[str, str | int]) -> str:
    """``base`` (http(s)/ws(s), with or without ``/v1/listen``) as the Live URL with ``query``."""
    target = base.rstrip("/")
    if target.startswith("http"):
        target = "ws" + target[4:]
    parts = urlsplit(target)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"--url {base!r}: expected ws://host:port, wss://host, http(s)://host")
    if not target.endswith("/v1/listen"):
        target += "/v1/listen"
    return f"{target}?{urlencode(query)}"


def _word_end(alt: dict[str, Any], last: bool) -> float | None:
    words = alt.get("words") or []
    if not words:
        return None
    w = words[-1] if last else words[0]
    return float(w["end"])


async def stream_one(
    utt: Utterance,
    base_url: str,
    *,
    params: dict[str, str] | None = None,
    key: str | None = None,
    chunk_ms: int = 100,
    realtime: bool = True,
    timeout_s: float = 30.0,
    progress: ProgressFn | None = None,
) -> Stream:
    """One session for ``utt``; failures (refused, Error, abnormal close, timeout) go to ``error``."""
    wav = utt.read()
    out = Stream(utt.id, utt.text, wav.seconds)
    query: dict[str, str | int] = {
        "encoding": "linear16",
        "sample_rate": wav.sample_rate,
        "channels": wav.channels,
        "interim_results": "true",
    }
    query.update(params or {})
    url = listen_url(base_url, query)
    headers = {"Authorization": f"Token {key}"} if key else None
    frame_bytes = wav.sample_rate * wav.channels * 2 * chunk_ms // 1000
    # sent[i] = (audio seconds covered after chunk i, monotonic send time)
    sent_pos: list[float] = []
    sent_at: list[float] = []
    bytes_per_s = wav.sample_rate * wav.channels * 2

    def sent_time(t_audio: float) -> float | None:
        i = bisect_left(sent_pos, t_audio - 1e-9)
        return sent_at[i] if i < len(sent_at) else None

    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=15, max_size=None) as ws:

            async def send() -> None:
                t0 = time.monotonic()
                for i, pos in enumerate(range(0, len(wav.pcm), frame_bytes)):
                    if realtime:
                        await asyncio.sleep(max(0.0, t0 + i * chunk_ms / 1000 - time.monotonic()))
                    chunk = wav.pcm[pos : pos + frame_bytes]
                    await ws.send(chunk)
                    sent_pos.append((pos + len(chunk)) / bytes_per_s)
                    sent_at.append(time.monotonic())
                    if progress is not None:
                        progress(len(chunk) / bytes_per_s)
                await ws.send('{"type":"CloseStream"}')

            sender = asyncio.create_task(send())

            async def receive() -> None:
                async for raw in ws:
                    now = time.monotonic()
                    if isinstance(raw, bytes):
                        continue
                    msg = orjson.loads(raw)
                    kind = msg.get("type")
                    if kind == "Error":
                        out.error = out.error or f"Error {msg.get('err_code', '')}: {msg.get('description') or msg}"
                        continue
                    if kind != "Results":
                        continue
                    alt = msg["channel"]["alternatives"][0]
                    first_end = _word_end(alt, last=False)
                    if out.first_word_latency is None and first_end is not None:
                        t = sent_time(first_end)
                        if t is not None:
                            out.first_word_latency = max(0.0, now - t)
                    if msg.get("is_final"):
                        out.finals.append(alt.get("transcript", ""))
                        last_end = _word_end(alt, last=True)
                        t = sent_time(last_end) if last_end is not None else None
                        if t is not None:
                            out.final_latencies.append(max(0.0, now - t))

            receiver = asyncio.create_task(receive())
            try:
                await sender
                await asyncio.wait_for(receiver, timeout_s)
            except TimeoutError:
                out.error = out.error or f"no close within {timeout_s:g} s after the audio"
            finally:
                for task in (sender, receiver):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await task
            if out.error is None and ws.close_code not in (1000, None):
                out.error = f"closed with {ws.close_code} {ws.close_reason}".strip()
    except websockets.InvalidStatus as e:
        out.error = f"handshake refused: HTTP {e.response.status_code}"
    except (OSError, websockets.WebSocketException) as e:
        out.error = f"cannot stream to {url.split('?')[0]}: {e}"
    return out


async def run(
    items: Sequence[Utterance],
    base_url: str,
    *,
    concurrency: int = 1,
    progress: ProgressFn | None = None,
    **kw: Any,
) -> list[Stream]:
    """Every utterance, at most ``concurrency`` at once, results in the order of ``items``."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)

    async def one(u: Utterance) -> Stream:
        async with gate:
            return await stream_one(u, base_url, progress=progress, **kw)

    return list(await asyncio.gather(*(one(u) for u in items)))
