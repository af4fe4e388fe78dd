"""What the transcript store keeps: plain records, built on the session path, written later.

A record is self-sufficient: ``Begin`` inserts a transcript row if there is none, ``Segment``
inserts one final (keyed by transcript, channel and end, so a batch written twice after a lost
commit acknowledgement adds nothing), ``End`` upserts the whole row. A dropped ``Begin`` (backlog
full) therefore loses nothing once its ``End`` is written, and records can be retried freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Begin", "End", "Record", "Segment", "Stored", "Summary"]


@dataclass(frozen=True, slots=True)
class Begin:
    """A streaming session started: its row exists (status ``open``) before its first final."""

    id: str
    owner: str
    kind: str  # "stream" | "job"
    source: str  # stream: v1, v2, twilio; job: async, callback, sync, external
    created_at: float  # unix seconds
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Segment:
    """One delivered final (Live ``Results`` with ``is_final``, Flux ``EndOfTurn``)."""

    id: str
    channel: int
    start: float
    end: float
    transcript: str
    confidence: float
    words: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class End:
    """A transcript is complete: a session's metadata at its end, or a file job's whole result."""

    id: str
    owner: str
    kind: str
    source: str
    created_at: float
    ended_at: float
    duration: float
    outcome: str
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    preview: str = ""
    result: dict[str, Any] | None = None  # jobs: the Deepgram prerecorded response as answered


Record = Begin | Segment | End


@dataclass(frozen=True, slots=True)
class Summary:
    """A row of ``GET /v1/transcripts``."""

    id: str
    owner: str
    kind: str
    source: str
    status: str  # "open" (a session still running, or one whose gateway died) | "complete"
    created_at: float
    ended_at: float | None
    duration: float | None
    outcome: str | None
    preview: str


@dataclass(frozen=True, slots=True)
class Stored:
    """One transcript with everything kept about it (``GET /v1/transcripts/{id}``)."""

    summary: Summary
    params: dict[str, Any]
    meta: dict[str, Any]
    result: dict[str, Any] | None
    segments: list[Segment]
