"""Small aiohttp clients for auth/limits/ops tests: stream marker audio, read the close."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.helpers.marker import final_words, marker_audio, spaced_words

SR = 16000
QUERY = f"encoding=linear16&sample_rate={SR}"


def words_audio(ks: list[int], word_ms: int = 200, gap_ms: int = 350) -> bytes:
    """Marker audio: each k a word, separated by silence long enough to finalise it."""
    return marker_audio(spaced_words(ks, word_ms=word_ms, gap_ms=gap_ms, lead_ms=100), SR)


@dataclass
class Stream:
    """An open client session that collects what the server sends."""

    ws: aiohttp.ClientWebSocketResponse
    msgs: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> Stream:
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.ws:
            if m.type == aiohttp.WSMsgType.TEXT:
                self.msgs.append(orjson.loads(m.data))

    async def send(self, audio: bytes, chunk_ms: int = 100) -> None:
        n = SR * 2 * chunk_ms // 1000
        for i in range(0, len(audio), n):
            await self.ws.send_bytes(audio[i : i + n])

    async def finish(self, timeout: float = 15.0) -> None:
        """Wait for the server to close (after CloseStream, a drain, or a limit)."""
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)

    async def close_stream(self, timeout: float = 15.0) -> None:
        await self.ws.send_str('{"type":"CloseStream"}')
        await self.finish(timeout)

    @property
    def words(self) -> list[str]:
        return [w[0] for w in final_words(self.msgs)]

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code


async def open_stream(
    s: aiohttp.ClientSession,
    port: int,
    *,
    key: str | None = None,
    bearer: str | None = None,
    protocols: tuple[str, ...] = (),
    origin: str | None = None,
) -> Stream:
    headers: dict[str, str] = {}
    if key is not None:
        headers["Authorization"] = f"Token {key}"
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if origin is not None:
        headers["Origin"] = origin
    ws = await s.ws_connect(f"ws://127.0.0.1:{port}/v1/listen?{QUERY}", headers=headers, protocols=protocols)
    return Stream(ws).start()


async def refused(
    s: aiohttp.ClientSession, port: int, headers: dict[str, str] | None = None, protocols: tuple[str, ...] = ()
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Attempt a WebSocket upgrade that should be refused: (status, JSON body, headers)."""
    hdrs = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        **(headers or {}),
    }
    if protocols:
        hdrs["Sec-WebSocket-Protocol"] = ", ".join(protocols)
    async with s.get(f"http://127.0.0.1:{port}/v1/listen?{QUERY}", headers=hdrs) as r:
        assert r.status != 101, "the upgrade was accepted"
        body = await r.json(content_type=None)
        return r.status, body, dict(r.headers)


def assert_deepgram_error(body: dict[str, Any], headers: dict[str, str], err_code: str) -> None:
    """The shape Deepgram's REST errors have, plus the dg-error header its SDKs surface."""
    assert set(body) == {"err_code", "err_msg", "request_id"}, body
    assert body["err_code"] == err_code and body["err_msg"] and body["request_id"]
    assert headers["dg-error"] == body["err_msg"]
