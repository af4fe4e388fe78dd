"""What every engine request passes first: a request id, the credentials check, Deepgram's refusals.

The gateway reaches the engine through the code path it uses for Deepgram, so a refusal must look
like Deepgram's: the JSON body of ``streamproxy.deepgram.messages.http_error_body``, a
``dg-error`` header (what a WebSocket client sees of a refused upgrade) and ``dg-request-id``.
"""

from __future__ import annotations

import hmac
import logging
import uuid

import orjson
from aiohttp import web

from streamproxy.deepgram.credentials import credentials
from streamproxy.deepgram.headers import header_value
from streamproxy.deepgram.messages import http_error_body
from streamproxy.engine.state import EngineState

__all__ = ["at_capacity", "authorized", "new_request_id", "refusal"]

log = logging.getLogger("streamproxy.engine")


def new_request_id() -> str:
    """The ``dg-request-id`` of one request (also in every message of its stream)."""
    return str(uuid.uuid4())


def authorized(request: web.Request, api_key: str | None) -> bool:
    """``Authorization: Token|Bearer <key>`` or subprotocols ``token, <key>`` / ``bearer, <key>``."""
    if api_key is None:
        return True
    expected = api_key.encode()
    ok = False
    for scheme, secret in credentials(request.headers):
        if scheme in ("token", "bearer"):
            ok |= hmac.compare_digest(secret.encode(), expected)
    return ok


def refusal(status: int, message: str, request_id: str) -> web.Response:
    """A Deepgram-shaped HTTP error (400 bad parameters, 401 credentials, 429 capacity)."""
    body = orjson.dumps(http_error_body(status, message, request_id=request_id))
    headers = {"dg-request-id": request_id, "dg-error": header_value(message)}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def at_capacity(st: EngineState, request_id: str) -> web.Response | None:
    """The 429 for a stream past ``max_streams`` (counted and logged), or None to admit it."""
    if not st.max_streams or st.admitted < st.max_streams:
        return None
    st.refused += 1
    log.warning(
        "engine at capacity: stream refused",
        extra={"event": "engine_overloaded", "request_id": request_id, "max_streams": st.max_streams},
    )
    return refusal(
        429,
        f"this {st.kind} engine process is at capacity ({st.max_streams} streams); retry on another engine",
        request_id,
    )
