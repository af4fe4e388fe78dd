"""The transcript writer: sessions and jobs hand it records; one background task writes them.

Nothing on the session path ever awaits the store. ``begin``/``final``/``end``/``job_result`` build
a record and append it to an in-memory backlog, and return: they never block and never raise (a
record that cannot be built is logged and skipped). The backlog is bounded (``storage.max_backlog``
records); past it new records are dropped and counted. The background task takes up to
``BATCH_MAX`` records at a time, at least every ``storage.flush_interval_s``, and writes each batch
in one transaction, so a gateway crash loses at most the batch not yet written. A failed write
(an outage) keeps the batch and is retried with jittered exponential backoff, while the backlog
grows; once the store answers again everything waiting is written, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .metrics import StorageMetrics
from .records import Begin, End, Record, Segment
from .store import Store

__all__ = ["BATCH_MAX", "TranscriptWriter", "params_of", "segment_of_message"]

log = logging.getLogger("streamproxy.storage")

BATCH_MAX = 500  # records per transaction
PREVIEW_CHARS = 200  # the start of the text, kept in the row for listings
PURGE_INTERVAL_S = 3600.0
OPEN_TIMEOUT_S = 10.0
START_WAIT_S = 3.0  # how long ``start`` waits for the store before going on without it
WRITE_TIMEOUT_S = 30.0
RETRY_FIRST_S = 0.25
RETRY_CAP_S = 5.0


def params_of(query: str) -> dict[str, Any]:
    """A session's Deepgram query as a dict (a repeated key such as ``keyterm`` gives a list)."""
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k in out:
            prev = out[k]
            out[k] = [*prev, v] if isinstance(prev, list) else [prev, v]
        else:
            out[k] = v
    return out


def segment_of_message(transcript_id: str, msg: dict[str, Any]) -> Segment | None:
    """The record of one delivered final: a Live ``Results`` (``is_final``) or a Flux ``EndOfTurn``
    ``TurnInfo``, with its times as the client got them. None for a final without words."""
    if msg.get("type") == "TurnInfo":
        start = float(msg.get("audio_window_start") or 0.0)
        end = float(msg.get("audio_window_end") or start)
        words = [dict(w) for w in msg.get("words") or ()]
        text = str(msg.get("transcript") or " ".join(str(w.get("word", "")) for w in words))
        confidence = float(msg.get("end_of_turn_confidence") or 0.0)
        channel = 0
    else:
        start = float(msg.get("start") or 0.0)
        end = start + float(msg.get("duration") or 0.0)
        alternatives = (msg.get("channel") or {}).get("alternatives") or [{}]
        alt = alternatives[0]
        words = [dict(w) for w in alt.get("words") or ()]
        text = str(alt.get("transcript") or "")
        confidence = float(alt.get("confidence") or 0.0)
        channel_index = msg.get("channel_index") or [0]
        channel = int(channel_index[0])
    if not words and not text:
        return None
    return Segment(transcript_id, channel, start, end, text, confidence, words)


@dataclass(slots=True)
class _Open:
    """A stream being recorded: when it began and the start of its text."""

    created_at: float
    preview: list[str] = field(default_factory=list)
    chars: int = 0

    def add(self, text: str) -> None:
        if self.chars < PREVIEW_CHARS and text:
            self.preview.append(text)
            self.chars += len(text) + 1

    def text(self) -> str:
        return " ".join(self.preview)[:PREVIEW_CHARS]


class TranscriptWriter:
    def __init__(
        self,
        store: Store,
        *,
        max_backlog: int = 100_000,
        flush_interval_s: float = 1.0,
        retention_days: float = 30.0,
        metrics: StorageMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_backlog = max_backlog
        self.flush_interval_s = flush_interval_s
        self.retention_days = retention_days
        self.metrics = metrics or StorageMetrics()
        self.metrics.watch(lambda: float(self.backlog))
        self.clock = clock  # wall clock: created_at and the retention cut-off
        self.ready = False  # the store is open and migrated
        self._pending: deque[Record] = deque()
        self._inflight: list[Record] = []  # the batch being written (kept across retries)
        self._open: dict[str, _Open] = {}
        self._deleted: set[str] = set()  # running sessions whose transcript was deleted
        self._wake = asyncio.Event()  # records to write (or closing)
        self._stop = asyncio.Event()  # closing: cut the pauses short
        self._closing = False
        self._close_deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._next_purge = 0.0
        self._overflowing = False  # logged once per overflow, not per dropped record
        self._failing = False  # logged once per outage, and when it ends
        self._rng = random.Random()

    @property
    def backlog(self) -> int:
        """Records accepted and not yet written."""
        return len(self._pending) + len(self._inflight)

    # ------------------------------------------------------------------ the session path
    def _put(self, record: Record) -> None:
        if self.backlog >= self.max_backlog or self._closing:
            self.metrics.dropped.inc()
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "transcript backlog full: records dropped",
                    extra={"event": "storage_overflow", "backlog": self.backlog, "max_backlog": self.max_backlog},
                )
            return
        self._pending.append(record)
        if len(self._pending) == 1 or len(self._pending) >= BATCH_MAX:
            self._wake.set()

    def begin(self, transcript_id: str, *, owner: str, source: str, query: str) -> None:
        """A streaming session started (its row exists, status ``open``, from the first flush)."""
        try:
            now = self.clock()
            self._open[transcript_id] = _Open(now)
            self._put(Begin(transcript_id, owner, "stream", source, now, params_of(query)))
        except Exception:
            log.exception("transcript record not built", extra={"event": "storage_record_error"})

    def final(self, transcript_id: str, msg: dict[str, Any]) -> None:
        """A final the session delivered (or holds for a resuming client)."""
        if transcript_id in self._deleted:
            return
        try:
            seg = segment_of_message(transcript_id, msg)
        except Exception:
            log.exception("transcript record not built", extra={"event": "storage_record_error"})
            return
        if seg is None:
            return
        o = self._open.get(transcript_id)
        if o is not None:
            o.add(seg.transcript)
        self._put(seg)

    def end(
        self, transcript_id: str, *, owner: str, source: str, query: str, outcome: str, summary: dict[str, Any]
    ) -> None:
        """The session ended: its metadata (duration, parameters, owner, outcome, the session summary)."""
        if transcript_id in self._deleted:
            self._deleted.discard(transcript_id)
            return
        try:
            o = self._open.pop(transcript_id, None)
            now = self.clock()
            self._put(
                End(
                    transcript_id, owner, "stream", source, o.created_at if o else now, now,
                    float(summary.get("audio_s") or 0.0), outcome, params_of(query), summary,
                    o.text() if o else "",
                )
            )  # fmt: skip
        except Exception:
            log.exception("transcript record not built", extra={"event": "storage_record_error"})

    def forget(self, transcript_id: str) -> None:
        """``DELETE /v1/transcripts/{id}``: drop what is waiting for this transcript and, if its
        session is still running here, what it delivers from now on (a deletion is not undone)."""
        if transcript_id in self._open:
            del self._open[transcript_id]
            self._deleted.add(transcript_id)
        if any(r.id == transcript_id for r in self._pending):
            self._pending = deque(r for r in self._pending if r.id != transcript_id)

    def job_result(
        self,
        job_id: str,
        *,
        owner: str,
        source: str,
        params: dict[str, Any],
        result: dict[str, Any],
        created_at: float | None = None,
    ) -> None:
        """A file job's result (the Deepgram prerecorded response), stored whole under its id."""
        try:
            meta = result.get("metadata") if isinstance(result.get("metadata"), dict) else {}
            assert isinstance(meta, dict)
            preview = ""
            with contextlib.suppress(LookupError, TypeError, AttributeError):
                preview = str(result["results"]["channels"][0]["alternatives"][0]["transcript"])[:PREVIEW_CHARS]
            now = self.clock()
            self._put(
                End(
                    job_id, owner, "job", source, created_at if created_at is not None else now, now,
                    float(meta.get("duration") or 0.0), "completed", params, {}, preview, result,
                )
            )  # fmt: skip
        except Exception:
            log.exception("transcript record not built", extra={"event": "storage_record_error"})

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the store (migrations) and start writing; the retention purge runs first thing in the
        background (then hourly). A store that cannot be opened within ``START_WAIT_S`` is logged and
        retried in the background: the gateway starts anyway."""
        try:
            await asyncio.wait_for(self._open_store(), START_WAIT_S)
        except Exception as e:
            self._failed("open", e)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is waiting (up to ``timeout``), then close the store; what is left is counted."""
        self._closing = True
        self._close_deadline = time.monotonic() + timeout
        self._wake.set()
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        lost = self.backlog
        if lost:
            self.metrics.dropped.inc(lost)
            log.warning("transcript records not written at shutdown", extra={"event": "storage_lost", "records": lost})
            self._pending.clear()
            self._inflight = []
        with contextlib.suppress(Exception):
            await self.store.close()

    async def flushed(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted so far is written (tests, shutdown paths)."""
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        return not self.backlog

    # ------------------------------------------------------------------ the background task
    async def _open_store(self) -> None:
        await asyncio.wait_for(self.store.open(), OPEN_TIMEOUT_S)
        self.ready = True
        version = await self.store.schema_version()
        log.info(
            "transcript store ready", extra={"event": "storage_ready", "dialect": self.store.dialect, "schema": version}
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if not self.ready:
                    await self._open_store()
                    attempt = 0
                if self.retention_days > 0 and time.monotonic() >= self._next_purge:
                    await self._purge()
                if not self._inflight:
                    if not self._pending:
                        if self._closing:
                            return
                        self._wake.clear()
                        purge_in = max(0.01, self._next_purge - time.monotonic()) if self.retention_days > 0 else None
                        await self._wait(self._wake, purge_in)  # idle until a record (or the next purge)
                        continue
                    if len(self._pending) < BATCH_MAX and not self._closing:
                        self._wake.clear()  # gather a batch: set again when it is full
                        await self._wait(self._wake, self.flush_interval_s)
                    n = min(len(self._pending), BATCH_MAX)
                    self._inflight = [self._pending.popleft() for _ in range(n)]
                await asyncio.wait_for(self.store.write(self._inflight), WRITE_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._failed("write" if self.ready else "open", e)
                attempt += 1
                delay = self._rng.uniform(0.5, 1.0) * min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (attempt - 1))
                if self._closing:
                    left = self._close_deadline - time.monotonic()
                    if left <= 0:
                        return
                    await asyncio.sleep(min(delay, left))
                else:
                    await self._wait(self._stop, delay)
                continue
            self.metrics.written.inc(len(self._inflight))
            self._inflight = []
            attempt = 0
            self._overflowing = False
            if self._failing:
                self._failing = False
                log.info("transcript store answering again", extra={"event": "storage_recovered"})

    def _failed(self, what: str, e: BaseException) -> None:
        self.metrics.failed.inc()
        if what == "open":
            self.ready = False
        if not self._failing:
            self._failing = True
            log.warning(
                "transcript store unavailable: records kept in the backlog and retried",
                extra={"event": "storage_unavailable", "op": what, "error": f"{type(e).__name__}: {e}"},
            )

    async def _purge(self) -> None:
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        if self.retention_days <= 0:
            return
        cutoff = self.clock() - self.retention_days * 86400.0
        try:
            n = await asyncio.wait_for(self.store.purge(cutoff), WRITE_TIMEOUT_S)
        except Exception as e:
            log.warning("transcript purge failed", extra={"event": "storage_purge_failed", "error": str(e)})
            return
        if n:
            log.info("old transcripts purged", extra={"event": "storage_purged", "transcripts": n})

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
