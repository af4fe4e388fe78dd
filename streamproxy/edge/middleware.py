"""The edge middleware: a request id on every log line, authentication and request rate limits for
``/v1/`` (except the app's public paths), and Deepgram-shaped 413s."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..auth.authenticator import Principal
from ..gateway.state import GATEWAY, Gateway
from ..logs import REQUEST_ID as REQUEST_ID_VAR
from .errors import deepgram_error, refusal_response

__all__ = ["PRINCIPAL", "PUBLIC_PATHS", "REQUEST_ID", "edge_middleware", "principal_of", "request_authorized"]

log = logging.getLogger("streamproxy.auth")

PRINCIPAL = web.RequestKey("streamproxy_principal", Principal)
REQUEST_ID = web.RequestKey("streamproxy_request_id", str)
#: Paths under /v1/ that need no credential in the handshake, set by the app that routes them.
PUBLIC_PATHS = web.AppKey("streamproxy_public_paths", frozenset[str])


def request_authorized(gw: Gateway, request: web.Request) -> bool:
    """True when the request carries a valid credential (or anonymous access is allowed)."""
    if request.get(PRINCIPAL) is not None:
        return True  # the middleware already authenticated it
    principal = gw.auth.authenticate_sync(request.headers, request.remote)
    if principal is None:
        return False
    request[PRINCIPAL] = principal
    return True


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL)


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


@web.middleware
async def edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rid = str(uuid.uuid4())
    request[REQUEST_ID] = rid
    token = REQUEST_ID_VAR.set(rid)
    try:
        path = request.path
        if not path.startswith("/v1/") or path in request.app.get(PUBLIC_PATHS, frozenset()):
            return await handler(request)
        gw = request.app[GATEWAY]
        principal = await gw.auth.authenticate(request.headers, request.remote)
        if principal is None:
            log.info(
                "unauthorized",
                extra={"event": "auth_failed", "path": request.path, "remote": request.remote},
            )
            return deepgram_error(401, "Invalid credentials.", request_id=rid)
        request[PRINCIPAL] = principal
        if not is_websocket(request):
            refusal = await gw.limiter.hit_request(principal.id)
            if refusal is not None:
                return refusal_response(refusal, rid)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = gw.cfg.limits.max_upload_bytes
            return deepgram_error(
                413, f"Request body larger than {limit} bytes (limits.max_upload_bytes).", request_id=rid
            )
    finally:
        REQUEST_ID_VAR.reset(token)
