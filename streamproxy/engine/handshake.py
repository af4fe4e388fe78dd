"""What every engine request passes first: a request id, the credentials check, Deepgram's refusals.

The gateway reaches the engine through the code path it uses for Deepgram, so a refusal must look
like Deepgram's: the JSON body of ``streamproxy.deepgram.messages.http_error_body``, a
``dg-error`` header (what a WebSocket client sees of a refused upgrade) and ``dg-request-id``.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from aiohttp import web
from multidict import MultiMapping

from streamproxy.deepgram.credentials import credentials
from streamproxy.deepgram.headers import header_value
from streamproxy.deepgram.messages import http_error_body
from streamproxy.engine.options import BadRequest
from streamproxy.engine.state import EngineState, engine_state

__all__ = ["at_capacity", "authorized", "new_request_id", "refusal", "serve_admitted"]

Opts = TypeVar("Opts")
#: Serves one admitted stream: (state, request, socket, options, request id) -> the socket.
Serve = Callable[[EngineState, web.Request, web.WebSocketResponse, Opts, str], Awaitable[web.StreamResponse]]

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


async def serve_admitted(
    request: web.Request,
    parse: Callable[[MultiMapping[str], str], Opts],
    serve: Serve[Opts],
    *,
    path: str,
    autoping: bool,
) -> web.StreamResponse:
    """Refuse before the upgrade (401, 400, 429) like Deepgram, else serve the stream, counted in
    ``admitted`` while it lasts: one admission for ``/v1/listen`` and ``/v2/listen``."""
    st = engine_state(request)
    request_id = new_request_id()
    if not authorized(request, st.api_key):
        return refusal(401, "Invalid credentials.", request_id)
    try:
        opts = parse(request.query, st.kind)
    except BadRequest as exc:
        return refusal(400, str(exc), request_id)
    ws = web.WebSocketResponse(
        protocols=("token", "bearer"), max_msg_size=16 * 1024 * 1024, autoping=autoping, heartbeat=None
    )
    if not ws.can_prepare(request).ok:
        return refusal(400, f"expected a WebSocket upgrade for GET {path}", request_id)
    full = at_capacity(st, request_id)
    if full is not None:
        return full
    st.admitted += 1
    try:
        return await serve(st, request, ws, opts, request_id)
    finally:
        st.admitted -= 1
