"""Recognizer events and Deepgram-shaped message builders.

Shared by the embedded engine (which produces these messages) and the proxy (which rebuilds
them after rebasing timestamps), so both sides emit byte-compatible Deepgram JSON. Every builder
returns a plain ``dict`` meant for ``orjson.dumps``; the shapes validate against the official
SDK's pydantic models (``ListenV1Results``, ``ListenV1Metadata``, ``ListenV1Error``, ...).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Event",
    "Recognizer",
    "Result",
    "SpeechStarted",
    "UtteranceEnd",
    "Word",
    "configure_failure_message",
    "configure_success_message",
    "error_message",
    "event_message",
    "metadata_message",
    "model_uuid",
    "prerecorded_response",
    "results_message",
    "speech_started_message",
    "utterance_end_message",
]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; times in seconds of audio from stream start."""

    word: str
    start: float
    end: float
    confidence: float
    punctuated_word: str | None = None  # cased and punctuated form ("Hello,"), when the engine has one


@dataclass(frozen=True, slots=True)
class Result:
    """A transcript span ``[start, end)``.

    ``duration`` is set by recognizers that know the span in integer samples, so that
    ``duration == (c - L) / sr`` exactly rather than ``end - start`` with float rounding.
    """

    start: float
    end: float
    words: list[Word]
    is_final: bool
    speech_final: bool
    from_finalize: bool
    duration: float | None = None

    @property
    def span(self) -> float:
        """Duration to report: the exact one when known."""
        return self.duration if self.duration is not None else self.end - self.start

    @property
    def transcript(self) -> str:
        return " ".join(w.punctuated_word or w.word for w in self.words)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """VAD onset (``vad_events=true``)."""

    timestamp: float


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """Gap after the last word reached ``utterance_end_ms``."""

    last_word_end: float


Event = Result | SpeechStarted | UtteranceEnd


class Recognizer(Protocol):
    """Sans-I/O streaming recognizer: bytes in, events out."""

    @property
    def position_s(self) -> float:
        """Audio received so far, in seconds."""
        ...

    def feed(self, pcm: bytes) -> list[Event]: ...

    def finalize(self) -> list[Event]: ...

    def close(self) -> list[Event]: ...


# --------------------------------------------------------------------------- helpers


def model_uuid(model_name: str) -> str:
    """Stable per-model UUID, so clients comparing ``model_uuid`` across messages see one model."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamproxy:model:{model_name}"))


def _model_info(model_name: str, version: str, arch: str) -> dict[str, str]:
    return {"name": model_name, "version": version, "arch": arch}


def _now_iso() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _words_json(words: Iterable[Word]) -> list[dict[str, Any]]:
    return [
        {
            "word": w.word,
            "start": w.start,
            "end": w.end,
            "confidence": w.confidence,
            "punctuated_word": w.punctuated_word or w.word,
        }
        for w in words
    ]


def _confidence(words: Sequence[Word]) -> float:
    """Mean word confidence; 0.0 for an empty transcript, as Deepgram sends."""
    if not words:
        return 0.0
    return sum(w.confidence for w in words) / len(words)


# --------------------------------------------------------------------------- live messages


def results_message(
    result: Result,
    *,
    request_id: str,
    channels: int = 1,
    model_name: str,
    model_version: str = "1.0",
    model_arch: str = "streamproxy",
    channel: int = 0,
) -> dict[str, Any]:
    """Deepgram Live ``Results`` message for ``result``."""
    return {
        "type": "Results",
        "channel_index": [channel, channels],
        "duration": result.span,
        "start": result.start,
        "is_final": result.is_final,
        "speech_final": result.speech_final,
        "from_finalize": result.from_finalize,
        "channel": {
            "alternatives": [
                {
                    "transcript": result.transcript,
                    "confidence": _confidence(result.words),
                    "words": _words_json(result.words),
                }
            ]
        },
        "metadata": {
            "request_id": request_id,
            "model_info": _model_info(model_name, model_version, model_arch),
            "model_uuid": model_uuid(model_name),
        },
    }


def metadata_message(
    *,
    request_id: str,
    duration: float,
    channels: int,
    model_name: str,
    model_version: str = "1.0",
    model_arch: str = "streamproxy",
    sha256: str | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """Deepgram Live ``Metadata`` message, sent after the trailing results of a closed stream."""
    uid = model_uuid(model_name)
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256 if sha256 is not None else hashlib.sha256(request_id.encode()).hexdigest(),
        "created": created if created is not None else _now_iso(),
        "duration": duration,
        "channels": channels,
        "models": [uid],
        "model_info": {uid: _model_info(model_name, model_version, model_arch)},
    }


def speech_started_message(event: SpeechStarted, *, channels: int = 1, channel: int = 0) -> dict[str, Any]:
    """Deepgram ``SpeechStarted`` (``vad_events=true``)."""
    return {"type": "SpeechStarted", "channel": [channel, channels], "timestamp": event.timestamp}


def utterance_end_message(event: UtteranceEnd, *, channels: int = 1, channel: int = 0) -> dict[str, Any]:
    """Deepgram ``UtteranceEnd`` (``utterance_end_ms=N``)."""
    return {"type": "UtteranceEnd", "channel": [channel, channels], "last_word_end": event.last_word_end}


def error_message(
    err_code: str,
    description: str,
    variant: str = "error",
    *,
    message: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Deepgram ``Error`` frame.

    Carries the current fields (``variant``, ``description``, ``message``) and the legacy
    ``err_code``/``err_msg`` pair that older clients and Deepgram's own close frames use.
    """
    msg: dict[str, Any] = {
        "type": "Error",
        "variant": variant,
        "description": description,
        "message": message if message is not None else description,
        "err_code": err_code,
        "err_msg": description,
    }
    if request_id is not None:
        msg["request_id"] = request_id
    return msg


def configure_success_message(*, request_id: str, keyterms: list[str] | None = None) -> dict[str, Any]:
    """Answer to a client ``Configure`` that was applied."""
    msg: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": request_id}
    if keyterms is not None:
        msg["keyterms"] = keyterms
    return msg


def configure_failure_message(*, request_id: str, code: str, description: str) -> dict[str, Any]:
    """Answer to a client ``Configure`` that was rejected."""
    return {"type": "ConfigureFailure", "request_id": request_id, "code": code, "description": description}


def event_message(
    event: Event,
    *,
    request_id: str,
    model_name: str,
    model_version: str = "1.0",
    model_arch: str = "streamproxy",
    channels: int = 1,
) -> dict[str, Any]:
    """Dispatch any recognizer event to its Deepgram message."""
    if isinstance(event, Result):
        return results_message(
            event,
            request_id=request_id,
            channels=channels,
            model_name=model_name,
            model_version=model_version,
            model_arch=model_arch,
        )
    if isinstance(event, SpeechStarted):
        return speech_started_message(event, channels=channels)
    return utterance_end_message(event, channels=channels)


# --------------------------------------------------------------------------- prerecorded


def prerecorded_response(
    finals: Sequence[Result],
    *,
    request_id: str,
    duration: float,
    channels: int = 1,
    model_name: str,
    model_version: str = "1.0",
    model_arch: str = "streamproxy",
    sha256: str = "",
    utterances: bool = False,
    created: str | None = None,
) -> dict[str, Any]:
    """Deepgram prerecorded (``POST /v1/listen``) response built from the final results of a run.

    Validates against ``deepgram.types.ListenV1Response``.
    """
    uid = model_uuid(model_name)
    words = [w for r in finals if r.is_final for w in r.words]
    alternative = {
        "transcript": " ".join(w.punctuated_word or w.word for w in words),
        "confidence": _confidence(words),
        "words": _words_json(words),
    }
    results: dict[str, Any] = {"channels": [{"alternatives": [alternative]} for _ in range(channels)]}
    if utterances:
        results["utterances"] = [
            {
                "start": r.words[0].start,
                "end": r.words[-1].end,
                "confidence": _confidence(r.words),
                "channel": 0,
                "transcript": r.transcript,
                "words": _words_json(r.words),
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{request_id}:{i}")),
            }
            for i, r in enumerate(x for x in finals if x.is_final and x.words)
        ]
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": request_id,
            "sha256": sha256,
            "created": created if created is not None else _now_iso(),
            "duration": duration,
            "channels": channels,
            "models": [uid],
            "model_info": {uid: _model_info(model_name, model_version, model_arch)},
        },
        "results": results,
    }


# --------------------------------------------------------------------------- query parameters
# The Deepgram query vocabulary, one home for the engine's and the gateway's allow-lists.

LIVE_PARAMS = frozenset(
    {
        "alternatives", "callback", "callback_method", "channels", "detect_entities", "diarize",
        "diarize_model", "diarize_version", "dictation", "encoding", "endpointing", "extra",
        "filler_words", "interim_results", "keyterm", "keywords", "language", "language_hint",
        "mip_opt_out", "model", "multichannel", "ner", "no_delay", "numerals", "profanity_filter",
        "punctuate", "redact", "replace", "sample_rate", "search", "smart_format", "tag", "tier",
        "utterance_end_ms", "vad_events", "version",
    }
)  # fmt: skip
PRERECORDED_PARAMS = frozenset(
    {
        "alternatives", "callback", "callback_method", "channels", "custom_intent", "custom_intent_mode",
        "custom_topic", "custom_topic_mode", "detect_entities", "detect_language", "detect_topics",
        "diarize", "diarize_model", "diarize_version", "dictation", "encoding", "extra", "filler_words",
        "intents", "keyterm", "keywords", "language", "language_hint", "measurements", "mip_opt_out",
        "model", "multichannel", "ner", "numerals", "paragraphs", "profanity_filter", "punctuate",
        "redact", "replace", "sample_rate", "search", "sentiment", "smart_format", "summarize", "tag",
        "tier", "topics", "utt_split", "utterances", "version", "endpointing",
    }
)  # fmt: skip
BOOL_PARAMS = frozenset(
    {
        "detect_entities", "detect_language", "diarize", "dictation", "filler_words", "interim_results",
        "intents", "measurements", "mip_opt_out", "multichannel", "no_delay", "numerals", "paragraphs",
        "profanity_filter", "punctuate", "sentiment", "smart_format", "topics", "utterances", "vad_events",
    }
)  # fmt: skip


def bounded_int(name: str, value: str, lo: int, hi: int, *, error: type[Exception] = ValueError) -> int:
    """A query parameter as an integer in [lo, hi], or ``error`` with a message naming it."""
    try:
        n = int(value)
    except ValueError:
        raise error(f"{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise error(f"{name} must be between {lo} and {hi}, got {n}")
    return n


def span_result(
    lo: int, c: int, sr: int, words: list[Word], *, is_final: bool, speech_final: bool, from_finalize: bool
) -> Result:
    """A result covering samples [lo, c): times from integer sample indices, so they are exact."""
    c = max(c, lo)
    return Result(
        start=lo / sr,
        end=c / sr,
        words=words,
        is_final=is_final,
        speech_final=speech_final,
        from_finalize=from_finalize,
        duration=(c - lo) / sr,
    )


def credentials(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """(scheme, secret) pairs a Deepgram client presented: ``Authorization: <scheme> <secret>``
    first, then the browser subprotocols ``token, <key>`` / ``bearer, <jwt>``."""
    found: list[tuple[str, str]] = []
    auth = headers.get("Authorization", "").strip()
    if " " in auth:
        scheme, _, secret = auth.partition(" ")
        found.append((scheme.lower(), secret.strip()))
    protos = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    if len(protos) >= 2 and protos[0].lower() in ("token", "bearer"):
        found.append((protos[0].lower(), protos[1]))
    return found
