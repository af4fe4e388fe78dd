"""The engine's recognizer kinds: one recognizer per stream, and a whole file through one.

The live and prerecorded routes both go through here, so a kind behaves the same on either:
the marker kind is cheap and runs inline; pocketsphinx and whisper are blocking (they may load a
model) and must be called off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from streamproxy.deepgram.types import Event, Result
from streamproxy.engine.marker import MarkerRecognizer
from streamproxy.engine.options import LiveOptions
from streamproxy.engine.recognizer import Recognizer, Resampled
from streamproxy.engine.sphinx import SAMPLE_RATE as SPHINX_RATE
from streamproxy.engine.sphinx import SphinxRecognizer, narrowband_pool
from streamproxy.engine.state import EngineState
from streamproxy.engine.whisper.files import transcribe_file
from streamproxy.engine.whisper.gates import Gates
from streamproxy.engine.whisper.pool import DecodePool
from streamproxy.engine.whisper.recognizer import WhisperRecognizer

__all__ = ["DEFAULT_MODELS", "KINDS", "make_recognizer", "release", "transcribe"]

KINDS = ("marker", "pocketsphinx", "whisper")
#: ``model_info`` name of each kind when the operator names none (whisper names its model).
DEFAULT_MODELS = {"marker": "marker", "pocketsphinx": "pocketsphinx-en-us", "whisper": "whisper"}


def make_recognizer(
    kind: str, opts: LiveOptions, whisper_pool: DecodePool | None = None, interim_every_s: float = 0.0
) -> Recognizer:
    """Blocking for pocketsphinx and whisper (may load a model): call it in the executor."""
    if kind == "marker":
        return MarkerRecognizer(opts.sample_rate, **opts.recognizer_kwargs())
    if kind == "whisper":
        assert whisper_pool is not None, "the whisper kind needs its loaded DecodePool"
        return WhisperRecognizer(
            opts.sample_rate,
            pool=whisper_pool,
            formatting=opts.formatting,
            interim_every_s=interim_every_s,
            **opts.recognizer_kwargs(),
        )
    # Its en-us model is 16 kHz: other rates (telephone audio) are resampled.
    pool = narrowband_pool if opts.sample_rate < SPHINX_RATE else None
    sphinx = SphinxRecognizer(SPHINX_RATE, pool=pool, formatting=opts.formatting, **opts.recognizer_kwargs())
    return sphinx if opts.sample_rate == SPHINX_RATE else Resampled(sphinx, opts.sample_rate, SPHINX_RATE)


async def open_recognizer(st: EngineState, opts: LiveOptions) -> Recognizer:
    """One stream's recognizer, built on the engine's executor when it has one (whisper's is)."""
    if st.executor is None:
        return make_recognizer(st.kind, opts)
    every = st.whisper_opts.interim_every_s if st.whisper_opts is not None else 0.0
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(st.executor, make_recognizer, st.kind, opts, st.whisper, every)


def release(rec: Recognizer) -> None:
    """Give back what a recognizer borrowed from its pool (a decoder, a VAD), if it has a ``release``."""
    fn: Callable[[], None] | None = getattr(rec, "release", None)
    if fn is not None:
        fn()


def transcribe(
    kind: str,
    opts: LiveOptions,
    pcm: bytes,
    whisper_pool: DecodePool | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[list[Result], float]:
    """Run a whole file through a recognizer (blocking); ``progress(done_s, total_s)`` for jobs."""
    if kind == "whisper":
        assert whisper_pool is not None, "the whisper kind needs its loaded DecodePool"
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        gates = Gates().transcribe_options()
        return transcribe_file(
            whisper_pool, samples, opts.sample_rate, fmt=opts.formatting, options=gates, progress=progress
        )
    rec = make_recognizer(kind, opts)
    try:
        events: list[Event] = []
        step = len(pcm) if kind == "marker" else 32000 * 2
        for i in range(0, len(pcm), max(step, 2)):
            events += rec.feed(pcm[i : i + step])
            if progress is not None:
                progress(min(i + step, len(pcm)) / 2 / opts.sample_rate, len(pcm) / 2 / opts.sample_rate)
        events += rec.close()
        return [e for e in events if isinstance(e, Result) and e.is_final], rec.position_s
    finally:
        release(rec)
