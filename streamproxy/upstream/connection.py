"""Opening a Deepgram-protocol WebSocket to an upstream, with errors reduced to what the core needs."""

from __future__ import annotations

from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from .pool import Upstream

LISTEN_PATH = "/v1/listen"


@dataclass(slots=True)
class HandshakeError(Exception):
    """The upstream refused or could not be reached; ``status`` None means no HTTP answer."""

    status: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.status or 'network'}: {self.reason}"


def listen_url(upstream: Upstream, query: str) -> str:
    base = upstream.url.rstrip("/")
    if not base.endswith(LISTEN_PATH):
        base += LISTEN_PATH
    return f"{base}?{query}" if query else base


async def open_upstream(
    upstream: Upstream, query: str, *, open_timeout: float = 10.0, max_size: int = 16 * 1024 * 1024
) -> ClientConnection:
    """Connect; the key travels only in this request's Authorization header."""
    headers = {"Authorization": f"Token {upstream.api_key}"} if upstream.api_key else None
    try:
        return await connect(
            listen_url(upstream, query),
            additional_headers=headers,
            open_timeout=open_timeout,
            ping_interval=None,  # stall detection and KeepAlive cover liveness without extra frames
            close_timeout=2.0,
            max_size=max_size,
            compression=None,
            user_agent_header="streamproxy",
        )
    except InvalidStatus as e:
        resp = e.response
        detail = resp.headers.get("dg-error") or (resp.body or b"").decode("utf-8", "replace")[:300]
        raise HandshakeError(resp.status_code, detail or resp.reason_phrase) from None
    except (OSError, TimeoutError, InvalidHandshake, websockets.exceptions.WebSocketException) as e:
        raise HandshakeError(None, f"{type(e).__name__}: {e}") from None
