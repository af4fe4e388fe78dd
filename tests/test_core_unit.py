"""Focused tests of the sans-I/O core for behaviours the property tests do not reach."""

from __future__ import annotations

import orjson

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.deepgram.messages import FINALIZE
from streamproxy.engine.marker import MarkerRecognizer
from streamproxy.session.core import Connect, DropUpstream, SendClient, SendUpstream, Session, SessionSettings
from tests.helpers.marker import marker_audio
from tests.helpers.sim import to_json


def _connect(core: Session, now: float) -> None:
    core.upstream_connected(core.gen, "up", now)


def test_stall_timeout_escalates_for_an_upstream_that_is_silent_during_long_speech() -> None:
    """An engine that says nothing until a 14 s utterance ends must not be 'stalled' forever:
    after one stall and replay, the next stall timeout doubles, so the utterance gets through."""
    s = SessionSettings(stall_timeout_s=10.0, first_retry_s=0.0)
    core = Session(AudioFormat("linear16", 16000, 1), s, now=0.0)
    core.start(0.0)
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
    valid = '{"type":"Results","start":0,"duration":0.1,"is_final":false,"channel":{"alternatives":[]}}'
    core.upstream_message(core.gen, valid, t)
    assert core._stall_timeout == 10.0


def test_latency_stamps_stay_bounded_through_a_long_outage() -> None:
    """No upstream for a long time: the ring drops the oldest audio, and its arrival stamps go with it."""
    s = SessionSettings(buffer_seconds=1.0, max_attempts=0)
    core = Session(AudioFormat("linear16", 8000, 1), s, now=0.0)
    core.start(0.0)  # never connected
    for i in range(3000):  # 60 s of 20 ms chunks
        core.client_audio(b"\x00\x00" * 160, i * 0.02)
    assert core.ring.nbytes <= 16000
    assert len(core._arrivals) <= 60  # about one buffer's worth of chunks, not 3000
    assert core.stats.dropped_bytes > 0


def test_overflow_before_connecting_keeps_a_pending_finalize() -> None:
    """8 kHz, 1 s buffer, never connected: 0.5 s audio, Finalize, 0.9 s more. The overflow drops the
    oldest 0.4 s of audio but must keep the Finalize: the replay sends it, the real marker recognizer
    answers it, and the client gets its ``from_finalize`` final (before the fix the overflow deleted
    the Finalize and the session kept owing it forever)."""
    sr = 8000
    core = Session(AudioFormat("linear16", sr, 1), SessionSettings(buffer_seconds=1.0, max_attempts=0), now=0.0)
    core.start(0.0)  # the upstream is not reachable yet
    first = marker_audio([("sil", 0, 420), ("word", 5, 60), ("sil", 0, 20)], sr)  # 0.5 s, w5 at 0.42 s
    second = marker_audio([("word", 7, 100), ("sil", 0, 800)], sr)  # 0.9 s
    core.client_audio(first, 0.5)
    core.client_text('{"type":"Finalize"}', 0.5)
    core.client_audio(second, 1.4)
    core.tick(1.6)  # flush the partial frame
    assert core.stats.dropped_bytes == 2 * sr * 4 // 10  # the oldest 0.4 s

    replay = core.upstream_connected(core.gen, "up", 2.0)
    sent = [a.data for a in replay if isinstance(a, SendUpstream)]
    assert FINALIZE in sent, "the replay must re-send the Finalize"

    rec = MarkerRecognizer(sr)
    client: list[dict] = []
    for data in sent:
        events = rec.finalize() if data == FINALIZE else rec.feed(data) if isinstance(data, bytes) else []
        for msg in to_json(events, sr):
            for a in core.upstream_message(core.gen, orjson.dumps(msg).decode(), 2.1):
                if isinstance(a, SendClient):
                    client.append(orjson.loads(a.data))
    finals = [m for m in client if m.get("type") == "Results" and m.get("is_final")]
    from_finalize = [m for m in finals if m.get("from_finalize")]
    assert len(from_finalize) == 1
    assert [w["word"] for w in from_finalize[0]["channel"]["alternatives"][0]["words"]] == ["w5"]
    assert from_finalize[0]["channel"]["alternatives"][0]["words"][0]["start"] == 0.42  # rebased past the drop
    assert core._finalize_owed == 0
