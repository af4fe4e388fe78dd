"""Opening a Deepgram-protocol WebSocket to an upstream, with errors reduced to what the core needs.

The client side is aiohttp's: on the same relay workload it used 12-23 % less CPU than the
websockets client (`benchmarks/pyrelay.py`; no per-frame ``getrandom`` for the mask key).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType

from .pool import Upstream

LISTEN_PATH = "/v1/listen"
FLUX_PATH = "/v2/listen"


@dataclass(slots=True)
class HandshakeError(Exception):
    """The upstream refused or could not be reached; ``status`` None means no HTTP answer."""

    status: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.status or 'network'}: {self.reason}"


def listen_url(upstream: Upstream, query: str, path: str = LISTEN_PATH) -> str:
    """``url`` is a base URL (``wss://api.deepgram.com``); one ending in a listen path keeps it for v1."""
    base = upstream.url.rstrip("/")
    for known in (LISTEN_PATH, FLUX_PATH):
        if base.endswith(known):
            base = base[: -len(known)]
    base += path
    return f"{base}?{query}" if query else base


def client_session() -> aiohttp.ClientSession:
    """The HTTP client one gateway opens all its upstream connections with (it closes it at stop)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)


class UpstreamSocket:
    """The few operations the session runner needs, whatever the WebSocket library underneath."""

    __slots__ = ("_ws", "close_code", "close_reason")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.close_code: int | None = None  # None: the connection died without a close frame
        self.close_reason = ""

    async def send(self, data: bytes | str) -> None:
        """Raises ConnectionError once the connection is gone (the core replays after reconnect)."""
        if self._ws.closed:
            raise ConnectionResetError("upstream connection closed")
        if isinstance(data, bytes):
            await self._ws.send_bytes(data)
        else:
            await self._ws.send_str(data)

    async def receive(self) -> str | bytes | None:
        """The next message, or None when the connection ended (then see ``close_code``)."""
        msg = await self._ws.receive()
        if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
            return msg.data
        if msg.type is WSMsgType.CLOSE:
            self.close_code, self.close_reason = int(msg.data), str(msg.extra or "")
        return None  # CLOSED / ERROR: the connection ended without a close frame

    def abort(self) -> None:
        """Drop the connection now, without the closing handshake (a stalled peer would not answer).

        aiohttp has no public abort for a client WebSocket; its writer's transport is the socket.
        """
        self._ws._writer.transport.abort()


async def open_upstream(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    query: str,
    *,
    open_timeout: float = 10.0,
    max_size: int = 16 * 1024 * 1024,
    path: str = LISTEN_PATH,
    heartbeat: float | None = None,
) -> UpstreamSocket:
    """Connect; the key travels only in this request's Authorization header."""
    headers = {"User-Agent": "streamproxy"}
    if upstream.api_key:
        headers["Authorization"] = f"Token {upstream.api_key}"
    try:
        async with asyncio.timeout(open_timeout):
            ws = await session.ws_connect(
                listen_url(upstream, query, path),
                headers=headers,
                autoping=True,
                # v1: stall detection and KeepAlive cover liveness without extra frames; Flux has no
                # KeepAlive, so pings keep an idle stream open there.
                heartbeat=heartbeat,
                max_msg_size=max_size,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            )
    except aiohttp.WSServerHandshakeError as e:
        detail = (e.headers.get("dg-error") if e.headers is not None else None) or e.message
        raise HandshakeError(e.status, str(detail)) from None
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise HandshakeError(None, f"{type(e).__name__}: {e}") from None
    return UpstreamSocket(ws)
