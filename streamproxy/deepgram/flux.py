"""Deepgram Flux (``/v2/listen``) vocabulary: turn events and the server messages built from them.

Field names are those of the official SDK's ``deepgram.listen.v2`` models (``ListenV2Connected``,
``ListenV2TurnInfo``, ``ListenV2ConfigureSuccess``, ``ListenV2ConfigureFailure``,
``ListenV2FatalError``, ``ListenV2Warning``). Every server message carries ``sequence_id``; the
builders take it as an argument so that one numbering (the sender's) covers every message type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "FLUX_EVENTS",
    "FLUX_MODELS",
    "FLUX_TRIGGERS",
    "FluxThresholds",
    "FluxWord",
    "TurnEvent",
    "configure_failure_message",
    "configure_success_message",
    "connected_message",
    "error_message",
    "turn_info_message",
    "warning_message",
]

TurnEventName = Literal["Update", "StartOfTurn", "EagerEndOfTurn", "TurnResumed", "EndOfTurn"]
Trigger = Literal["model", "timeout", "manual"]

FLUX_EVENTS: tuple[TurnEventName, ...] = ("Update", "StartOfTurn", "EagerEndOfTurn", "TurnResumed", "EndOfTurn")
FLUX_TRIGGERS: tuple[Trigger, ...] = ("model", "timeout", "manual")
FLUX_MODELS = frozenset({"flux-general-en", "flux-general-multi"})


@dataclass(frozen=True, slots=True)
class FluxWord:
    """One word of a turn; times in seconds from the stream start (Flux's optional ``start``/``end``)."""

    word: str
    confidence: float
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """One ``TurnInfo``: ``event`` at ``audio_window_end`` for the turn ``turn_index``.

    ``trigger`` is set on ``EndOfTurn`` only (as Deepgram: "present on every EndOfTurn and only there").
    """

    event: TurnEventName
    turn_index: int
    audio_window_start: float
    audio_window_end: float
    words: tuple[FluxWord, ...]
    end_of_turn_confidence: float
    trigger: Trigger | None = None

    @property
    def transcript(self) -> str:
        return " ".join(w.word for w in self.words)


@dataclass(frozen=True, slots=True)
class FluxThresholds:
    """A stream's end-of-turn settings (query parameters, then ``Configure``)."""

    eot_threshold: float = 0.7
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int = 5000
    keyterms: tuple[str, ...] = field(default_factory=tuple)

    def as_message(self) -> dict[str, Any]:
        """``ConfigureSuccess.thresholds``: the values now in force."""
        out: dict[str, Any] = {"eot_threshold": self.eot_threshold, "eot_timeout_ms": self.eot_timeout_ms}
        if self.eager_eot_threshold is not None:
            out["eager_eot_threshold"] = self.eager_eot_threshold
        return out


def connected_message(*, request_id: str, sequence_id: int) -> dict[str, Any]:
    """The first message of every Flux stream."""
    return {"type": "Connected", "request_id": request_id, "sequence_id": sequence_id}


def turn_info_message(ev: TurnEvent, *, request_id: str, sequence_id: int) -> dict[str, Any]:
    """``TurnInfo`` for one turn event."""
    msg: dict[str, Any] = {
        "type": "TurnInfo",
        "request_id": request_id,
        "sequence_id": sequence_id,
        "event": ev.event,
        "turn_index": ev.turn_index,
        "audio_window_start": ev.audio_window_start,
        "audio_window_end": ev.audio_window_end,
        "transcript": ev.transcript,
        "words": [{"word": w.word, "confidence": w.confidence, "start": w.start, "end": w.end} for w in ev.words],
        "end_of_turn_confidence": ev.end_of_turn_confidence,
    }
    if ev.trigger is not None:
        msg["trigger"] = ev.trigger
    return msg


def configure_success_message(th: FluxThresholds, *, request_id: str, sequence_id: int) -> dict[str, Any]:
    """Answer to an applied ``Configure``: the thresholds and keyterms now in force."""
    return {
        "type": "ConfigureSuccess",
        "request_id": request_id,
        "sequence_id": sequence_id,
        "thresholds": th.as_message(),
        "keyterms": list(th.keyterms),
    }


def configure_failure_message(*, request_id: str, sequence_id: int, code: str, description: str) -> dict[str, Any]:
    """Answer to a rejected ``Configure`` (the previous configuration stays in force)."""
    return {
        "type": "ConfigureFailure",
        "request_id": request_id,
        "sequence_id": sequence_id,
        "code": code,
        "description": description,
    }


def warning_message(*, request_id: str, sequence_id: int, code: str, description: str) -> dict[str, Any]:
    """A non-fatal ``Warning`` (``code`` in SCREAMING_SNAKE_CASE)."""
    return {
        "type": "Warning",
        "request_id": request_id,
        "sequence_id": sequence_id,
        "code": code,
        "description": description,
    }


def error_message(*, sequence_id: int, code: str, description: str) -> dict[str, Any]:
    """Flux ``Error`` (``ListenV2FatalError``: no ``request_id``); the server closes after it."""
    return {"type": "Error", "sequence_id": sequence_id, "code": code, "description": description}
