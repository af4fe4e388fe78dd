"""The job queue: BullMQ on Redis, the producer side (submit, status, cancel, wait).

Job schema (stable; any BullMQ producer - Python, Node, Bull Board - can enqueue jobs):

- queue ``transcribe`` under the key prefix ``[queue] prefix`` (default ``{streamproxy}``: the
  braces are a Redis Cluster hash tag, so all of a queue's keys live in one slot);
- job name ``transcribe``; job id: a lowercase UUID (which is also the Deepgram ``request_id`` of
  the result). ``/v1/jobs/{id}`` looks up only such ids: any other string could name one of
  BullMQ's own keys under the prefix (``meta``, ``events``, ``id`` ...), so jobs of other
  producers are visible there only with UUID ids;
- ``data`` (JSON), exactly one audio source:
    - ``audio_key``: a Redis key holding the raw file bytes (streamproxy stores uploads at
      ``<prefix>:sp:audio:<job id>`` with a TTL and deletes the key when the job finishes), or
    - ``audio_b64``: the file, base64 (for small files from foreign producers), or
    - ``url``: an http(s) URL the worker fetches (SSRF policy and limits of ``[queue]`` apply);
  optional: ``params`` (object of Deepgram query parameters, strings, e.g. ``{"model": "nova-3",
  "encoding": "linear16", "sample_rate": "16000"}``), ``callback`` (URL that receives the result),
  ``callback_method`` (``POST``/``PUT``), ``mode`` and ``duration_s`` (informational);
- options as streamproxy sets them: ``attempts`` (``[queue] attempts``), ``backoff`` ``{"type":
  "exponential", "delay": backoff_s * 1000}``, ``removeOnComplete``/``removeOnFail``
  ``{"age": result_ttl_s}``;
- ``returnvalue``: the Deepgram prerecorded response (``metadata.request_id`` = the job id);
  ``progress``: 0-100; ``failedReason``: a sentence saying what failed; when the job's input was
  at fault (an upstream's 4xx, not audio, a refused URL), ``data.rejected_status`` holds that 4xx.

Callbacks are jobs of their own (queue ``webhooks``, job name ``webhook``, job id ``<job id>:cb``
so a re-run job cannot enqueue a second delivery); with tracing on, their ``trace`` field holds the
enqueuing job's W3C ``traceparent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from bullmq import Job, Queue, QueueEvents
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from ..config import Config, QueueConfig, resolve_data_dir
from ..redisconn import bullmq_client, bullmq_connection, connect, ping
from .redis_embedded import EmbeddedRedis

log = logging.getLogger("streamproxy.jobs")

__all__ = [
    "JOB_NAME",
    "REJECTED_STATUS",
    "TRANSCRIBE_QUEUE",
    "WEBHOOK_JOB",
    "WEBHOOK_QUEUE",
    "JobQueue",
    "Keys",
    "bullmq_connection",
    "connect_redis",
    "is_job_id",
    "job_options",
]

TRANSCRIBE_QUEUE = "transcribe"
JOB_NAME = "transcribe"
WEBHOOK_QUEUE = "webhooks"
WEBHOOK_JOB = "webhook"
CANCELLED_REASON = "cancelled by the client"
#: Job data field set by the worker when the job's input was refused (the HTTP status, a 4xx).
REJECTED_STATUS = "rejected_status"
FINISHED = ("completed", "failed")
#: States of :meth:`JobQueue.status` in which a job may still finish (anything else ends a wait).
_PENDING = frozenset({"waiting", "active", "delayed", "prioritized", "waiting-children", "cancelling"})


#: BullMQ's getState: (key, command, state); the first key holding the job id names its state.
_STATE_CHECKS = (
    ("completed", "ZSCORE", "completed"),
    ("failed", "ZSCORE", "failed"),
    ("delayed", "ZSCORE", "delayed"),
    ("prioritized", "ZSCORE", "prioritized"),
    ("active", "LPOS", "active"),
    ("wait", "LPOS", "waiting"),
    ("paused", "LPOS", "waiting"),
    ("waiting-children", "ZSCORE", "waiting-children"),
)

#: A job's state (BullMQ's getState: the checks above, in order, up to the first hit), hash, log
#: and cancel marker, atomically. KEYS: job hash, the eight state keys, logs, marker; ARGV: job id,
#: then per state key "Z" (ZSCORE) or "L" (LPOS) and its state name.
_READ_JOB = """
local state = 'unknown'
for i = 2, 9 do
  local hit
  if ARGV[i] == 'Z' then
    hit = redis.call('ZSCORE', KEYS[i], ARGV[1])
  else
    hit = redis.call('LPOS', KEYS[i], ARGV[1])
  end
  if hit then
    state = ARGV[i + 8]
    break
  end
end
return {state, redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[10], 0, -1), redis.call('GET', KEYS[11])}
"""
_READ_ARGS = [c[0] for _, c, _ in _STATE_CHECKS] + [state for _, _, state in _STATE_CHECKS]

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_job_id(value: str) -> bool:
    """An id of the form :meth:`JobQueue.submit` issues (checked before any Redis key is built)."""
    return _JOB_ID.fullmatch(value) is not None


async def connect_redis(cfg: Config, *, embedded_fallback: bool) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, spawning the embedded server when none is configured (or reachable).

    ``embedded_fallback`` False (workers), or a cluster (an embedded Redis is none): a configured but
    unreachable Redis is waited for, since a worker on a private Redis would never see the gateway's
    jobs.
    """
    url = cfg.queue.redis_url
    if url:
        if await ping(url, 2.0):
            return url, None
        if not embedded_fallback or cfg.queue.redis_cluster:
            log.warning("redis unreachable, waiting", extra={"event": "redis_wait"})
            while not await ping(url, 2.0):
                await asyncio.sleep(1.0)
            return url, None
        log.warning(
            "configured redis is unreachable at start: using an embedded redis-server instead; jobs will "
            "not be shared with other instances",
            extra={"event": "redis_fallback_embedded"},
        )
    emb = EmbeddedRedis(resolve_data_dir(cfg.server))
    return await emb.start(), emb


def job_options(q: QueueConfig, job_id: str) -> dict[str, Any]:
    return {
        "jobId": job_id,
        "attempts": q.attempts,
        "backoff": {"type": "exponential", "delay": round(q.backoff_s * 1000)},
        "removeOnComplete": {"age": q.result_ttl_s},
        "removeOnFail": {"age": q.result_ttl_s},
    }


@dataclass(frozen=True, slots=True)
class Keys:
    """streamproxy's own keys, beside BullMQ's, under the same hash-tagged prefix."""

    prefix: str

    def audio(self, job_id: str) -> str:
        return f"{self.prefix}:sp:audio:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:sp:cancel:{job_id}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel on which the ids of running jobs to abort are published."""
        return f"{self.prefix}:sp:cancel"

    def delivered(self, job_id: str) -> str:
        return f"{self.prefix}:sp:delivered:{job_id}"

    @property
    def webhook_secret(self) -> str:
        return f"{self.prefix}:sp:webhook-secret"


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _json(text: str | None, default: Any) -> Any:
    """A JSON field of a job hash (orjson: the status read parses data and result on every poll)."""
    if text is None:
        return default
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return default


def _ms(v: Any) -> float | None:
    return round(int(v) / 1000, 3) if v else None


class _Finishes:
    """Wakes whoever awaits a job when BullMQ's event stream says a job finished.

    One ``QueueEvents`` (a blocking XREAD on its own connection) per process, running only while
    someone waits. A wake-up only prompts a state read, so an event missed (before the XREAD
    started, across a Redis restart) costs no more than the waiter's fallback poll.
    """

    def __init__(self, url: str, q: QueueConfig) -> None:
        self.url = url
        self.q = q
        self.prefix = q.prefix
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._events: QueueEvents | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def watch(self, job_id: str) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(ev)
        if self._events is None:
            # From a second back, not "$" (what is new once its XREAD starts, a round trip or two
            # later): a job finishing between the waiter's state read and that XREAD still wakes it.
            since = f"{int(time.time() * 1000) - 1000}-0"
            opts = {"connection": bullmq_connection(self.url, self.q), "prefix": self.prefix, "lastEventId": since}
            events = QueueEvents(TRANSCRIBE_QUEUE, opts)
            events.on("completed", self._wake)
            events.on("failed", self._wake)
            events.on("error", lambda err, *a: self._lost(events, err))
            self._events = events
        return ev

    def unwatch(self, job_id: str, ev: asyncio.Event) -> None:
        waiting = self._waiters.get(job_id)
        if waiting is not None:
            waiting.discard(ev)
            if not waiting:
                del self._waiters[job_id]
        if not self._waiters and self._events is not None:
            self._close(self._events)

    def _wake(self, args: Any, *_: Any) -> None:
        job_id = args.get("jobId") if isinstance(args, dict) else None
        for ev in self._waiters.get(str(job_id), ()):
            ev.set()

    def _lost(self, events: QueueEvents, err: BaseException) -> None:
        """Its XREAD failed (Redis gone): the waiters poll; the next watch starts a new one."""
        log.info("job event stream lost: %s", err, extra={"event": "queue_events_lost"})
        if self._events is events:
            self._close(events)

    def _close(self, events: QueueEvents) -> None:
        if self._events is events:
            self._events = None
        t = asyncio.ensure_future(events.close())
        self._closing.add(t)
        t.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._events is not None:
            self._close(self._events)
        for t in list(self._closing):
            with contextlib.suppress(Exception):
                await t


class JobQueue:
    """Producer side: used by the gateway (and the worker, to enqueue callbacks)."""

    #: First and longest pause between state reads of an awaited job (doubling): its completion
    #: event normally ends the wait first.
    first_poll_s = 0.25
    fallback_poll_s = 2.0

    def __init__(self, url: str, q: QueueConfig) -> None:
        self.url = url
        self.cfg = q
        # Pooled text clients (a fresh one per Queue: bullmq closes the client it was given).
        self.text = bullmq_client(url, q)  # the transcribe queue's client, also for status reads
        self.transcribe = Queue(TRANSCRIBE_QUEUE, {"connection": self.text, "prefix": q.prefix})
        self.webhooks = Queue(WEBHOOK_QUEUE, {"connection": bullmq_client(url, q), "prefix": q.prefix})
        self.raw = connect(q, url=url)  # bytes: audio blobs, markers; survives a Redis restart
        self.keys = Keys(q.prefix)
        self.finishes = _Finishes(url, q)
        self._read_script = self.text.register_script(_READ_JOB)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.finishes.close()
        for closer in (self.transcribe.close, self.webhooks.close, self.raw.aclose, self.text.aclose):
            with contextlib.suppress(Exception):
                await closer()

    async def submit(
        self,
        *,
        params: Mapping[str, str | list[str]],
        mode: str,
        audio: bytes | None = None,
        url: str | None = None,
        callback: str | None = None,
        callback_method: str = "POST",
        duration_s: float | None = None,
        owner: str = "",
    ) -> str:
        """Store the audio (if any) and enqueue the job; returns its id."""
        job_id = str(uuid.uuid4())
        data: dict[str, Any] = {"params": dict(params), "mode": mode, "submitted_at": time.time()}
        if audio is not None:
            data["audio_key"] = self.keys.audio(job_id)
            data["bytes"] = len(audio)
        elif url is not None:
            data["url"] = url
        else:
            raise ValueError("a job needs audio or a url")
        if callback:
            data["callback"] = callback
            data["callback_method"] = callback_method
        if duration_s is not None:
            data["duration_s"] = round(duration_s, 3)
        if owner:
            data["owner"] = owner
        opts = job_options(self.cfg, job_id)
        if audio is not None and not isinstance(self.text, RedisCluster):
            await self._add_with_audio(data, opts, audio)
            return job_id
        if audio is not None:
            # Outlive the job's whole life (queue wait + retries); deleted when the job finishes.
            await self.raw.set(data["audio_key"], audio, ex=self.cfg.result_ttl_s)
        try:
            await self.transcribe.add(JOB_NAME, data, opts)
        except BaseException:
            if audio is not None:
                with contextlib.suppress(Exception):
                    await self.raw.delete(data["audio_key"])
            raise
        return job_id

    async def _add_with_audio(self, data: dict[str, Any], opts: dict[str, Any], audio: bytes) -> None:
        """The audio's SET and BullMQ's ``addStandardJob`` in one MULTI: one round trip, and no job
        without its audio (or audio without its job) whatever fails.

        The script runs as a plain EVALSHA in the MULTI: a redis-py pipeline given a ``Script``
        first asks ``SCRIPT EXISTS`` (a round trip of its own). Keys and arguments are bullmq's
        (``Scripts.addStandardJob``: the same job hash, events and markers as ``Queue.add``); a
        Redis that lost its scripts (restart, SCRIPT FLUSH) answers NOSCRIPT, then the script is
        loaded and the MULTI sent again (its SET is idempotent).
        """
        scripts = self.transcribe.scripts
        job = Job(self.transcribe, JOB_NAME, data, {**self.transcribe.jobsOpts, **opts})
        keys = scripts.getKeys(
            ["wait", "paused", "meta", "id", "completed", "delayed", "active", "events", "marker"]
        )  # as Scripts.addStandardJob
        args = [*scripts.addJobArgs(job), job.timestamp]
        script = scripts.commands["addStandardJob"]
        for attempt in (1, 2):
            pipe = self.text.pipeline(transaction=True)
            # Outlive the job's whole life (queue wait + retries); deleted when the job finishes.
            pipe.set(data["audio_key"], audio, ex=self.cfg.result_ttl_s)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                _, result = await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.text.script_load(script.script)
                continue
            if isinstance(result, int) and result < 0:
                with contextlib.suppress(Exception):
                    await self.raw.delete(data["audio_key"])
                raise scripts.finishedErrors({"code": result, "parentKey": None, "command": "addJob"})
            return

    async def _job(self, job_id: str, owner: str | None) -> Job | None:
        if not is_job_id(job_id):
            return None
        job = await Job.fromId(self.transcribe, job_id)
        if job is not None and owner is not None:
            data = job.data if isinstance(job.data, dict) else {}
            if data.get("owner", "") not in ("", owner):
                return None  # someone else's job: as if unknown
        return job

    async def _read(self, job_id: str) -> tuple[str, dict[str, str], list[str], str | None]:
        """State, job hash, logs and cancel marker of a job in one atomic round trip (a script).

        The state checks are BullMQ's own ``getState`` (same keys, same order, the first hit wins);
        read atomically with the job, a job finishing in between cannot show "completed" without
        its return value. One script rather than a MULTI of all eleven reads: half the client CPU
        (one reply to parse, not thirteen) and no LPOS over a long wait list for a finished job.
        """
        k = self.transcribe.keys
        keys = [k[""] + job_id, *(k[key] for key, _, _ in _STATE_CHECKS), f"{k['']}{job_id}:logs"]
        keys.append(self.keys.cancel(job_id))
        state, flat, logs, marker = await self._read_script(keys=keys, args=[job_id, *_READ_ARGS])
        return _text(state), dict(zip(flat[::2], flat[1::2], strict=True)), logs, marker

    async def status(self, job_id: str, *, owner: str | None = None, with_result: bool = True) -> dict[str, Any] | None:
        """The public view of a job (GET /v1/jobs/{id}); None when unknown (or not ``owner``'s)."""
        if not is_job_id(job_id):
            return None
        state, raw, logs, marker = await self._read(job_id)
        data = _json(raw.get("data"), {}) if raw else None
        if not isinstance(data, dict):
            data = {} if raw else None
        if data is not None and owner is not None and data.get("owner", "") not in ("", owner):
            data = None  # someone else's job: as if unknown
        if data is None:
            return {"id": job_id, "state": marker} if marker is not None else None
        opts = _json(raw.get("opts"), {})
        progress = _json(raw.get("progress"), 0)
        failed_reason = raw.get("failedReason") or None
        out: dict[str, Any] = {
            "id": job_id,
            "state": state,
            "progress": progress if isinstance(progress, int | float) else 0,
            "attempts": int(raw.get("attemptsMade") or raw.get("atm") or 0),
            "max_attempts": opts.get("attempts", 1) if isinstance(opts, dict) else 1,
            "mode": data.get("mode"),
            "duration_s": data.get("duration_s"),
            "created_at": _ms(raw.get("timestamp")),
            "started_at": _ms(raw.get("processedOn")),
            "finished_at": _ms(raw.get("finishedOn")),
        }
        if state == "completed":
            out["progress"] = 100
            if with_result:
                value = raw.get("returnvalue")
                out["result"] = _json(value, value)  # as bullmq's Job: the text if it is not JSON
        elif state == "failed":
            out["error"] = failed_reason or "failed"
            if isinstance(data.get(REJECTED_STATUS), int):
                out["error_status"] = data[REJECTED_STATUS]
            if failed_reason == CANCELLED_REASON:
                out["state"] = "cancelled"
        elif state == "active" and marker is not None:
            out["state"] = "cancelling"
        out["log"] = logs
        return out

    async def cancel(self, job_id: str, *, owner: str | None = None, wait_s: float = 5.0) -> dict[str, Any] | None:
        """DELETE: waiting jobs are removed, finished ones deleted, a running one is aborted.

        For a running job the answer is what happened, not an intention: its worker is told (marker
        key + pub/sub), and the job's end is awaited for up to ``wait_s``: ``cancelled``, or the
        state it reached first (``completed``/``failed``: the cancel came too late, nothing was
        changed), or ``cancelling`` if its worker did not answer in time (stalled or gone: the
        marker makes whichever worker takes the job over end it cancelled).
        """
        if not is_job_id(job_id):
            return None
        job = await self._job(job_id, owner)
        if job is None:
            tomb = await self.raw.get(self.keys.cancel(job_id))
            return {"id": job_id, "state": _text(tomb)} if tomb is not None else None
        state = await self.transcribe.getJobState(job_id)
        ttl = self.cfg.result_ttl_s
        if state != "active":
            final = "deleted" if state in FINISHED else "cancelled"
            await self.raw.set(self.keys.cancel(job_id), final, ex=ttl)
            removed = await self.transcribe.remove(job_id)
            if removed == 1:
                await self.raw.delete(self.keys.audio(job_id))
                return {"id": job_id, "state": final}
            await self.raw.delete(self.keys.cancel(job_id))
            state = await self.transcribe.getJobState(job_id)
            if state != "active":  # not removable for another reason (e.g. locked by a foreign worker)
                return {"id": job_id, "state": state, "error": f"the job is {state} and could not be removed"}
        # Active: tell its worker, then report what actually happened.
        await self.raw.set(self.keys.cancel(job_id), "cancelled", ex=ttl)
        await self.raw.publish(self.keys.cancel_channel, job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            state = await self.transcribe.getJobState(job_id)
            if state in FINISHED or state == "unknown" or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        if state == "active" or state in ("waiting", "delayed", "prioritized"):
            return {
                "id": job_id,
                "state": "cancelling",
                "message": "the job's worker has not confirmed yet (stalled or restarting); the job will end "
                "cancelled, whichever worker takes it over",
            }
        job = await self._job(job_id, None)
        reason = job.failedReason if job is not None else None
        if state == "failed" and reason == CANCELLED_REASON:
            return {"id": job_id, "state": "cancelled"}
        await self.raw.delete(self.keys.cancel(job_id))  # too late: the job keeps its outcome
        return {
            "id": job_id,
            "state": state,
            "error": f"the job {state} before the cancel reached its worker; nothing was cancelled"
            + (f" ({reason})" if state == "failed" and reason else ""),
        }

    async def wait(self, job_id: str, timeout_s: float) -> dict[str, Any] | None:
        """Until the job is finished (or gone): the last status, or None if it vanished.

        Woken by the queue's completed/failed events (see ``_Finishes``), with a status read after
        ``first_poll_s`` doubling to ``fallback_poll_s`` in case an event is missed; polling alone (20 ms
        growing to 0.5 s before) answered up to half a second late and read the state each time.
        Each read is the one-round-trip status, which also carries the result.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = self.first_poll_s
        ev = self.finishes.watch(job_id)
        try:
            while True:
                ev.clear()  # before the read: an event after it is kept
                st = await self.status(job_id)  # one round trip; with the result once finished
                if st is None or st["state"] not in _PENDING or loop.time() >= deadline:
                    return st
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), max(0.0, min(delay, deadline - loop.time())))
                delay = min(delay * 2, self.fallback_poll_s)
        finally:
            self.finishes.unwatch(job_id, ev)

    async def depth(self) -> int:
        counts = await self.transcribe.getJobCounts("waiting", "delayed", "prioritized")
        return int(sum(counts.values()))
