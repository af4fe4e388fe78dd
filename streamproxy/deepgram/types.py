"""What a transcript is made of: words, result spans and VAD events, in seconds of audio.

Recognizers produce these; :mod:`.messages` turns them into Deepgram JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "Result", "SpeechStarted", "UtteranceEnd", "Word", "span_result"]


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; times in seconds of audio from stream start."""

    word: str
    start: float
    end: float
    confidence: float
    punctuated_word: str | None = None  # cased and punctuated form ("Hello,"), when the engine has one


@dataclass(frozen=True, slots=True)
class Result:
    """A transcript span ``[start, end)``.

    ``duration`` is set by recognizers that know the span in integer samples, so that
    ``duration == (c - L) / sr`` exactly rather than ``end - start`` with float rounding.
    """

    start: float
    end: float
    words: list[Word]
    is_final: bool
    speech_final: bool
    from_finalize: bool
    duration: float | None = None

    @property
    def span(self) -> float:
        """Duration to report: the exact one when known."""
        return self.duration if self.duration is not None else self.end - self.start

    @property
    def transcript(self) -> str:
        return " ".join(w.punctuated_word or w.word for w in self.words)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """VAD onset (``vad_events=true``)."""

    timestamp: float


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """Gap after the last word reached ``utterance_end_ms``."""

    last_word_end: float


Event = Result | SpeechStarted | UtteranceEnd


def span_result(
    lo: int, c: int, sr: int, words: list[Word], *, is_final: bool, speech_final: bool, from_finalize: bool
) -> Result:
    """A result covering samples [lo, c): times from integer sample indices, so they are exact."""
    c = max(c, lo)
    return Result(
        start=lo / sr,
        end=c / sr,
        words=words,
        is_final=is_final,
        speech_final=speech_final,
        from_finalize=from_finalize,
        duration=(c - lo) / sr,
    )
