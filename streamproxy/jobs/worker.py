"""Job processing: BullMQ workers for the ``transcribe`` and ``webhooks`` queues.

Runs inside ``streamproxy worker`` processes and, unless ``[queue] serve_worker = false``, inside
``streamproxy serve``. A job's recognition runs in the upstream (the engine process or Deepgram),
never on this event loop. Crash safety is BullMQ's: a job's lock is renewed while it runs; when a
worker dies (SIGKILL, power loss) the lock expires after ``lock_duration_s`` and another worker's
stalled-job check (every ``stalled_interval_s``) puts the job back in the queue, up to
``max_stalled_count`` times, without counting it as a failed attempt. The transcribe queue's worker
completes a job and fetches the next in one script (``bullworker.FetchNextWorker``).

Cancelling a running job (``DELETE /v1/jobs/{id}``) sets a marker key and publishes the job id on
the ``<prefix>:sp:cancel`` channel; the worker running it cancels its upstream request at once and
fails the job with ``CANCELLED_REASON`` (no retry). The marker is also checked when a job starts
and every ``_CANCEL_POLL_S`` while it runs, in case a notification was missed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import os
import signal
import socket
import time
from typing import Any, NoReturn

import aiohttp
import orjson
from bullmq import Job, UnrecoverableError, Worker

from ..config import Config
from ..loop import run
from ..outbound.fetch import FetchError, TooLarge, UrlPolicy, UrlRefused, fetch, safe_session
from ..outbound.webhooks import deliver, new_secret
from ..redisconn import bullmq_connection, check_server
from ..storage.setup import writer_from_config
from ..storage.writer import TranscriptWriter
from ..tracing import Tracer, tracer_from_config
from ..upstream.metrics import register_upstream_metrics
from ..upstream.pool import UpstreamPool
from ..upstream.prerecorded import UpstreamRejected, recognize
from ..upstream.setup import upstreams_from_config
from .audio import BadAudio, probe
from .bullworker import FetchNextWorker
from .metrics import WorkerMetrics, job_mode, serve_metrics
from .queue import (
    CANCELLED_REASON,
    REJECTED_STATUS,
    TRANSCRIBE_QUEUE,
    WEBHOOK_JOB,
    WEBHOOK_QUEUE,
    JobQueue,
    connect_redis,
)

log = logging.getLogger("streamproxy.jobs")

__all__ = ["JobWorker", "node_client_name", "run_worker"]

_CANCEL_POLL_S = 2.0  # fallback for a missed cancel notification (Redis reconnect)
#: Finished jobs' audio keys are unlinked in the next job's first pipeline, or after this long
#: when no job follows (an idle queue).
_UNLINK_AFTER_S = 0.2


def node_client_name(prefix: str, queue: str, worker_name: str) -> str:
    """The Redis client name Node BullMQ gives a named worker: ``<prefix>:<base64 queue>:w:<name>``.

    ``Queue.getWorkers()`` (and so Bull Board) lists the clients whose name matches it; bullmq for
    Python names its connections ``<prefix>:<queue>:w:<name>`` instead, which Node never finds.
    """
    return f"{prefix}:{base64.b64encode(queue.encode()).decode()}:w:{worker_name}"


class JobWorker:
    """Both queues' workers plus what they share (HTTP sessions, the producer for callbacks)."""

    def __init__(
        self,
        cfg: Config,
        redis_url: str,
        pool: UpstreamPool,
        *,
        concurrency: int | None = None,
        name: str = "",
        metrics: WorkerMetrics | None = None,
        tracer: Tracer | None = None,
        transcripts: TranscriptWriter | None = None,
    ) -> None:
        self.cfg = cfg
        self.transcripts = transcripts  # each completed job's result is stored under its id
        self.tracer = tracer or Tracer()
        self.q = cfg.queue
        self.redis_url = redis_url
        self.pool = pool
        self.concurrency = concurrency or self.q.concurrency
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.policy = UrlPolicy.from_allow(self.q.url_allow)
        self.speed = 20.0  # audio seconds per wall second, learned; drives the progress estimate
        self.jq: JobQueue | None = None
        self.workers: list[Worker] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.secret = self.q.webhook_secret
        self.processed = 0
        self.metrics = metrics or WorkerMetrics()
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}  # job id -> its transcription
        self._cancelled: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._spans: dict[str, Any] = {}  # job id -> its span, while tracing
        self._dead_audio: list[str] = []  # audio keys of completed jobs, to unlink
        self._unlinking: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.jq = JobQueue(self.redis_url, self.q)
        if not self.secret:
            # One random secret per deployment, shared by every worker through Redis.
            key = self.jq.keys.webhook_secret
            await self.jq.raw.set(key, new_secret(), nx=True)
            raw = await self.jq.raw.get(key) or b""
            self.secret = raw.decode() if isinstance(raw, bytes) else raw
        self.http = aiohttp.ClientSession(trust_env=False)
        self.fetcher = safe_session(self.policy, self.q.fetch_timeout_s)
        self.hooks_http = safe_session(self.policy, self.q.callback_timeout_s)
        base: dict[str, Any] = {
            "prefix": self.q.prefix,
            "lockDuration": round(self.q.lock_duration_s * 1000),
            "stalledInterval": round(self.q.stalled_interval_s * 1000),
            "maxStalledCount": self.q.max_stalled_count,
            "runRetryDelay": 1000,
            "name": self.name,
        }
        self._listener = asyncio.create_task(self._listen_cancels())
        conn = bullmq_connection  # a fresh client per Worker: each closes its own
        # Completing a job fetches the next one: one round trip per job on a busy queue.
        w = FetchNextWorker(
            TRANSCRIBE_QUEUE,
            self._traced_process,
            {**base, "connection": conn(self.redis_url, self.q), "concurrency": self.concurrency},
        )
        w.on("completed", self._on_completed)
        w.on("stalled", self._on_stalled)
        w.on("error", lambda err, *a: log.warning("worker error: %s", err, extra={"event": "worker_error"}))
        hooks = Worker(
            WEBHOOK_QUEUE,
            self._traced_webhook,
            {**base, "connection": conn(self.redis_url, self.q), "concurrency": max(4, self.concurrency)},
        )
        hooks.on("failed", self._on_webhook_failed)
        hooks.on("error", lambda err, *a: log.warning("webhook worker error: %s", err, extra={"event": "worker_error"}))
        self.workers = [w, hooks]
        # Visible to Node BullMQ's getWorkers() and Bull Board. Set before the workers' run() task
        # first runs (no await since they were built): that is when they name their connections.
        for worker, queue in ((w, TRANSCRIBE_QUEUE), (hooks, WEBHOOK_QUEUE)):
            worker.clientName = node_client_name(self.q.prefix, queue, self.name)
        log.info(
            "worker started",
            extra={"event": "worker_started", "worker": self.name, "concurrency": self.concurrency},
        )

    async def close(self, timeout: float = 30.0) -> None:
        """Finish active jobs (up to ``timeout``), then force: unfinished jobs go to another worker."""
        if not self.workers:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(w.close() for w in self.workers)), timeout)
        except TimeoutError:
            for w in self.workers:
                with contextlib.suppress(Exception):
                    await w.close(force=True)
        self.workers = []
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5)
        for s in (self.http, self.fetcher, self.hooks_http):
            await s.close()
        if self.jq is not None:
            await self.jq.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _on_stalled(self, job_id: str, *args: Any) -> None:
        self.metrics.stalled.inc()
        log.warning("stalled job moved back to the queue", extra={"event": "job_stalled", "job": job_id})

    def _on_webhook_failed(self, job: Job, err: BaseException, *args: Any) -> None:
        final = isinstance(err, UnrecoverableError) or job.attemptsMade >= int(job.opts.get("attempts") or 1)
        self.metrics.webhooks.labels("failed" if final else "retry").inc()

    def _on_completed(self, job: Job, result: Any) -> None:
        self.processed += 1
        if isinstance(job.data, dict) and job.data.get("audio_key"):
            self._drop_audio(str(job.data["audio_key"]))

    def _drop_audio(self, key: str) -> None:
        """Delete a finished job's audio without a round trip of its own.

        The keys ride on the next job's first pipeline (see ``_process``); only on a queue that
        went idle does a flush ``_UNLINK_AFTER_S`` later send them. Safe to defer: the job is
        already completed, and a key left behind by a crash expires.
        """
        self._dead_audio.append(key)
        if self._unlinking is None or self._unlinking.done():
            self._unlinking = self._spawn(self._unlink_audio())

    async def _unlink_audio(self) -> None:
        await asyncio.sleep(_UNLINK_AFTER_S)
        while self._dead_audio and self.jq is not None:
            keys, self._dead_audio = self._dead_audio, []
            with contextlib.suppress(Exception):
                await self.jq.raw.unlink(*keys)

    # ------------------------------------------------------------------ transcription

    async def _traced_process(self, job: Job, token: str) -> dict[str, Any]:
        if not self.tracer.enabled:
            return await self._process(job, token)
        job_id = str(job.id)
        with self.tracer.span("job", job_id=job_id, mode=job_mode(job.data), attempt=job.attemptsMade + 1) as span:
            self._spans[job_id] = span  # the parent of its upstream request and of its callback
            try:
                return await self._process(job, token)
            finally:
                self._spans.pop(job_id, None)

    async def _traced_webhook(self, job: Job, token: str) -> dict[str, Any]:
        d = job.data if isinstance(job.data, dict) else {}
        parent = self.tracer.remote_parent(d.get("trace"))
        rid = str(d.get("request_id", job.id))
        with self.tracer.span("webhook", parent, job_id=rid, event=str(d.get("event", ""))):
            return await self._webhook(job, token)

    async def _process(self, job: Job, token: str) -> dict[str, Any]:
        assert self.jq is not None
        job_id = str(job.id)
        mode = job_mode(job.data)
        started = time.monotonic()
        cancel_key = self.jq.keys.cancel(job_id)
        data = job.data if isinstance(job.data, dict) else {}
        # One round trip for the cancel marker, the stored audio (the common case), the job's log
        # line (what bullmq's Job.log does, RPUSH on BullMQ's logs key, without a trip of its own)
        # and the audio of jobs finished since the last one.
        pipe = self.jq.raw.pipeline(transaction=False)
        pipe.exists(cancel_key)
        logs = f"{self.jq.transcribe.keys['']}{job_id}:logs"
        pipe.rpush(logs, f"attempt {job.attemptsMade + 1} by worker {self.name} at {time.time():.3f}")
        keep = job.opts.get("keepLogs")
        if isinstance(keep, int) and keep > 0:
            pipe.ltrim(logs, -keep, -1)
        dead, self._dead_audio = self._dead_audio, []
        if dead:
            pipe.unlink(*dead)
        if data.get("audio_key"):
            pipe.get(str(data["audio_key"]))
        try:
            marker, *rest = await pipe.execute()
        except BaseException:
            self._dead_audio.extend(dead)  # not unlinked: the next pipeline or flush tries again
            raise
        audio = rest[-1:] if data.get("audio_key") else []
        if marker:
            exc = UnrecoverableError(CANCELLED_REASON)
            await self._after_failure(job, exc, mode, started)
            raise exc
        state: dict[str, Any] = {"stage": "loading", "since": time.monotonic(), "expected": 1.0}
        if audio:
            state["audio"] = audio[0]
        work = asyncio.ensure_future(self._transcribe(job, state))
        self._running[job_id] = work
        self.metrics.active.inc()
        try:
            last_progress = last_poll = time.monotonic()
            while True:
                done, _ = await asyncio.wait({work}, timeout=0.5)
                if job_id in self._cancelled:
                    raise UnrecoverableError(CANCELLED_REASON)
                if done:
                    result: dict[str, Any] = work.result()
                    self._finished(job, mode, "completed", started)
                    if self.transcripts is not None:
                        self.transcripts.job_result(
                            job_id, owner=str(data.get("owner") or ""), source=mode, params=data.get("params") or {},
                            result=result, created_at=(job.timestamp or 0) / 1000 or None,
                        )  # fmt: skip
                    return result
                now = time.monotonic()
                if now - last_poll >= _CANCEL_POLL_S:
                    last_poll = now
                    if await self.jq.raw.exists(cancel_key):
                        raise UnrecoverableError(CANCELLED_REASON)
                if state["stage"] == "recognizing" and now - last_progress >= 1.0:
                    last_progress = now
                    frac = 1 - math.exp(-(now - state["since"]) / state["expected"])
                    await job.updateProgress(int(20 + 75 * frac))
        except BaseException as exc:
            work.cancel()  # aborts the upstream request (its HTTP connection is closed)
            if job_id in self._cancelled and not isinstance(exc, asyncio.CancelledError):
                exc = UnrecoverableError(CANCELLED_REASON)
            await self._after_failure(job, exc, mode, started)
            raise exc from None
        finally:
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)
            self.metrics.active.dec()

    def _finished(self, job: Job, mode: str, status: str, started: float) -> None:
        m = self.metrics
        m.jobs.labels(mode, status).inc()
        m.duration.labels(mode, status).observe(time.monotonic() - started)
        m.attempts.labels(mode).observe(job.attemptsMade + 1)

    async def _listen_cancels(self) -> None:
        """Abort running jobs named on the cancel channel; resubscribes after a Redis outage."""
        assert self.jq is not None
        channel = self.jq.keys.cancel_channel
        while True:
            pubsub = self.jq.raw.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                async for msg in pubsub.listen():
                    raw = msg.get("data")
                    job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                    work = self._running.get(job_id)
                    if work is not None and not work.done():
                        self._cancelled.add(job_id)
                        work.cancel()
                        log.info("job cancelled while running", extra={"event": "job_cancel", "job": job_id})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel channel lost: %s", exc, extra={"event": "cancel_channel_error"})
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _after_failure(self, job: Job, exc: BaseException, mode: str, started: float) -> None:
        """Count the attempt; on a job's last attempt, drop its audio and tell its callback."""
        assert self.jq is not None
        if isinstance(exc, asyncio.CancelledError):
            return  # the worker is being force-closed: the job will run again elsewhere
        cancelled = str(exc) == CANCELLED_REASON
        final = isinstance(exc, UnrecoverableError) or job.attemptsMade + 1 >= int(job.opts.get("attempts") or 1)
        if not final:
            self.metrics.retries.labels(mode).inc()
            log.info(
                "job attempt failed, will retry",
                extra={"event": "job_retry", "job": job.id, "attempt": job.attemptsMade + 1, "error": str(exc)},
            )
            return
        self._finished(job, mode, "cancelled" if cancelled else "failed", started)
        data = job.data if isinstance(job.data, dict) else {}
        if cancelled:
            log.info("job cancelled", extra={"event": "job_cancelled", "job": job.id})
        else:
            log.warning("job failed", extra={"event": "job_failed", "job": job.id, "error": str(exc)})
        if data.get("audio_key"):
            with contextlib.suppress(Exception):
                await self.jq.raw.delete(data["audio_key"])
        if data.get("callback") and not cancelled:
            payload = {
                "request_id": job.id,
                "err_code": "TRANSCRIPTION_FAILED",
                "err_msg": str(exc),
                "attempts": job.attemptsMade + 1,
            }
            await self._enqueue_webhook(job, "transcription.failed", payload)

    async def _refuse(self, job: Job, status: int, reason: str) -> NoReturn:
        """Fail the job for good because of its input: ``rejected_status`` (a 4xx) in its data tells
        a client awaiting it (the queued sync path) that the request, not an upstream, was at fault."""
        data = job.data if isinstance(job.data, dict) else {}
        with contextlib.suppress(Exception):
            await job.updateData({**data, REJECTED_STATUS: status})
        raise UnrecoverableError(reason)

    async def _load(self, job: Job, data: dict[str, Any], preloaded: Any = None) -> bytes:
        assert self.jq is not None
        if data.get("audio_key"):
            audio = preloaded if preloaded is not None else await self.jq.raw.get(data["audio_key"])
            if audio is None:
                raise UnrecoverableError(f"the job's audio is gone (key {data['audio_key']} expired or was deleted)")
            return audio if isinstance(audio, bytes) else audio.encode()
        if data.get("audio_b64"):
            try:
                return base64.b64decode(data["audio_b64"], validate=True)
            except (binascii.Error, ValueError):
                raise UnrecoverableError("audio_b64 is not valid base64") from None
        if data.get("url"):
            try:
                body, _ = await fetch(
                    str(data["url"]),
                    self.policy,
                    max_bytes=self.q.max_fetch_bytes,
                    timeout_s=self.q.fetch_timeout_s,
                    max_redirects=self.q.max_redirects,
                    session=self.fetcher,
                )
            except (UrlRefused, TooLarge) as exc:
                await self._refuse(job, exc.status, str(exc))
            except FetchError as exc:
                raise RuntimeError(str(exc)) from None
            return body
        raise UnrecoverableError("job data has no audio: expected audio_key, audio_b64 or url")

    async def _transcribe(self, job: Job, state: dict[str, Any]) -> dict[str, Any]:
        data = job.data if isinstance(job.data, dict) else {}
        raw_params: dict[str, Any] = data.get("params") or {}
        params: dict[str, str | list[str]] = {
            str(k): [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in raw_params.items()
        }
        audio = await self._load(job, data, state.pop("audio", None))
        try:
            info = probe(audio, {k: v if isinstance(v, str) else v[-1] for k, v in params.items()})
        except BadAudio as exc:
            await self._refuse(job, 400, f"bad audio: {exc}")
        expected = info.duration_s / self.speed
        if expected > 1.0:  # short jobs: no progress writes (completion means 100)
            await job.updateProgress(20)
        state.update(stage="recognizing", since=time.monotonic(), expected=max(0.5, expected))
        started = time.monotonic()
        span = self.tracer.start("upstream.prerecorded", self._spans.get(str(job.id)), bytes=len(audio))
        try:
            result = await recognize(
                self.http,
                self.pool,
                audio,
                params,
                content_type=info.content_type,
                timeout_s=self.q.transcribe_timeout_s,
            )
        except UpstreamRejected as exc:
            self.tracer.end(span, error=str(exc), attributes={"status": exc.status})
            await self._refuse(job, exc.status, str(exc))
        except BaseException as exc:
            self.tracer.end(span, error=f"{type(exc).__name__}: {exc}")
            raise
        self.tracer.end(span, attributes={"audio_s": round(info.duration_s, 3)})
        took = max(time.monotonic() - started, 1e-3)
        self.speed = 0.8 * self.speed + 0.2 * max(info.duration_s / took, 0.1)
        meta = result.get("metadata")
        if isinstance(meta, dict):
            meta["request_id"] = str(job.id)
        if data.get("callback"):
            await self._enqueue_webhook(job, "transcription.completed", result)
        return result

    # ------------------------------------------------------------------ callbacks

    async def _enqueue_webhook(self, job: Job, event: str, payload: dict[str, Any]) -> None:
        """At most one delivery job per transcription job: its id is derived from the job's id."""
        assert self.jq is not None
        data = job.data if isinstance(job.data, dict) else {}
        hook = {
            "url": data["callback"],
            "method": str(data.get("callback_method") or "POST").upper(),
            "event": event,
            "request_id": str(job.id),
            "body": orjson.dumps(payload).decode(),
        }
        trace = self.tracer.carrier(self._spans.get(str(job.id)))
        if trace:
            hook["trace"] = trace  # its delivery's span is a child of this job's
        opts = {
            "jobId": f"{job.id}-cb",
            "attempts": self.q.callback_attempts,
            "backoff": {"type": "exponential", "delay": round(self.q.callback_backoff_s * 1000)},
            "removeOnComplete": {"age": self.q.result_ttl_s},
            "removeOnFail": {"age": self.q.result_ttl_s},
        }
        await self.jq.webhooks.add(WEBHOOK_JOB, hook, opts)

    async def _webhook(self, job: Job, token: str) -> dict[str, Any]:
        assert self.jq is not None
        d = job.data if isinstance(job.data, dict) else {}
        done_key = self.jq.keys.delivered(str(d.get("request_id", job.id)))
        if await self.jq.raw.exists(done_key):
            # A worker died after the receiver's 2xx but before the job was marked complete.
            return {"status": "already delivered"}
        status = await deliver(
            self.hooks_http,
            self.policy,
            str(d["url"]),
            str(d["body"]).encode(),
            secret=self.secret,
            delivery_id=str(d.get("request_id", job.id)),
            event=str(d.get("event", "")),
            method=str(d.get("method", "POST")),
        )
        await self.jq.raw.set(done_key, str(status), ex=self.q.result_ttl_s)
        self.metrics.webhooks.labels("delivered").inc()
        log.info("callback delivered", extra={"event": "callback_delivered", "job": d.get("request_id")})
        return {"status": status, "delivered_at": time.time()}


# ---------------------------------------------------------------------- `streamproxy worker`


async def worker_main(
    cfg: Config, concurrency: int | None = None, *, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
) -> None:
    await check_server(cfg)  # queue.redis_cluster vs the server: a mismatch fails at start
    url, embedded = await connect_redis(cfg, embedded_fallback=False)
    pool, supervisor = await upstreams_from_config(cfg, base_port=0)  # beside a serve on one host
    metrics = WorkerMetrics()
    register_upstream_metrics(metrics.registry, pool)
    tracer = tracer_from_config(cfg.tracing.otlp_endpoint, "streamproxy-worker")
    transcripts = writer_from_config(cfg, metrics.registry)
    if transcripts is not None:
        await transcripts.start()
    jw = JobWorker(cfg, url, pool, concurrency=concurrency, metrics=metrics, tracer=tracer, transcripts=transcripts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http: Any = None
    try:
        if metrics_port is not None:
            http, bound = await serve_metrics(metrics.registry, metrics_host, metrics_port)
            log.info(
                "worker metrics listening",
                extra={"event": "worker_metrics", "host": metrics_host, "port": bound},
            )
        await jw.start()
        await stop.wait()
        log.info("worker stopping", extra={"event": "worker_stopping"})
    finally:
        await jw.close(cfg.session.drain_timeout_s)
        if transcripts is not None:
            await transcripts.close()
        tracer.shutdown()
        if http is not None:
            await http.cleanup()
        if supervisor is not None:
            await supervisor.stop()
        if embedded is not None:
            await embedded.stop()
    log.info("worker stopped", extra={"event": "worker_stopped", "processed": jw.processed})


def run_worker(
    cfg: Config, concurrency: int | None = None, *, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
) -> None:
    run(worker_main(cfg, concurrency, metrics_port=metrics_port, metrics_host=metrics_host))
