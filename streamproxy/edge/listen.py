"""``GET /v1/listen`` (Deepgram Live) and ``GET /v2/listen`` (Flux) over a WebSocket, and resuming a
dropped session: one handler, two vocabularies (the session core knows which)."""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl

import orjson
from aiohttp import WSMsgType, web
from multidict import MultiDict, MultiDictProxy

from ..deepgram.messages import CLOSE_STREAM, error_message
from ..gateway.admission import DRAINING, Refused, admit
from ..gateway.limits import Lease
from ..gateway.runner import SessionRunner
from ..gateway.shared import RemoteSession, TakeoverBusy, owner_hash
from ..gateway.state import GATEWAY, Gateway
from ..session.checkpoint import Checkpoint
from ..session.core import ResumeError
from ..session.flux import FluxSession
from .errors import deepgram_error, refusal_response
from .middleware import REQUEST_ID, principal_of, request_authorized
from .params import ParamError, StreamParams, parse_flux_params, parse_params

log = logging.getLogger("streamproxy.edge")


#: WebSocket ping interval toward clients; no pong within half of it closes the socket.
PING_INTERVAL_S = 10.0


def _aborter(request: web.Request) -> Callable[[], None]:
    """Drop the client's TCP connection at once (a client that stops reading never takes a close)."""
    transport = request.transport

    def abort() -> None:
        if transport is not None:
            transport.abort()

    return abort


def owner_of(request: web.Request) -> str:
    """Who may resume a session: the client key it was opened with (a grant token counts as its key,
    so a renewed token still resumes); "" for anonymous sessions, whose unguessable id is the secret."""
    p = principal_of(request)
    return p.id if p is not None and p.kind in ("key", "token") else ""


async def listen_ws(request: web.Request) -> web.StreamResponse:
    return await _stream(request, flux=False)


async def listen_v2_ws(request: web.Request) -> web.StreamResponse:
    return await _stream(request, flux=True)


async def _stream(request: web.Request, *, flux: bool) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    sid = request.get(REQUEST_ID) or str(uuid.uuid4())
    try:
        params = parse_flux_params(request.query) if flux else parse_params(request.query)
    except ParamError as e:
        return deepgram_error(400, str(e), request_id=sid)
    if not request_authorized(gw, request):
        return deepgram_error(401, "Invalid credentials.", request_id=sid)
    if gw.draining:
        return refusal_response(DRAINING, sid)
    owner = owner_of(request)
    resumed: SessionRunner | None = None
    remote: RemoteSession | None = None
    if params.resume:
        resumed = gw.sessions.resumable(params.resume)
        if resumed is not None and isinstance(resumed.core, FluxSession) != flux:
            resumed = None  # a Live session is not resumed as Flux, nor the other way round
        if resumed is None:
            remote = await _remote(gw, params.resume, flux)  # held by another instance (or was)
        if resumed is None and remote is None:
            msg = f"session {params.resume!r} not found or its resume window has expired; start a new session"
            return deepgram_error(404, msg, request_id=sid)
        held_by = resumed.owner if resumed is not None else ""
        mine, theirs = (owner, held_by) if remote is None else (owner_hash(owner), remote.owner_hash)
        if not hmac.compare_digest(theirs, mine):
            return deepgram_error(403, "session belongs to another client credential", request_id=sid)
        sid = params.resume
    try:
        lease = await admit(
            gw, principal=principal_of(request), session_id=sid, origin=request.headers.get("Origin"),
            new=resumed is None and remote is None,
        )  # fmt: skip
    except Refused as e:
        return refusal_response(e.refusal, sid)
    runner: SessionRunner | None = None
    records: list[Checkpoint] | None = None
    try:
        if remote is not None:
            try:
                records = await gw.shared.take(remote) if gw.shared is not None else None
            except KeyError:
                msg = f"session {sid!r} not found or its resume window has expired; start a new session"
                return deepgram_error(404, msg, request_id=sid)
            except TakeoverBusy:
                return deepgram_error(409, "session is being resumed on another connection", request_id=sid)
            except Exception as e:  # the shared store failed mid-takeover
                log.warning("takeover failed", extra={"event": "takeover_error", "error": f"{type(e).__name__}: {e}"})
                return deepgram_error(503, "session store unavailable; retry", request_id=sid)
            principal = principal_of(request)
            if principal is not None:  # the session's per-key slot moves here with it
                await gw.limiter.adopt_session(principal.id, sid)
                lease = Lease(gw.limiter, principal.id, sid)
        ws = web.WebSocketResponse(
            protocols=("token", "bearer"),
            max_msg_size=gw.cfg.limits.max_frame_bytes,
            autoping=True,
            # A half-open v1 client sends nothing, so the idle timeout ends it; pings (which cost a
            # timer reset per received frame) are only needed when that timeout is off, and on
            # Flux, which has no KeepAlive: there pings are what keeps an idle client.
            heartbeat=PING_INTERVAL_S if flux or gw.cfg.session.client_idle_timeout_s <= 0 else None,
            compress=False,
        )
        ws.headers["dg-request-id"] = sid
        await ws.prepare(request)
        if resumed is not None:
            try:
                resumed.resume(ws, params.last_seq or 0, params.audio_offset, abort=_aborter(request))
            except ResumeError as e:
                await _refuse_resume(ws, str(e))
                return ws
            runner = resumed
        elif remote is not None and records is not None:
            runner = await _take_over(gw, request, ws, remote, records, params, lease=lease, flux=flux)
            if runner is None:
                return ws
        else:
            runner = gw.open_session(
                sid, params.fmt, params.upstream_query, ws, abort=_aborter(request), owner=owner,
                lease=lease, proxy_events=params.proxy_events, flux=flux, query=request.query_string,
            )  # fmt: skip
        await _pump(ws, runner, flux=flux)
        return ws
    finally:
        if runner is None:
            await lease.release()  # never reached a session: the slot is not its to release


async def _remote(gw: Gateway, sid: str, flux: bool) -> RemoteSession | None:
    """The session as the shared store has it, if it is one of this protocol (None: unknown here)."""
    if gw.shared is None:
        return None
    try:
        remote = await gw.shared.lookup(sid)
    except Exception as e:  # an unreachable store: as if unknown (logged)
        log.warning("shared session lookup failed", extra={"event": "takeover_error", "error": type(e).__name__})
        return None
    if remote is None or remote.protocol != ("v2" if flux else "v1"):
        return None
    return remote


async def _take_over(
    gw: Gateway,
    request: web.Request,
    ws: web.WebSocketResponse,
    remote: RemoteSession,
    records: list[Checkpoint],
    params: StreamParams,
    *,
    lease: Lease,
    flux: bool,
) -> SessionRunner | None:
    """Continue here a session another instance held, as it was opened (its stored query); a
    resume that cannot be served gets an Error and close 1008, and the session stays resumable."""
    query = MultiDictProxy(MultiDict(parse_qsl(remote.query, keep_blank_values=True)))
    original = parse_flux_params(query) if flux else parse_params(query)
    try:
        return gw.open_session(
            remote.session_id, original.fmt, original.upstream_query, ws, abort=_aborter(request),
            owner=owner_of(request), lease=lease, proxy_events=original.proxy_events, flux=flux,
            takeover=(records, params.last_seq or 0, params.audio_offset),
        )  # fmt: skip
    except ResumeError as e:
        if gw.shared is not None:
            gw.shared.let_go(remote.session_id)  # another attempt (anywhere) claims it at once
        await _refuse_resume(ws, str(e))
        return None


async def _refuse_resume(ws: web.WebSocketResponse, why: str) -> None:
    await ws.send_str(orjson.dumps(error_message("RESUME_FAILED", why, "ProxyError")).decode())
    await ws.close(code=1008, message=b"resume failed")


async def _pump(ws: web.WebSocketResponse, runner: SessionRunner, *, flux: bool = False) -> None:
    """Feed the client's frames to the session until the client or the session ends; whatever
    ends the loop (close, error, an exception from the socket), the session hears of it."""
    try:
        async for msg in ws:
            if runner.client is not ws:
                break  # resumed on another socket: late frames of this one must not be fed twice
            if msg.type == WSMsgType.BINARY:
                if msg.data:
                    await runner.feed_audio(msg.data)
                elif not flux:  # legacy Deepgram Live clients close a stream with an empty frame
                    runner.client_text(CLOSE_STREAM)
            elif msg.type == WSMsgType.TEXT:
                runner.client_text(msg.data)
            elif msg.type == WSMsgType.ERROR:
                runner.outcome = "client_error"
                break
            if runner.client_backlogged:  # the client is not reading: stop reading from it too
                await runner.client_writable()
    except (ConnectionError, RuntimeError):
        runner.outcome = "client_error"
    finally:
        await runner.client_ended(ws)
