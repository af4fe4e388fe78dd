"""The marker recognizer: exact words/times, finals rules, and chunking/replay invariance.

The hypothesis tests compare against a deliberately naive per-sample oracle written straight
from the contract, and check the two properties the proxy's no-loss guarantee rests on:
finals are identical for any chunking, and a fresh recognizer started at any final's end
reproduces the remaining finals exactly (shifted in samples).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.deepgram.types import Result, SpeechStarted, UtteranceEnd, Word
from streamproxy.engine.marker import MarkerRecognizer, ms_to_samples
from tests.helpers.engine import feed_chunked, finals, marker_audio_ms, marker_samples

SR = 16000


def rec(sr: int = SR, **kw: object) -> MarkerRecognizer:
    return MarkerRecognizer(sr, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- oracle

FinalKey = tuple[tuple[tuple[str, float, float], ...], float, float, bool, bool]


def oracle_finals(samples: np.ndarray, sr: int, endpointing_ms: int | None = 300) -> list[FinalKey]:
    """Per-sample reference implementation of the finals contract (slow, obviously correct)."""
    minw = -(-20 * sr // 1000)
    ep = None if endpointing_ms is None else max(1, -(-endpointing_ms * sr // 1000))
    three = 3 * sr
    out: list[FinalKey] = []
    lo = 0
    pending: list[tuple[int, int, int]] = []

    def emit(c: int, speech_final: bool, from_finalize: bool = False) -> None:
        nonlocal lo, pending
        words = tuple((f"w{k}", s / sr, e / sr) for k, s, e in pending)
        out.append((words, lo / sr, c / sr, speech_final, from_finalize))
        lo = c
        pending = []

    rv: int | None = None
    rs = 0
    for i, x in enumerate(samples.tolist()):
        if rv is None or x != rv:  # a run starts at i: the previous one is complete
            if rv is not None and rv > 0 and i - rs >= minw:
                pending.append((rv, rs, i))
            rv, rs = x, i
            if i >= lo + three:  # i is a cut point
                emit(i, False)
        if x == 0:  # i + 1 is a cut point (sample[c-1] == 0)
            c = i + 1
            if ep is not None and pending and c == rs + ep:
                emit(c, True)
            elif c >= lo + three:
                emit(c, False)
    p = len(samples)
    if rv is not None and rv > 0 and p - rs >= minw:
        pending.append((rv, rs, p))
    emit(p, False, True)
    return out


def key(r: Result) -> FinalKey:
    return (tuple((w.word, w.start, w.end) for w in r.words), r.start, r.end, r.speech_final, r.from_finalize)


# --------------------------------------------------------------------------- unit tests


def test_words_and_exact_times_any_chunking() -> None:
    audio = marker_audio_ms([(0, 100), (5, 200), (7, 100), (-3, 50), (0, 400), (9, 250), (0, 50)], SR)
    expected = [
        Result(
            start=0.0,
            end=0.75,
            words=[Word("w5", 0.1, 0.3, 1.0), Word("w7", 0.3, 0.4, 1.0)],
            is_final=True,
            speech_final=True,
            from_finalize=False,
            duration=0.75,
        ),
        Result(
            start=0.75,
            end=1.15,
            words=[Word("w9", 0.85, 1.1, 1.0)],
            is_final=True,
            speech_final=False,
            from_finalize=True,
            duration=0.4,
        ),
    ]
    for sizes in ([1], [len(audio)], [3], [3199, 1, 2], [641], [7, 1000, 33]):
        assert finals(feed_chunked(rec(), audio, sizes)) == expected, sizes


def test_word_boundaries_exact_division() -> None:
    # 44.1 kHz: times are index / sr, never accumulated floats.
    sr = 44100
    samples = marker_samples([(0, 1001), (12, 883), (0, 20000)])
    [f, *_] = finals(feed_chunked(rec(sr), samples.tobytes(), [999]))
    assert f.words == [Word("w12", 1001 / sr, 1884 / sr, 1.0)]
    assert f.end == (1884 + ms_to_samples(300, sr)) / sr


def test_min_word_length_and_noise() -> None:
    minw = ms_to_samples(20, SR)
    samples = marker_samples(
        [(0, 10), (4, minw - 1), (0, 10), (6, minw), (-5, 5000), (8, 3), (9, 3), (32767, minw), (0, 100)]
    )
    words = [w for f in finals(feed_chunked(rec(), samples.tobytes(), [5])) for w in f.words]
    assert [w.word for w in words] == ["w6", "w32767"]


def test_endpointing_disabled_three_second_finals() -> None:
    audio = marker_audio_ms([(3, 500), (0, 7000)], SR)
    fs = finals(feed_chunked(rec(endpointing_ms=None), audio, [1600]))
    assert [(f.start, f.end, f.speech_final, f.transcript) for f in fs] == [
        (0.0, 3.0, False, "w3"),
        (3.0, 6.0, False, ""),
        (6.0, 7.5, False, ""),
    ]
    assert fs[-1].from_finalize


def test_empty_finals_over_silence() -> None:
    fs = finals(feed_chunked(rec(), bytes(2 * SR * 10), [3200]))
    assert [(f.start, f.end, f.words) for f in fs] == [
        (0.0, 3.0, []),
        (3.0, 6.0, []),
        (6.0, 9.0, []),
        (9.0, 10.0, []),
    ]
    assert all(f.duration == f.end - f.start for f in fs)


def test_three_second_rule_waits_for_run_end() -> None:
    # A 4 s word straddles L + 3 s: the cut is at its end, never inside it.
    audio = marker_audio_ms([(0, 100), (11, 4000), (2, 100), (0, 100)], SR)
    fs = finals(feed_chunked(rec(), audio, [1234]))
    assert [(f.start, f.end, f.transcript, f.speech_final) for f in fs] == [
        (0.0, 4.1, "w11", False),
        (4.1, 4.3, "w2", False),
    ]


def test_finalize_cuts_open_word_and_restarts_run() -> None:
    r = rec()
    ev = r.feed(marker_audio_ms([(0, 100), (5, 100)], SR))
    ev += r.finalize()
    ev += r.feed(marker_audio_ms([(5, 100), (0, 500)], SR))
    ev += r.finalize()
    got = [(f.start, f.end, [(w.word, w.start, w.end) for w in f.words], f.from_finalize) for f in finals(ev)]
    assert got == [
        (0.0, 0.2, [("w5", 0.1, 0.2)], True),
        (0.2, 0.6, [("w5", 0.2, 0.3)], False),
        (0.6, 0.8, [], True),
    ]
    assert r.position_s == 0.8
    # Finalize with nothing new still answers (an empty, zero-length final).
    [again] = r.finalize()
    assert isinstance(again, Result) and again.from_finalize and again.start == again.end == 0.8


def test_odd_byte_chunks_keep_leftover() -> None:
    audio = marker_audio_ms([(0, 50), (300, 100), (0, 400)], SR)
    r = rec()
    ev = []
    for i in range(0, len(audio), 3):
        ev += r.feed(audio[i : i + 3])
    assert [w.word for f in finals(ev) for w in f.words] == ["w300"]


def test_close_refuses_more_audio() -> None:
    r = rec()
    r.feed(bytes(100))
    r.close()
    assert r.close() == []
    with pytest.raises(RuntimeError):
        r.feed(bytes(2))


def test_interim_results_rate_and_content() -> None:
    audio = marker_audio_ms([(0, 100), (5, 100), (7, 50), (0, 200), (8, 500), (0, 400)], SR)
    r = rec(interim_results=True)
    ev = []
    for i in range(0, len(audio), 320):  # 10 ms chunks
        ev += r.feed(audio[i : i + 320])
    interims = [e for e in ev if isinstance(e, Result) and not e.is_final]
    assert interims, "expected interim results"
    ends = [round(e.end * SR) for e in interims]
    assert all(b - a >= ms_to_samples(100, SR) for a, b in itertools.pairwise(ends))
    assert interims[0].transcript == "w5"
    assert interims[0].start == 0.0 and not interims[0].speech_final
    assert any(e.transcript == "w5 w7" for e in interims)
    # No interims without the option.
    assert not [e for e in feed_chunked(rec(), audio, [320]) if isinstance(e, Result) and not e.is_final]


def test_vad_events_and_utterance_end() -> None:
    audio = marker_audio_ms([(0, 100), (5, 100), (0, 500), (6, 10), (0, 1200), (7, 100), (0, 200)], SR)
    ev = feed_chunked(rec(vad_events=True, utterance_end_ms=1000), audio, [480])
    assert [e.timestamp for e in ev if isinstance(e, SpeechStarted)] == [0.1, 1.91]
    assert [e.last_word_end for e in ev if isinstance(e, UtteranceEnd)] == [0.2]
    # The UtteranceEnd comes after the final covering that word.
    kinds = [type(e).__name__ for e in ev if not (isinstance(e, Result) and not e.is_final)]
    assert kinds.index("UtteranceEnd") > kinds.index("Result")
    plain = feed_chunked(rec(), audio, [480])
    assert not [e for e in plain if isinstance(e, SpeechStarted | UtteranceEnd)]


def test_cheap_enough_for_a_thousand_streams() -> None:
    # 60 s of word/silence audio in 100 ms chunks: the proxy benchmark runs ~1000 such streams.
    rng = np.random.default_rng(1)
    segs = []
    for _ in range(200):
        segs += [(int(rng.integers(1, 30000)), int(rng.integers(320, 4000))), (0, int(rng.integers(1, 6000)))]
    audio = marker_samples(segs).tobytes()
    chunks = [audio[i : i + 3200] for i in range(0, len(audio), 3200)]
    r = rec(interim_results=True)
    t = time.perf_counter()
    for c in chunks:
        r.feed(c)
    per_chunk = (time.perf_counter() - t) / len(chunks)
    assert per_chunk < 200e-6, f"{per_chunk * 1e6:.1f} us per 100 ms chunk"


def test_noise_heavy_audio_matches_oracle() -> None:
    rng = np.random.default_rng(7)
    sr = 1000
    samples = rng.integers(-3, 4, size=sr * 12).astype("<i2")
    samples[2000:2100] = 9  # one word inside the noise
    samples[5000:5400] = 0
    ev = feed_chunked(rec(sr), samples.tobytes(), [len(samples) * 2])
    assert [key(f) for f in finals(ev)] == oracle_finals(samples, sr)
    assert [w.word for f in finals(ev) for w in f.words] == ["w9"]


# --------------------------------------------------------------------------- properties

RATES = st.sampled_from([1000, 2000, 8000])


@st.composite
def run_audio(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    """Audio built from runs: words of random k and length, silences, short/negative noise."""
    sr = draw(RATES)
    minw = -(-20 * sr // 1000)
    segs: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["word", "word", "silence", "noise", "neg", "long"]))
        if kind == "word":
            segs.append((draw(st.integers(1, 6)), draw(st.integers(minw - 2, minw * 20))))
        elif kind == "silence":
            segs.append((0, draw(st.integers(1, sr * 2))))
        elif kind == "noise":
            segs.append((draw(st.integers(1, 6)), draw(st.integers(1, minw - 1))))
        elif kind == "neg":
            segs.append((draw(st.integers(-5, -1)), draw(st.integers(1, minw * 3))))
        else:
            segs.append((draw(st.integers(1, 3)), draw(st.integers(sr, sr * 4))))
    return sr, marker_samples(segs)


chunk_sizes = st.lists(st.integers(1, 5000), min_size=1, max_size=8)
endpointing = st.sampled_from([300, 10, 1000, None])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(run_audio(), chunk_sizes, endpointing)
def test_finals_match_oracle_for_any_chunking(audio: tuple[int, np.ndarray], sizes: list[int], ep: int | None) -> None:
    sr, samples = audio
    data = samples.tobytes()
    expected = oracle_finals(samples, sr, ep)
    got = [key(f) for f in finals(feed_chunked(rec(sr, endpointing_ms=ep), data, sizes))]
    assert got == expected
    whole = [key(f) for f in finals(feed_chunked(rec(sr, endpointing_ms=ep), data, [len(data) or 1]))]
    assert whole == expected
    for f in finals(feed_chunked(rec(sr, endpointing_ms=ep), data, sizes)):
        assert f.duration == (round(f.end * sr) - round(f.start * sr)) / sr


@SETTINGS
@given(run_audio(), chunk_sizes, endpointing, st.data())
def test_replay_from_any_final_is_consistent(
    audio: tuple[int, np.ndarray], sizes: list[int], ep: int | None, data: st.DataObject
) -> None:
    sr, samples = audio
    full = finals(feed_chunked(rec(sr, endpointing_ms=ep), samples.tobytes(), sizes))
    if len(full) < 2:
        return  # only the closing final: nothing to replay after it
    cut = data.draw(st.integers(0, len(full) - 2))
    c = round(full[cut].end * sr)
    assert c / sr == full[cut].end
    tail = finals(feed_chunked(rec(sr, endpointing_ms=ep), samples[c:].tobytes(), sizes))

    def shifted(r: Result) -> FinalKey:
        def t(x: float) -> float:
            return (c + round(x * sr)) / sr

        words = tuple((w.word, t(w.start), t(w.end)) for w in r.words)
        return (words, t(r.start), t(r.end), r.speech_final, r.from_finalize)

    assert [shifted(r) for r in tail] == [key(r) for r in full[cut + 1 :]]
