"""Deepgram Live query parameters: an allow-list, validated before the WebSocket upgrade.

Known parameters are passed through to the upstream unchanged; streamproxy's own extensions
(``proxy_events``, ``resume``, ``last_seq``) are consumed here. Anything else is a 400, because a
silently ignored typo (``interim_result=true``) is a bug the client never finds.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from multidict import MultiMapping

from ..deepgram.encodings import CONTAINER_ENCODINGS, RAW_BYTES_PER_SAMPLE, AudioFormat
from ..deepgram.params import BOOL_PARAMS as DEEPGRAM_BOOL_PARAMS
from ..deepgram.params import FLUX_PARAMS, LIVE_PARAMS, bounded_int, check_query

#: streamproxy's own extensions, consumed here and never forwarded.
PROXY_PARAMS = frozenset({"proxy_events", "resume", "last_seq", "audio_offset"})
BOOL_PARAMS = DEEPGRAM_BOOL_PARAMS | {"proxy_events"}


class ParamError(ValueError):
    """A query parameter the client must fix; the message is shown to it verbatim."""


@dataclass(frozen=True, slots=True)
class StreamParams:
    fmt: AudioFormat
    upstream_query: str  # what the upstream receives (proxy extensions removed)
    proxy_events: bool = False
    interim_results: bool = False
    resume: str | None = None
    last_seq: int | None = None
    audio_offset: int | None = None


def _int(name: str, value: str, lo: int, hi: int) -> int:
    return bounded_int(name, value, lo, hi, error=ParamError)


def _encoding(query: MultiMapping[str], encoding: str | None) -> tuple[str | None, int]:
    """(encoding, sample rate); ``None``: a self-describing container."""
    if encoding is not None:
        encoding = encoding.lower()
        if encoding not in RAW_BYTES_PER_SAMPLE and encoding not in CONTAINER_ENCODINGS:
            allowed = ", ".join(sorted(set(RAW_BYTES_PER_SAMPLE) | CONTAINER_ENCODINGS))
            raise ParamError(f"unsupported encoding {encoding!r}; use one of {allowed}")
    sample_rate = query.get("sample_rate")
    if encoding in RAW_BYTES_PER_SAMPLE and sample_rate is None:
        raise ParamError(f"sample_rate is required with encoding={encoding}")
    return encoding, _int("sample_rate", sample_rate, 2000, 192_000) if sample_rate is not None else 16_000


def _resume(query: MultiMapping[str]) -> tuple[str | None, int | None, int | None]:
    """streamproxy's resume extension: (session id, last seq, audio offset)."""
    resume = query.get("resume")
    last_seq = _int("last_seq", query["last_seq"], 0, 2**62) if "last_seq" in query else None
    audio_offset = _int("audio_offset", query["audio_offset"], 0, 2**62) if "audio_offset" in query else None
    if (last_seq is not None or audio_offset is not None) and not resume:
        raise ParamError("last_seq and audio_offset are only valid with resume=<session id>")
    return resume, last_seq, audio_offset


def parse_params(query: MultiMapping[str]) -> StreamParams:
    """Validate a Deepgram Live query; raises ParamError with a message for the client."""
    check_query(query, LIVE_PARAMS | PROXY_PARAMS, bools=BOOL_PARAMS, error=ParamError)
    encoding, sr = _encoding(query, query.get("encoding"))
    channels = _int("channels", query.get("channels", "1"), 1, 16)
    if "endpointing" in query and query["endpointing"].lower() not in ("true", "false"):
        _int("endpointing", query["endpointing"], 0, 60_000)  # Deepgram: true, false or milliseconds
    if "utterance_end_ms" in query:
        _int("utterance_end_ms", query["utterance_end_ms"], 0, 60_000)
    resume, last_seq, audio_offset = _resume(query)
    upstream = [(k, v) for k, v in query.items() if k not in PROXY_PARAMS]
    return StreamParams(
        fmt=AudioFormat(encoding, sr, channels),
        upstream_query=urlencode(upstream),
        proxy_events=query.get("proxy_events", "false").lower() == "true",
        interim_results=query.get("interim_results", "false").lower() == "true",
        resume=resume,
        last_seq=last_seq,
        audio_offset=audio_offset,
    )


#: Flux booleans (and ours).
FLUX_BOOL_PARAMS = frozenset({"profanity_filter", "numerals", "mip_opt_out", "proxy_events"})
#: Deepgram's documented ranges for the Flux thresholds.
FLUX_RANGES = {"eot_threshold": (0.5, 0.9), "eager_eot_threshold": (0.3, 0.9)}


def _fraction(name: str, value: str) -> float:
    lo, hi = FLUX_RANGES[name]
    try:
        x = float(value)
    except ValueError:
        raise ParamError(f"{name} must be a number, got {value!r}") from None
    if not lo <= x <= hi:
        raise ParamError(f"{name} must be between {lo} and {hi}, got {value}")
    return x


def parse_flux_params(query: MultiMapping[str]) -> StreamParams:
    """Validate a Deepgram Flux (``/v2/listen``) query; raises ParamError with a message for the client."""
    check_query(query, FLUX_PARAMS | PROXY_PARAMS, bools=FLUX_BOOL_PARAMS, error=ParamError)
    model = query.get("model")
    if model is None or not model.startswith("flux-"):
        raise ParamError(f"model must be a Flux model (flux-general-en, flux-general-multi), got {model!r}")
    encoding, sr = _encoding(query, query.get("encoding") or "linear16")
    eot = _fraction("eot_threshold", query["eot_threshold"]) if "eot_threshold" in query else 0.7
    if "eager_eot_threshold" in query and _fraction("eager_eot_threshold", query["eager_eot_threshold"]) > eot:
        raise ParamError("eager_eot_threshold must not be above eot_threshold")
    if "eot_timeout_ms" in query:
        _int("eot_timeout_ms", query["eot_timeout_ms"], 500, 10_000)
    resume, last_seq, audio_offset = _resume(query)
    upstream = [(k, v) for k, v in query.items() if k not in PROXY_PARAMS]
    return StreamParams(
        fmt=AudioFormat(encoding, sr, 1),
        upstream_query=urlencode(upstream),
        proxy_events=query.get("proxy_events", "false").lower() == "true",
        resume=resume,
        last_seq=last_seq,
        audio_offset=audio_offset,
    )
