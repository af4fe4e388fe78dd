"""Mid-stream ``Configure`` on ``/v1/listen`` through the gateway: passed upstream, answered to the
client exactly once, and re-applied on the replacement connection before any replayed audio (a
recording relay between the gateway and the marker engine shows what each connection received)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import websockets
from aiohttp import WSMsgType, web

from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.marker import expected_words, final_words, marker_audio

SR = 16000
SEGMENTS = [("sil", 0, 100), ("word", 41, 300), ("sil", 0, 500), ("word", 42, 300), ("sil", 0, 500)]
AUDIO = marker_audio(SEGMENTS, SR)
CONFIGURE = '{"type":"Configure","features":{"punctuate":true}}'


class RecordingRelay:
    """Forwards ``/v1/listen`` to the engine; records each connection's frames; ``cut()`` kills the
    current connection without a close frame (as a dying upstream would)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.frames: list[list[str | int]] = []  # per connection: text frames, or the size of a binary one
        self._current: web.WebSocketResponse | None = None

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        log: list[str | int] = []
        self.frames.append(log)
        self._current = ws
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{self.target}/v1/listen?{request.query_string}") as up,
        ):

            async def down() -> None:
                async for m in up:
                    if m.type == WSMsgType.TEXT:
                        await ws.send_str(m.data)

            task = asyncio.create_task(down())
            async for m in ws:
                if m.type == WSMsgType.TEXT:
                    log.append(m.data)
                    await up.send_str(m.data)
                elif m.type == WSMsgType.BINARY:
                    log.append(len(m.data))
                    await up.send_bytes(m.data)
            task.cancel()
        return ws

    def cut(self) -> None:
        assert self._current is not None and self._current._req is not None
        transport = self._current._req.transport
        assert transport is not None
        transport.abort()


@contextlib.asynccontextmanager
async def relay_to(target: str) -> AsyncIterator[tuple[RecordingRelay, int]]:
    relay = RecordingRelay(target)
    app = web.Application()
    app.router.add_get("/v1/listen", relay.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield relay, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_configure_answered_once_and_reapplied_before_the_replay() -> None:
    async with engine("marker") as eport, relay_to(f"ws://127.0.0.1:{eport}") as (relay, rport):
        cfg = gateway_config([f"ws://127.0.0.1:{rport}"], **{"reconnect.first_retry_s": 0.05})
        async with gateway(cfg) as gw:
            got: list[dict] = []
            url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate=16000"
            async with websockets.connect(url) as ws:

                async def reader() -> None:
                    async for raw in ws:
                        got.append(orjson.loads(raw))

                task = asyncio.create_task(reader())
                await ws.send(CONFIGURE)
                half = len(AUDIO) // 2 - (len(AUDIO) // 2) % 2
                await ws.send(AUDIO[:half])
                for _ in range(100):
                    if any(m["type"] == "ConfigureSuccess" for m in got):
                        break
                    await asyncio.sleep(0.02)
                relay.cut()  # the upstream dies after accepting the Configure
                for _ in range(200):
                    if len(relay.frames) == 2 and relay.frames[1]:
                        break
                    await asyncio.sleep(0.02)
                await ws.send(AUDIO[half:])
                await ws.send('{"type":"CloseStream"}')
                await asyncio.wait_for(task, 20)
    assert [m["type"] for m in got].count("ConfigureSuccess") == 1  # the replacement's answer is not shown
    assert relay.frames[0][0] == CONFIGURE
    assert relay.frames[1][0] == CONFIGURE  # re-applied first, before any replayed audio
    assert all(isinstance(f, int) or f != CONFIGURE for f in relay.frames[1][1:])
    assert final_words(got) == expected_words(SEGMENTS, SR)
