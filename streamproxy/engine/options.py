"""Deepgram query parameters → what the engine's recognizers act on.

The names and their allow-list are Deepgram's (``streamproxy.deepgram.params``); this module adds
only the engine's own limits (linear16 mono, 8-48 kHz, 16 kHz for pocketsphinx), so a client learns
at the handshake, with a 400, what the embedded engine cannot do instead of getting wrong words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multidict import MultiMapping

from streamproxy.deepgram.flux import FLUX_MODELS, FluxThresholds
from streamproxy.deepgram.params import FLUX_PARAMS, LIVE_PARAMS, PRERECORDED_PARAMS, bounded_int, check_query
from streamproxy.engine.flux import ThresholdError, check_thresholds
from streamproxy.engine.formatting import Formatting

__all__ = [
    "BadRequest",
    "FluxOptions",
    "LiveOptions",
    "check_prerecorded_params",
    "parse_flux_params",
    "parse_live_params",
    "prerecorded_options",
    "raw_audio_format",
    "wants_utterances",
]


class BadRequest(Exception):
    """A request the client must fix; ``str(exc)`` is shown to it verbatim."""


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """The parameters the recognizers act on (everything else is accepted and ignored)."""

    sample_rate: int = 16000
    interim_results: bool = False
    endpointing_ms: int | None = 300
    vad_events: bool = False
    utterance_end_ms: int | None = None
    model: str | None = None
    punctuate: bool = False  # punctuate=true or smart_format=true
    numerals: bool = False  # numerals=true or smart_format=true

    @property
    def formatting(self) -> Formatting:
        return Formatting(punctuate=self.punctuate, numerals=self.numerals)

    def recognizer_kwargs(self) -> dict[str, Any]:
        return {
            "interim_results": self.interim_results,
            "endpointing_ms": self.endpointing_ms,
            "vad_events": self.vad_events,
            "utterance_end_ms": self.utterance_end_ms,
        }


def _int(name: str, value: str, lo: int, hi: int) -> int:
    return bounded_int(name, value, lo, hi, error=BadRequest)


def _bool(query: MultiMapping[str], name: str) -> bool:
    return query.get(name, "false").lower() == "true"


def _punctuate(query: MultiMapping[str]) -> bool:
    return _bool(query, "punctuate") or _bool(query, "smart_format")


def _numerals(query: MultiMapping[str]) -> bool:
    return _bool(query, "numerals") or _bool(query, "smart_format")


def _endpointing(query: MultiMapping[str]) -> int | None:
    if "endpointing" not in query:
        return 300
    raw = query["endpointing"].lower()
    if raw == "false":
        return None
    if raw == "true":
        return 300
    return _int("endpointing", raw, 0, 60_000)


def _mono_only(query: MultiMapping[str]) -> None:
    if _bool(query, "multichannel"):
        raise BadRequest("multichannel=true is not supported by the embedded engine")


def parse_live_params(query: MultiMapping[str], kind: str) -> LiveOptions:
    """Validate Deepgram Live query parameters for ``kind`` (every kind takes every rate from 8 to
    48 kHz: Whisper and pocketsphinx resample); raises :class:`BadRequest`."""
    check_query(query, LIVE_PARAMS, error=BadRequest)
    encoding = query.get("encoding", "linear16").lower()
    if encoding != "linear16":
        raise BadRequest(f"unsupported encoding {encoding!r}: the embedded engine accepts only linear16")
    sr = _int("sample_rate", query["sample_rate"], 8000, 48000) if "sample_rate" in query else 16000
    channels = _int("channels", query.get("channels", "1"), 1, 16)
    if channels != 1:
        raise BadRequest(f"the embedded engine accepts only mono audio (channels=1), got channels={channels}")
    _mono_only(query)
    endpointing = _endpointing(query)
    ue = _int("utterance_end_ms", query["utterance_end_ms"], 1, 60_000) if "utterance_end_ms" in query else None
    return LiveOptions(
        sample_rate=sr,
        interim_results=_bool(query, "interim_results"),
        endpointing_ms=endpointing,
        vad_events=_bool(query, "vad_events"),
        utterance_end_ms=ue,
        model=query.get("model"),
        punctuate=_punctuate(query),
        numerals=_numerals(query),
    )


@dataclass(frozen=True, slots=True)
class FluxOptions:
    """What a ``/v2/listen`` stream acts on: the audio format and the end-of-turn settings."""

    sample_rate: int
    thresholds: FluxThresholds
    model: str
    numerals: bool = False  # numerals=true: number words as digits (set at connection time only)


def _unit_float(name: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise BadRequest(f"{name} must be a number, got {value!r}")
    return x


def parse_flux_params(query: MultiMapping[str], kind: str) -> FluxOptions:
    """Validate Flux query parameters (``FLUX_PARAMS``, Deepgram's threshold ranges); raises BadRequest."""
    check_query(query, FLUX_PARAMS, bools=("profanity_filter", "numerals", "mip_opt_out"), error=BadRequest)
    model = query.get("model", "flux-general-en")
    if model not in FLUX_MODELS:
        raise BadRequest(f"model {model!r} is not a Flux model: /v2/listen accepts {', '.join(sorted(FLUX_MODELS))}")
    encoding = query.get("encoding", "linear16").lower()
    if encoding != "linear16":
        raise BadRequest(f"unsupported encoding {encoding!r}: the embedded engine accepts only linear16")
    sr = _int("sample_rate", query["sample_rate"], 8000, 48000) if "sample_rate" in query else 16000
    th = FluxThresholds(
        eot_threshold=_unit_float("eot_threshold", query["eot_threshold"]) if "eot_threshold" in query else 0.7,
        eager_eot_threshold=(
            _unit_float("eager_eot_threshold", query["eager_eot_threshold"]) if "eager_eot_threshold" in query else None
        ),
        eot_timeout_ms=_int("eot_timeout_ms", query["eot_timeout_ms"], 500, 10_000)
        if "eot_timeout_ms" in query
        else 5000,
        keyterms=tuple(query.getall("keyterm", ())),
    )
    try:
        check_thresholds(th)
    except ThresholdError as exc:
        raise BadRequest(str(exc)) from None
    return FluxOptions(sample_rate=sr, thresholds=th, model=model, numerals=_bool(query, "numerals"))


def check_prerecorded_params(query: MultiMapping[str]) -> None:
    """The checks of a prerecorded request that need no body (run before reading it)."""
    check_query(query, PRERECORDED_PARAMS, error=BadRequest)
    _endpointing(query)
    _mono_only(query)
    if "callback" in query:
        raise BadRequest("callback is not supported by the embedded engine (the gateway queues callbacks)")


def raw_audio_format(query: MultiMapping[str]) -> tuple[int, int]:
    """``(sample_rate, channels)`` of a raw (not WAV) prerecorded body, which must be linear16."""
    if "encoding" not in query:
        raise BadRequest("unrecognised audio: send a PCM WAV file, or raw audio with encoding=linear16")
    if query["encoding"].lower() != "linear16":
        raise BadRequest(f"unsupported encoding {query['encoding']!r}: the embedded engine accepts only linear16")
    if "sample_rate" not in query:
        raise BadRequest("sample_rate is required with encoding=linear16")
    sr = _int("sample_rate", query["sample_rate"], 8000, 48000)
    return sr, _int("channels", query.get("channels", "1"), 1, 16)


def prerecorded_options(query: MultiMapping[str], sample_rate: int) -> LiveOptions:
    """The recognizer options of a prerecorded request whose audio (now mono) is at ``sample_rate``."""
    return LiveOptions(
        sample_rate=sample_rate,
        endpointing_ms=_endpointing(query),
        model=query.get("model"),
        punctuate=_punctuate(query),
        numerals=_numerals(query),
    )


def wants_utterances(query: MultiMapping[str]) -> bool:
    """``utterances=true``: the prerecorded response also groups words into utterances."""
    return _bool(query, "utterances")
