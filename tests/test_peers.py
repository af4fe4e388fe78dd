"""Peers that misbehave, over real sockets to the real gateway and marker engine (issue findings
1, 2-3, 4, 6, 7): each test is named after the bad input it sends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import websockets
from aiohttp import WSMsgType, web

from tests.helpers.gateway import engine, gateway, gateway_config, metric, validate_strict
from tests.helpers.marker import expected_words, final_words, marker_audio
from tests.helpers.rawws import frame, upgrade

SR = 16000
SEGMENTS = [("sil", 0, 100), ("word", 21, 300), ("sil", 0, 400), ("word", 22, 250), ("sil", 0, 400)]
AUDIO = marker_audio(SEGMENTS, SR)
EXPECTED = expected_words(SEGMENTS, SR)
QUERY = "/v1/listen?encoding=linear16&sample_rate=16000"


async def wait_until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------- hostile upstreams
GARBAGE: list[tuple[str, str | bytes, str]] = [
    ("unknown_type", '{"type":"Whatever"}', "unknown_type"),
    ("no_type", '{"hello":"world"}', "unknown_type"),
    ("null_type", '{"type":null}', "unknown_type"),
    ("bare_results", '{"type":"Results"}', "results_times"),
    ("non_numeric_start", '{"type":"Results","start":"soon","duration":1,'
     '"channel":{"alternatives":[]}}', "results_times"),
    ("word_without_times", '{"type":"Results","start":0,"duration":1,"is_final":true,'
     '"channel":{"alternatives":[{"transcript":"x","words":[{"word":"x"}]}]}}', "results_words"),
    ("not_json", "{not json", "not_json"),
    ("binary", b"\x00\x01\x02", "binary"),
]  # fmt: skip


@contextlib.asynccontextmanager
async def hostile_upstream(garbage: str | bytes) -> AsyncIterator[int]:
    """A Deepgram-looking upstream that answers the first audio with ``garbage`` and then stays open."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sent = False
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and not sent:
                sent = True
                await (ws.send_bytes(garbage) if isinstance(garbage, bytes) else ws.send_str(garbage))
        return ws

    app = web.Application()
    app.router.add_get("/v1/listen", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def stream(port: int, audio: bytes = AUDIO, chunk: int = 3200) -> list[dict]:
    got: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}{QUERY}") as ws:

        async def reader() -> None:
            async for raw in ws:
                got.append(orjson.loads(raw))

        task = asyncio.create_task(reader())
        for i in range(0, len(audio), chunk):
            await ws.send(audio[i : i + chunk])
            await asyncio.sleep(0.01)
        await ws.send('{"type":"CloseStream"}')
        await asyncio.wait_for(task, 20)
        assert ws.close_code == 1000
    return got


@pytest.mark.parametrize(("name", "garbage", "kind"), GARBAGE, ids=[g[0] for g in GARBAGE])
async def test_upstream_garbage_never_reaches_a_strict_client(name: str, garbage: str | bytes, kind: str) -> None:
    """The preferred upstream answers with garbage: the strict client sees only valid Deepgram, gets
    every word (replayed on the healthy upstream at once), and the garbage is counted by kind."""
    async with hostile_upstream(garbage) as bad, engine("marker") as good:
        cfg = gateway_config({"bad": f"ws://127.0.0.1:{bad}", "good": f"ws://127.0.0.1:{good}"})
        async with gateway(cfg) as gw:
            t0 = time.monotonic()
            got = await stream(gw.port)
            elapsed = time.monotonic() - t0
            for m in got:
                validate_strict(m)  # raises on anything the official SDK's models reject
            assert final_words(got) == EXPECTED
            labels = {"upstream": "bad", "kind": kind}
            assert metric(gw, "streamproxy_upstream_invalid_messages_total", labels) == 1
            assert metric(gw, "streamproxy_upstream_reconnects_total", {"upstream": "bad", "reason": "invalid"}) == 1
            assert elapsed < 5.0  # replaced at once, not after a 10 s stall timeout


# ----------------------------------------------------------------------------- hostile clients
def _handshake(port: int, path: str, rcvbuf: int = 2048) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    head = upgrade(s, port, path)
    assert head.startswith("HTTP/1.1 101"), head
    return s


def _flood(s: socket.socket, frame: bytes, max_frames: int, stuck_s: float) -> int:
    """Send ``frame`` without ever reading until the send is blocked for ``stuck_s``; frames sent."""
    s.setblocking(False)
    sent, blocked_since, buf = 0, None, b""
    while sent < max_frames:
        if not buf:
            buf = frame
        try:
            n = s.send(buf)
            buf = buf[n:]
            if not buf:
                sent += 1
            blocked_since = None
        except BlockingIOError:
            now = time.monotonic()
            blocked_since = blocked_since or now
            if now - blocked_since > stuck_s:
                break
            time.sleep(0.005)
        except OSError:
            break
    return sent


def _reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def test_ping_flood_without_reading_then_reset_leaks_no_session() -> None:
    """Masked 125-byte PINGs without reading until the gateway's pong writes block, then a TCP reset:
    the session still ends (gauge back to 0, nothing held), whatever the socket raised."""
    async with engine("marker") as eport:
        async with gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
            s = await asyncio.to_thread(_handshake, gw.port, QUERY)
            await wait_until(lambda: len(gw.gateway.sessions) == 1, 5, "the session to open")
            await asyncio.to_thread(_flood, s, frame(0x9, os.urandom(125)), 2_000_000, 1.0)
            _reset(s)
            await wait_until(lambda: len(gw.gateway.sessions) == 0, 15, "the session to end")
            assert metric(gw, "streamproxy_sessions_active") == 0


async def test_text_flood_from_a_client_that_never_reads_is_bounded_and_detached() -> None:
    """300,000 unsupported 512-byte text frames (each answered with an Error) from a client that never reads:
    the gateway stops reading it (its sends block long before 300,000), and once its writes stay
    blocked for client_write_timeout_s the client is detached; nothing grows without bound."""
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.client_write_timeout_s": 1.0})
        async with gateway(cfg) as gw:
            s = await asyncio.to_thread(_handshake, gw.port, QUERY)
            await wait_until(lambda: len(gw.gateway.sessions) == 1, 5, "the session to open")
            runner = next(iter(gw.gateway.sessions))
            # 512-byte frames: 300,000 of them (150 MB) are far more than the kernel's socket buffers
            # can take in whatever its settings (22-byte ones, 6.6 MB, once fitted on CI).
            bogus = b'{"type":"Bogus","pad":"' + b"x" * 488 + b'"}'
            sent = await asyncio.to_thread(_flood, s, frame(0x1, bogus), 300_000, 3.0)
            print(f"\nflood: {sent} frames sent before the socket stayed blocked")
            assert sent < 300_000  # reading paused: backpressure reached the client
            assert runner._client_bytes <= 4 * 1024 * 1024  # the queue toward the client is bounded
            await wait_until(lambda: len(gw.gateway.sessions) == 0, 15, "the slow client's session to end")
            assert metric(gw, "streamproxy_sessions_total", {"outcome": "client_slow"}) == 1
            s.close()


async def test_silent_client_gets_deepgram_net0001_and_1011() -> None:
    """No audio and no KeepAlive for client_idle_timeout_s: Deepgram's NET-0001 Error and close 1011
    (Deepgram does the same after 10 s), so clients that forget KeepAlive fail here too, not in
    production. A client sending KeepAlive in the same time stays open."""
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"session.client_idle_timeout_s": 1.0})
        async with gateway(cfg) as gw:
            url = f"ws://127.0.0.1:{gw.port}{QUERY}"
            async with websockets.connect(url) as silent, websockets.connect(url) as alive:
                t0 = time.monotonic()
                for _ in range(8):
                    await alive.send('{"type":"KeepAlive"}')
                    await asyncio.sleep(0.25)
                msgs = []
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for m in silent:
                        msgs.append(orjson.loads(m))
                assert msgs[-1]["type"] == "Error" and msgs[-1]["err_code"] == "NET-0001"
                validate_strict(msgs[-1])
                assert silent.close_code == 1011
                assert 1.0 <= time.monotonic() - t0 <= 4.0
                assert alive.close_code is None  # still open
