"""Is an upstream's message valid Deepgram Live? A strict client must never see one that is not.

``live_problem`` returns None for a valid message, else a short, bounded label of what is wrong
(used as a metric label, so never free text from the peer).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FLUX_TYPES", "LIVE_TYPES", "flux_problem", "live_problem"]

#: Server message types of Deepgram Live (``/v1/listen``).
LIVE_TYPES = frozenset(
    {"Results", "Metadata", "SpeechStarted", "UtteranceEnd", "Error", "Warning", "ConfigureSuccess", "ConfigureFailure"}
)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _words_ok(words: Any) -> bool:
    if not isinstance(words, list):
        return False
    for w in words:
        if not isinstance(w, dict) or not isinstance(w.get("word"), str):
            return False
        if not _num(w.get("start")) or not _num(w.get("end")):
            return False
        if "confidence" in w and not _num(w["confidence"]):
            return False
        if "punctuated_word" in w and not isinstance(w["punctuated_word"], str | None):
            return False
    return True


def _results_problem(msg: dict[str, Any]) -> str | None:
    if not _num(msg.get("start")) or not _num(msg.get("duration")) or msg["duration"] < 0:
        return "results_times"
    for flag in ("is_final", "speech_final", "from_finalize"):
        if flag in msg and not isinstance(msg[flag], bool):
            return "results_flags"
    ci = msg.get("channel_index")
    if ci is not None and (not isinstance(ci, list) or not all(isinstance(i, int) for i in ci)):
        return "results_channel_index"
    channel = msg.get("channel")
    alts = channel.get("alternatives") if isinstance(channel, dict) else None
    if not isinstance(alts, list):
        return "results_channel"
    for alt in alts:
        if not isinstance(alt, dict) or not isinstance(alt.get("transcript"), str):
            return "results_alternative"
        if "confidence" in alt and not _num(alt["confidence"]):
            return "results_alternative"
        if not _words_ok(alt.get("words", [])):
            return "results_words"
    return None


def live_problem(msg: Any) -> str | None:
    if not isinstance(msg, dict):
        return "not_object"
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in LIVE_TYPES:
        return "unknown_type"
    if kind == "Results":
        return _results_problem(msg)
    if kind == "SpeechStarted" and not _num(msg.get("timestamp")):
        return "speech_started"
    if kind == "UtteranceEnd" and not _num(msg.get("last_word_end")):
        return "utterance_end"
    if kind == "Metadata" and not isinstance(msg.get("request_id", ""), str):
        return "metadata"
    return None


#: Server message types of Deepgram Flux (``/v2/listen``).
FLUX_TYPES = frozenset({"Connected", "TurnInfo", "ConfigureSuccess", "ConfigureFailure", "Warning", "Error"})
TURN_EVENTS = frozenset({"Update", "StartOfTurn", "EagerEndOfTurn", "TurnResumed", "EndOfTurn"})


def flux_problem(msg: Any) -> str | None:
    if not isinstance(msg, dict):
        return "not_object"
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in FLUX_TYPES:
        return "unknown_type"
    if kind != "TurnInfo":
        return None
    if msg.get("event") not in TURN_EVENTS:
        return "turn_event"
    if not isinstance(msg.get("turn_index"), int) or isinstance(msg.get("turn_index"), bool) or msg["turn_index"] < 0:
        return "turn_index"
    if not _num(msg.get("audio_window_start")) or not _num(msg.get("audio_window_end")):
        return "turn_window"
    if not isinstance(msg.get("transcript"), str) or not _num(msg.get("end_of_turn_confidence")):
        return "turn_fields"
    words = msg.get("words")
    if not isinstance(words, list):
        return "turn_words"
    for w in words:
        if not isinstance(w, dict) or not isinstance(w.get("word"), str) or not _num(w.get("confidence")):
            return "turn_words"
        for k in ("start", "end"):
            if w.get(k) is not None and not _num(w[k]):
                return "turn_words"
    return None
