"""End to end through ``streamproxy serve`` (in-process) to the marker engine, over real sockets,
with the official ``deepgram-sdk`` as the client."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import orjson
import pytest
from deepgram import AsyncDeepgramClient, DeepgramClient

from tests.helpers.gateway import engine, gateway, gateway_config, sdk_env, to_dict, validate_strict
from tests.helpers.marker import final_words, marker_audio

SR = 16000
SEGMENTS = [
    ("sil", 0, 150),
    ("word", 11, 240),
    ("sil", 0, 120),
    ("word", 12, 300),
    ("sil", 0, 400),
    ("word", 13, 180),
    ("noise", 0, 7),
    ("word", 14, 260),
    ("sil", 0, 350),
    ("word", 15, 500),
]
AUDIO = marker_audio(SEGMENTS, SR)
# Exact expectations from the marker contract: word k over [start, end) in samples / SR.
EXPECTED = [("w11", 0.15, 0.39), ("w12", 0.51, 0.81), ("w13", 1.21, 1.39), ("w14", 1.397, 1.657), ("w15", 2.007, 2.507)]


def _chunks(data: bytes, ms: int) -> list[bytes]:
    n = SR * 2 * ms // 1000
    return [data[i : i + n] for i in range(0, len(data), n)]


async def _stream_async(port: int, chunk_ms: int, realtime: bool = False, **params: Any) -> list[dict[str, Any]]:
    client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(port))
    got: list[dict[str, Any]] = []
    async with client.listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=str(SR), interim_results="true", **params
    ) as sock:

        async def reader() -> None:
            async for msg in sock:
                got.append(to_dict(msg) if not isinstance(msg, bytes) else {"type": "binary"})

        task = asyncio.create_task(reader())
        for c in _chunks(AUDIO, chunk_ms):
            await sock.send_media(c)
            if realtime:
                await asyncio.sleep(chunk_ms / 1000)
        await sock.send_close_stream()
        await asyncio.wait_for(task, 20)
    return got


@pytest.mark.parametrize("chunk_ms", [20, 100, 250, 500])
async def test_sdk_async_exact_words_through_gateway(chunk_ms: int) -> None:
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        got = await _stream_async(gw.port, chunk_ms)
    # raw JSON parsing by the SDK is lenient; validate every message strictly too
    for m in got:
        validate_strict(m)
    assert final_words(got) == EXPECTED
    assert got[-1]["type"] == "Metadata"
    assert got[-1]["duration"] == pytest.approx(len(AUDIO) / 2 / SR)
    assert any(m["type"] == "Results" and not m["is_final"] for m in got)  # interims pass through
    assert not any("proxy" in m or m["type"] == "ProxyStatus" for m in got)  # strict Deepgram without opt-in


def test_sdk_sync_client_through_gateway() -> None:
    """The sync SDK client (websockets.sync) against a gateway running in another thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
            box["port"] = gw.port
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()

    t = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        client = DeepgramClient(api_key="anything", environment=sdk_env(box["port"]))
        got: list[dict[str, Any]] = []
        with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=str(SR)) as sock:
            for c in _chunks(AUDIO, 100):
                sock.send_media(c)
            sock.send_close_stream()
            for msg in sock:
                got.append(to_dict(msg))
        for m in got:
            validate_strict(m)
        assert final_words(got) == EXPECTED
        assert got[-1]["type"] == "Metadata"
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        t.join(10)


async def test_close_right_after_last_audio_delivers_last_word() -> None:
    """The stream ends mid-word (no trailing silence): CloseStream must still finalise it."""
    audio = marker_audio([("sil", 0, 100), ("word", 21, 300), ("sil", 0, 50), ("word", 22, 120)], SR)
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate={SR}"
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            await ws.send_bytes(audio)
            await ws.send_str('{"type":"CloseStream"}')
            msgs = [orjson.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
            assert ws.close_code == 1000
    assert [w[0] for w in final_words(msgs)] == ["w21", "w22"]
    assert final_words(msgs)[-1][2] == pytest.approx(0.57)
    assert msgs[-1]["type"] == "Metadata"


async def test_client_disconnect_without_closestream_is_clean() -> None:
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate={SR}"
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(url) as ws:
                await ws.send_bytes(AUDIO[:32000])
            for _ in range(100):
                if not gw.gateway.sessions:
                    break
                await asyncio.sleep(0.05)
            assert not gw.gateway.sessions  # session ended and cleaned up
            assert (
                gw.gateway.metrics.registry.get_sample_value(
                    "streamproxy_sessions_active", {"protocol": "v1", "region": ""}
                )
                == 0
            )


async def test_bad_input_is_rejected_clearly_and_others_unaffected() -> None:
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"limits.max_frame_bytes": 64 * 1024})
        async with gateway(cfg) as gw, aiohttp.ClientSession() as s:
            base = f"ws://127.0.0.1:{gw.port}/v1/listen"
            # 1. unknown query parameter -> 400 before the upgrade, with a Deepgram-shaped body
            http = base.replace("ws://", "http://") + "?encoding=linear16&sample_rate=16000&interim_result=true"
            upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
            async with s.get(http, headers=upgrade) as r:
                assert r.status == 400
                body = await r.json()
                assert "interim_result" in body["err_msg"] and "interim_result" in r.headers["dg-error"]
            # 2. bad values -> 400 naming the parameter
            for q, needle in [
                ("encoding=mp4a", "encoding"),
                ("encoding=linear16", "sample_rate"),
                ("encoding=linear16&sample_rate=abc", "sample_rate"),
                ("encoding=linear16&sample_rate=16000&interim_results=maybe", "interim_results"),
            ]:
                with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
                    await s.ws_connect(f"{base}?{q}")
                assert ei.value.status == 400 and ei.value.headers is not None
                assert needle in ei.value.headers["dg-error"]

            # a healthy session running alongside the bad ones
            good = await s.ws_connect(f"{base}?encoding=linear16&sample_rate={SR}")
            await good.send_bytes(AUDIO[: len(AUDIO) // 2])

            # 3. a text frame that is not JSON -> Error message, session goes on
            async with s.ws_connect(f"{base}?encoding=linear16&sample_rate={SR}") as ws:
                await ws.send_str("this is not json")
                err = orjson.loads((await ws.receive(timeout=5)).data)
                assert validate_strict(err).type == "Error" and "not valid JSON" in err["description"]
                await ws.send_str('{"type":"Bogus"}')
                err = orjson.loads((await ws.receive(timeout=5)).data)
                assert "Bogus" in err["description"]
                for c in _chunks(AUDIO, 100):
                    await ws.send_bytes(c)
                await ws.send_str('{"type":"CloseStream"}')
                msgs = [orjson.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
                assert final_words(msgs) == EXPECTED

            # 4. an oversized frame -> closed with 1009 (message too big)
            async with s.ws_connect(f"{base}?encoding=linear16&sample_rate={SR}") as ws:
                await ws.send_bytes(b"\x00" * (64 * 1024 + 2))
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1009

            # the healthy session still completes exactly
            await good.send_bytes(AUDIO[len(AUDIO) // 2 :])
            await good.send_str('{"type":"CloseStream"}')
            msgs = [orjson.loads(m.data) async for m in good if m.type == aiohttp.WSMsgType.TEXT]
            assert final_words(msgs) == EXPECTED
            await good.close()


async def test_metrics_route_can_be_disabled() -> None:
    async with engine("marker") as eport, aiohttp.ClientSession() as s:
        for enabled, status in ((True, 200), (False, 404)):
            cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"metrics.enabled": enabled})
            async with gateway(cfg) as gw, s.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
                assert r.status == status
