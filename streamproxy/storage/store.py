"""The store interface the writer and the routes use, and what both backends share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from .records import Begin, End, Record, Segment, Stored, Summary

__all__ = ["SUMMARY_COLUMNS", "Store", "StoreError", "dumps", "end_row", "loads", "segment_of", "split", "summary_of"]


class StoreError(Exception):
    """The store could not do what was asked (unreachable, refused); the caller retries or answers 503."""


class Store(Protocol):
    """A transcript store. ``open`` connects and migrates; every other call may raise (an outage)."""

    dialect: str  # "sqlite" | "postgresql"

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...
    async def write(self, batch: Sequence[Record]) -> None:
        """Write ``batch`` in one transaction: all of it or nothing (and writing it twice adds nothing)."""
        ...

    async def get(self, transcript_id: str) -> Stored | None:
        """The transcript with its segments in order, or None."""
        ...

    async def summary(self, transcript_id: str) -> Summary | None: ...
    async def list(self, owner: str, limit: int, before: tuple[float, str] | None) -> list[Summary]:
        """``owner``'s transcripts, newest first, strictly older than ``before`` (created_at, id)."""
        ...

    async def delete(self, transcript_id: str) -> bool: ...
    async def purge(self, older_than: float) -> int:
        """Delete transcripts created before ``older_than`` (unix seconds); returns how many."""
        ...


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def split(batch: Sequence[Record]) -> tuple[list[Begin], list[Segment], list[End]]:
    """Begins, segments, ends: applied in that order in one transaction, which gives the same rows
    as applying the batch in order (a Begin never overwrites, an End always does)."""
    begins: list[Begin] = []
    segments: list[Segment] = []
    ends: list[End] = []
    for r in batch:
        if type(r) is Segment:
            segments.append(r)
        elif type(r) is Begin:
            begins.append(r)
        elif type(r) is End:
            ends.append(r)
    return begins, segments, ends


SUMMARY_COLUMNS = "id, owner, kind, source, status, created_at, ended_at, duration, outcome, preview"


def summary_of(row: Sequence[Any]) -> Summary:
    return Summary(*row[:10])


def segment_of(transcript_id: str, row: Sequence[Any]) -> Segment:
    channel, start, end, text, confidence, words = row
    return Segment(transcript_id, int(channel), float(start), float(end), text, float(confidence), loads(words))


def end_row(e: End) -> tuple[Any, ...]:
    """An ``End`` as the upsert's parameters (both dialects take them in this order)."""
    return (
        e.id, e.owner, e.kind, e.source, e.created_at, e.ended_at, e.duration, e.outcome,
        dumps(e.params), dumps(e.meta), e.preview, None if e.result is None else dumps(e.result),
    )  # fmt: skip
