"""A stored transcript as Deepgram's prerecorded response (``GET /v1/transcripts/{id}``) and as a
listing row (``GET /v1/transcripts``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..deepgram.messages import prerecorded_response
from ..deepgram.types import Result, Word
from .records import Segment, Stored, Summary

__all__ = ["iso", "listing", "response", "stored_info"]

DEFAULT_MODEL = "streamproxy"


def iso(t: float) -> str:
    """Unix seconds as Deepgram writes ``created`` (UTC, milliseconds)."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def _words(seg: Segment) -> list[Word]:
    out = []
    for w in seg.words:
        start = w.get("start")
        end = w.get("end")
        out.append(
            Word(
                word=str(w.get("word", "")),
                start=float(seg.start if start is None else start),  # Flux words may carry no times
                end=float(seg.end if end is None else end),
                confidence=float(w.get("confidence") or 0.0),
                punctuated_word=w.get("punctuated_word"),
            )
        )
    return out


def _result(seg: Segment) -> Result:
    return Result(seg.start, seg.end, _words(seg), is_final=True, speech_final=False, from_finalize=False)


def stored_info(s: Summary) -> dict[str, Any]:
    """What the store knows beyond Deepgram's shape (under ``"stored"``)."""
    return {
        "kind": s.kind,
        "source": s.source,
        "status": s.status,
        "outcome": s.outcome,
        "created": iso(s.created_at),
        "ended": None if s.ended_at is None else iso(s.ended_at),
    }


def response(t: Stored) -> dict[str, Any]:
    """A job's result as it was answered; a stream's finals as one prerecorded response, one
    channel per audio channel, with every word and its times as the client got them."""
    s = t.summary
    if t.result is not None:
        out = dict(t.result)
        meta = out.get("metadata")
        if isinstance(meta, dict):
            out["metadata"] = {**meta, "request_id": s.id}
        out["stored"] = stored_info(s)
        return out
    declared = t.params.get("channels")  # a channel without a word still has its (empty) entry
    channels = max(max((seg.channel for seg in t.segments), default=0) + 1, _int(declared, 1))
    per_channel = [[_result(seg) for seg in t.segments if seg.channel == c] for c in range(channels)]
    model = t.params.get("model")
    model_name = model if isinstance(model, str) and model else DEFAULT_MODEL
    duration = s.duration
    if duration is None:  # still open (or its gateway died): as far as its finals go
        duration = max((seg.end for seg in t.segments), default=0.0)
    common: dict[str, Any] = {
        "request_id": s.id,
        "duration": duration,
        "model_name": model_name,
        "created": iso(s.created_at),
    }
    out = prerecorded_response(per_channel[0], channels=1, **common)
    if channels > 1:
        out["metadata"]["channels"] = channels
        out["results"]["channels"] = [
            prerecorded_response(finals, channels=1, **common)["results"]["channels"][0] for finals in per_channel
        ]
    out["stored"] = stored_info(s)
    return out


def _int(v: Any, default: int) -> int:
    try:
        return max(1, min(16, int(v)))
    except (TypeError, ValueError):
        return default


def listing(s: Summary) -> dict[str, Any]:
    return {
        "request_id": s.id,
        "created": iso(s.created_at),
        "duration": s.duration,
        "preview": s.preview,
        **{k: v for k, v in stored_info(s).items() if k != "created"},
    }
