"""Property tests of the sans-I/O session core against the real marker recognizer.

For any audio, chunking, Finalize positions, result delays and schedule of upstream failures,
the finals the client receives equal an uninterrupted run's: same words, same timestamps (==),
monotonic, nothing twice. The same holds for a client that drops and resumes; a drain delivers
everything received before it, then closes 1012; an outage longer than the buffer loses exactly
the audio it counts as dropped and nothing else.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamproxy.session.core import Session, SessionSettings
from tests.helpers.marker import Segment, expected_words, final_spans, final_words, marker_audio, spaced_words
from tests.helpers.sim import Detach, Fault, World, reference_run

segment = st.one_of(
    st.tuples(st.just("word"), st.integers(1, 3000), st.integers(20, 600)),
    st.tuples(st.just("sil"), st.just(0), st.integers(1, 900)),
    st.tuples(st.just("noise"), st.just(0), st.integers(1, 15)),
)
fault = st.builds(
    Fault,
    at_step=st.integers(1, 60),
    kind=st.sampled_from(["close1011", "close1000", "reset", "handshake503", "stall"]),
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    sr = draw(st.sampled_from([8000, 16000]))
    segs = draw(st.lists(segment, min_size=1, max_size=25))
    audio = marker_audio(segs, sr, seed=draw(st.integers(0, 1000)))
    chunks = draw(st.lists(st.integers(31, sr), min_size=1, max_size=8))
    finalize_at = draw(st.lists(st.integers(0, len(audio)), max_size=2))
    return World(
        segments=segs,
        audio=audio,
        sr=sr,
        chunks=chunks,
        faults=draw(st.lists(fault, max_size=6)),
        finalize_at=finalize_at,
        delay_seed=draw(st.integers(0, 10_000)),
        max_delay_steps=draw(st.integers(0, 8)),
    )


def _spans(msgs: list[dict]) -> list:
    return [f for f in final_spans(msgs) if f[1] > 0 or f[2]]


def check_against_reference(w: World) -> tuple[list[dict], Session]:
    got, core = w.run()
    event(f"reconnects: {min(core.stats.reconnects, 3)}{'+' if core.stats.reconnects >= 3 else ''}")
    event(f"words: {'some' if final_words(got) else 'none'}")
    want = reference_run(w.audio, w.sr, w.finalize_at)
    # An empty, zero-length final (a CloseStream's answer when everything was already final) carries
    # nothing: an upstream that closes 1000 before sending it loses no word, so it is not compared.
    assert _spans(got) == _spans(want)
    words = final_words(got)
    assert words == final_words(want)
    ends = [e for _, _, e in words]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # monotonic, nothing twice
    assert got[-1]["type"] == "Metadata"
    assert abs(got[-1]["duration"] - len(w.audio) / 2 / w.sr) < 1e-6
    assert core.done
    return got, core


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_finals_equal_uninterrupted_run(w: World) -> None:
    check_against_reference(w)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.integers(1, 50))
def test_many_faults_dense(w: World, every: int) -> None:
    """A drop every few steps, including during replay: still exact once the upstream survives.

    The close timeout is raised: with a drop every few milliseconds the backoff grows past the
    default 10 s close timeout, and giving up then is the specified behaviour, not a loss.
    """
    w.settings = SessionSettings(max_attempts=0, stall_timeout_s=5.0, close_timeout_s=600.0)
    w.faults = [
        Fault(i, k) for i, k in zip(range(3, 600, every + 2), ["close1011", "reset", "close1000"] * 300, strict=False)
    ]
    check_against_reference(w)


def test_example_drop_mid_word() -> None:
    sr = 16000
    audio = marker_audio([("sil", 0, 200), ("word", 5, 300), ("sil", 0, 500), ("word", 9, 200), ("sil", 0, 400)], sr)
    w = World(audio=audio, sr=sr, chunks=[640], faults=[Fault(30, "close1011"), Fault(45, "reset")])
    got, core = w.run()
    assert [x[0] for x in final_words(got)] == ["w5", "w9"]
    assert final_words(got) == [("w5", 0.2, 0.5), ("w9", 1.0, 1.2)]
    assert core.stats.reconnects == 2


def test_overflow_is_counted_not_silent() -> None:
    """With the upstream gone for longer than the buffer, the oldest audio is dropped and reported."""
    sr = 8000
    audio = marker_audio([("word", 7, 200), ("sil", 0, 3000)] * 3, sr)
    s = SessionSettings(buffer_seconds=1.0, max_attempts=0, proxy_events=True, stall_timeout_s=1000)
    w = World(audio=audio, sr=sr, chunks=[1600], faults=[Fault(2, "handshake503")] * 80, settings=s)
    got, core = w.run()
    assert core.stats.dropped_bytes > 0
    assert core.ring.nbytes <= int(1.0 * sr * 2)
    degraded = [m for m in got if m.get("type") == "ProxyStatus" and m["state"] == "degraded"]
    assert degraded and degraded[-1]["dropped_s"] > 0


def test_close_during_an_endless_outage_says_what_was_lost() -> None:
    """The upstream never comes back: the client, still there after CloseStream, is waited for up to
    close_timeout_s + buffer_seconds, then told how much audio could not be transcribed (an Error and
    1011), never a silent Metadata and 1000."""
    sr = 8000
    audio = marker_audio([("word", 3, 100), ("sil", 0, 100)], sr)
    s = SessionSettings(max_attempts=3, close_timeout_s=2.0, buffer_seconds=5.0, stall_timeout_s=1000.0)
    w = World(audio=audio, sr=sr, chunks=[3200], faults=[Fault(1, "handshake503")] * 500, settings=s)
    got, core = w.run()
    assert core.done and got[-1]["type"] == "Error"
    assert got[-1]["err_code"] == "UNTRANSCRIBED_AUDIO" and "0.20 s of audio" in got[-1]["description"]
    assert core.stats.lost_bytes == len(audio)
    assert not any(m.get("type") == "Metadata" for m in got)
    assert final_words(got) == []  # nothing could be transcribed, and nothing was invented


# ----------------------------------------------------------------------------- resume, drain, overflow
def mid_stream_step(draw: st.DrawFn, w: World) -> int:
    """A step while the client is still sending (drawn as a fraction: integers crowd at the ends)."""
    steps = max(1, len(w.audio) * len(w.chunks) // sum(w.chunks))
    return 1 + round(draw(st.floats(0.02, 1.0)) * steps)


def seqs_of(messages: list[dict]) -> list[int]:
    return [m["proxy"]["seq"] for m in messages if "seq" in m.get("proxy", {})]


@st.composite
def resuming_worlds(draw: st.DrawFn) -> World:
    w = draw(worlds())
    w.settings = SessionSettings(
        max_attempts=0, stall_timeout_s=5.0, close_timeout_s=600.0, proxy_events=True, resume_grace_s=600.0
    )
    w.detach = Detach(
        at=mid_stream_step(draw, w),
        steps=draw(st.integers(1, 40)),
        lost=draw(st.integers(0, 6)),
        resend=draw(st.one_of(st.none(), st.integers(0, len(w.audio)))),
    )
    return w


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resuming_worlds())
def test_resume_delivers_the_uninterrupted_run(w: World) -> None:
    """A client drops (losing the last messages in flight) and resumes with its last seq and an audio
    offset it resends from: what it received before and after, together, is the uninterrupted run's
    finals (==), every numbered message once and in order (seqs 1..n, no hole), and the audio it sent
    twice is taken once."""
    got, core = check_against_reference(w)
    t = w.trace
    event("resumed" if t.last_seq >= 0 else "closed before the drop")
    event(f"lost in flight: {'some' if seqs_of(t.lost) else 'none'}")
    seqs = seqs_of(got)
    assert seqs == list(range(1, core.outbox.seq + 1))
    for m in t.lost:  # every numbered message lost in flight was re-sent, unchanged
        if "seq" in m.get("proxy", {}):
            assert m in got
    assert core.stats.audio_bytes == len(w.audio)
    if t.last_seq >= 0:
        resumed = [m for m in got if m.get("type") == "ProxyStatus" and m["state"] == "resumed"]
        assert len(resumed) == 1 and resumed[0]["last_seq"] >= t.last_seq


@st.composite
def draining_worlds(draw: st.DrawFn) -> World:
    w = draw(worlds())
    w.drain_at = mid_stream_step(draw, w)
    if draw(st.booleans()):
        w.settings = SessionSettings(max_attempts=0, stall_timeout_s=5.0, close_timeout_s=600.0, proxy_events=True)
    return w


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draining_worlds())
def test_drain_delivers_everything_received_then_closes_1012(w: World) -> None:
    """The gateway drains at a random point (through faults, mid-replay, mid-Finalize): every word
    in the audio received before the drain reaches the client, exactly as an uninterrupted upstream
    fed that audio would say it, then a Metadata and the close 1012."""
    got, core = w.run()
    t = w.trace
    if t.drained_at is None:  # the client had already sent CloseStream: an ordinary close
        event("drain after CloseStream")
        check_against_reference(w)
        return
    event(f"drained at {'0' if t.drained_at == 0 else 'the end' if t.drained_at == len(w.audio) else 'mid-stream'}")
    want = reference_run(w.audio[: t.drained_at], w.sr, t.finalize_sent)
    assert final_words(got) == final_words(want)
    ends = [e for _, _, e in final_words(got)]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    assert t.close is not None and t.close.code == 1012
    assert got[-1]["type"] == "Metadata"
    assert abs(got[-1]["duration"] - t.drained_at / 2 / w.sr) < 1e-6
    if w.settings.proxy_events:
        assert any(m.get("type") == "ProxyStatus" and m["state"] == "draining" for m in got)
    assert core.done


OVERFLOW_SR = 8000
OVERFLOW_BUFFER_S = 2.0


@st.composite
def overflow_worlds(draw: st.DrawFn) -> tuple[World, bool]:
    """Words (values >= 1000, so never merged with anything else) every <= 0.8 s, so a working
    upstream acknowledges well within the 2 s buffer; one outage longer than the buffer. Returns the
    world and whether so much audio arrives during the outage that the buffer must overflow."""
    sr = OVERFLOW_SR
    segs: list[Segment] = [("sil", 0, draw(st.integers(1, 300)))]
    words = st.tuples(st.integers(1000, 30000), st.integers(20, 300), st.integers(300, 500))
    for k, word_ms, gap_ms in draw(st.lists(words, min_size=1, max_size=12)):
        segs += [("word", k, word_ms), ("sil", 0, gap_ms)]
    t0 = draw(st.floats(0.0, 4.0))
    length = OVERFLOW_BUFFER_S + draw(st.floats(0.2, 4.0))
    # The audio goes on past the outage's start by up to its length and 2 s more: it may end during
    # the outage (the close waits for the upstream) or after it (live audio behind a full replay).
    until = t0 + draw(st.floats(0.0, length + 2.0))
    seconds = sum(max(1, ms * sr // 1000) for _, _, ms in segs) / sr
    k = 1000
    while seconds < until:
        segs += spaced_words([k], word_ms=100, gap_ms=400, lead_ms=0)
        seconds += 0.5
        k += 1
    audio = marker_audio(segs, sr)
    outage_audio_s = min(t0 + length, len(audio) / 2 / sr) - t0
    w = World(
        segments=segs,
        audio=audio,
        sr=sr,
        chunks=draw(st.lists(st.integers(31, 1600), min_size=1, max_size=6)),
        faults=[],
        outages=[(t0, t0 + length)],
        delay_seed=draw(st.integers(0, 10_000)),
        max_delay_steps=draw(st.integers(0, 3)),
        settings=SessionSettings(
            buffer_seconds=OVERFLOW_BUFFER_S,
            max_attempts=0,
            proxy_events=True,
            stall_timeout_s=5.0,
            close_timeout_s=600.0,
            first_retry_s=0.05,
            backoff_base_s=0.1,
            backoff_cap_s=0.2,
        ),
    )
    return w, outage_audio_s > OVERFLOW_BUFFER_S + 0.3  # + a frame and a chunk held back


def coverage_gaps(messages: list[dict], sr: int) -> list[tuple[int, int]]:
    """The stretches (in samples) of the client's timeline that no final covers."""
    gaps, prev = [], 0
    for start, duration, _ in final_spans(messages):
        s = round(start * sr)
        if s > prev:
            gaps.append((prev, s))
        prev = max(prev, s + round(duration * sr))
    return gaps


def merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overflow_worlds())
def test_overflow_drops_exactly_what_it_counts(wm: tuple[World, bool]) -> None:
    """An outage longer than buffer_seconds: the ring drops its oldest audio. The dropped audio is
    counted exactly (Count actions == stats == what left the ring == the gaps in the client's
    timeline), and every word whose audio was kept is delivered once, at its exact time; a word cut
    by a drop may only appear as its kept tail, starting where the drop ended."""
    w, must_drop = wm
    sr = w.sr
    got, core = w.run()
    t = w.trace
    dropped = sum(b - a for a, b, _ in t.dropped)
    event("dropped" if dropped else "nothing dropped")
    event(f"drops while connected: {'some' if any(c for _, _, c in t.dropped) else 'none'}")
    assert core.done and t.close is not None and t.close.code == 1000 and got[-1]["type"] == "Metadata"
    if must_drop:
        assert dropped > 0
    assert dropped == core.stats.dropped_bytes
    assert abs(t.dropped_counted_s - dropped / 2 / sr) < 1e-9
    if dropped:
        degraded = [m for m in got if m.get("type") == "ProxyStatus" and m["state"] == "degraded"]
        assert degraded[-1]["dropped_s"] == round(dropped / 2 / sr, 3)
    # Audio a live upstream already had is transcribed even when the ring lets go of it (the
    # upstream survives: one outage); audio dropped while none was connected is a gap, exactly.
    first_lost = next((i for i, (_, _, c) in enumerate(t.dropped) if not c), len(t.dropped))
    assert not any(c for _, _, c in t.dropped[:first_lost]), "overflow with a working upstream before the outage"
    lost = merged([(a // 2, b // 2) for a, b, c in t.dropped if not c])
    assert coverage_gaps(got, sr) == lost
    final_spans_ = final_spans(got)
    assert round((final_spans_[-1][0] + final_spans_[-1][1]) * sr) == len(w.audio) // 2

    def cut(s: int, e: int) -> bool:
        return any(a < e and s < b for a, b in lost)

    kept = [x for x in expected_words(w.segments, sr) if not cut(round(x[1] * sr), round(x[2] * sr))]
    words = final_words(got)
    for x in kept:
        assert words.count(x) == 1, x
    tails = {b for _, b in lost}
    for x in words:
        if x not in kept:
            assert round(x[1] * sr) in tails, x
    ends = [e for _, _, e in words]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
