"""Property tests of the sans-I/O session core against the real marker recognizer.

For any audio, chunking, Finalize positions, result delays and schedule of upstream failures,
the finals the client receives equal an uninterrupted run's: same words, same timestamps (==),
monotonic, nothing twice.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamproxy.session.core import SessionSettings
from tests.helpers.sim import Fault, World, build_audio, finals_of, reference_run, words_of

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
    audio = build_audio(segs, sr, seed=draw(st.integers(0, 1000)))
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


def check_against_reference(w: World) -> None:
    got, core = w.run()
    event(f"reconnects: {min(core.stats.reconnects, 3)}{'+' if core.stats.reconnects >= 3 else ''}")
    event(f"words: {'some' if words_of(got) else 'none'}")
    want = reference_run(w.audio, w.sr, w.finalize_at)
    assert finals_of(got) == finals_of(want)
    words = words_of(got)
    assert words == words_of(want)
    ends = [e for _, _, e in words]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # monotonic, nothing twice
    assert got[-1]["type"] == "Metadata"
    assert abs(got[-1]["duration"] - len(w.audio) / 2 / w.sr) < 1e-6
    assert core.done


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
    audio = build_audio([("sil", 0, 200), ("word", 5, 300), ("sil", 0, 500), ("word", 9, 200), ("sil", 0, 400)], sr)
    w = World(audio=audio, sr=sr, chunks=[640], faults=[Fault(30, "close1011"), Fault(45, "reset")])
    got, core = w.run()
    assert [x[0] for x in words_of(got)] == ["w5", "w9"]
    assert words_of(got) == [("w5", 0.2, 0.5), ("w9", 1.0, 1.2)]
    assert core.stats.reconnects == 2


def test_overflow_is_counted_not_silent() -> None:
    """With the upstream gone for longer than the buffer, the oldest audio is dropped and reported."""
    sr = 8000
    audio = build_audio([("word", 7, 200), ("sil", 0, 3000)] * 3, sr)
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
    audio = build_audio([("word", 3, 100), ("sil", 0, 100)], sr)
    s = SessionSettings(max_attempts=3, close_timeout_s=2.0, buffer_seconds=5.0, stall_timeout_s=1000.0)
    w = World(audio=audio, sr=sr, chunks=[3200], faults=[Fault(1, "handshake503")] * 500, settings=s)
    got, core = w.run()
    assert core.done and got[-1]["type"] == "Error"
    assert got[-1]["err_code"] == "UNTRANSCRIBED_AUDIO" and "0.20 s of audio" in got[-1]["description"]
    assert core.stats.lost_bytes == len(audio)
    assert not any(m.get("type") == "Metadata" for m in got)
    assert words_of(got) == []  # nothing could be transcribed, and nothing was invented
