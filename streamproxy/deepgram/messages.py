"""Deepgram message builders (Live, prerecorded) and the control messages clients send.

Every builder returns a plain ``dict`` for ``orjson.dumps``; the shapes validate against the
official SDK's pydantic models (``ListenV1Results``, ``ListenV1Metadata``, ``ListenV1Error`` ...).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from .types import Event, Result, SpeechStarted, UtteranceEnd, Word

KEEPALIVE = '{"type":"KeepAlive"}'
FINALIZE = '{"type":"Finalize"}'
CLOSE_STREAM = '{"type":"CloseStream"}'


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
    model_name: str | None,
    model_version: str = "1.0",
    model_arch: str = "streamproxy",
    sha256: str | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """Deepgram Live ``Metadata``, sent after the trailing results of a closed stream.

    ``model_name=None`` (a proxy that never heard the upstream's) lists no model.
    """
    models: list[str] = []
    info: dict[str, Any] = {}
    if model_name is not None:
        uid = model_uuid(model_name)
        models, info = [uid], {uid: _model_info(model_name, model_version, model_arch)}
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256 if sha256 is not None else hashlib.sha256(request_id.encode()).hexdigest(),
        "created": created if created is not None else _now_iso(),
        "duration": duration,
        "channels": channels,
        "models": models,
        "model_info": info,
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


#: ``err_code`` of Deepgram's HTTP error bodies by status.
HTTP_ERR_CODES = {
    400: "Bad Request",
    401: "INVALID_AUTH",
    403: "INSUFFICIENT_PERMISSIONS",
    429: "TOO_MANY_REQUESTS",
    503: "SERVICE_UNAVAILABLE",
}


def http_error_body(status: int, message: str, *, request_id: str = "") -> dict[str, Any]:
    """The JSON body of a Deepgram HTTP error (handshake refusals, prerecorded errors)."""
    return {"err_code": HTTP_ERR_CODES.get(status, "ERROR"), "err_msg": message, "request_id": request_id}
