"""Marker audio for tests: one builder, one expected transcript, one final-words extractor.

The marker recognizer (``streamproxy.engine.marker``) reads a run of at least 20 ms of samples
all equal to ``k`` (1..32767) as the word ``w<k>`` and zeros as silence, so a test that builds its
audio from segments knows the exact transcript, timestamps included. Every test builds marker
audio here and reads the finals it got back here, so a change to the contract has one place to go.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamproxy.engine.marker import ms_to_samples

#: ``(kind, value, ms)``: ``("word", k, ms)`` a run of constant ``k``; ``("sil", 0, ms)`` zeros;
#: ``("noise", 0, ms)`` random odd values in -299..299 that never form a 20 ms run.
Segment = tuple[str, int, int]
#: A word as the client sees it: ``(word, start_s, end_s)``.
TimedWord = tuple[str, float, float]


def segment_samples(ms: int, sr: int) -> int:
    """Samples a segment of ``ms`` holds: ``ms * sr // 1000``, at least one."""
    return max(1, ms * sr // 1000)


def marker_samples(segments: Iterable[Segment], sr: int, seed: int = 0) -> np.ndarray:
    """The segments as int16 samples (little-endian), ``seed`` fixing the noise."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros(0, dtype="<i2")]
    for kind, value, ms in segments:
        n = segment_samples(ms, sr)
        if kind == "word":
            parts.append(np.full(n, value, dtype="<i2"))
        elif kind == "sil":
            parts.append(np.zeros(n, dtype="<i2"))
        elif kind == "noise":  # odd, so never silence; random, so (almost) never a 20 ms run
            parts.append(rng.integers(-300, 300, n, dtype=np.int16).astype("<i2") | 1)
        else:
            raise ValueError(f"unknown segment kind {kind!r}")
    return np.concatenate(parts)


def marker_audio(segments: Iterable[Segment], sr: int, seed: int = 0) -> bytes:
    """The segments as linear16 mono bytes."""
    return marker_samples(segments, sr, seed).tobytes()


def spaced_words(
    ks: Iterable[int], *, word_ms: int = 200, gap_ms: int = 350, lead_ms: int = 100, tail_ms: int = 0
) -> list[Segment]:
    """``lead_ms`` of silence, then each ``k`` as a word followed by ``gap_ms`` of silence (a gap of
    300 ms or more ends each word's utterance, so each gets its own final), then ``tail_ms`` more."""
    segs: list[Segment] = [("sil", 0, lead_ms)] if lead_ms else []
    for k in ks:
        segs += [("word", k, word_ms), ("sil", 0, gap_ms)]
    if tail_ms:
        segs.append(("sil", 0, tail_ms))
    return segs


def expected_words(segments: Sequence[Segment], sr: int) -> list[TimedWord]:
    """The exact transcript of ``marker_audio(segments, sr)``: adjacent words of one value are one
    run, runs shorter than 20 ms are no word. Exact as long as a word's value cannot equal a
    neighbouring noise sample (use values >= 300 next to noise)."""
    min_word = ms_to_samples(20, sr)
    out: list[TimedWord] = []
    pos = 0
    run: tuple[int, int] | None = None  # (value, start) of the open word run

    def close(end: int) -> None:
        if run is not None and end - run[1] >= min_word:
            out.append((f"w{run[0]}", run[1] / sr, end / sr))

    for kind, value, ms in segments:
        n = segment_samples(ms, sr)
        if kind == "word" and value > 0:
            if run is None or run[0] != value:
                close(pos)
                run = (value, pos)
        else:
            close(pos)
            run = None
        pos += n
    close(pos)
    return out


def final_results(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The final ``Results`` among Deepgram messages, in order."""
    return [m for m in messages if m.get("type") == "Results" and m.get("is_final")]


def final_words(messages: Iterable[dict[str, Any]]) -> list[TimedWord]:
    """Every word of every final ``Results``, in order, as ``(word, start, end)``."""
    return [
        (w["word"], w["start"], w["end"])
        for m in final_results(messages)
        for w in m["channel"]["alternatives"][0]["words"]
    ]


def final_spans(messages: Iterable[dict[str, Any]]) -> list[tuple[float, float, tuple[TimedWord, ...]]]:
    """Each final as ``(start, duration, words)``: equal lists mean the same finals, cut at the same
    places, with the same words (stricter than ``final_words``)."""
    out = []
    for m in final_results(messages):
        words = tuple((w["word"], w["start"], w["end"]) for w in m["channel"]["alternatives"][0]["words"])
        out.append((m["start"], m["duration"], words))
    return out
