"""HTTP routes for files: ``POST /v1/listen``, ``POST /v1/transcribe``, ``GET/DELETE /v1/jobs/{id}``.

Routing of one request:

- bad input (unknown parameter, not audio, truncated WAV, private URL, too large) is refused with a
  Deepgram-shaped 4xx before anything is stored or enqueued;
- ``callback=URL``: enqueued, answered at once with ``{"request_id"}``, result delivered later;
- sync (``/v1/listen``, ``mode=sync``, and ``mode=auto`` up to ``async_min_seconds``): audio up to
  ``sync_max_seconds`` is sent straight to an upstream; longer audio is enqueued and awaited, so
  it survives a worker crash like any job;
- async (``mode=async``, and ``mode=auto`` above ``async_min_seconds``): 202 with the job id.

Redis, the queue and (with ``[queue] serve_worker``) an in-process worker start on first use, or
at ``serve`` start through :func:`start_jobs`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import MultiMapping

from ..deepgram.headers import header_value
from ..deepgram.params import PRERECORDED_PARAMS, check_query
from ..edge.errors import deepgram_error
from ..edge.health import COLLECTORS, READINESS
from ..edge.middleware import REQUEST_ID, principal_of, request_authorized
from ..gateway.state import GATEWAY, Gateway
from ..outbound.fetch import FetchError, UrlPolicy, check_url, fetch, safe_session, validate_url
from ..redisconn import CLIENT_ERRORS, answers
from ..upstream.prerecorded import UpstreamRejected, UpstreamUnavailable, recognize
from .audio import BadAudio, probe
from .metrics import WorkerMetrics
from .queue import JobQueue, connect_redis, is_job_id
from .redis_embedded import EmbeddedRedis
from .worker import JobWorker

log = logging.getLogger("streamproxy.jobs")

__all__ = ["JOBS", "JobsService", "setup_routes", "start_jobs"]

MODES = ("auto", "sync", "async")
_LISTEN_PARAMS = PRERECORDED_PARAMS | {"callback", "callback_method"}
_TRANSCRIBE_PARAMS = _LISTEN_PARAMS | {"mode"}
_LOCAL = frozenset({"callback", "callback_method", "mode"})  # ours, never forwarded upstream
Params = dict[str, str | list[str]]


class JobsService:
    """Per-process state of the file routes; Redis is connected on first use."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.cfg = gw.cfg
        self.q = gw.cfg.queue
        self.policy = UrlPolicy.from_allow(self.q.url_allow)
        self.jq: JobQueue | None = None
        self.embedded: EmbeddedRedis | None = None
        self.worker: JobWorker | None = None
        self.redis_url = ""
        self._lock = asyncio.Lock()

    async def ensure(self, *, start_worker: bool) -> JobQueue:
        async with self._lock:
            if self.jq is None:
                self.redis_url, self.embedded = await connect_redis(self.cfg, embedded_fallback=True)
                self.jq = JobQueue(self.redis_url, self.q)
                self.http = aiohttp.ClientSession(trust_env=False)
                self.fetcher = safe_session(self.policy, self.q.fetch_timeout_s)
            if start_worker and self.worker is None:
                # Counts into the gateway's registry: one /metrics for the gateway and its worker.
                metrics = WorkerMetrics(self.gw.metrics.registry)
                self.worker = JobWorker(
                    self.cfg, self.redis_url, self.gw.pool, metrics=metrics, tracer=self.gw.tracer,
                    transcripts=self.gw.transcripts,
                )  # fmt: skip
                await self.worker.start()
            return self.jq

    async def redis_ready(self) -> bool | None:
        """For /readyz: is the job queue's Redis answering? None when the queue is not started."""
        if self.jq is None:
            return None
        return await answers(self.jq.raw, 1.0)

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.close(self.cfg.session.drain_timeout_s)
            self.worker = None
        if self.jq is not None:
            await self.http.close()
            await self.fetcher.close()
            await self.jq.close()
            self.jq = None
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None

    async def collect_depth(self) -> None:
        """The queue's depth, read when /metrics is scraped (nothing to read before the queue starts)."""
        if self.jq is not None:
            self.gw.metrics.queue_depth.set(await self.jq.depth())


JOBS = web.AppKey("streamproxy_jobs", JobsService)


def setup_routes(app: web.Application, gw: Gateway) -> None:
    svc = JobsService(gw)
    app[JOBS] = svc
    app.router.add_post("/v1/listen", listen_post)
    app.router.add_post("/v1/transcribe", transcribe_post)
    app.router.add_get("/v1/jobs/{id}", job_get)
    app.router.add_delete("/v1/jobs/{id}", job_delete)

    app[READINESS]["redis"] = svc.redis_ready
    app[COLLECTORS]["queue_depth"] = svc.collect_depth

    async def on_cleanup(app: web.Application) -> None:
        await svc.close()

    app.on_cleanup.append(on_cleanup)


async def start_jobs(app: web.Application) -> None:
    """Eager start for ``serve``: connect (or spawn) Redis and start the in-process worker now."""
    svc = app[JOBS]
    await svc.ensure(start_worker=svc.q.serve_worker)


# ---------------------------------------------------------------------- helpers


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _params(query: MultiMapping[str], allowed: frozenset[str]) -> Params:
    try:
        check_query(query, allowed, bools=())
    except ValueError as e:
        raise _Refused(400, str(e)) from None
    out: Params = {}
    for k in query:
        if k in _LOCAL or k in out:
            continue
        vals = query.getall(k)
        out[k] = vals[0] if len(vals) == 1 else list(vals)
    return out


def _owner(request: web.Request) -> str:
    """Jobs submitted with a key are visible only with the same key; anonymous ones to anyone."""
    p = principal_of(request)
    return p.id if p is not None and p.kind != "anonymous" else ""


def _flat(p: Params) -> dict[str, str]:
    return {k: v if isinstance(v, str) else v[-1] for k, v in p.items()}


async def _read(request: web.Request, limit: int) -> tuple[bytes | None, str | None]:
    """(audio, None) for a raw body, (None, url) for JSON ``{"url": ...}``."""
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(413, f"upload of {request.content_length} bytes exceeds limits.max_upload_bytes ({limit})")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Refused(413, f"upload exceeds limits.max_upload_bytes ({limit})") from None
    if request.content_type == "application/json":
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Refused(400, 'invalid JSON body: expected {"url": "https://..."}') from None
        url = doc.get("url") if isinstance(doc, dict) else None
        if not isinstance(url, str) or not url:
            raise _Refused(400, 'JSON body must be {"url": "https://..."}')
        return None, url
    return body, None


def _accepted(job_id: str, mode: str, duration: float | None) -> web.Response:
    body = {
        "request_id": job_id,
        "job_id": job_id,
        "status": "queued",
        "mode": mode,
        "duration_s": None if duration is None else round(duration, 3),
        "status_url": f"/v1/jobs/{job_id}",
    }
    return web.Response(
        status=202,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Location": f"/v1/jobs/{job_id}", "dg-request-id": job_id},
    )


def _result(result: Any, *, mode: str, job_id: str = "") -> web.Response:
    rid = ""
    if isinstance(result, dict) and isinstance(result.get("metadata"), dict):
        rid = str(result["metadata"].get("request_id", ""))
    headers = {"dg-request-id": header_value(rid or job_id, 200), "X-Streamproxy-Mode": mode}  # rid: upstream's
    if job_id:
        headers["X-Streamproxy-Job-Id"] = job_id
    return web.Response(body=orjson.dumps(result), content_type="application/json", headers=headers)


# ---------------------------------------------------------------------- POST routes


async def listen_post(request: web.Request) -> web.Response:
    """Deepgram prerecorded: synchronous result, or ``{"request_id"}`` with ``callback``."""
    return await _submit(request, route="listen")


async def transcribe_post(request: web.Request) -> web.Response:
    """The hybrid router: ``mode=auto|sync|async``."""
    return await _submit(request, route="transcribe")


async def _submit(request: web.Request, *, route: str) -> web.Response:
    gw = request.app[GATEWAY]
    svc = request.app[JOBS]
    q = svc.q
    rid = request.get(REQUEST_ID) or str(uuid.uuid4())
    owner = _owner(request)
    if not request_authorized(gw, request):
        return deepgram_error(401, "Invalid credentials.", request_id=rid)
    if gw.draining:
        return deepgram_error(503, "Server is draining; send the request to another instance.", request_id=rid)
    try:
        params = _params(request.query, _TRANSCRIBE_PARAMS if route == "transcribe" else _LISTEN_PARAMS)
        mode = request.query.get("mode", "auto").lower() if route == "transcribe" else "sync"
        if mode not in MODES:
            raise _Refused(400, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        callback = request.query.get("callback") or None
        method = request.query.get("callback_method", "POST").upper()
        if method not in ("POST", "PUT"):
            raise _Refused(400, f"callback_method must be POST or PUT, got {method!r}")
        if callback:
            await validate_url(callback, svc.policy)
        audio, url = await _read(request, gw.cfg.limits.max_upload_bytes)
        if url is not None:
            check_url(url, svc.policy)
            await validate_url(url, svc.policy)
        jq = await svc.ensure(start_worker=q.serve_worker)
        if url is not None and (callback or mode == "async"):
            # Answered at once: the worker fetches (re-checking every hop against the policy).
            job_id = await jq.submit(
                params=params, mode="callback" if callback else "async", url=url, callback=callback,
                callback_method=method, owner=owner,
            )  # fmt: skip
            return _queued(gw, route, job_id, callback, None)
        ctype = request.content_type
        if url is not None:
            audio, ctype = await fetch(
                url,
                svc.policy,
                max_bytes=q.max_fetch_bytes,
                timeout_s=q.fetch_timeout_s,
                max_redirects=q.max_redirects,
                session=svc.fetcher,
            )
        assert audio is not None
        try:
            info = probe(audio, _flat(params))
        except BadAudio as exc:
            raise _Refused(400, str(exc)) from None
        duration = info.duration_s
        if callback or mode == "async" or (mode == "auto" and duration > q.async_min_seconds):
            job_id = await jq.submit(
                params=params, mode="callback" if callback else "async", audio=audio, callback=callback,
                callback_method=method, duration_s=duration, owner=owner,
            )  # fmt: skip
            return _queued(gw, route, job_id, callback, duration)
        if duration <= q.sync_max_seconds:
            return await _sync_direct(gw, svc, audio, params, info.content_type or ctype, rid, owner)
        return await _sync_queued(gw, jq, audio, params, duration, owner)
    except _Refused as exc:
        return deepgram_error(exc.status, str(exc), request_id=rid)
    except FetchError as exc:
        return deepgram_error(exc.status, str(exc), request_id=rid)
    except (*CLIENT_ERRORS, ConnectionError) as exc:
        log.warning("queue unavailable: %s", exc, exc_info=True, extra={"event": "queue_unavailable"})
        return deepgram_error(503, "job queue unavailable; retry later", request_id=rid)


def _queued(gw: Gateway, route: str, job_id: str, callback: str | None, duration: float | None) -> web.Response:
    mode = "callback" if callback else "async"
    gw.metrics.jobs.labels(mode, "submitted").inc()
    log.info("job queued", extra={"event": "job_queued", "job": job_id, "mode": mode, "duration_s": duration})
    if route == "listen":  # Deepgram's answer to a callback request
        return web.Response(
            body=orjson.dumps({"request_id": job_id}), content_type="application/json",
            headers={"dg-request-id": job_id},
        )  # fmt: skip
    return _accepted(job_id, mode, duration)


async def _sync_direct(
    gw: Gateway, svc: JobsService, audio: bytes, params: Params, ctype: str, rid: str, owner: str
) -> web.Response:
    started = time.monotonic()
    try:
        result = await recognize(
            svc.http, gw.pool, audio, params, content_type=ctype, timeout_s=svc.q.transcribe_timeout_s
        )
    except UpstreamRejected as exc:
        gw.metrics.jobs.labels("sync", "rejected").inc()
        return web.Response(
            status=exc.status, body=exc.body, content_type="application/json",
            headers={"dg-request-id": rid, "dg-error": header_value(str(exc))},
        )  # fmt: skip
    except UpstreamUnavailable as exc:
        gw.metrics.jobs.labels("sync", "failed").inc()
        return deepgram_error(503, str(exc), request_id=rid)
    gw.metrics.jobs.labels("sync", "completed").inc()
    gw.metrics.job_duration.labels("sync").observe(time.monotonic() - started)
    if gw.transcripts is not None:  # under the id the client sees in dg-request-id
        meta = result.get("metadata") if isinstance(result, dict) else None
        seen = str(meta.get("request_id") or "") if isinstance(meta, dict) else ""
        gw.transcripts.job_result(seen or rid, owner=owner, source="sync", params=dict(params), result=result)
    return _result(result, mode="sync")


async def _sync_queued(
    gw: Gateway, jq: JobQueue, audio: bytes, params: Params, duration: float, owner: str
) -> web.Response:
    """Long audio on a synchronous route: through the queue (durable), awaited here."""
    started = time.monotonic()
    job_id = await jq.submit(params=params, mode="sync", audio=audio, duration_s=duration, owner=owner)
    gw.metrics.jobs.labels("queued", "submitted").inc()
    q = gw.cfg.queue
    budget = q.transcribe_timeout_s * q.attempts + q.backoff_s * (2**q.attempts) + 60
    st = await jq.wait(job_id, budget)
    if st is None:
        return deepgram_error(502, f"job {job_id} vanished from the queue", request_id=job_id)
    if st["state"] == "completed":
        gw.metrics.jobs.labels("queued", "completed").inc()
        gw.metrics.job_duration.labels("queued").observe(time.monotonic() - started)
        return _result(st["result"], mode="queued", job_id=job_id)
    if st["state"] in ("failed", "cancelled"):
        refused = st.get("error_status")
        if isinstance(refused, int) and 400 <= refused < 500:  # the request's fault, as on the direct path
            gw.metrics.jobs.labels("queued", "rejected").inc()
            return deepgram_error(refused, str(st.get("error")), request_id=job_id)
        gw.metrics.jobs.labels("queued", "failed").inc()
        msg = f"transcription failed after {st.get('attempts')} attempt(s): {st.get('error')}"
        return deepgram_error(502, msg, request_id=job_id)
    return deepgram_error(504, f"job {job_id} not finished in time; poll /v1/jobs/{job_id}", request_id=job_id)


# ---------------------------------------------------------------------- job status


async def job_get(request: web.Request) -> web.Response:
    return await _job(request, delete=False)


async def job_delete(request: web.Request) -> web.Response:
    return await _job(request, delete=True)


async def _job(request: web.Request, *, delete: bool) -> web.Response:
    gw = request.app[GATEWAY]
    svc = request.app[JOBS]
    job_id = request.match_info["id"]
    if not request_authorized(gw, request):
        return deepgram_error(401, "Invalid credentials.", request_id=job_id)
    if not is_job_id(job_id):  # e.g. "meta", "events": BullMQ's own keys, never a job
        return deepgram_error(404, f"unknown job id {job_id[:64]!r}", request_id="")
    try:
        jq = await svc.ensure(start_worker=svc.q.serve_worker)
        out = await (jq.cancel(job_id, owner=_owner(request)) if delete else jq.status(job_id, owner=_owner(request)))
    except (*CLIENT_ERRORS, ConnectionError) as exc:
        log.warning("queue unavailable: %s", exc, exc_info=True, extra={"event": "queue_unavailable"})
        return deepgram_error(503, "job queue unavailable; retry later", request_id=job_id)
    if out is None:
        return deepgram_error(404, f"unknown job id {job_id!r}", request_id=job_id)
    status = 200
    if delete and out.get("state") == "cancelling":
        status = 202
    elif delete and out.get("state") not in ("cancelled", "deleted"):
        # Refused, never pretended: the job ended (or is held) otherwise; the body says how.
        return deepgram_error(409, str(out.get("error") or f"job is {out.get('state')}"), request_id=job_id)
    return web.Response(status=status, body=orjson.dumps(out), content_type="application/json")
