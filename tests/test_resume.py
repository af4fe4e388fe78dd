"""Session resumption: a client whose socket died reattaches with resume=<id>&last_seq=<n>.

The union of what the client received before and after the drop equals the uninterrupted run:
no word lost, none repeated, sequence numbers without holes or duplicates.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.marker import final_words, marker_audio, spaced_words

SR = 16000
AUDIO = marker_audio(spaced_words(range(31, 43), word_ms=200, gap_ms=350, lead_ms=100), SR)
EXPECTED = [(f"w{k}", round(0.1 + i * 0.55, 6), round(0.3 + i * 0.55, 6)) for i, k in enumerate(range(31, 43))]
CHUNK = SR * 2 // 10  # 100 ms


def _sid(ws: ClientConnection) -> str:
    assert ws.response is not None
    return str(ws.response.headers["dg-request-id"])


def _url(port: int, extra: str = "") -> str:
    return f"ws://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate={SR}&proxy_events=true{extra}"


async def _recv_all(ws: ClientConnection, out: list[dict[str, Any]], stop_after_finals: int | None = None) -> None:
    finals = 0
    try:
        async for raw in ws:
            msg = orjson.loads(raw)
            out.append(msg)
            if msg.get("type") == "Results" and msg.get("is_final") and msg["channel"]["alternatives"][0]["words"]:
                finals += 1
                if stop_after_finals is not None and finals >= stop_after_finals:
                    return
    except websockets.ConnectionClosed:
        pass


def _results(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m.get("type") != "ProxyStatus"]


def _rounded(words: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    return [(w, round(s, 6), round(e, 6)) for w, s, e in words]


@pytest.mark.parametrize("resend_from", ["zero", "sent", "half"])
async def test_resume_after_socket_killed_mid_stream(resend_from: str) -> None:
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.resume_grace_s": 10.0})
        async with gateway(cfg) as gw:
            first: list[dict[str, Any]] = []
            ws = await websockets.connect(_url(gw.port))
            sid = _sid(ws)
            reader = asyncio.create_task(_recv_all(ws, first, stop_after_finals=3))
            sent = 0
            while not reader.done() and sent < len(AUDIO) * 2 // 3:
                await ws.send(AUDIO[sent : sent + CHUNK])
                sent = min(len(AUDIO), sent + CHUNK)
                await asyncio.sleep(0.02)
            await reader
            # Keep sending a little more so audio is in flight, then kill the TCP connection (no close frame).
            for _ in range(3):
                await ws.send(AUDIO[sent : sent + CHUNK])
                sent += CHUNK
            ws.transport.abort()
            await asyncio.sleep(0.3)
            assert (r := gw.gateway.sessions.resumable(sid)) is not None and r.core.detached

            last_seq = max(m["proxy"]["seq"] for m in _results(first))
            offset = {"zero": 0, "sent": sent, "half": sent // 2 - (sent // 2) % 2}[resend_from]
            second: list[dict[str, Any]] = []
            resume = f"&resume={sid}&last_seq={last_seq}&audio_offset={offset}"
            async with websockets.connect(_url(gw.port, resume)) as ws2:
                status = orjson.loads(await ws2.recv())
                assert status["type"] == "ProxyStatus" and status["state"] == "resumed"
                received = status["audio_bytes_received"]
                assert received <= sent
                reader2 = asyncio.create_task(_recv_all(ws2, second))
                pos = offset
                while pos < len(AUDIO):
                    await ws2.send(AUDIO[pos : pos + CHUNK])
                    pos += CHUNK
                await ws2.send('{"type":"CloseStream"}')
                await asyncio.wait_for(reader2, 15)
                assert ws2.close_code == 1000

    union = _results(first) + _results(second)
    seqs = [m["proxy"]["seq"] for m in union]
    assert seqs == list(range(1, len(seqs) + 1))  # no hole, nothing twice
    assert _rounded(final_words(union)) == EXPECTED
    assert union[-1]["type"] == "Metadata"


async def test_resume_after_grace_window_is_refused() -> None:
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.resume_grace_s": 0.5})
        async with gateway(cfg) as gw:
            ws = await websockets.connect(_url(gw.port))
            sid = _sid(ws)
            await ws.send(AUDIO[: CHUNK * 5])
            ws.transport.abort()
            for _ in range(60):
                await asyncio.sleep(0.1)
                if gw.gateway.sessions.resumable(sid) is None:
                    break
            assert gw.gateway.sessions.resumable(sid) is None  # grace over: the session was finished
            assert len(gw.gateway.sessions) == 0
            with pytest.raises(websockets.InvalidStatus) as ei:
                await websockets.connect(_url(gw.port, f"&resume={sid}&last_seq=0"))
            assert ei.value.response.status_code == 404
            assert b"resume window has expired" in ei.value.response.body


async def test_resume_with_another_keys_session_is_refused() -> None:
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.resume_grace_s": 10.0})
        async with gateway(cfg, client_keys=("key-alice-123", "key-bob-456")) as gw:
            ws = await websockets.connect(_url(gw.port), additional_headers={"Authorization": "Token key-alice-123"})
            sid = _sid(ws)
            await ws.send(AUDIO[: CHUNK * 5])
            ws.transport.abort()
            await asyncio.sleep(0.2)
            with pytest.raises(websockets.InvalidStatus) as ei:
                bob = {"Authorization": "Token key-bob-456"}
                await websockets.connect(_url(gw.port, f"&resume={sid}&last_seq=0"), additional_headers=bob)
            assert ei.value.response.status_code == 403
            # the owner can still resume it
            async with websockets.connect(
                _url(gw.port, f"&resume={sid}&last_seq=0&audio_offset=0"),
                additional_headers={"Authorization": "Token key-alice-123"},
            ) as ws2:
                assert orjson.loads(await ws2.recv())["state"] == "resumed"


async def test_resume_with_an_audio_gap_is_refused_and_the_session_survives() -> None:
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.resume_grace_s": 10.0})
        async with gateway(cfg) as gw:
            ws = await websockets.connect(_url(gw.port))
            sid = _sid(ws)
            await ws.send(AUDIO[: CHUNK * 5])
            ws.transport.abort()
            await asyncio.sleep(0.2)
            async with websockets.connect(_url(gw.port, f"&resume={sid}&last_seq=0&audio_offset={CHUNK * 50}")) as bad:
                err = orjson.loads(await bad.recv())
                assert err["type"] == "Error" and "beyond the audio received" in err["description"]
                with pytest.raises(websockets.ConnectionClosed):
                    await bad.recv()
                assert bad.close_code == 1008
            # still resumable correctly
            async with websockets.connect(_url(gw.port, f"&resume={sid}&last_seq=0&audio_offset={CHUNK * 5}")) as ws2:
                assert orjson.loads(await ws2.recv())["state"] == "resumed"


async def test_resume_is_a_clear_400_without_session_id() -> None:
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        with pytest.raises(websockets.InvalidStatus) as ei:
            await websockets.connect(_url(gw.port, "&last_seq=3"))
        assert ei.value.response.status_code == 400


async def test_resume_with_a_renewed_grant_token_of_the_same_key(tmp_path: Path) -> None:
    """Ownership is the key, not the credential string: a browser that renewed its short-lived
    token resumes its own session; a token of another key does not."""
    from streamproxy.auth.keys import KeyStore

    store = KeyStore(tmp_path / "keys.json")
    _, alice = store.create("alice")
    _, bob = store.create("bob")
    async with engine("marker") as eport:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{eport}"], **{"session.resume_grace_s": 10.0, "server.data_dir": str(tmp_path)}
        )
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:

            async def grant(key: str, ttl: int = 30) -> str:
                url = f"http://127.0.0.1:{gw.port}/v1/auth/grant"
                body = {"ttl_seconds": ttl}
                async with http.post(url, headers={"Authorization": f"Token {key}"}, json=body) as r:
                    assert r.status == 200
                    return str((await r.json())["access_token"])

            t1, t2, tb = await grant(alice), await grant(alice, 120), await grant(bob)
            assert t1 != t2  # a renewed token is another credential string
            ws = await websockets.connect(_url(gw.port), additional_headers={"Authorization": f"Bearer {t1}"})
            sid = _sid(ws)
            await ws.send(AUDIO[: CHUNK * 5])
            ws.transport.abort()
            await asyncio.sleep(0.2)
            resume = _url(gw.port, f"&resume={sid}&last_seq=0&audio_offset={CHUNK * 5}")
            with pytest.raises(websockets.InvalidStatus) as ei:
                await websockets.connect(resume, additional_headers={"Authorization": f"Bearer {tb}"})
            assert ei.value.response.status_code == 403
            async with websockets.connect(resume, additional_headers={"Authorization": f"Bearer {t2}"}) as ws2:
                assert orjson.loads(await ws2.recv())["state"] == "resumed"
