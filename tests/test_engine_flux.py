"""Flux (``/v2/listen``) on the embedded engine: the marker turn machine and the WebSocket route.

The turn machine is checked sans-I/O (exact events, any chunking identical, a fresh machine at an
``EndOfTurn`` reproducing the rest), the route with the official SDK 7.x (async and sync) over
loopback, every server message validated against the SDK's ``listen.v2`` pydantic models.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v2.socket_client import V2SocketClientResponse
from deepgram.listen.v2.types import (
    ListenV2ConfigureFailure,
    ListenV2ConfigureSuccess,
    ListenV2Connected,
    ListenV2FatalError,
    ListenV2TurnInfo,
    ListenV2TurnInfoWordsItem,
    ListenV2Warning,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from streamproxy.deepgram.flux import FluxThresholds, TurnEvent
from streamproxy.engine.app import start_engine
from streamproxy.engine.flux import MarkerTurns, check_thresholds
from streamproxy.engine.flux_live import ConfigureRejected, parse_configure
from streamproxy.engine.options import BadRequest, parse_flux_params
from tests.helpers.gateway import sdk_env
from tests.helpers.marker import Segment, marker_audio

KEY = "flux-key"
SR = 16000
MODELS: dict[str, Any] = {
    "Connected": ListenV2Connected,
    "TurnInfo": ListenV2TurnInfo,
    "ConfigureSuccess": ListenV2ConfigureSuccess,
    "ConfigureFailure": ListenV2ConfigureFailure,
    "Warning": ListenV2Warning,
    "Error": ListenV2FatalError,
}


def validate(raw: str | bytes) -> dict[str, Any]:
    """Strictly validate one frame with the SDK model of its type: every field we send is declared
    by that model (no extras), and the SDK's own union parsing picks that model."""
    assert isinstance(raw, str), "Flux sends JSON as text frames"
    msg: dict[str, Any] = json.loads(raw)
    model = MODELS[msg["type"]]
    model.model_validate(msg)
    assert set(msg) <= set(model.model_fields), set(msg) - set(model.model_fields)
    for w in msg.get("words", []):
        assert set(w) <= set(ListenV2TurnInfoWordsItem.model_fields)
    assert isinstance(construct_type(type_=V2SocketClientResponse, object_=msg), model)  # type: ignore[arg-type]
    return msg


def check_sequence(msgs: list[dict[str, Any]]) -> None:
    assert [m["sequence_id"] for m in msgs] == list(range(len(msgs)))
    assert msgs[0]["type"] == "Connected"


def s(n: int) -> float:
    """``n`` samples at 16 kHz in seconds, computed as the engine does."""
    return n / SR


def ms(x: int) -> int:
    return x * SR // 1000


# ----------------------------------------------------------------- the sans-I/O marker turn machine

#: 100 ms silence, w5 200 ms, 300 ms silence, w6 100 ms, 1 s silence, w7 60 ms, 60 ms silence.
SCRIPT: list[Segment] = [
    ("sil", 0, 100), ("word", 5, 200), ("sil", 0, 300), ("word", 6, 100), ("sil", 0, 1000),
    ("word", 7, 60), ("sil", 0, 60),
]  # fmt: skip


def summary(evs: list[TurnEvent]) -> list[tuple[Any, ...]]:
    return [
        (
            e.event,
            e.turn_index,
            e.audio_window_start,
            e.audio_window_end,
            e.transcript,
            e.end_of_turn_confidence,
            e.trigger,
            tuple((w.word, w.start, w.end) for w in e.words),
        )
        for e in evs
    ]


W5 = ("w5", s(ms(100)), s(ms(300)))
W6 = ("w6", s(ms(600)), s(ms(700)))
W7 = ("w7", s(ms(1700)), s(ms(1760)))
EXPECTED_SCRIPT = [
    ("StartOfTurn", 0, 0.0, s(ms(300)), "w5", 0.0, None, (W5,)),
    ("Update", 0, 0.0, s(ms(540)), "w5", ms(240) / SR, None, (W5,)),
    ("Update", 0, 0.0, s(ms(780)), "w5 w6", ms(80) / SR, None, (W5, W6)),
    ("Update", 0, 0.0, s(ms(1020)), "w5 w6", ms(320) / SR, None, (W5, W6)),
    ("Update", 0, 0.0, s(ms(1260)), "w5 w6", ms(560) / SR, None, (W5, W6)),
    ("EndOfTurn", 0, 0.0, s(ms(1400)), "w5 w6", ms(700) / SR, "model", (W5, W6)),
    ("StartOfTurn", 1, s(ms(1400)), s(ms(1760)), "w7", 0.0, None, (W7,)),
]
FORCED = ("EndOfTurn", 1, s(ms(1400)), s(ms(1820)), "w7", ms(60) / SR, "manual", (W7,))


def test_marker_turns_exact() -> None:
    m = MarkerTurns(SR)
    assert summary(m.feed(marker_audio(SCRIPT, SR))) == EXPECTED_SCRIPT
    assert m.turn_open
    assert summary(m.force_end()) == [FORCED]
    assert not m.turn_open and m.force_end() == []  # no turn open: nothing, never an empty turn


def test_eager_and_resumed() -> None:
    # w1, 450 ms silence (eager at 0.4 s), w2, then 800 ms silence: eager again, then EndOfTurn.
    segs: list[Segment] = [("word", 1, 100), ("sil", 0, 450), ("word", 2, 100), ("sil", 0, 800)]
    m = MarkerTurns(SR, FluxThresholds(eager_eot_threshold=0.4))
    evs = [e for e in m.feed(marker_audio(segs, SR)) if e.event != "Update"]
    assert [(e.event, e.audio_window_end, e.end_of_turn_confidence) for e in evs] == [
        ("StartOfTurn", s(ms(100)), 0.0),
        ("EagerEndOfTurn", s(ms(500)), ms(400) / SR),
        ("TurnResumed", s(ms(650)), 0.0),
        ("EagerEndOfTurn", s(ms(1050)), ms(400) / SR),
        ("EndOfTurn", s(ms(1350)), ms(700) / SR),
    ]
    assert evs[2].transcript == "w1 w2" and evs[-1].trigger == "model"


def test_eager_equal_to_threshold_comes_first_at_the_same_instant() -> None:
    m = MarkerTurns(SR, FluxThresholds(eot_threshold=0.5, eager_eot_threshold=0.5))
    evs = m.feed(marker_audio([("word", 3, 50), ("sil", 0, 600)], SR))
    assert [(e.event, e.audio_window_end) for e in evs][-2:] == [
        ("EagerEndOfTurn", s(ms(550))),
        ("EndOfTurn", s(ms(550))),
    ]


def test_timeout_trigger_when_shorter_than_the_threshold() -> None:
    m = MarkerTurns(SR, FluxThresholds(eot_threshold=0.9, eot_timeout_ms=500))
    evs = m.feed(marker_audio([("sil", 0, 30), ("word", 9, 100), ("sil", 0, 2000)], SR))
    end = evs[-1]
    assert (end.event, end.trigger, end.audio_window_end, end.end_of_turn_confidence) == (
        "EndOfTurn",
        "timeout",
        s(ms(630)),
        ms(500) / SR,
    )


def test_noise_is_not_silence_and_a_word_run_in_progress_holds_the_turn() -> None:
    # w4, 500 ms silence, 10 ms noise, 500 ms silence: the zero run restarts after the noise.
    segs: list[Segment] = [("word", 400, 100), ("sil", 0, 500), ("noise", 0, 10), ("sil", 0, 800)]
    evs = MarkerTurns(SR).feed(marker_audio(segs, SR))
    assert evs[-1].event == "EndOfTurn" and evs[-1].audio_window_end == s(ms(100 + 500 + 10 + 700))


def test_configure_lowering_the_threshold_fires_at_once() -> None:
    m = MarkerTurns(SR)
    assert next(e.event for e in m.feed(marker_audio([("word", 2, 100), ("sil", 0, 600)], SR))) == "StartOfTurn"
    evs = m.configure(FluxThresholds(eot_threshold=0.5))
    assert [(e.event, e.audio_window_end, e.trigger) for e in evs] == [("EndOfTurn", s(ms(700)), "model")]


def test_force_end_completes_an_open_word_run() -> None:
    m = MarkerTurns(SR)
    assert m.feed(marker_audio([("sil", 0, 100), ("word", 8, 30)], SR)) == []  # run still open
    evs = m.force_end()
    assert [(e.event, e.trigger) for e in evs] == [("StartOfTurn", None), ("EndOfTurn", "manual")]
    assert evs[1].words[0].end == s(ms(130)) == evs[1].audio_window_end
    # the run was cut: more of the same value is a new word in a new turn
    evs = m.feed(marker_audio([("word", 8, 30), ("sil", 0, 10)], SR))
    assert [(e.event, e.turn_index, e.audio_window_start) for e in evs] == [("StartOfTurn", 1, s(ms(130)))]


segments = st.lists(
    st.one_of(
        st.tuples(st.just("word"), st.sampled_from([300, 301, 500, 7000]), st.integers(5, 400)),
        st.tuples(st.just("sil"), st.just(0), st.integers(1, 1500)),
        st.tuples(st.just("noise"), st.just(0), st.integers(1, 60)),
    ),
    max_size=14,
)
thresholds = st.builds(
    FluxThresholds,
    eot_threshold=st.sampled_from([0.5, 0.7, 0.9]),
    eager_eot_threshold=st.sampled_from([None, 0.3, 0.5]),
    eot_timeout_ms=st.sampled_from([500, 800, 5000]),
)


def run_chunked(audio: bytes, cuts: list[int], th: FluxThresholds, sr: int = SR) -> list[TurnEvent]:
    m = MarkerTurns(sr, th)
    out: list[TurnEvent] = []
    prev = 0
    for c in [*sorted({min(c, len(audio)) for c in cuts}), len(audio)]:
        out += m.feed(audio[prev:c])
        prev = c
    return out + m.force_end()


@settings(max_examples=150, deadline=None)
@given(segs=segments, cuts=st.lists(st.integers(0, 200_000), max_size=30), th=thresholds)
def test_any_chunking_gives_identical_events(segs: list[Segment], cuts: list[int], th: FluxThresholds) -> None:
    audio = marker_audio(segs, SR, seed=1)
    whole = run_chunked(audio, [], th)
    assert run_chunked(audio, cuts, th) == whole
    # sample by sample at the edges too: odd byte boundaries included
    assert run_chunked(audio, [c for c in cuts if c % 2] + [1, 3], th) == whole
    # one Start and one End per turn, in order, turn_index continuous
    idx = 0
    open_ = False
    for e in whole:
        assert e.turn_index == idx
        if e.event == "StartOfTurn":
            assert not open_
            open_ = True
        else:
            assert open_
        if e.event == "EndOfTurn":
            open_ = False
            idx += 1


@settings(max_examples=100, deadline=None)
@given(segs=segments, th=thresholds)
def test_fresh_machine_at_an_end_of_turn_reproduces_the_rest(segs: list[Segment], th: FluxThresholds) -> None:
    """What the gateway's replay relies on: restart at any EndOfTurn's audio_window_end, same turns."""
    audio = marker_audio(segs, SR, seed=2)
    whole = run_chunked(audio, [], th)
    for i, e in enumerate(whole):
        if e.event != "EndOfTurn" or e.trigger == "manual":
            continue
        p = round(e.audio_window_end * SR)
        rest = run_chunked(audio[2 * p :], [], th)

        def key(ev: TurnEvent, shift: int, base: int) -> tuple[Any, ...]:
            return (
                ev.event,
                ev.turn_index - base,
                round(ev.audio_window_start * SR) + shift,
                round(ev.audio_window_end * SR) + shift,
                tuple((w.word, round(w.start * SR) + shift, round(w.end * SR) + shift) for w in ev.words),
                ev.trigger,
            )

        assert [key(x, p, 0) for x in rest] == [key(x, 0, e.turn_index + 1) for x in whole[i + 1 :]]


def test_update_cadence_is_240ms_of_audio_inside_a_turn() -> None:
    evs = MarkerTurns(SR).feed(marker_audio([("sil", 0, 1000), ("word", 5, 1000), ("sil", 0, 1000)], SR))
    ups = [round(e.audio_window_end * SR) for e in evs if e.event == "Update"]
    start = ms(2000)
    assert ups == [start + ms(240), start + ms(480)]  # then EndOfTurn at +700 ms, nothing after
    assert evs[0].event == "StartOfTurn"  # nothing before the turn


# ----------------------------------------------------------------- options and Configure parsing


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ({"model": "flux-general-en", "interim_results": "true"}, "unknown query parameter(s): interim_results"),
        ({"model": "nova-3"}, "not a Flux model"),
        ({"encoding": "opus"}, "unsupported encoding"),
        ({"eot_threshold": "0.95"}, "eot_threshold must be between 0.5 and 0.9"),
        ({"eot_threshold": "x"}, "eot_threshold must be a number"),
        ({"eager_eot_threshold": "0.8", "eot_threshold": "0.6"}, "must not exceed"),
        ({"eot_timeout_ms": "100"}, "eot_timeout_ms must be between 500 and 10000"),
        ({"sample_rate": "4000"}, "sample_rate must be between"),
        ({"numerals": "maybe"}, "numerals must be true or false"),
    ],
)
def test_flux_query_refusals(query: dict[str, str], needle: str) -> None:
    with pytest.raises(BadRequest, match=None) as ei:
        parse_flux_params(MultiDict(query), "marker")
    assert needle in str(ei.value)


def test_flux_query_accepted() -> None:
    pairs = [("model", "flux-general-en"), ("encoding", "linear16"), ("sample_rate", "8000")]
    pairs += [("eot_threshold", "0.8"), ("eager_eot_threshold", "0.4"), ("eot_timeout_ms", "3000")]
    pairs += [("keyterm", "a"), ("keyterm", "b"), ("tag", "t"), ("mip_opt_out", "true")]
    q = MultiDict(pairs)
    o = parse_flux_params(q, "marker")
    assert o.sample_rate == 8000
    assert o.thresholds == FluxThresholds(0.8, 0.4, 3000, ("a", "b"))


def test_parse_configure() -> None:
    cur = check_thresholds(FluxThresholds())
    th = parse_configure({"thresholds": {"eot_threshold": 0.6}, "keyterms": "x"}, cur, "flux-general-en")
    assert th == FluxThresholds(0.6, None, 5000, ("x",))
    for bad in (
        {"thresholds": {"eot_threshold": 2}},
        {"thresholds": {"eot_threshold": "0.6"}},
        {"thresholds": {"bogus": 1}},
        {"thresholds": 3},
        {"thresholds": {"eot_timeout_ms": 1.5}},
        {"keyterms": [1]},
        {"language_hints": ["en"]},
    ):
        with pytest.raises(ConfigureRejected):
            parse_configure(bad, cur, "flux-general-en")


# ----------------------------------------------------------------- the route, through the SDK


@pytest.fixture
async def port() -> AsyncIterator[int]:
    runner, p = await start_engine("127.0.0.1", 0, "marker", api_key=KEY)
    try:
        yield p
    finally:
        await runner.cleanup()


async def drain(ws: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        try:
            raw = await ws.recv()
        except websockets.ConnectionClosed:
            return out
        out.append(validate(raw))


async def recv_until(ws: Any, pred: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        m = validate(await asyncio.wait_for(ws.recv(), 5))
        out.append(m)
        if pred(m):
            return out


def as_summary(m: dict[str, Any]) -> tuple[Any, ...]:
    return (
        m["event"],
        m["turn_index"],
        m["audio_window_start"],
        m["audio_window_end"],
        m["transcript"],
        m["end_of_turn_confidence"],
        m.get("trigger"),
        tuple((w["word"], w["start"], w["end"]) for w in m["words"]),
    )


async def test_sdk_async_exact_turns_force_end_and_close_without_end_of_turn(port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=sdk_env(port))
    audio = marker_audio(SCRIPT, SR)
    async with client.listen.v2.connect(model="flux-general-en", encoding="linear16", sample_rate="16000") as sock:
        ws = sock._websocket
        for i in range(0, len(audio), 2 * 1600 + 2):  # 100 ms chunks, one sample off
            await sock.send_media(audio[i : i + 3202])
        got = await recv_until(ws, lambda m: m.get("event") == "StartOfTurn" and m["turn_index"] == 1)
        await sock.send_force_end_turn()
        got += await recv_until(ws, lambda m: m.get("event") == "EndOfTurn" and m["turn_index"] == 1)
        # a new turn left open at CloseStream: Deepgram drops it, and so does the engine
        await sock.send_media(marker_audio([("word", 11, 50), ("sil", 0, 100)], SR))
        got += await recv_until(ws, lambda m: m.get("event") == "StartOfTurn" and m["turn_index"] == 2)
        await sock.send_close_stream()
        got += await drain(ws)
        assert ws.close_code == 1000
    check_sequence(got)
    turns = [as_summary(m) for m in got[1:]]
    assert turns[:-1] == [*EXPECTED_SCRIPT, FORCED]
    assert turns[-1][0] == "StartOfTurn" and not [t for t in turns if t[0] == "EndOfTurn" and t[1] == 2]
    assert len({m["request_id"] for m in got}) == 1


async def test_sdk_typed_recv_and_configure_answered_once(port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=sdk_env(port))
    async with client.listen.v2.connect(
        model="flux-general-en", encoding="linear16", sample_rate="16000", eot_threshold="0.9", keyterm="hello"
    ) as sock:
        assert isinstance(await sock.recv(), ListenV2Connected)
        await sock.send_media(marker_audio([("word", 4, 100), ("sil", 0, 600)], SR))
        first = await sock.recv()
        assert isinstance(first, ListenV2TurnInfo) and first.event == "StartOfTurn"
        await sock.send_configure({"type": "Configure", "thresholds": {"eot_threshold": 0.5}, "keyterms": ["a"]})
        ws = sock._websocket
        got = await recv_until(ws, lambda m: m.get("event") == "EndOfTurn")
        ok = [m for m in got if m["type"] == "ConfigureSuccess"]
        assert len(ok) == 1
        assert ok[0]["thresholds"] == {"eot_threshold": 0.5, "eot_timeout_ms": 5000} and ok[0]["keyterms"] == ["a"]
        assert got[-1]["audio_window_end"] == s(ms(700)) and got[-1]["trigger"] == "model"  # fired at once
        await sock.send_configure({"type": "Configure", "thresholds": {"eot_threshold": 5}})
        fail = validate(await ws.recv())
        assert fail["type"] == "ConfigureFailure" and "eot_threshold" in fail["description"]
        await ws.send("not json")
        assert validate(await ws.recv())["type"] == "Warning"
        await sock.send_close_stream()
        rest = await drain(ws)
    assert rest == []  # exactly one answer per Configure, nothing after CloseStream


async def test_sdk_sync_client_stream_ending_60ms_after_its_last_word(port: int) -> None:
    """Sync client (in its own thread): the audio ends 60 ms after the word; ForceEndTurn ends it."""

    def run() -> list[dict[str, Any]]:
        client = DeepgramClient(api_key=KEY, environment=sdk_env(port))
        with client.listen.v2.connect(model="flux-general-en", encoding="linear16", sample_rate="16000") as sock:
            sock.send_media(marker_audio([("sil", 0, 200), ("word", 21, 120), ("sil", 0, 60)], SR))
            sock.send_force_end_turn()
            out: list[dict[str, Any]] = []
            while not out or out[-1].get("event") != "EndOfTurn":
                out.append(validate(sock._websocket.recv(timeout=5)))
            sock.send_close_stream()
        return out

    got = await asyncio.to_thread(run)
    check_sequence(got)
    assert [as_summary(m) for m in got[1:]] == [
        ("StartOfTurn", 0, 0.0, s(ms(320)), "w21", 0.0, None, (("w21", s(ms(200)), s(ms(320))),)),
        ("EndOfTurn", 0, 0.0, s(ms(380)), "w21", ms(60) / SR, "manual", (("w21", s(ms(200)), s(ms(320))),)),
    ]


async def test_bad_query_auth_and_upgrade(port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=sdk_env(port))
    with pytest.raises(ApiError) as ei:
        async with client.listen.v2.connect(model="flux-general-en", eot_threshold="3"):
            pass
    assert ei.value.status_code == 400
    bad = AsyncDeepgramClient(api_key="nope", environment=sdk_env(port))
    with pytest.raises(ApiError) as ei:
        async with bad.listen.v2.connect(model="flux-general-en"):
            pass
    assert ei.value.status_code == 401
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/v2/listen?model=flux-general-en&endpointing=300"
        async with http.get(url, headers={"Authorization": f"Token {KEY}"}) as resp:
            assert resp.status == 400
            assert "endpointing" in resp.headers["dg-error"]
            assert (await resp.json())["err_code"] == "Bad Request"
    base = f"ws://127.0.0.1:{port}/v2/listen?model=flux-general-en"
    async with websockets.connect(base, subprotocols=["token", KEY]) as ws:  # type: ignore[list-item]
        assert validate(await ws.recv())["type"] == "Connected"
        await ws.send(json.dumps({"type": "CloseStream"}))
        assert await drain(ws) == [] and ws.close_code == 1000


async def test_pings_keep_an_idle_flux_socket_open_and_silence_times_out() -> None:
    runner, p = await start_engine("127.0.0.1", 0, "marker", idle_timeout_s=0.6)
    try:
        url = f"ws://127.0.0.1:{p}/v2/listen?model=flux-general-en"
        async with websockets.connect(url, ping_interval=0.2) as ws:
            assert validate(await ws.recv())["type"] == "Connected"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.5)  # pinged: still open, nothing sent
        async with websockets.connect(url, ping_interval=None) as ws:
            msgs = await drain(ws)
            assert [m["type"] for m in msgs] == ["Connected", "Error"] and msgs[1]["code"] == "NET-0001"
            assert ws.close_code == 1011
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------- whisper and pocketsphinx turns

SENTENCES = ("the weather is nice today", "please open the front door")


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Two spoken sentences (espeak-ng, 16 kHz) with 0.4 s lead, 1.5 s between and 1.5 s after."""
    import numpy as np

    from streamproxy.engine.dsp import wav_to_pcm16
    from tests.helpers.engine import espeak_wav16

    d = tmp_path_factory.mktemp("flux-speech")
    pcm = [wav_to_pcm16(espeak_wav16(t, d, f"s{i}").read_bytes())[0].tobytes() for i, t in enumerate(SENTENCES)]
    z = lambda sec: np.zeros(int(sec * SR), dtype="<i2").tobytes()  # noqa: E731
    return z(0.4) + pcm[0] + z(1.5) + pcm[1] + z(1.5)


@pytest.mark.parametrize("kind", ["pocketsphinx", "whisper"])
async def test_speech_kinds_give_one_turn_per_sentence(kind: str, two_sentences: bytes) -> None:
    """Measured: whisper gives both sentences as two turns (EndOfTurn 0.7 s after each VAD endpoint,
    transcripts near-exact); pocketsphinx gives two turns with poor words."""
    from tests.helpers.engine import recall

    runner, p = await start_engine("127.0.0.1", 0, kind)
    try:
        url = f"ws://127.0.0.1:{p}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000"
        async with websockets.connect(url) as ws:
            for i in range(0, len(two_sentences), 3200):
                await ws.send(two_sentences[i : i + 3200])
            got = await recv_until(
                ws, lambda m: m.get("event") == "EndOfTurn" and m["turn_index"] == len(SENTENCES) - 1
            )
            await ws.send(json.dumps({"type": "CloseStream"}))
            got += await drain(ws)
    finally:
        await runner.cleanup()
    check_sequence(got)
    ends = [m for m in got if m.get("event") == "EndOfTurn"]
    starts = [m for m in got if m.get("event") == "StartOfTurn"]
    assert len(ends) == len(starts) == len(SENTENCES)
    for i, (text, end) in enumerate(zip(SENTENCES, ends, strict=True)):
        assert end["turn_index"] == i and end["trigger"] == "model"
        if kind == "whisper":  # pocketsphinx's en-US model hears espeak poorly (v1 tests ask 25 % overall)
            # The turn holds its sentence's words; how well is measured on real speech elsewhere. In
            # live 15 s windows tiny.en hears this espeak "the weather is nice" as "but when there is
            # ice" (right in 30 s windows, which cost a third of the streams: README, Capacity).
            assert recall(text, end["transcript"]) >= 0.4, (kind, text, end["transcript"])
        assert end["words"] and end["audio_window_start"] <= end["words"][0]["start"]
        assert end["words"][-1]["end"] <= end["audio_window_end"]
    assert ends[0]["audio_window_end"] == ends[1]["audio_window_start"]
