"""Helpers for tests of the embedded engine: marker audio, espeak speech, engine servers, WER."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from streamproxy.deepgram.types import Event, Result
from streamproxy.eval import text as text_eval

Segment = tuple[int, int]  # (sample value, number of samples)


def marker_samples(segments: Iterable[Segment]) -> np.ndarray:
    """Concatenate runs of constant samples into int16 audio."""
    parts = [np.full(n, v, dtype="<i2") for v, n in segments if n > 0]
    if not parts:
        return np.zeros(0, dtype="<i2")
    return np.concatenate(parts)


def marker_audio_ms(segments: Iterable[tuple[int, int]], sample_rate: int) -> bytes:
    """Marker audio from ``(value, milliseconds)`` pairs (ms must give whole samples)."""
    return marker_samples((v, ms * sample_rate // 1000) for v, ms in segments).tobytes()


def finals(events: Sequence[Event]) -> list[Result]:
    return [e for e in events if isinstance(e, Result) and e.is_final]


def feed_chunked(rec: object, data: bytes, sizes: Iterable[int]) -> list[Event]:
    """Feed ``data`` in chunks of the given sizes (cycled), then close."""
    out: list[Event] = []
    sizes = list(sizes) or [len(data) or 1]
    i = k = 0
    while i < len(data):
        n = max(1, sizes[k % len(sizes)])
        out += rec.feed(data[i : i + n])  # type: ignore[attr-defined]
        i += n
        k += 1
    out += rec.close()  # type: ignore[attr-defined]
    return out


def require_espeak() -> None:
    """Fail loudly (never skip) when the TTS tools the speech tests need are missing."""
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise AssertionError(
            f"{', '.join(missing)} not installed: `apt-get install espeak-ng sox` (needed for speech tests)"
        )


def espeak_wav16(text: str, directory: Path, name: str = "speech") -> Path:
    """Synthesize ``text`` with espeak-ng and convert to 16 kHz mono 16-bit WAV with sox."""
    require_espeak()
    raw = directory / f"{name}.wav"
    out = directory / f"{name}16.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True, capture_output=True)
    return out


def normalise_words(text: str) -> list[str]:
    """The normalised words (streamproxy.eval.text, the one normaliser)."""
    return text_eval.words(text)


def wer(ref_text: str, hyp_text: str) -> float:
    return text_eval.wer(ref_text, hyp_text)


def recall(ref_text: str, hyp_text: str) -> float:
    """Fraction of reference words found in the hypothesis (multiset intersection)."""
    ref = normalise_words(ref_text)
    pool = normalise_words(hyp_text)
    found = 0
    for w in ref:
        if w in pool:
            pool.remove(w)
            found += 1
    return found / max(1, len(ref))
