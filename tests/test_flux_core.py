"""The Flux session core against the real marker turn machine: any audio, chunking and failure
schedule gives the client the turns of an uninterrupted run - same words, same times, one
StartOfTurn and one EndOfTurn per turn in order, turn_index continuous, sequence_id 0, 1, 2 …
without holes - and the last turn survives CloseStream."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproxy.deepgram import flux as fm
from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.engine.flux import MarkerTurns
from streamproxy.session.core import CloseClient, Connect, DropUpstream, SendClient, SendUpstream, SessionSettings
from streamproxy.session.flux import FORCE_END_TURN, FluxSession
from tests.helpers.marker import marker_audio

SR = 8000


class Upstream:
    """The engine's marker turn machine behind Flux JSON, as one upstream connection."""

    def __init__(self, sr: int = SR) -> None:
        self.turns = MarkerTurns(sr)
        self.seq = 0

    def _json(self, build: object, *args: object, **kw: object) -> str:
        msg = build(*args, request_id="up", sequence_id=self.seq, **kw)  # type: ignore[operator]
        self.seq += 1
        return orjson.dumps(msg).decode()

    def connected(self) -> list[str]:
        return [self._json(fm.connected_message)]

    def answer(self, data: bytes | str) -> tuple[list[str], bool]:
        """(messages, closes with 1000 afterwards)."""
        if isinstance(data, bytes):
            events = self.turns.feed(data)
        elif data == FORCE_END_TURN:
            events = self.turns.force_end()
        elif '"CloseStream"' in data:
            return [], True
        else:
            events = []
        return [self._json(fm.turn_info_message, ev) for ev in events], False


@dataclass
class Run:
    audio: bytes
    chunks: list[int]
    drops: list[int] = field(default_factory=list)  # drop the upstream after these many sends
    refusals: int = 0  # the first reconnect handshakes answer 503
    close: bool = True

    def go(self) -> tuple[list[dict], FluxSession]:
        core = FluxSession(
            AudioFormat("linear16", SR, 1),
            SessionSettings(max_attempts=0, stall_timeout_s=1000, close_timeout_s=600),
            now=0.0,
            session_id="s",
            rng=random.Random(0),
        )
        client: list[dict] = []
        state = {"up": None, "sends": 0, "closed": False}
        drops = sorted(self.drops)
        pending: list[Connect] = []

        def handle(actions: list) -> None:
            for a in actions:
                if isinstance(a, SendUpstream) and state["up"] is not None:
                    state["sends"] += 1
                    up: Upstream = state["up"]  # type: ignore[assignment]
                    gen = core.gen
                    if drops and state["sends"] >= drops[0]:
                        drops.pop(0)
                        state["up"] = None
                        handle(core.upstream_closed(gen, 1011, "drop", now))
                        continue
                    msgs, closes = up.answer(a.data)
                    for m in msgs:
                        handle(core.upstream_message(gen, m, now))
                    if closes:
                        state["up"] = None
                        handle(core.upstream_closed(gen, 1000, "", now))
                elif isinstance(a, SendClient):
                    client.append(orjson.loads(a.data))
                elif isinstance(a, Connect):
                    pending.append(a)
                elif isinstance(a, DropUpstream):
                    state["up"] = None
                elif isinstance(a, CloseClient):
                    state["closed"] = True

        refusals = [self.refusals]

        def connect_pending() -> None:
            while pending and not state["closed"]:
                a = pending.pop(0)
                if a.gen != core.gen:
                    continue
                if a.reason != "initial" and refusals[0] > 0:
                    refusals[0] -= 1
                    handle(core.upstream_failed(a.gen, 503, "busy", now))
                    continue
                up = Upstream()
                state["up"] = up
                for m in up.connected():
                    handle(core.upstream_message(a.gen, m, now))
                handle(core.upstream_connected(a.gen, "u", now))

        now = 0.0
        handle(core.start(now))
        connect_pending()
        pos, i = 0, 0
        while pos < len(self.audio):
            n = self.chunks[i % len(self.chunks)]
            i += 1
            now += n / (2 * SR)
            handle(core.client_audio(self.audio[pos : pos + n], now))
            pos += n
            connect_pending()
            dl = core.next_deadline()
            if dl is not None and dl <= now:
                handle(core.tick(now))
                connect_pending()
        now += 0.2
        handle(core.tick(now))
        connect_pending()
        if self.close:
            handle(core.client_text('{"type":"CloseStream"}', now))
            for _ in range(50):
                connect_pending()
                if state["closed"]:
                    break
                now += 1.0
                handle(core.tick(now))
        return client, core


def reference(audio: bytes, sr: int = SR) -> list[dict]:
    """What an uninterrupted marker engine says, plus the gateway's ForceEndTurn at close."""
    up = Upstream(sr)
    out = [orjson.loads(m) for m in up.connected()]
    out += [orjson.loads(m) for m in up.answer(audio)[0]]
    out += [orjson.loads(m) for m in up.answer(FORCE_END_TURN)[0]]
    return out


def turns(msgs: list[dict]) -> list[tuple]:
    return [
        (m["turn_index"], m["audio_window_start"], m["audio_window_end"], m["transcript"],
         tuple((w["word"], w.get("start"), w.get("end")) for w in m["words"]), m.get("trigger"))
        for m in msgs if m.get("type") == "TurnInfo" and m["event"] == "EndOfTurn"
    ]  # fmt: skip


def check(msgs: list[dict], audio: bytes) -> None:
    assert [m["sequence_id"] for m in msgs] == list(range(len(msgs)))
    assert [m["type"] for m in msgs].count("Connected") == 1 and msgs[0]["type"] == "Connected"
    assert turns(msgs) == turns(reference(audio))
    open_turn: int | None = None
    for m in msgs:
        if m.get("type") != "TurnInfo":
            continue
        if m["event"] == "StartOfTurn":
            assert open_turn is None
            open_turn = m["turn_index"]
        else:
            assert open_turn == m["turn_index"], f"{m['event']} outside its turn"
            if m["event"] == "EndOfTurn":
                open_turn = None
    assert open_turn is None


segment = st.one_of(
    st.tuples(st.just("word"), st.integers(1, 3000), st.integers(20, 500)),
    st.tuples(st.just("sil"), st.just(0), st.integers(10, 1500)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(segment, min_size=1, max_size=14),
    st.lists(st.integers(2, 4000).map(lambda n: n - n % 2), min_size=1, max_size=5),
    st.lists(st.integers(1, 120), max_size=4),
    st.integers(0, 3),
)
def test_turns_equal_the_uninterrupted_run_under_drops(
    segs: list, chunks: list[int], drops: list[int], refusals: int
) -> None:
    """Drops anywhere (also during a replay: sends are counted across connections) and refused
    reconnect handshakes."""
    audio = marker_audio(segs, SR)
    msgs, core = Run(audio, chunks, drops, refusals).go()
    check(msgs, audio)
    assert core.done


def test_stream_ending_60_ms_after_its_last_word_still_ends_that_turn() -> None:
    audio = marker_audio([("sil", 0, 100), ("word", 7, 300), ("sil", 0, 60)], SR)
    msgs, _ = Run(audio, [1600]).go()
    [end] = [m for m in msgs if m.get("event") == "EndOfTurn"]
    assert end["transcript"] == "w7" and end["trigger"] == "manual"


def test_drop_mid_turn_completes_the_turn_once() -> None:
    """The upstream dies inside a turn (after its StartOfTurn): the replacement replays from the
    last EndOfTurn and completes the turn; the client never sees a second StartOfTurn."""
    audio = marker_audio([("word", 5, 200), ("sil", 0, 900), ("word", 6, 200), ("word", 8, 200), ("sil", 0, 900)], SR)
    msgs, core = Run(audio, [800], drops=[16]).go()
    check(msgs, audio)
    assert core.stats.reconnects == 1
    starts = [m["turn_index"] for m in msgs if m.get("event") == "StartOfTurn"]
    assert starts == [0, 1]
