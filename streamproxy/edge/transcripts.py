"""``GET /v1/transcripts``, ``GET /v1/transcripts/{id}``, ``DELETE /v1/transcripts/{id}``.

Owner-scoped like jobs: a transcript made with a key is visible only with that key (a grant token
counts as its key); an anonymous one to anyone. The list shows the caller's own, newest first;
``before`` is the ``request_id`` of the last row of the previous page (the answer's
``next_before``). A store that does not answer gives 503: it never affects streaming.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import orjson
from aiohttp import web

from ..gateway.state import GATEWAY, Gateway
from ..storage.records import Summary
from ..storage.shape import listing, response
from ..storage.store import Store
from .errors import deepgram_error
from .listen import owner_of
from .middleware import request_authorized

__all__ = ["add_transcript_routes"]

log = logging.getLogger("streamproxy.edge")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_ID_CHARS = 256
READ_TIMEOUT_S = 10.0
_LIST_PARAMS = frozenset({"limit", "before"})


class _Answer(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _store(request: web.Request) -> tuple[Gateway, Store, str]:
    """The store and who is asking; raises _Answer with the refusal."""
    gw = request.app[GATEWAY]
    if not request_authorized(gw, request):
        raise _Answer(deepgram_error(401, "Invalid credentials."))
    if gw.transcripts is None:
        raise _Answer(deepgram_error(404, 'transcripts are not stored here (storage.url = "off")'))
    return gw, gw.transcripts.store, owner_of(request)


def _visible(s: Summary | None, owner: str) -> bool:
    return s is not None and (s.owner == "" or hmac.compare_digest(s.owner, owner))


def _json(body: Any, request_id: str = "") -> web.Response:
    headers = {"dg-request-id": request_id} if request_id else None
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


async def _call(what: str, coro: Any) -> Any:
    try:
        return await asyncio.wait_for(coro, READ_TIMEOUT_S)
    except Exception as e:
        log.warning("transcript store unavailable", extra={"event": "storage_read_failed", "op": what, "error": str(e)})
        raise _Answer(deepgram_error(503, "transcript store unavailable; retry later")) from None


def _transcript_id(request: web.Request) -> str:
    tid = request.match_info["id"]
    if len(tid) > MAX_ID_CHARS:
        raise _Answer(deepgram_error(404, f"unknown transcript id {tid[:64]!r}…"))
    return tid


async def list_transcripts(request: web.Request) -> web.Response:
    try:
        _, store, owner = _store(request)
        unknown = sorted(set(request.query) - _LIST_PARAMS)
        if unknown:
            return deepgram_error(400, f"unknown query parameter(s): {', '.join(unknown)} (known: before, limit)")
        raw = request.query.get("limit", str(DEFAULT_LIMIT))
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            return deepgram_error(400, f"limit must be an integer between 1 and {MAX_LIMIT}, got {raw[:32]!r}")
        limit = int(raw)
        before: tuple[float, str] | None = None
        if "before" in request.query:
            cursor = request.query["before"]
            s = None if len(cursor) > MAX_ID_CHARS else await _call("list", store.summary(cursor))
            if s is None or s.owner != owner:
                return deepgram_error(
                    400, f"before must be the request_id of one of your transcripts, got {cursor[:64]!r}"
                )
            before = (s.created_at, s.id)
        rows = await _call("list", store.list(owner, limit, before))
    except _Answer as a:
        return a.response
    return _json(
        {"transcripts": [listing(r) for r in rows], "next_before": rows[-1].id if len(rows) == limit else None}
    )


async def get_transcript(request: web.Request) -> web.Response:
    try:
        _, store, owner = _store(request)
        tid = _transcript_id(request)
        t = await _call("get", store.get(tid))
        if t is None or not _visible(t.summary, owner):
            return deepgram_error(404, f"unknown transcript id {tid!r}", request_id=tid)
    except _Answer as a:
        return a.response
    return _json(response(t), tid)


async def delete_transcript(request: web.Request) -> web.Response:
    try:
        gw, store, owner = _store(request)
        tid = _transcript_id(request)
        s = await _call("delete", store.summary(tid))
        if not _visible(s, owner):
            return deepgram_error(404, f"unknown transcript id {tid!r}", request_id=tid)
        assert gw.transcripts is not None
        gw.transcripts.forget(tid)  # a session still running here writes nothing more of it
        await _call("delete", store.delete(tid))
    except _Answer as a:
        return a.response
    return _json({"request_id": tid, "deleted": True}, tid)


def add_transcript_routes(app: web.Application) -> None:
    app.router.add_get("/v1/transcripts", list_transcripts)
    app.router.add_get("/v1/transcripts/{id}", get_transcript)
    app.router.add_delete("/v1/transcripts/{id}", delete_transcript)
