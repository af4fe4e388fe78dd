"""Whisper's words → Deepgram's: normalised text and timestamps a client can trust.

Whisper writes ``" Hello,"`` and often puts an utterance's first word at 0.00 of its window even
when speech starts later; Deepgram's ``word`` is lower case without punctuation, and its words never
overlap nor leave the result's span. Both conversions live here so streaming and files agree.
"""

from __future__ import annotations

import re

from streamproxy.deepgram.types import Word
from streamproxy.engine.whisper.pool import SAMPLE_RATE, DecodedWord

__all__ = ["plain", "to_words"]

_STRIP = re.compile(r"^[^\w']+|[^\w']+$")


def plain(text: str) -> str:
    """Deepgram's ``word``: lower case without surrounding punctuation ("Hello," -> "hello")."""
    return _STRIP.sub("", text.lower()).strip("'")


def to_words(
    decoded: list[DecodedWord], offset: int, lo: int, hi: int, earliest: int, *, punctuate: bool
) -> list[Word]:
    """Absolute, clamped, monotonic words; indices are 16 kHz samples.

    ``offset`` is the decoded audio's start; no word starts before ``earliest`` (the recognizer
    passes the VAD onset less one window, because Whisper's first word often starts at 0.00 of the
    window); words never overlap and never leave ``[lo, hi]``.
    """
    out: list[Word] = []
    prev_end = lo
    for d in decoded:
        text = plain(d.text)
        if not text:
            continue
        s = offset + round(d.start * SAMPLE_RATE)
        e = offset + round(d.end * SAMPLE_RATE)
        s = min(max(s, earliest, prev_end, lo), hi)
        e = min(max(e, s), hi)
        prev_end = e
        out.append(
            Word(
                text,
                s / SAMPLE_RATE,
                e / SAMPLE_RATE,
                min(max(d.probability, 0.0), 1.0),
                d.text if punctuate else None,
            )
        )
    return out
