"""What stands between Whisper's output and a client, for streams and files alike.

Each gate was measured on the same audio before and after (``benchmarks/asr_quality.py``; figures
in the README's "Accuracy and formatting").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Gates"]


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
