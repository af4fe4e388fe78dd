"""Whole-file Whisper decoding: faster-whisper's own VAD and 30 s windows, one final per segment.

Files need no utterance-level streaming, so the model segments them itself (better accuracy than
our live VAD); the windows share the process's decode slots with live streams (:mod:`.pool`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from streamproxy.deepgram.types import Result, Word
from streamproxy.engine.dsp import StreamResampler
from streamproxy.engine.whisper.pool import SAMPLE_RATE, DecodePool
from streamproxy.engine.whisper.words import plain

__all__ = ["transcribe_file"]


def transcribe_file(
    pool: DecodePool,
    samples: np.ndarray,
    sample_rate: int,
    *,
    punctuate: bool = False,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[list[Result], float]:
    """Whole-file decoding with word timestamps: one final per Whisper segment.

    ``samples`` is mono int16 at ``sample_rate``; ``progress(done_s, total_s)`` is called after each
    segment (for job progress). Blocking: run it in a worker thread or process.
    """
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
    for seg in pool.segments(audio):
        words: list[Word] = []
        for w in seg.words or ():
            text = w.word.strip()
            word = plain(text)
            if not word:
                continue
            s = min(max(float(w.start), prev_end), duration)
            e = min(max(float(w.end), s), duration)
            prev_end = e
            words.append(Word(word, s, e, min(max(float(w.probability), 0.0), 1.0), text if punctuate else None))
        end = min(max(float(seg.end), prev), duration)
        if words:
            finals.append(Result(prev, end, words, is_final=True, speech_final=True, from_finalize=False))
        prev = end
        if progress is not None:
            progress(end, duration)
    if progress is not None:
        progress(duration, duration)
    return finals, duration
