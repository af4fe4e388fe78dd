"""The embedded engine server, driven by the official Deepgram SDK over real loopback sockets.

Every message the engine sends is validated against the SDK's pydantic models, so a strict
Deepgram client accepts the engine (and, through it, the gateway's embedded mode).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.core.unchecked_base_model import construct_type
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from deepgram.listen.v1.types import (
    ListenV1ConfigureFailure,
    ListenV1ConfigureSuccess,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from deepgram.types.listen_v1response import ListenV1Response
from multidict import MultiDict

from streamproxy.deepgram.messages import (
    error_message,
    http_error_body,
    metadata_message,
    prerecorded_response,
    results_message,
    speech_started_message,
    utterance_end_message,
)
from streamproxy.deepgram.types import Result, SpeechStarted, UtteranceEnd, Word
from streamproxy.engine.app import start_engine
from streamproxy.engine.dsp import resample, wav_to_pcm16
from streamproxy.engine.handshake import refusal
from streamproxy.engine.options import (
    BadRequest,
    LiveOptions,
    check_prerecorded_params,
    parse_live_params,
    prerecorded_options,
    raw_audio_format,
)
from streamproxy.engine.prerecorded import decode_body
from streamproxy.engine.recognizer import Resampled
from streamproxy.eval import corpus
from tests.helpers.engine import espeak_wav16, marker_audio_ms, recall, require_espeak, wer

KEY = "test-key-123"
MODELS: dict[str, Any] = {
    "Results": ListenV1Results,
    "Metadata": ListenV1Metadata,
    "Error": ListenV1Error,
    "SpeechStarted": ListenV1SpeechStarted,
    "UtteranceEnd": ListenV1UtteranceEnd,
    "ConfigureSuccess": ListenV1ConfigureSuccess,
    "ConfigureFailure": ListenV1ConfigureFailure,
}


def validate(raw: str | bytes) -> dict[str, Any]:
    """Strictly validate one server frame with the SDK model for its type; check the SDK parses it."""
    assert isinstance(raw, str), "Deepgram sends JSON as text frames"
    msg: dict[str, Any] = json.loads(raw)
    model = MODELS[msg["type"]]
    model.model_validate(msg)
    assert isinstance(construct_type(type_=V1SocketClientResponse, object_=msg), model)  # type: ignore[arg-type]
    return msg


def env(port: int) -> DeepgramClientEnvironment:
    return DeepgramClientEnvironment(
        base=f"http://127.0.0.1:{port}",
        production=f"ws://127.0.0.1:{port}",
        agent=f"ws://127.0.0.1:{port}",
        agent_rest=f"http://127.0.0.1:{port}",
    )


async def engine(kind: str = "marker", **kw: Any) -> AsyncIterator[int]:
    runner, port = await start_engine("127.0.0.1", 0, kind, **kw)
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.fixture
async def marker_port() -> AsyncIterator[int]:
    async for p in engine("marker", api_key=KEY):
        yield p


@pytest.fixture
async def idle_port() -> AsyncIterator[int]:
    async for p in engine("marker", idle_timeout_s=0.5):
        yield p


@pytest.fixture
async def sphinx_port() -> AsyncIterator[int]:
    async for p in engine("pocketsphinx"):
        yield p


def chunks(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


async def collect(ws: Any) -> list[dict[str, Any]]:
    """All frames until the server closes (any close code), each validated."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            raw = await ws.recv()
        except websockets.ConnectionClosed:
            return out
        out.append(validate(raw))


# --------------------------------------------------------------------------- message builders


def test_builders_validate_against_sdk_models() -> None:
    r = Result(0.0, 0.75, [Word("w5", 0.1, 0.3, 1.0)], True, True, False, duration=0.75)
    msg = results_message(r, request_id="rid", model_name="marker")
    ListenV1Results.model_validate(msg)
    assert msg["channel_index"] == [0, 1] and msg["duration"] == 0.75 and msg["start"] == 0.0
    assert msg["channel"]["alternatives"][0]["transcript"] == "w5"
    assert msg["channel"]["alternatives"][0]["words"][0]["punctuated_word"] == "w5"
    empty = results_message(Result(3.0, 6.0, [], True, False, False), request_id="r", model_name="m")
    ListenV1Results.model_validate(empty)
    assert empty["channel"]["alternatives"][0] == {"transcript": "", "confidence": 0.0, "words": []}
    ListenV1Metadata.model_validate(metadata_message(request_id="r", duration=1.5, channels=1, model_name="m"))
    err = error_message("NET-0001", "timeout")
    ListenV1Error.model_validate(err)
    assert err["err_code"] == "NET-0001" and err["err_msg"] == "timeout" and err["type"] == "Error"
    ListenV1SpeechStarted.model_validate(speech_started_message(SpeechStarted(0.1)))
    ListenV1UtteranceEnd.model_validate(utterance_end_message(UtteranceEnd(0.2)))
    resp = prerecorded_response([r], request_id="r", duration=1.0, model_name="m", utterances=True)
    ListenV1Response.model_validate(resp)
    assert resp["results"]["utterances"][0]["transcript"] == "w5"


# --------------------------------------------------------------------------- live, marker


async def test_live_marker_with_sdk(marker_port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=env(marker_port))
    audio = marker_audio_ms([(0, 100), (5, 200), (7, 100), (0, 400), (9, 250), (0, 50)], 16000)
    async with client.listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=16000,
        interim_results="true",
        vad_events="true",
        utterance_end_ms="1000",
        punctuate="true",
        smart_format="true",
    ) as sock:
        ws = sock._websocket  # raw frames, to validate exactly what the engine sent
        reader = asyncio.create_task(collect(ws))
        for c in chunks(audio, 3200):
            await sock.send_media(c)
        await sock.send_keep_alive()
        await sock.send_finalize()
        await sock.send_media(marker_audio_ms([(0, 500)], 16000))
        await sock.send_close_stream()
        msgs = await asyncio.wait_for(reader, 10)
        assert ws.close_code == 1000
    finals = [m for m in msgs if m["type"] == "Results" and m["is_final"]]
    words = [(w["word"], w["start"], w["end"]) for f in finals for w in f["channel"]["alternatives"][0]["words"]]
    assert words == [("w5", 0.1, 0.3), ("w7", 0.3, 0.4), ("w9", 0.8, 1.05)]
    assert [(f["start"], f["duration"], f["speech_final"], f["from_finalize"]) for f in finals] == [
        (0.0, 0.7, True, False),
        (0.7, 0.4, False, True),
        (1.1, 0.5, False, True),
    ]
    assert any(m["type"] == "Results" and not m["is_final"] for m in msgs), "interim results expected"
    assert [m["timestamp"] for m in msgs if m["type"] == "SpeechStarted"] == [0.1, 0.3, 0.8]
    assert msgs[-1]["type"] == "Metadata" and msgs[-1]["duration"] == 1.6
    assert len({m["metadata"]["request_id"] for m in finals}) == 1


async def test_sdk_iterator_yields_typed_messages(marker_port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=env(marker_port))
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000) as sock:
        await sock.send_media(marker_audio_ms([(0, 100), (42, 100), (0, 400)], 8000))
        await sock.send_close_stream()
        got = [m async for m in sock]
    assert [type(m).__name__ for m in got] == ["ListenV1Results", "ListenV1Results", "ListenV1Metadata"]
    assert got[0].channel.alternatives[0].transcript == "w42"


async def test_many_concurrent_streams_are_exact(marker_port: int) -> None:
    async def one(i: int) -> list[tuple[str, float, float]]:
        k = i + 1
        audio = marker_audio_ms([(0, 10 * i), (k, 100), (0, 350), (k + 1000, 40)], 16000)
        url = f"ws://127.0.0.1:{marker_port}/v1/listen?encoding=linear16&sample_rate=16000"
        async with websockets.connect(url, additional_headers={"Authorization": f"Token {KEY}"}) as ws:
            for c in chunks(audio, 1001):
                await ws.send(c)
            await ws.send(json.dumps({"type": "CloseStream"}))
            msgs = [validate(m) async for m in ws]
        return [
            (w["word"], w["start"], w["end"])
            for m in msgs
            if m["type"] == "Results"
            for w in m["channel"]["alternatives"][0]["words"]
        ]

    results = await asyncio.gather(*(one(i) for i in range(40)))
    for i, words in enumerate(results):
        t0 = 10 * i / 1000
        assert words == [
            (f"w{i + 1}", round(t0 * 16000) / 16000, round((t0 + 0.1) * 16000) / 16000),
            (f"w{i + 1001}", round((t0 + 0.45) * 16000) / 16000, round((t0 + 0.49) * 16000) / 16000),
        ]


# --------------------------------------------------------------------------- auth and parameters


async def test_auth_header_subprotocol_and_rejection(marker_port: int) -> None:
    base = f"ws://127.0.0.1:{marker_port}/v1/listen"
    bad = AsyncDeepgramClient(api_key="wrong", environment=env(marker_port))
    with pytest.raises(ApiError) as ei:
        async with bad.listen.v1.connect(model="nova-3"):
            pass
    assert ei.value.status_code == 401
    async with websockets.connect(base, subprotocols=["token", KEY]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "token"
        assert ws.response is not None and ws.response.headers["dg-request-id"]
        await ws.send(json.dumps({"type": "CloseStream"}))
        assert [validate(m)["type"] async for m in ws] == ["Results", "Metadata"]
    async with websockets.connect(base, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send(b"")  # legacy close-stream signal
        assert [validate(m)["type"] async for m in ws] == ["Results", "Metadata"]
        assert ws.close_code == 1000
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{marker_port}/v1/listen") as resp:
            assert resp.status == 401
            assert (await resp.json())["err_code"] == "INVALID_AUTH"


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("bogus=1", "unknown query parameter(s): bogus"),
        ("encoding=mulaw&sample_rate=8000", "encoding"),
        ("sample_rate=7000", "sample_rate"),
        ("sample_rate=abc", "sample_rate must be an integer"),
        ("channels=2", "channels"),
        ("endpointing=soon", "endpointing"),
        ("interim_results=maybe", "interim_results must be true or false"),
    ],
)
async def test_bad_params_400_before_upgrade(marker_port: int, query: str, needle: str) -> None:
    url = f"http://127.0.0.1:{marker_port}/v1/listen?{query}"
    headers = {"Authorization": f"Token {KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 400
            body = await resp.json()
            assert body["err_code"] == "Bad Request" and needle in body["err_msg"] and body["request_id"]
            assert needle in resp.headers["dg-error"]
            assert resp.headers["dg-request-id"] == body["request_id"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
            await http.ws_connect(url, headers=headers)
        assert ei.value.status == 400
        assert ei.value.headers is not None and needle in ei.value.headers["dg-error"]


async def test_sdk_sees_400(marker_port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=env(marker_port))
    with pytest.raises(ApiError) as ei:
        async with client.listen.v1.connect(model="nova-3", encoding="opus"):
            pass
    assert ei.value.status_code == 400


async def test_accepts_all_sdk_live_params(marker_port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=env(marker_port))
    async with client.listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=16000,
        channels=1,
        endpointing="false",
        language="en-US",
        keyterm="streamproxy",
        keywords="proxy:2",
        tag="t1",
        diarize="false",
        numerals="true",
        profanity_filter="false",
        redact="pci",
        replace="a:b",
        search="x",
        mip_opt_out="true",
        version="latest",
        extra="k:v",
        dictation="false",
        detect_entities="false",
    ) as sock:
        await sock.send_media(marker_audio_ms([(0, 100), (3, 100), (0, 3000)], 16000))
        await sock.send_close_stream()
        msgs = await collect(sock._websocket)
    finals = [m for m in msgs if m["type"] == "Results"]
    assert not finals[0]["speech_final"], "endpointing=false: no speech_final"
    assert finals[0]["channel"]["alternatives"][0]["transcript"] == "w3"


# --------------------------------------------------------------------------- control messages, idle


async def test_non_json_and_unknown_text_are_errors_and_stream_continues(marker_port: int) -> None:
    url = f"ws://127.0.0.1:{marker_port}/v1/listen?sample_rate=16000"
    async with websockets.connect(url, additional_headers={"Authorization": f"Token {KEY}"}) as ws:
        await ws.send("this is not json")
        err = validate(await ws.recv())
        assert err["type"] == "Error" and err["variant"] == "SchemaError"
        assert err["message"] == "this is not json"
        await ws.send(json.dumps({"type": "Nonsense"}))
        assert validate(await ws.recv())["type"] == "Error"
        await ws.send(json.dumps({"type": "Configure", "features": {"numerals": True}}))
        assert validate(await ws.recv())["type"] == "ConfigureSuccess"
        await ws.send(json.dumps({"type": "Configure", "keyterms": ["x"]}))
        assert validate(await ws.recv())["code"] == "CONFIGURE_KEYTERMS_NOT_SUPPORTED"
        await ws.send(marker_audio_ms([(0, 100), (77, 100), (0, 400)], 16000))
        first = validate(await ws.recv())
        assert first["type"] == "Results" and first["channel"]["alternatives"][0]["transcript"] == "w77"
        await ws.send(json.dumps({"type": "CloseStream"}))
        assert [validate(m)["type"] async for m in ws] == ["Results", "Metadata"]
        assert ws.close_code == 1000


async def test_idle_timeout_closes_1011(idle_port: int) -> None:
    url = f"ws://127.0.0.1:{idle_port}/v1/listen"
    loop = asyncio.get_running_loop()
    async with websockets.connect(url) as ws:
        t0 = loop.time()
        msgs = await collect(ws)
        elapsed = loop.time() - t0
        assert ws.close_code == 1011
    assert [m["type"] for m in msgs] == ["Error"]
    assert msgs[0]["err_code"] == "NET-0001" and "timeout window" in msgs[0]["description"]
    assert 0.4 <= elapsed < 3


async def test_keepalive_and_audio_reset_idle_timer(idle_port: int) -> None:
    url = f"ws://127.0.0.1:{idle_port}/v1/listen"
    loop = asyncio.get_running_loop()
    async with websockets.connect(url) as ws:
        t0 = loop.time()
        for i in range(6):
            await asyncio.sleep(0.25)
            await ws.send(json.dumps({"type": "KeepAlive"}) if i % 2 else bytes(320))
        msgs = await collect(ws)
        assert loop.time() - t0 >= 1.9
        assert ws.close_code == 1011
    assert msgs[-1]["err_code"] == "NET-0001"


async def test_client_disconnect_is_cleaned_up(idle_port: int) -> None:
    url = f"ws://127.0.0.1:{idle_port}/v1/listen"
    async with websockets.connect(url) as ws:
        await ws.send(marker_audio_ms([(0, 50), (4, 100)], 16000))
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(f"http://127.0.0.1:{idle_port}/healthz") as resp:
                health = await resp.json()
            if health["streams"] == 0:
                break
            await asyncio.sleep(0.02)
    assert health == {"status": "ok", "kind": "marker", "model": "marker", "streams": 0}


async def test_shutdown_closes_live_streams_1001() -> None:
    runner, port = await start_engine("127.0.0.1", 0, "marker")
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/listen") as ws:
        await ws.send(bytes(3200))
        await asyncio.sleep(0.05)
        await runner.cleanup()
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
        assert ws.close_code == 1001


# --------------------------------------------------------------------------- prerecorded


def wav_bytes(pcm: bytes, sr: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm)
    return buf.getvalue()


async def test_prerecorded_marker_with_sdk(marker_port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=env(marker_port))
    audio = marker_audio_ms([(0, 100), (5, 200), (0, 3500), (6, 100), (0, 100)], 16000)
    resp = await client.listen.v1.media.transcribe_file(request=wav_bytes(audio, 16000), model="nova-3")
    assert isinstance(resp, ListenV1Response)
    alt = resp.results.channels[0].alternatives[0]  # type: ignore[index]
    assert alt.transcript == "w5 w6"
    assert [(w.word, w.start, w.end) for w in alt.words] == [("w5", 0.1, 0.3), ("w6", 3.8, 3.9)]  # type: ignore[union-attr]
    assert resp.metadata.duration == 4.0 and resp.metadata.channels == 1

    # Raw linear16 and a stereo WAV (downmixed), validated strictly from the raw JSON.
    stereo = np.repeat(np.frombuffer(audio, dtype="<i2"), 2).tobytes()
    async with aiohttp.ClientSession(headers={"Authorization": f"Token {KEY}"}) as http:
        url = f"http://127.0.0.1:{marker_port}/v1/listen"
        async with http.post(url + "?encoding=linear16&sample_rate=16000&utterances=true", data=audio) as r:
            body = await r.json()
            assert r.status == 200 and r.headers["dg-request-id"] == body["metadata"]["request_id"]
        ListenV1Response.model_validate(body)
        assert [u["transcript"] for u in body["results"]["utterances"]] == ["w5", "w6"]
        async with http.post(url + "?model=nova-3&punctuate=true", data=wav_bytes(stereo, 16000, 2)) as r:
            assert (await r.json())["results"]["channels"][0]["alternatives"][0]["transcript"] == "w5 w6"
        async with http.post(url, json={"url": "https://example.com/a.wav"}) as r:
            assert r.status == 400 and "dg-error" in r.headers
        async with http.post(url + "?bogus=1", data=wav_bytes(audio, 16000)) as r:
            assert r.status == 400 and "bogus" in r.headers["dg-error"]
        async with http.post(url, data=b"not audio at all") as r:
            assert r.status == 400


# --------------------------------------------------------------------------- pocketsphinx

SENTENCES = (
    "Hello world. This is a test of the speech recognition system. "
    "Please call me tomorrow morning at the office. The weather is nice today. "
    "Good morning. My name is John and I live in a small house near the river. "
    "I like to read books and drink coffee."
)
DISTINCTIVE = ("speech", "recognition", "system", "office", "weather", "morning", "house", "river", "drink", "coffee")


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_espeak()  # fails (never skips) with an install hint
    d = tmp_path_factory.mktemp("speech")
    wav16 = espeak_wav16(SENTENCES, d)
    return d / "speech.wav", wav16


async def test_pocketsphinx_live_wer(sphinx_port: int, speech_wav: tuple[Path, Path]) -> None:
    with wave.open(str(speech_wav[1])) as w:
        pcm = w.readframes(w.getnframes())
    pcm = bytes(16000) + pcm + bytes(32000)  # 0.5 s lead-in, 1 s tail
    client = AsyncDeepgramClient(api_key="unused", environment=env(sphinx_port))
    hyps = []
    for _ in range(2):  # the second stream reuses the pooled, adapted decoder
        async with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=16000, interim_results="true", vad_events="true"
        ) as sock:
            reader = asyncio.create_task(collect(sock._websocket))
            for c in chunks(pcm, 3200):  # 100 ms chunks
                await sock.send_media(c)
            await sock.send_close_stream()
            msgs = await asyncio.wait_for(reader, 30)
        finals = [m for m in msgs if m["type"] == "Results" and m["is_final"]]
        words = [w for f in finals for w in f["channel"]["alternatives"][0]["words"]]
        hyps.append(" ".join(w["word"] for w in words))
        assert msgs[-1]["type"] == "Metadata"
        assert any(m["type"] == "SpeechStarted" for m in msgs)
        assert any(m["type"] == "Results" and not m["is_final"] for m in msgs), "interims expected"
        assert all(
            f["start"] <= w["start"] < w["end"] <= f["start"] + f["duration"] + 0.02
            for f in finals
            for w in f["channel"]["alternatives"][0]["words"]
        )
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        assert 0.3 < words[0]["start"] < 1.0  # speech starts at 0.5 s
    # Measured here (espeak-ng default voice, 48 words, 100 ms chunks): WER 0.65-0.69, recall
    # 0.35-0.42, 7-8 of the 10 distinctive words, first and second stream alike (pocketsphinx is
    # ~70 % WER on synthetic voices). The bounds below hold with a wide margin.
    for hyp in hyps:
        assert recall(SENTENCES, hyp) >= 0.25, (hyp, wer(SENTENCES, hyp))
        assert wer(SENTENCES, hyp) <= 0.9, hyp
        assert len([w for w in DISTINCTIVE if w in hyp.split()]) >= 4, hyp


async def test_pocketsphinx_takes_telephone_audio_and_transcribes_files(
    sphinx_port: int, speech_wav: tuple[Path, Path]
) -> None:
    """8 kHz telephone speech (three prompts of the built-in phone set, a human voice) streams to the
    16 kHz model, resampled in the engine: words, with times on the client's 8 kHz clock. Measured:
    recall 0.56 ("that is not a valid on print number please try again"; pocketsphinx is poor on
    telephone audio: ~64 % WER on a dozen of the set's prompts); 8 kHz used to be refused."""
    prompts = {u.id: u for u in corpus.phone() if u.id in ("agent-pass", "conf-invalid", "conf-placeintoconf")}
    pcm = b"".join(bytes(4000) + prompts[k].read().pcm for k in sorted(prompts)) + bytes(16000)
    client = AsyncDeepgramClient(api_key="unused", environment=env(sphinx_port))
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=8000) as sock:
        reader = asyncio.create_task(collect(sock._websocket))
        for c in chunks(pcm, 1600):  # 100 ms chunks
            await sock.send_media(c)
        await sock.send_close_stream()
        msgs = await asyncio.wait_for(reader, 30)
    words = [
        w for m in msgs if m["type"] == "Results" and m["is_final"] for w in m["channel"]["alternatives"][0]["words"]
    ]
    hyp = " ".join(w["word"] for w in words)
    ref = " ".join(prompts[k].text for k in sorted(prompts))
    assert recall(ref, hyp) >= 0.4, (hyp, wer(ref, hyp))
    assert len({"password", "pound", "valid", "number", "try", "again", "placed"} & set(hyp.split())) >= 3, hyp
    assert words and 0.2 < words[0]["start"] and words[-1]["end"] <= len(pcm) / 2 / 8000
    # espeak's native 22.05 kHz WAV: the prerecorded path resamples it.
    client = AsyncDeepgramClient(api_key="unused", environment=env(sphinx_port))
    resp = await client.listen.v1.media.transcribe_file(request=speech_wav[0].read_bytes(), model="nova-3")
    assert isinstance(resp, ListenV1Response)
    hyp = resp.results.channels[0].alternatives[0].transcript or ""  # type: ignore[index]
    assert recall(SENTENCES, hyp) >= 0.25, (hyp, wer(SENTENCES, hyp))
    assert len([w for w in DISTINCTIVE if w in hyp.split()]) >= 4, hyp


def test_resampled_input_does_not_depend_on_chunking() -> None:
    """A telephone prompt fed to ``Resampled`` in 1,601-byte chunks (odd: a sample split across
    chunks) reaches the 16 kHz recognizer as the same samples as in 1,600-byte ones; position on
    the client's clock."""

    class Sink:
        def __init__(self) -> None:
            self.pcm = bytearray()

        @property
        def position_s(self) -> float:
            return len(self.pcm) / 2 / 16000

        def feed(self, pcm: bytes) -> list[Any]:
            self.pcm += pcm
            return []

        def finalize(self) -> list[Any]:
            return []

        def close(self) -> list[Any]:
            return []

    pcm = next(u for u in corpus.phone() if u.id == "agent-pass").read().pcm
    got = []
    for size in (1600, 1601):
        sink = Sink()
        r = Resampled(sink, 8000, 16000)
        for c in chunks(pcm, size):
            r.feed(c)
        assert r.position_s == len(pcm) / 2 / 8000
        r.close()
        got.append(bytes(sink.pcm))
    assert got[0] == got[1] and abs(len(got[0]) - 2 * len(pcm)) <= 64


def test_pocketsphinx_recognizer_silence_finalize_and_rate(speech_wav: tuple[Path, Path]) -> None:
    from streamproxy.engine.sphinx import SphinxRecognizer

    with pytest.raises(ValueError, match="16000"):
        SphinxRecognizer(8000)
    # Over silence: an empty final every 3 s, never reaching into the endpointer's look-back.
    r = SphinxRecognizer()
    ev = []
    for c in chunks(bytes(2 * 16000 * 10), 3200):
        ev += r.feed(c)
    ev += r.close()
    assert [(e.start, e.end, e.words) for e in ev if isinstance(e, Result)] == [
        (0.0, 3.0, []),
        (3.0, 6.0, []),
        (6.0, 9.0, []),
        (9.0, 10.0, []),
    ]
    # Finalize in the middle of speech decodes what was received (look-back and partial frame
    # included), then the stream carries on.
    with wave.open(str(speech_wav[1])) as w:
        pcm = bytes(16000) + w.readframes(w.getnframes()) + bytes(32000)
    r = SphinxRecognizer(interim_results=False)
    ev = []
    cut = 16000 * 2 * 3 + 1234  # 3 s in, mid-word, odd frame boundary
    for c in chunks(pcm[:cut], 3200):
        ev += r.feed(c)
    ev += r.finalize()
    fin = [e for e in ev if isinstance(e, Result) and e.from_finalize]
    assert len(fin) == 1 and fin[0].end == (cut // 2) / 16000 and fin[0].words
    for c in chunks(pcm[cut:], 3200):
        ev += r.feed(c)
    ev += r.close()
    finals = [e for e in ev if isinstance(e, Result) and e.is_final]
    assert all(a.end == b.start for a, b in itertools.pairwise(finals))
    assert finals[-1].end == (len(pcm) // 2) / 16000
    for f in finals:
        assert all(f.start <= w.start < w.end <= f.end + 0.02 for w in f.words), f
    assert len([w for f in finals for w in f.words]) >= 15


# --------------------------------------------------------------------------- units: options, dsp, handshake


def test_live_options_from_query() -> None:
    q = MultiDict(
        sample_rate="8000", endpointing="false", smart_format="true", interim_results="true", utterance_end_ms="1000"
    )
    assert parse_live_params(q, "marker") == LiveOptions(
        sample_rate=8000,
        interim_results=True,
        endpointing_ms=None,
        utterance_end_ms=1000,
        punctuate=True,
        numerals=True,  # smart_format implies both, as Deepgram documents
    )
    assert parse_live_params(MultiDict(endpointing="true"), "marker").endpointing_ms == 300
    assert parse_live_params(MultiDict(endpointing="250"), "whisper").endpointing_ms == 250
    assert parse_live_params(MultiDict(), "pocketsphinx") == LiveOptions()
    assert parse_live_params(MultiDict(sample_rate="8000"), "pocketsphinx").sample_rate == 8000  # resampled
    for query, kind, needle in [
        ({"encoding": "mulaw"}, "marker", "accepts only linear16"),
        ({"channels": "2"}, "marker", "mono"),
        ({"multichannel": "true"}, "marker", "multichannel"),
        ({"interim_result": "true"}, "marker", "interim_result"),
    ]:
        with pytest.raises(BadRequest, match=needle):
            parse_live_params(MultiDict(query), kind)


def test_prerecorded_query_checks_and_options() -> None:
    check_prerecorded_params(MultiDict(utterances="true", endpointing="false"))
    with pytest.raises(BadRequest, match="callback"):
        check_prerecorded_params(MultiDict(callback="https://example.com/cb"))
    opts = prerecorded_options(MultiDict(endpointing="false", punctuate="true", model="nova-3"), 22050)
    assert opts == LiveOptions(sample_rate=22050, endpointing_ms=None, model="nova-3", punctuate=True)
    with pytest.raises(BadRequest, match="sample_rate is required"):
        raw_audio_format(MultiDict(encoding="linear16"))
    assert raw_audio_format(MultiDict(encoding="LINEAR16", sample_rate="8000", channels="2")) == (8000, 2)


def test_decode_body_wav_widths_and_raw_channels() -> None:
    left, right = np.array([1000, -2000, 300], dtype="<i2"), np.array([3000, 2000, -301], dtype="<i2")
    stereo = np.stack([left, right], axis=1).reshape(-1)
    mono = np.array([2000, 0, 0], dtype="<i2")  # rounded means (-0.5 rounds to even: 0)
    samples, sr = decode_body(wav_bytes(stereo.tobytes(), 22050, channels=2), MultiDict())
    assert sr == 22050 and samples.dtype == np.dtype("<i2") and samples.tolist() == mono.tolist()
    # 24-bit WAV: the top 16 bits are kept.
    b24 = b"".join(int(v * 256).to_bytes(3, "little", signed=True) for v in left.tolist())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(b24)
    assert wav_to_pcm16(buf.getvalue())[0].tolist() == left.tolist()
    raw, sr = decode_body(stereo.tobytes() + b"\x01", MultiDict(encoding="linear16", sample_rate="8000", channels="2"))
    assert sr == 8000 and raw.tolist() == mono.tolist()
    with pytest.raises(BadRequest, match="PCM only"):
        wav_to_pcm16(b"RIFF not really a wav")


def test_resample_keeps_a_tone_and_the_duration() -> None:
    t = np.arange(48000) / 48000
    x = (10000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    assert resample(x, 16000, 16000) is x
    y = resample(x, 48000, 16000)
    assert y.dtype == np.dtype("<i2") and y.size == 16000
    assert abs(np.abs(y[100:-100]).max() - 10000) < 300  # well inside the pass band
    assert resample(np.zeros(0, dtype="<i2"), 8000, 16000).size == 0


def test_refusal_is_deepgram_shaped() -> None:
    resp = refusal(400, "bad\r\nthing", "rid-1")
    assert resp.status == 400
    assert resp.headers["dg-error"] == "bad\\r\\nthing" and resp.headers["dg-request-id"] == "rid-1"
    assert isinstance(resp.body, bytes)
    assert json.loads(resp.body) == http_error_body(400, "bad\r\nthing", request_id="rid-1")
