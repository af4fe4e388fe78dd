"""What stands between Whisper's output and a client, for streams and files alike.

Each gate was measured on the same audio before and after (``benchmarks/asr_quality.py``; figures
in the README's "Accuracy and formatting").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamproxy.deepgram.types import Word

__all__ = ["Gates", "voiced_words"]


@dataclass(frozen=True, slots=True)
class Gates:
    """What stands between Whisper's output and a client: each gate was measured (README)."""

    prompt: bool = False  # the previous utterance's text as ``initial_prompt``
    vad_words: bool = True  # drop words whose middle is not on VAD-voiced audio
    vad_margin_s: float = 0.05  # ... within this margin
    hallucination_silence_s: float | None = None  # faster-whisper's hallucination_silence_threshold
    no_speech_threshold: float | None = 0.6
    log_prob_threshold: float | None = -1.0
    compression_ratio_threshold: float | None = 2.4
    tail_pad_s: float = 0.3  # audio decoded after the last voiced window

    def transcribe_options(self) -> dict[str, Any]:
        return {
            "no_speech_threshold": self.no_speech_threshold,
            "log_prob_threshold": self.log_prob_threshold,
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "hallucination_silence_threshold": self.hallucination_silence_s,
        }


def voiced_words(words: Sequence[Word], voiced: Sequence[int], window: int, margin: int, rate: int) -> list[Word]:
    """The words whose middle lies on a voiced window (``voiced``: window starts, in samples at ``rate``).

    Whisper fits a hallucinated "okay" or "thank you" into the silent tail after the last voiced
    window; a real word's middle is voiced even where its edges (coarse in Whisper) are not.
    """
    kept = []
    for w in words:
        mid = round((w.start + w.end) / 2 * rate)
        if any(s - margin <= mid < s + window + margin for s in voiced):
            kept.append(w)
    return kept
