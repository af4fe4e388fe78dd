"""Focused tests of the sans-I/O core for behaviours the property tests do not reach."""

from __future__ import annotations

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.session.core import Connect, DropUpstream, Session, SessionSettings


def _connect(core: Session, now: float) -> None:
    core.upstream_connected(core.gen, "up", now)


def test_stall_timeout_escalates_for_an_upstream_that_is_silent_during_long_speech() -> None:
    """An engine that says nothing until a 14 s utterance ends must not be 'stalled' forever:
    after one stall and replay, the next stall timeout doubles, so the utterance gets through."""
    s = SessionSettings(stall_timeout_s=10.0, first_retry_s=0.0)
    core = Session(AudioFormat("linear16", 16000, 1), s, now=0.0)
    core._take()
    _connect(core, 0.0)
    frame = b"\x01\x00" * 1600
    stalls: list[float] = []
    t = 0.0
    while t < 40.0:
        t = round(t + 0.1, 3)
        acts = core.client_audio(frame, t)
        dl = core.next_deadline()
        if dl is not None and dl <= t:
            acts += core.tick(t)
        for a in acts:
            if isinstance(a, DropUpstream):
                stalls.append(t)
            if isinstance(a, Connect):
                _connect(core, t)
    # first stall after 10 s of silence from upstream, the next one only after 20 s more
    assert len(stalls) == 2
    assert 10.0 <= stalls[0] <= 10.2
    assert 30.0 <= stalls[1] <= 30.3
    # any upstream message resets the escalation
    core.upstream_message(core.gen, '{"type":"Results","start":0,"duration":0.1,"is_final":false}', t)
    assert core._stall_timeout == 10.0


def test_latency_stamps_stay_bounded_through_a_long_outage() -> None:
    """No upstream for a long time: the ring drops the oldest audio, and its arrival stamps go with it."""
    s = SessionSettings(buffer_seconds=1.0, max_attempts=0)
    core = Session(AudioFormat("linear16", 8000, 1), s, now=0.0)
    core._take()  # never connected
    for i in range(3000):  # 60 s of 20 ms chunks
        core.client_audio(b"\x00\x00" * 160, i * 0.02)
    assert core.ring.nbytes <= 16000
    assert len(core._arrivals) <= 60  # about one buffer's worth of chunks, not 3000
    assert core.stats.dropped_bytes > 0
