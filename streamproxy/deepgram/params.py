"""Deepgram's query vocabulary and the one allow-list check every route uses.

A silently ignored typo (``interim_result=true``) is a bug the client never finds, so every
route refuses names it does not know, with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import MultiMapping

__all__ = [
    "BOOL_PARAMS",
    "BOOL_VALUES",
    "FLUX_PARAMS",
    "LIVE_PARAMS",
    "MULTI_VALUED_PARAMS",
    "PRERECORDED_PARAMS",
    "bounded_int",
    "check_query",
]

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


#: Parameters Deepgram takes as lists (the key repeated); every other key may appear once.
MULTI_VALUED_PARAMS = frozenset(
    {
        "custom_intent",
        "custom_topic",
        "extra",
        "keyterm",
        "keywords",
        "language_hint",
        "redact",
        "replace",
        "search",
        "tag",
    }
)
_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def bounded_int(name: str, value: str, lo: int, hi: int, *, error: type[Exception] = ValueError) -> int:
    """A query parameter as an integer in [lo, hi], or ``error`` with a message naming it.

    ASCII decimal digits only: ``int()`` also takes ``١٦٠٠٠``, ``16_000`` and surrounding
    whitespace, which Deepgram refuses and an upstream would read differently.
    """
    if _DECIMAL.fullmatch(value) is None:
        raise error(f"{name} must be an integer, got {value[:40]!r}")
    n = int(value)
    if not lo <= n <= hi:
        raise error(f"{name} must be between {lo} and {hi}, got {n}")
    return n


#: Flux (``/v2/listen``) query parameters.
FLUX_PARAMS = frozenset(
    {
        "model", "encoding", "sample_rate", "eot_threshold", "eager_eot_threshold", "eot_timeout_ms",
        "keyterm", "language_hint", "profanity_filter", "numerals", "redact", "mip_opt_out", "tag",
    }
)  # fmt: skip
BOOL_VALUES = {"true": True, "false": False}


def check_query(
    query: MultiMapping[str],
    allowed: Iterable[str],
    *,
    bools: Iterable[str] = BOOL_PARAMS,
    error: type[Exception] = ValueError,
) -> None:
    """Refuse unknown names, single-valued names given more than once, and boolean parameters
    that are not ``true``/``false``."""
    allowed = frozenset(allowed)
    unknown = sorted({k for k in query if k not in allowed})
    if unknown:
        raise error(f"unknown query parameter(s): {', '.join(unknown)}")
    for key in sorted(set(query)):
        if key not in MULTI_VALUED_PARAMS and len(query.getall(key)) > 1:
            raise error(f"{key} is given more than once; it takes a single value")
    bools = frozenset(bools)
    for key in query:
        if key in bools:
            for v in query.getall(key):
                if v.lower() not in BOOL_VALUES:
                    raise error(f"{key} must be true or false, got {v!r}")
