"""``POST /v1/auth/grant``: short-lived tokens for browsers, in Deepgram's shape."""

from __future__ import annotations

import logging
import math

import orjson
from aiohttp import web

from ..auth.tokens import GRANT_TTL_MAX
from ..gateway.state import GATEWAY
from .errors import deepgram_error
from .middleware import REQUEST_ID, principal_of

log = logging.getLogger("streamproxy.auth")


async def grant_route(request: web.Request) -> web.Response:
    """``POST /v1/auth/grant``: a short-lived token for browsers, shaped like Deepgram's answer."""
    gw = request.app[GATEWAY]
    rid = request[REQUEST_ID]
    principal = principal_of(request)
    if principal is None:
        return deepgram_error(401, "Invalid credentials.", request_id=rid)
    if principal.kind == "token":
        return deepgram_error(403, "A granted token cannot grant tokens; use an API key.", request_id=rid)
    ttl: float = min(gw.cfg.auth.token_ttl_s, GRANT_TTL_MAX)
    body = await request.read()
    if body.strip():
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return deepgram_error(400, 'Body must be JSON, e.g. {"ttl_seconds": 30}.', request_id=rid)
        if not isinstance(data, dict):
            return deepgram_error(400, "Body must be a JSON object.", request_id=rid)
        value = data.get("ttl_seconds")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return deepgram_error(400, "ttl_seconds must be a number.", request_id=rid)
            if not 1 <= value <= GRANT_TTL_MAX:
                return deepgram_error(400, f"ttl_seconds must be between 1 and {GRANT_TTL_MAX}.", request_id=rid)
            ttl = value
    token = gw.auth.issue_token(principal, ttl)
    expires_in: float = int(ttl) if float(ttl).is_integer() else ttl
    log.info("token granted", extra={"event": "token_granted", "key_id": principal.id, "ttl_s": expires_in})
    return web.json_response({"access_token": token, "expires_in": expires_in})
