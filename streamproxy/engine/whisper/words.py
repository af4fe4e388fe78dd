"""Whisper's words → Deepgram's: timestamps a client can trust, then Deepgram's formatting.

Whisper often puts an utterance's first word at 0.00 of its window even when speech starts later;
Deepgram's words never overlap nor leave the result's span. The times are fixed here, the text
is formatted by :mod:`streamproxy.engine.formatting`, so streaming and files agree.
"""

from __future__ import annotations

from streamproxy.deepgram.types import Word
from streamproxy.engine.formatting import Formatting, Token, format_words, spoken
from streamproxy.engine.whisper.pool import SAMPLE_RATE, DecodedWord

__all__ = ["to_words"]


def to_words(
    decoded: list[DecodedWord], offset: int, lo: int, hi: int, earliest: int, *, fmt: Formatting
) -> list[Word]:
    """Absolute, clamped, monotonic, formatted words; indices are 16 kHz samples.

    ``offset`` is the decoded audio's start; no word starts before ``earliest`` (the recognizer
    passes the VAD onset less one window, because Whisper's first word often starts at 0.00 of the
    window); words never overlap and never leave ``[lo, hi]``.
    """
    tokens: list[Token] = []
    prev_end = lo
    for d in decoded:
        if not spoken(d.text):
            continue  # punctuation alone ("..."): no word, and no time taken from the next one
        s = offset + round(d.start * SAMPLE_RATE)
        e = offset + round(d.end * SAMPLE_RATE)
        s = min(max(s, earliest, prev_end, lo), hi)
        e = min(max(e, s), hi)
        prev_end = e
        tokens.append(Token(d.text, s / SAMPLE_RATE, e / SAMPLE_RATE, d.probability))
    return format_words(tokens, fmt)
