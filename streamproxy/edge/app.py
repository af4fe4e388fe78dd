"""The client edge: one aiohttp application serving every public route on one port."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import uuid
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..config import Config
from ..deepgram.credentials import credentials
from ..metrics import Metrics
from ..session.core import ResumeError, Session, SessionSettings
from ..session.runner import ClientSocket, SessionRunner, clock
from ..upstream.connection import client_session
from ..upstream.pool import UpstreamPool
from .auth import REQUEST_ID, Authenticator, edge_middleware, grant_route, principal_of, request_authorized
from .limits import Limiter, admit_session, track_session
from .params import ParamError, StreamParams, parse_params

log = logging.getLogger("streamproxy.edge")


@dataclass
class Gateway:
    """Process-wide state shared by the handlers."""

    cfg: Config
    pool: UpstreamPool
    metrics: Metrics = field(default_factory=Metrics)
    runners: set[SessionRunner] = field(default_factory=set)
    draining: bool = False
    client_keys: tuple[str, ...] = ()
    sessions: dict[str, SessionRunner] = field(default_factory=dict)  # resumable sessions by id
    auth: Authenticator | None = None  # created from cfg + client_keys on first use if not given
    limiter: Limiter | None = None
    http: aiohttp.ClientSession | None = None

    def upstream_http(self) -> aiohttp.ClientSession:
        """One HTTP client per gateway for all upstream connections (closed by ``close``)."""
        if self.http is None or self.http.closed:
            self.http = client_session()
        return self.http

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def __post_init__(self) -> None:
        # Computed at scrape time rather than updated on every audio frame.
        self.metrics.audio_buffered.set_function(
            lambda: sum(r.core.fmt.bytes_to_seconds(r.core.ring.nbytes) for r in list(self.runners))
        )

    def open_session(self, sid: str, params: StreamParams, client: ClientSocket, owner: str) -> SessionRunner:
        settings = self.settings(params.proxy_events)
        core = Session(params.fmt, settings, now=clock(), session_id=sid)
        runner = SessionRunner(
            core,
            client,
            self.pool,
            params.upstream_query,
            self.metrics,
            on_done=self._session_done,
            max_message_bytes=self.cfg.session.max_message_bytes,
            http=self.upstream_http(),
        )
        runner.owner = owner
        self.runners.add(runner)
        if core.resumable:
            self.sessions[sid] = runner
        self.metrics.sessions_active.inc()
        runner.start()
        return runner

    def _session_done(self, runner: SessionRunner) -> None:
        """Accounting once per session, whichever way it ended."""
        core = runner.core
        self.runners.discard(runner)
        self.sessions.pop(core.session_id, None)
        self.metrics.sessions_active.dec()
        outcome = runner.outcome
        if core.stats.fatal:
            outcome = "upstream_error"
        elif runner.close_code == 1012:
            outcome = "drained"
        self.metrics.sessions_total.labels(outcome).inc()
        self.metrics.audio_received.inc(core.fmt.bytes_to_seconds(core.stats.audio_bytes))
        log.info("session end", extra={"event": "session_end", "outcome": outcome, **runner.summary()})

    def settings(self, proxy_events: bool) -> SessionSettings:
        s, r = self.cfg.session, self.cfg.reconnect
        return SessionSettings(
            frame_ms=s.frame_ms,
            buffer_seconds=s.buffer_seconds,
            keepalive_s=s.keepalive_s,
            stall_timeout_s=s.stall_timeout_s,
            close_timeout_s=s.close_timeout_s,
            first_retry_s=r.first_retry_s,
            backoff_base_s=r.base_s,
            backoff_cap_s=r.cap_s,
            max_attempts=r.max_attempts,
            proxy_events=proxy_events,
            resume_grace_s=s.resume_grace_s,
        )


GATEWAY = web.AppKey("gateway", Gateway)


def deepgram_error(status: int, message: str, *, request_id: str = "") -> web.Response:
    """An HTTP error in Deepgram's shape, with the ``dg-error`` header its SDKs surface."""
    body = {"err_code": _ERR_CODES.get(status, "ERROR"), "err_msg": message, "request_id": request_id}
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"dg-error": message[:500], "dg-request-id": request_id},
    )


_ERR_CODES = {
    400: "Bad Request",
    401: "INVALID_AUTH",
    403: "INSUFFICIENT_PERMISSIONS",
    429: "TOO_MANY_REQUESTS",
    503: "SERVICE_UNAVAILABLE",
}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_credential(request: web.Request) -> tuple[str, str] | None:
    """(scheme, secret) from ``Authorization`` or the browser subprotocols ``token, <key>``."""
    found = credentials(request.headers)
    return found[0] if found else None


def owner_of(request: web.Request) -> str:
    """Who may resume a session: the client key it was opened with (a grant token counts as its key,
    so a renewed token still resumes); "" for anonymous sessions, whose unguessable id is the secret."""
    p = principal_of(request)
    return p.id if p is not None and p.kind in ("key", "token") else ""


async def listen_ws(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    sid = request.get(REQUEST_ID) or str(uuid.uuid4())
    try:
        params = parse_params(request.query)
    except ParamError as e:
        return deepgram_error(400, str(e), request_id=sid)
    if not request_authorized(gw, request):
        return deepgram_error(401, "Invalid credentials.", request_id=sid)
    if gw.draining:
        return deepgram_error(503, "Server is draining; reconnect to another instance.", request_id=sid)
    owner = owner_of(request)
    resumed: SessionRunner | None = None
    if params.resume:
        resumed = gw.sessions.get(params.resume)
        if resumed is None or resumed.finished.is_set():
            msg = f"session {params.resume!r} not found or its resume window has expired; start a new session"
            return deepgram_error(404, msg, request_id=sid)
        if not hmac.compare_digest(resumed.owner, owner):
            return deepgram_error(403, "session belongs to another client credential", request_id=sid)
        sid = params.resume
    elif len(gw.runners) >= gw.cfg.limits.max_sessions:
        resp = deepgram_error(429, "Too many concurrent sessions.", request_id=sid)
        resp.headers["Retry-After"] = "1"
        return resp
    refused = await admit_session(gw, request, sid, new=resumed is None)
    if refused is not None:
        return refused
    ws = web.WebSocketResponse(
        protocols=("token", "bearer"),
        max_msg_size=gw.cfg.limits.max_frame_bytes,
        autoping=True,
        heartbeat=None,
        compress=False,
    )
    ws.headers["dg-request-id"] = sid
    await ws.prepare(request)
    if resumed is not None:
        runner = resumed
        try:
            runner.resume(ws, params.last_seq or 0, params.audio_offset)
        except ResumeError as e:
            await ws.send_str(orjson.dumps(_error_msg("RESUME_FAILED", str(e))).decode())
            await ws.close(code=1008, message=b"resume failed")
            return ws
    else:
        runner = gw.open_session(sid, params, ws, owner)
        track_session(gw, request, runner)
    await _pump(gw, ws, runner)
    return ws


def _error_msg(code: str, description: str) -> dict[str, str]:
    return {
        "type": "Error",
        "variant": "ProxyError",
        "description": description,
        "err_code": code,
        "err_msg": description,
    }


async def _pump(gw: Gateway, ws: web.WebSocketResponse, runner: SessionRunner) -> None:
    """Feed the client's frames to the session until the client or the session ends."""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            if msg.data:
                await runner.feed_audio(msg.data)
            else:  # legacy Deepgram clients close a stream with an empty frame
                runner.client_text('{"type":"CloseStream"}')
        elif msg.type == WSMsgType.TEXT:
            runner.client_text(msg.data)
        elif msg.type == WSMsgType.ERROR:
            runner.outcome = "client_error"
            break
    if runner.client is not ws:
        return  # a resumed connection took the session over
    if not runner.core.closing:
        runner.client_gone()
        if runner.core.detached:
            return  # resumable: the session waits for the client without this handler
    try:
        await asyncio.wait_for(runner.finished.wait(), gw.cfg.session.close_timeout_s + 5.0)
    except TimeoutError:
        runner.outcome = "timeout"
        runner._finish()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    checks = {"draining": gw.draining, "upstream_healthy": gw.pool.any_healthy()}
    from ..jobs.routes import redis_ready  # None until the job queue is in use

    redis_ok = await redis_ready(request.app)
    if redis_ok is not None:
        checks["redis"] = redis_ok
    ready = not gw.draining and checks["upstream_healthy"] and redis_ok is not False
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics_route(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.Response(body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(gw: Gateway) -> web.Application:
    app = web.Application(client_max_size=gw.cfg.limits.max_upload_bytes, middlewares=[edge_middleware])
    app[GATEWAY] = gw
    app.router.add_get("/v1/listen", listen_ws)
    app.router.add_post("/v1/auth/grant", grant_route)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if gw.cfg.metrics.enabled:
        app.router.add_get("/metrics", metrics_route)
    from .page import add_page_routes  # these modules import this one
    from .twilio import add_twilio_routes

    add_page_routes(app)
    add_twilio_routes(app)
    from ..jobs.routes import setup_routes  # files and jobs: POST /v1/listen, /v1/transcribe, /v1/jobs

    setup_routes(app, gw)
    return app
