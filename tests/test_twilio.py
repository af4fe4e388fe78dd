"""Twilio Media Streams input (``/v1/twilio``) with transcripts to SSE subscribers and a webhook.

A scripted client speaks Twilio's protocol over a real WebSocket: ``connected``, ``start``, 20 ms
``media`` frames (160 bytes of base64 μ-law, with ``chunk`` and ``timestamp``), ``mark``, ``stop``.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import wave
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web

from streamproxy.edge.twilio.codec import MULAW_DECODE, mulaw_decode, mulaw_encode, upsample2
from streamproxy.outbound.webhooks import EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.helpers.engine import recall, require_espeak, wer
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.marker import Segment, expected_words, final_words, marker_samples

FRAME = 160  # 20 ms at 8 kHz
STREAM_SID = "MZ00000000000000000000000000000001"
CALL_SID = "CA00000000000000000000000000000001"


# ----------------------------------------------------------------------------- helpers
def twilio_events(
    ulaw: bytes,
    *,
    skip_frames: Iterable[int] = (),
    resend_frames: Iterable[int] = (),
    custom: dict[str, str] | None = None,
    stream_sid: str = STREAM_SID,
    call_sid: str = CALL_SID,
) -> list[dict[str, Any]]:
    """The events Twilio sends for a call: frame i carries audio [160 i, 160 i + 160) at timestamp 20 i ms."""
    skip, resend = set(skip_frames), set(resend_frames)
    seq = 1
    out: list[dict[str, Any]] = [{"event": "connected", "protocol": "Call", "version": "1.0.0"}]

    def add(ev: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        out.append({**ev, "sequenceNumber": str(seq), "streamSid": stream_sid})

    add(
        {
            "event": "start",
            "start": {
                "accountSid": "AC00000000000000000000000000000001",
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": custom or {},
            },
        }
    )
    chunk = 0
    for i in range(0, len(ulaw) // FRAME):
        frame = ulaw[i * FRAME : (i + 1) * FRAME]
        for _ in range(2 if i in resend else 1):
            if i in skip:
                break
            chunk += 1
            media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * i)}
            add({"event": "media", "media": {**media, "payload": base64.b64encode(frame).decode()}})
    add({"event": "mark", "mark": {"name": "greeting-done"}})
    add({"event": "stop", "stop": {"accountSid": "AC00000000000000000000000000000001", "callSid": call_sid}})
    return out


async def send_call(port: int, events: list[dict[str, Any]], *, pace_every: int = 25) -> int | None:
    """Play the events to /v1/twilio; returns the close code the gateway ended the socket with."""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/v1/twilio") as ws:
        for i, ev in enumerate(events):
            await ws.send_str(orjson.dumps(ev).decode())
            if i % pace_every == 0:
                await asyncio.sleep(0.005)  # ~10x real time: a stream, not one burst
        async for _ in ws:
            pass
        return ws.close_code


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str, Any]]:
    """(id, event, data) from a text/event-stream response, until it ends."""
    ev: dict[str, str] = {}
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n").rstrip("\r")
        if not line:
            if data:
                yield ev.get("id", ""), ev.get("event", "message"), orjson.loads("\n".join(data))
            ev, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                ev[name] = value


async def subscribe(
    port: int, sid: str, *, headers: dict[str, str] | None = None, wait: float = 10
) -> list[tuple[str, str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/v1/sessions/{sid}/events?wait={wait}", headers=headers or {}) as r,
    ):
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return [e async for e in sse_events(r)]


def messages(events: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    """The Deepgram messages among a subscriber's SSE events (the others are the call's lifecycle)."""
    return [d for _, name, d in events if name == "message"]


# ----------------------------------------------------------------------------- codec
def test_mulaw_codec_and_upsampler() -> None:
    """The decode table is G.711's, encode inverts it on every representable value, hold keeps runs."""
    assert MULAW_DECODE[0xFF] == 0 and MULAW_DECODE[0x7F] == 0
    assert MULAW_DECODE[0x80] == 32124 and MULAW_DECODE[0x00] == -32124
    assert mulaw_encode(MULAW_DECODE) == bytes(range(256))[:127] + b"\xff" + bytes(range(128, 256))  # 0x7F -> 0xFF
    x = np.array([0, 1000, 1000, -5, 32767, -32768], dtype=np.int16)
    err = np.abs(mulaw_decode(mulaw_encode(x)).astype(int) - x)
    assert (err <= np.maximum(8, np.abs(x.astype(int)) // 16)).all()  # within μ-law's step size
    assert np.frombuffer(upsample2(np.array([3, 3, -7], np.int16)), "<i2").tolist() == [3, 3, 3, 3, -7, -7]


# ----------------------------------------------------------------------------- marker: exact
SR8 = 8000
# Marker values that μ-law represents exactly (decoding then re-encoding is the identity).
K = [int(MULAW_DECODE[b]) for b in (0xAF, 0x9F, 0x8F, 0xBF, 0xCF)]  # positive, distinct
SEGMENTS: list[Segment] = [("sil", 0, 160)]
for _k, _word_ms, _gap_ms in zip(K, (240, 300, 200, 260, 320), (400, 600, 380, 500, 400), strict=True):
    SEGMENTS += [("word", _k, _word_ms), ("sil", 0, _gap_ms)]


def _marker_ulaw() -> tuple[bytes, list[tuple[str, float, float]]]:
    samples = marker_samples(SEGMENTS, SR8)
    ulaw = mulaw_encode(samples)
    assert np.array_equal(mulaw_decode(ulaw), samples)
    return ulaw, expected_words(SEGMENTS, SR8)


WEBHOOK_SECRET = "twilio-hook-secret"


async def _webhook_server(got: list[tuple[str, Any]]) -> tuple[web.AppRunner, int]:
    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        assert verify(WEBHOOK_SECRET, body, h.get(TIMESTAMP_HEADER), h.get(SIGNATURE_HEADER))
        got.append((request.headers[EVENT_HEADER], orjson.loads(body)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_marker_call_exact_words_with_gap_resend_and_late_subscriber() -> None:
    """Exact words and timestamps from the media timestamps: 100 ms of frames never sent (inside a
    silence) are filled, a frame sent twice is trimmed, so every time equals the 8 kHz original's.
    An early subscriber (before the call starts), a late one (after it ended, from the backlog) and the
    webhook (signed like job callbacks) all get the same finals."""
    ulaw, expected = _marker_ulaw()
    # Frames 25..29 are 500-600 ms: inside the 400 ms silence after the first word. Frame 60 is sent twice.
    events = twilio_events(
        ulaw,
        skip_frames=range(25, 30),
        resend_frames=[60],
        custom={"interim_results": "true", "greeting": "hello"},
    )
    hook_got: list[tuple[str, Any]] = []
    hook_runner, hook_port = await _webhook_server(hook_got)
    events[1]["start"]["customParameters"]["callback"] = f"http://127.0.0.1:{hook_port}/hook"
    hook_cfg = {"queue.url_allow": ("127.0.0.1",), "queue.webhook_secret": WEBHOOK_SECRET}
    try:
        async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **hook_cfg)) as gw:
            early = asyncio.create_task(subscribe(gw.port, CALL_SID))  # before the call exists
            await asyncio.sleep(0.2)
            code = await send_call(gw.port, events)
            got = await asyncio.wait_for(early, 20)
            late = await subscribe(gw.port, STREAM_SID, wait=0)  # after the end: the backlog
            again = await subscribe(gw.port, STREAM_SID, headers={"Last-Event-ID": "4"}, wait=0)  # reconnect
            for _ in range(100):
                if hook_got and hook_got[-1][0] == "end":
                    break
                await asyncio.sleep(0.05)
    finally:
        await hook_runner.cleanup()
    assert code == 1000
    names = [name for _, name, _ in got]
    assert names[0] == "start" and names[-1] == "end" and "mark" in names
    start = got[0][2]
    assert start["callSid"] == CALL_SID and start["streamSid"] == STREAM_SID
    assert start["customParameters"]["greeting"] == "hello"
    assert final_words(messages(got)) == expected
    assert any(d.get("type") == "Results" and not d["is_final"] for _, n, d in got if n == "message")  # interims
    assert got[-2][2]["type"] == "Metadata" and got[-2][2]["duration"] == pytest.approx(len(ulaw) / SR8)
    end = got[-1][2]
    assert end["filled_s"] == pytest.approx(0.1) and end["trimmed_s"] == pytest.approx(0.02)
    assert end["audio_s"] == pytest.approx(len(ulaw) / SR8) and end["marks"] == 1 and end["close_code"] == 1000
    assert [int(i) for i, _, _ in got] == sorted(int(i) for i, _, _ in got)  # SSE ids increase
    assert late == got  # the late subscriber missed nothing (the backlog holds the whole short call)
    assert again == [e for e in got if int(e[0]) > 4]  # an EventSource reconnecting with Last-Event-ID
    # The webhook: start, every final (no interims), Metadata, end - in order.
    assert hook_got[0][0] == "start" and hook_got[-1][0] == "end"
    hook_finals = [d for e, d in hook_got if e == "message" and d.get("type") == "Results"]
    assert all(d["is_final"] for d in hook_finals)
    assert [
        (w["word"], w["start"], w["end"]) for d in hook_finals for w in d["channel"]["alternatives"][0]["words"]
    ] == (expected)


async def test_socket_dropped_without_stop_still_delivers_trailing_words() -> None:
    """Twilio's socket dies mid-call (no ``stop``): the session is finalised, the last word delivered."""
    ulaw, expected = _marker_ulaw()
    events = twilio_events(ulaw)[:-2]  # no mark, no stop
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        sub = asyncio.create_task(subscribe(gw.port, STREAM_SID))
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"ws://127.0.0.1:{gw.port}/v1/twilio")
            for ev in events:
                await ws.send_str(orjson.dumps(ev).decode())
            await asyncio.sleep(0.2)
            await ws.close()
        got = await asyncio.wait_for(sub, 20)
    assert final_words(messages(got)) == expected
    assert got[-1][1] == "end"


# ----------------------------------------------------------------------------- bad input and auth
@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        ("media_before_start", 1008),
        ("alaw_format", 1003),
        ("rate_not_a_number", 1003),
        ("encoding_param", 1008),
        ("bad_base64", 1007),
        ("timestamp_jump", 1007),
        ("not_json", 1007),
        ("private_callback", 1008),
    ],
)
async def test_bad_streams_are_refused_with_a_reason(mutate: str, code: int) -> None:
    """Bad input tried: media before start; an a-law mediaFormat; a sampleRate that is not a number;
    encoding set by a parameter; a
    payload that is not base64; a timestamp 2 minutes ahead; a frame that is not JSON; a webhook on a
    loopback address (not allowed by queue.url_allow). Each closes
    the socket with a specific code, and the gateway serves the next call normally."""
    ulaw, expected = _marker_ulaw()
    events = twilio_events(ulaw[: 20 * FRAME])
    raw: list[str] = [orjson.dumps(e).decode() for e in events]
    if mutate == "media_before_start":
        raw = [raw[0], raw[2], raw[1]]
    elif mutate == "alaw_format":
        events[1]["start"]["mediaFormat"]["encoding"] = "audio/x-alaw"
        raw[1] = orjson.dumps(events[1]).decode()
    elif mutate == "rate_not_a_number":
        events[1]["start"]["mediaFormat"]["sampleRate"] = "eight thousand"
        raw[1] = orjson.dumps(events[1]).decode()
    elif mutate == "encoding_param":
        events[1]["start"]["customParameters"] = {"encoding": "linear16"}
        raw[1] = orjson.dumps(events[1]).decode()
    elif mutate == "bad_base64":
        events[3]["media"]["payload"] = "%%% not base64 %%%"
        raw[3] = orjson.dumps(events[3]).decode()
    elif mutate == "timestamp_jump":
        events[3]["media"]["timestamp"] = "120000"
        raw[3] = orjson.dumps(events[3]).decode()
    elif mutate == "not_json":
        raw[3] = "{not json"
    elif mutate == "private_callback":  # SSRF: loopback is not allowed without queue.url_allow
        events[1]["start"]["customParameters"] = {"callback": "http://127.0.0.1:9/hook"}
        raw[1] = orjson.dumps(events[1]).decode()
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{gw.port}/v1/twilio") as ws:
            for frame in raw:
                if ws.closed:
                    break
                await ws.send_str(frame)
            async for _ in ws:
                pass
            assert ws.close_code == code
            async with http.get(f"http://127.0.0.1:{gw.port}/v1/sessions/MZnope/events?wait=0") as resp:
                assert resp.status == 404
        # the gateway is unaffected: a good call right after works
        sub = asyncio.create_task(subscribe(gw.port, "MZgood"))
        await send_call(gw.port, twilio_events(ulaw, stream_sid="MZgood", call_sid="CAgood"))
        assert final_words(messages(await asyncio.wait_for(sub, 20))) == expected


async def test_keys_token_parameter_and_subscriber_ownership() -> None:
    """With client keys: a stream needs <Parameter name="token">; only the same key may subscribe."""
    ulaw, expected = _marker_ulaw()
    alice, bob = "key-alice-123", "key-bob-456"
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"])
        async with gateway(cfg, client_keys=(alice, bob)) as gw:
            assert await send_call(gw.port, twilio_events(ulaw[: 10 * FRAME])) == 1008  # no token
            bad = twilio_events(ulaw[: 10 * FRAME], custom={"token": "wrong"})
            assert await send_call(gw.port, bad) == 1008
            sub = asyncio.create_task(subscribe(gw.port, CALL_SID, headers={"Authorization": f"Token {alice}"}))
            await asyncio.sleep(0.2)
            assert await send_call(gw.port, twilio_events(ulaw, custom={"token": alice})) == 1000
            got = await asyncio.wait_for(sub, 20)
            assert final_words(messages(got)) == expected
            assert "token" not in got[0][2]["customParameters"]  # the key is not echoed to subscribers
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{gw.port}/v1/sessions/{CALL_SID}/events?wait=0"
                async with http.get(url) as r:
                    assert r.status == 401
                async with http.get(url, headers={"Authorization": f"Token {bob}"}) as r:
                    assert r.status == 404  # session ids are namespaced by key: not Bob's to know of
                async with http.get(url, headers={"Authorization": "Token nope"}) as r:
                    assert r.status == 401


# ----------------------------------------------------------------------------- real speech
SPEECH = "My name is John and I live in a small house near the river. I like to read books and drink coffee."
CONTENT = ("john", "live", "small", "house", "near", "river", "like", "read", "books", "drink", "coffee")


def _espeak_ulaw(directory: Path) -> bytes:
    """espeak-ng speech, converted by sox (an encoder independent of ours) to raw 8 kHz μ-law."""
    require_espeak()
    wav, ul = directory / "speech.wav", directory / "speech.ul"
    subprocess.run(["espeak-ng", "-w", str(wav), SPEECH], check=True, capture_output=True)
    subprocess.run(["sox", str(wav), "-r", "8000", "-c", "1", "-e", "u-law", "-t", "ul", str(ul)], check=True)
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 22050
    data = ul.read_bytes()
    lead, tail = bytes([0xFF]) * 4000, bytes([0xFF]) * 8000  # 0.5 s before, 1 s after
    data = lead + data + tail
    return data[: len(data) - len(data) % FRAME]


async def send_paced(port: int, events: list[dict[str, Any]], speed: float) -> int | None:
    """Like Twilio, one 20 ms frame at a time on the clock (``speed`` times real time)."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/v1/twilio") as ws:
        t0, frames = loop.time(), 0
        for ev in events:
            await ws.send_str(orjson.dumps(ev).decode())
            if ev["event"] == "media":
                frames += 1
                await asyncio.sleep(max(0.0, t0 + frames * 0.02 / speed - loop.time()))
        async for _ in ws:
            pass
        return ws.close_code


async def test_pocketsphinx_call_transcript_reaches_subscriber(tmp_path: Path) -> None:
    """Synthetic speech as a phone call: μ-law 8 kHz, 20 ms frames, decoded and upsampled by the gateway.

    Measured here (espeak-ng default voice, 21 words, phone band, pocketsphinx en-US, fresh engine),
    e.g. "my dog i live in a small house really look to read a book on we get all the" up to "... really
    well read the book i drink coffee": 4-7 of the 11 content words, WER 0.59-0.68 over 5 runs.
    The bounds below hold with margin. Sent at 2x real time with interim results, as a live call is
    (see the report: a sender much faster than the engine, without interims, trips the stall detector).
    """
    ulaw = _espeak_ulaw(tmp_path)
    # `serve`'s own engine child process: its decoder pool starts cold, as on a fresh deployment,
    # whatever other tests in this process did to the in-process pool.
    async with gateway(gateway_config([], **{"engine.kind": "pocketsphinx"})) as gw:
        sub = asyncio.create_task(subscribe(gw.port, CALL_SID))
        await asyncio.sleep(0.1)
        events = twilio_events(ulaw, custom={"interim_results": "true"})
        assert await send_paced(gw.port, events, speed=2.0) == 1000
        got = await asyncio.wait_for(sub, 60)
    words = final_words(messages(got))
    hyp = " ".join(w for w, _, _ in words)
    print(f"\ntwilio+pocketsphinx: WER {wer(SPEECH, hyp):.2f} recall {recall(SPEECH, hyp):.2f}: {hyp}")
    found = [w for w in CONTENT if w in hyp.split()]
    assert len(found) >= 3, hyp
    assert wer(SPEECH, hyp) <= 0.9, hyp
    assert 0.3 < words[0][1] < 1.2  # speech starts at 0.5 s on the call's timeline
    assert words[-1][2] <= len(ulaw) / SR8
    assert any(d.get("type") == "Results" and not d["is_final"] for _, n, d in got if n == "message")
    assert got[-1][1] == "end" and got[-1][2]["close_code"] == 1000


# ----------------------------------------------------------------------------- hostile senders
def _media(i: int, timestamp_ms: int, payload: bytes = bytes([0xFF]) * FRAME) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": str(i + 1), "timestamp": str(timestamp_ms)}
    media["payload"] = base64.b64encode(payload).decode()
    return {"event": "media", "streamSid": STREAM_SID, "media": media}


async def test_timestamps_jumping_59_s_each_generate_silence_bounded_by_the_call_time() -> None:
    """12 media frames whose timestamps jump 59 s each (under the 60 s refusal), sent in a burst:
    the gateway would generate 649 s of (billed) silence upstream in a fraction of a second. Silence
    is generated only up to the call's elapsed time (plus 2 s), the frames' audio is all placed."""
    start, *_rest = twilio_events(b"")[1:2]
    events = [start] + [_media(i, 59_000 * i) for i in range(12)]
    events.append({"event": "stop", "streamSid": STREAM_SID, "stop": {}})
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        sub = asyncio.create_task(subscribe(gw.port, STREAM_SID))
        await asyncio.sleep(0.1)
        assert await send_call(gw.port, events, pace_every=1000) == 1000
        got = await asyncio.wait_for(sub, 20)
    end = got[-1][2]
    assert got[-1][1] == "end"
    assert end["filled_s"] <= 3.0, end
    assert end["audio_s"] == pytest.approx(end["filled_s"] + 12 * 0.02)


async def test_megabyte_marks_and_a_flood_of_marks_keep_the_backlog_bounded_in_bytes() -> None:
    """20 marks with 400 KB names (8 MB) and 600 marks of 3 KB (1.8 MB): a mark/dtmf body over
    4 KB is dropped (counted in ``end``), and a finished call's backlog holds at most 1 MiB, so a
    late subscriber replays a bounded amount; an ordinary mark still gets through."""
    ulaw, _expected = _marker_ulaw()
    events = twilio_events(ulaw[: 10 * FRAME])
    stop = events.pop()
    huge = [{"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "x" * 400_000}} for _ in range(20)]
    many = [{"event": "mark", "streamSid": STREAM_SID, "mark": {"name": f"{i:05d}" + "y" * 3000}} for i in range(600)]
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        assert await send_call(gw.port, [*events, *huge, *many, stop], pace_every=50) == 1000
        late = await subscribe(gw.port, STREAM_SID, wait=0)
    replayed = sum(len(orjson.dumps(d)) for _, _, d in late)
    assert replayed <= (1 << 20) + 8192, replayed
    names = [d.get("name", "") for _, n, d in late if n == "mark"]
    assert not [n for n in names if n.startswith("x")], "oversized marks are not kept"
    assert names and names[-1].startswith("00599"), "the newest marks are kept"
    end = late[-1][2]
    assert late[-1][1] == "end" and end["dropped_events"] == 20 and end["marks"] == 621


async def _first_event(port: int, sid: str, key: str) -> tuple[int, Any]:
    """(status, the first SSE event's data or the error body) for ``key``'s view of ``sid``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{port}/v1/sessions/{sid}/events?wait=0", headers={"Authorization": f"Token {key}"}
        ) as r,
    ):
        if r.status != 200:
            return r.status, await r.text()
        async for _id, _name, data in sse_events(r):
            return 200, data
    return 200, None


async def test_another_keys_call_sid_and_stream_sid_do_not_lock_the_owner_out() -> None:
    """Bob starts a stream with Alice's streamSid before her, and another with her callSid after
    her: session ids are namespaced by key, so Alice starts her stream and reads her own events by
    either id, and Bob reads only his."""
    ulaw, _ = _marker_ulaw()
    alice, bob = "key-alice-123", "key-bob-456"

    def opening(key: str, stream_sid: str) -> list[str]:
        evs = twilio_events(ulaw[: 5 * FRAME], custom={"token": key}, stream_sid=stream_sid)[:-2]  # no mark/stop
        return [orjson.dumps(e).decode() for e in evs]

    async with engine("marker") as eport:
        async with gateway(gateway_config([f"ws://127.0.0.1:{eport}"]), client_keys=(alice, bob)) as gw:
            url = f"ws://127.0.0.1:{gw.port}/v1/twilio"
            async with aiohttp.ClientSession() as http:
                squat = await http.ws_connect(url)  # Bob first, on Alice's streamSid
                for frame in opening(bob, STREAM_SID):
                    await squat.send_str(frame)
                await asyncio.sleep(0.2)
                mine = await http.ws_connect(url)
                for frame in opening(alice, STREAM_SID):
                    await mine.send_str(frame)
                await asyncio.sleep(0.2)
                assert not mine.closed, "Alice's stream must not be refused as 'already active'"
                late = await http.ws_connect(url)  # Bob again, after her, on her callSid
                for frame in opening(bob, "MZ00000000000000000000000000000bob"):
                    await late.send_str(frame)
                await asyncio.sleep(0.2)
                for sid in (CALL_SID, STREAM_SID):
                    status, data = await _first_event(gw.port, sid, alice)
                    assert status == 200, (sid, data)
                    assert data["type"] == "TwilioStart" and data["streamSid"] == STREAM_SID
                status, data = await _first_event(gw.port, CALL_SID, bob)
                assert status == 200 and data["streamSid"] == "MZ00000000000000000000000000000bob"
                for ws in (squat, mine, late):
                    await ws.close()
