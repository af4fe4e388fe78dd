"""Issue-level robustness of the sans-I/O core against peers that misbehave (findings 5, 8, 9 and
the idle client of 4), each named after the behaviour that broke it. The upstream is the real
marker recognizer behind Deepgram JSON; the clock is simulated."""

from __future__ import annotations

import orjson

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.deepgram.messages import CLOSE_STREAM, FINALIZE, KEEPALIVE, metadata_message
from streamproxy.engine.marker import MarkerRecognizer
from streamproxy.session.core import (
    Action,
    CloseClient,
    Connect,
    DropUpstream,
    SendClient,
    SendUpstream,
    Session,
    SessionSettings,
)
from tests.helpers.marker import final_words, marker_audio
from tests.helpers.sim import Fault, World, to_json

SR = 8000


class Upstream:
    """The marker recognizer speaking Deepgram JSON; ``mute`` swallows everything (a stalled peer)."""

    def __init__(self, mute: bool = False) -> None:
        self.rec = MarkerRecognizer(SR)
        self.mute = mute
        self.received: list[bytes | str] = []

    def answer(self, data: bytes | str) -> list[str]:
        self.received.append(data)
        if self.mute:
            return []
        if isinstance(data, bytes):
            events = self.rec.feed(data)
        elif data == FINALIZE:
            events = self.rec.finalize()
        elif data == CLOSE_STREAM:
            out = [orjson.dumps(m).decode() for m in to_json(self.rec.close(), SR)]
            meta = metadata_message(request_id="r", duration=0.0, channels=1, model_name="marker")
            return [*out, orjson.dumps(meta).decode()]
        else:
            events = []
        return [orjson.dumps(m).decode() for m in to_json(events, SR)]


class Harness:
    """Drives one core: performs its actions against ``Upstream``s, records what the client gets."""

    def __init__(self, settings: SessionSettings) -> None:
        self.core = Session(AudioFormat("linear16", SR, 1), settings, now=0.0, session_id="s")
        self.client: list[dict] = []
        self.closed: CloseClient | None = None
        self.closed_at: float | None = None
        self.drops: list[str] = []
        self.connects: list[Connect] = []
        self.up: Upstream | None = None
        self.next_up: list[Upstream] = []
        self.now = 0.0
        self.handle(self.core.start(0.0))

    def handle(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SendUpstream) and self.up is not None:
                up, gen = self.up, self.core.gen
                for reply in up.answer(a.data):
                    self.handle(self.core.upstream_message(gen, reply, self.now))
                if a.data == CLOSE_STREAM and not up.mute:  # Deepgram closes after the Metadata
                    self.handle(self.core.upstream_closed(gen, 1000, "", self.now))
            elif isinstance(a, SendClient):
                self.client.append(orjson.loads(a.data))
            elif isinstance(a, CloseClient):
                self.closed, self.closed_at = a, self.now
            elif isinstance(a, DropUpstream):
                self.drops.append(a.reason)
                self.up = None
            elif isinstance(a, Connect):
                self.connects.append(a)

    def connect(self, upstream: Upstream) -> None:
        self.up = upstream
        self.handle(self.core.upstream_connected(self.core.gen, "u", self.now))

    def advance(self, to: float) -> None:
        """Run the clock to ``to``, firing every deadline on the way."""
        while (dl := self.core.next_deadline()) is not None and dl <= to and not self.core.done:
            self.now = max(self.now, dl)
            self.handle(self.core.tick(self.now))
        self.now = max(self.now, to)


def test_keepalive_only_idle_after_a_word_is_not_a_stall() -> None:
    """One word, then 24 s of KeepAlive every 4 s (what Pipecat/LiveKit clients do): the healthy
    upstream answered everything owed, so it must not be dropped as stalled."""
    h = Harness(SessionSettings(stall_timeout_s=10.0, client_idle_timeout_s=10.0))
    h.connect(Upstream())
    audio = marker_audio([("word", 9, 200), ("sil", 0, 600)], SR)
    t = 0.0
    for i in range(0, len(audio), SR // 5):  # 100 ms chunks in real time
        t = round(t + 0.1, 3)
        h.advance(t)
        h.handle(h.core.client_audio(audio[i : i + SR // 5], t))
    while t < 25.0:
        t += 4.0
        h.advance(t)
        h.handle(h.core.client_text(KEEPALIVE, t))
    assert h.drops == []
    assert [w[0] for w in final_words(h.client)] == ["w9"]
    assert not h.core.done  # KeepAlive counts as client activity: no idle close either


def test_audio_into_a_mute_upstream_is_still_a_stall() -> None:
    """The other side of the same rule: audio keeps flowing and nothing comes back -> stall."""
    h = Harness(SessionSettings(stall_timeout_s=2.0))
    h.connect(Upstream(mute=True))
    frame = bytes(2 * SR // 10)
    t = 0.0
    while t < 3.0 and not h.drops:
        t = round(t + 0.1, 3)
        h.handle(h.core.client_audio(frame, t))
        h.advance(t)
    assert h.drops == ["stall"] and 2.0 <= t <= 2.2


def test_silent_client_gets_net0001_and_1011() -> None:
    """No audio and no KeepAlive for client_idle_timeout_s: Deepgram's NET-0001 Error, then 1011,
    after the trailing results of what it did send (the gateway stops paying for the upstream)."""
    h = Harness(SessionSettings(client_idle_timeout_s=10.0))
    h.connect(Upstream())
    h.handle(h.core.client_audio(marker_audio([("word", 4, 100)], SR), 0.1))
    h.advance(30.0)
    assert h.core.done and h.closed is not None and h.closed.code == 1011
    assert [w[0] for w in final_words(h.client)] == ["w4"]  # finalised before closing
    assert h.client[-1]["type"] == "Error" and h.client[-1]["err_code"] == "NET-0001"
    assert h.closed_at is not None and 10.0 <= h.closed_at <= 10.5


def test_upstream_mute_at_closestream_loses_nothing_with_default_timeouts() -> None:
    """Finding 8: stall timeout == close timeout == 10 s and the upstream goes mute exactly at
    CloseStream. The unanswered CloseStream is a stall; the replacement replays and answers, and the
    client gets every word and Metadata - not a Metadata with the words missing."""
    h = Harness(SessionSettings(stall_timeout_s=10.0, close_timeout_s=10.0))
    first = Upstream()
    h.connect(first)
    h.handle(h.core.client_audio(marker_audio([("sil", 0, 100), ("word", 6, 300), ("word", 8, 100)], SR), 0.5))
    first.mute = True  # from here on nothing comes back
    h.handle(h.core.client_text(CLOSE_STREAM, 0.5))
    h.advance(10.5)
    assert h.drops == ["stall"] and len(h.connects) == 2
    h.connect(Upstream())
    h.advance(30.0)
    assert h.closed is not None and h.closed.code == 1000
    assert [w[0] for w in final_words(h.client)] == ["w6", "w8"]
    assert h.client[-1]["type"] == "Metadata"


def test_long_outage_with_client_present_never_gives_up() -> None:
    """Finding 9: max_attempts = 10 burnt within seconds by full-jitter draws used to end the session
    while its client was still streaming. 400 refused handshakes later the upstream is back: every
    word arrives."""
    audio = marker_audio([("word", 3, 200), ("sil", 0, 400), ("word", 5, 200), ("sil", 0, 400)] * 4, SR)
    s = SessionSettings(max_attempts=10, stall_timeout_s=5.0, close_timeout_s=600.0, backoff_cap_s=0.5)
    w = World(audio=audio, sr=SR, chunks=[800], faults=[Fault(1, "handshake503")] * 400, settings=s)
    got, core = w.run()
    assert core.stats.reconnects >= 400 and not core.stats.fatal
    assert [x[0] for x in final_words(got)] == ["w3", "w5"] * 4


def test_upstream_error_is_shown_only_when_the_stream_goes_on() -> None:
    """An upstream Error followed by more messages was non-fatal: the client gets it, once, in order.
    One followed by a close is the close's business (reconnect and replay): the client never sees it."""
    h = Harness(SessionSettings())
    h.connect(Upstream())
    gen = h.core.gen
    err = '{"type":"Error","variant":"Warning","description":"keyterm ignored","message":"keyterm ignored"}'
    h.handle(h.core.upstream_message(gen, err, 0.1))
    assert h.client == []  # held until the stream shows it goes on
    h.handle(h.core.client_audio(marker_audio([("word", 3, 200), ("sil", 0, 400)], SR), 0.7))
    assert [m["type"] for m in h.client][:1] == ["Error"] and final_words(h.client)[0][0] == "w3"
    h.handle(h.core.upstream_message(gen, err.replace("keyterm ignored", "going away"), 0.8))
    h.handle(h.core.upstream_closed(gen, 1011, "", 0.8))
    assert [m["type"] for m in h.client].count("Error") == 1  # the fatal one was not shown
    assert len(h.connects) == 2  # ... and the connection is replaced
