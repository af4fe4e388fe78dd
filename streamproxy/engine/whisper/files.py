"""Whole-file Whisper decoding: faster-whisper's own VAD and 30 s windows, one final per segment.

Files need no utterance-level streaming, so the model segments them itself (better accuracy than
our live VAD); the windows share the process's decode slots with live streams (:mod:`.pool`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from streamproxy.deepgram.types import Result
from streamproxy.engine.dsp import StreamResampler
from streamproxy.engine.formatting import Formatting, Token, format_words
from streamproxy.engine.whisper.pool import SAMPLE_RATE, DecodePool

__all__ = ["transcribe_file"]


def transcribe_file(
    pool: DecodePool,
    samples: np.ndarray,
    sample_rate: int,
    *,
    fmt: Formatting | None = None,
    options: Mapping[str, Any] | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[list[Result], float]:
    """Whole-file decoding with word timestamps: one final per Whisper segment.

    ``samples`` is mono int16 at ``sample_rate``; ``progress(done_s, total_s)`` is called after each
    segment (for job progress); ``options`` are extra faster-whisper ``transcribe`` keywords (the
    gates). Blocking: run it in a worker thread or process.
    """
    fmt = fmt or Formatting()
    duration = samples.size / sample_rate if sample_rate else 0.0
    if samples.size == 0:
        return [], 0.0
    if sample_rate != SAMPLE_RATE:
        r = StreamResampler(sample_rate, SAMPLE_RATE)
        audio = np.concatenate([r(samples.astype("<i2", copy=False)), r.flush()])
    else:
        audio = samples.astype(np.float32) / 32768.0
    finals: list[Result] = []
    prev = 0.0
    prev_end = 0.0
    for seg in pool.segments(audio, options):
        tokens: list[Token] = []
        for w in seg.words or ():
            if not w.word.strip():
                continue
            s = min(max(float(w.start), prev_end), duration)
            e = min(max(float(w.end), s), duration)
            prev_end = e
            tokens.append(Token(w.word, s, e, float(w.probability)))
        words = format_words(tokens, fmt)
        end = min(max(float(seg.end), prev), duration)
        if words:
            finals.append(Result(prev, end, words, is_final=True, speech_final=True, from_finalize=False))
        prev = end
        if progress is not None:
            progress(end, duration)
    if progress is not None:
        progress(duration, duration)
    return finals, duration
