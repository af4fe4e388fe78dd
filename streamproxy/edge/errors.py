"""Deepgram-shaped HTTP errors, with the ``dg-error`` header its SDKs surface."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..deepgram.headers import header_value
from ..deepgram.messages import http_error_body
from ..gateway.limits import Refusal


def deepgram_error(status: int, message: str, *, request_id: str = "") -> web.Response:
    """The JSON body carries the message as is; the headers a printable-ASCII rendering of it."""
    return web.Response(
        status=status,
        body=orjson.dumps(http_error_body(status, message, request_id=request_id)),
        content_type="application/json",
        headers={"dg-error": header_value(message), "dg-request-id": header_value(request_id, 200)},
    )


def refusal_response(refusal: Refusal, request_id: str = "") -> web.Response:
    """An admission refusal as the HTTP answer to the handshake or request."""
    resp = deepgram_error(refusal.status, refusal.message, request_id=request_id)
    if refusal.retry_after is not None:
        resp.headers["Retry-After"] = str(refusal.retry_after)
    return resp
