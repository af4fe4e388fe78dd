"""Logging: one JSON object per line on stdout (journald keeps it), secrets scrubbed.

Redaction happens in a handler filter so it covers every logger that propagates to root,
including third-party libraries that might log a header or a URL with a key in it.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "REQUEST_ID",
    "JsonFormatter",
    "RedactFilter",
    "RequestIdFilter",
    "TextFormatter",
    "log_event",
    "redact_text",
    "redact_value",
    "setup_logging",
]

REDACTED = "***"

# The id of the request being handled; set by the edge middleware, inherited by the tasks and
# callbacks a request creates, and stamped on every log line they write.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("streamproxy_request_id", default=None)

# Field names whose values are secrets, compared case-insensitively with "-" read as "_".
_SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "proxy_authorization",
        "key",
        "secret",
        "token_secret",
        "password",
        "passwd",
        "cookie",
        "set_cookie",
        "sec_websocket_protocol",  # browsers send "token, <key>" there
    }
)
_SECRET_SUFFIXES = ("_api_key", "_token", "_secret", "_password")

_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=value / "key": "value" / Authorization: Token xyz (the scheme is swallowed too)
    (
        re.compile(
            r"(?i)\b((?:\w*?_)?(?:authorization|api[_-]?key|access_token|token_secret|token|key|secret|password))"
            r"(\"?'?\s*[:=]\s*\"?'?)((?:(?:token|bearer|basic)\s+)?[^\s\"'&,;]+)"
        ),
        r"\1\2" + REDACTED,
    ),
    # Authorization schemes as written in headers: "Token abc", "Bearer abc".
    (re.compile(r"\b(Token|Bearer|Basic|TOKEN|BEARER)(\s+)(?!\*\*\*)[^\s\"',;]+"), r"\1\2" + REDACTED),
    # WebSocket subprotocol auth: "token, <key>".
    (re.compile(r"(?i)\b(token\s*,\s*)(?!\*\*\*)[A-Za-z0-9._~+/=-]{16,}"), r"\1" + REDACTED),
    # JWTs anywhere.
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
)

# Attributes every LogRecord has; anything else on a record came from extra={...}.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_BASE_KEYS = ("ts", "level", "logger", "msg")


def _is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


def redact_text(text: str) -> str:
    """Scrub things that look like credentials out of free text."""
    for pattern, repl in _TEXT_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_value(value: Any, key: str = "", _depth: int = 0) -> Any:
    """Make a value safe and cheap to log: secrets masked, bytes summarised, containers walked."""
    if key and _is_secret_key(key) and value not in (None, "", b""):
        return REDACTED
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return redact_text(value)
    if _depth > 8:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, str(k), _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, "", _depth + 1) for v in value]
    return value


class RedactFilter(logging.Filter):
    """Rewrites records in place: message pre-rendered and scrubbed, extras scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, bytes | bytearray | memoryview):
            msg = f"<{len(msg)} bytes>"
        if record.args:
            args = record.args
            safe_args: Any
            if isinstance(args, Mapping):
                safe_args = {k: _safe_arg(v) for k, v in args.items()}
            else:
                safe_args = tuple(_safe_arg(a) for a in args)
            try:
                text = str(msg) % safe_args
            except (TypeError, ValueError, KeyError):
                text = f"{msg} {safe_args!r}"
        else:
            text = str(msg)
        record.msg = redact_text(text)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = redact_value(value, key)
        return True


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` from the context to records that do not carry one explicitly."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            rid = REQUEST_ID.get()
            if rid is not None:
                record.request_id = rid
        return True


def _safe_arg(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


def _iso(created: float) -> str:
    secs = int(created)
    millis = int((created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, set | frozenset):
        return list(obj)
    return str(obj)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then extra fields, then exc."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.msg if record.args is None and isinstance(record.msg, str) else record.getMessage()
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        for key, value in _extras(record).items():
            out[key + "_" if key in _BASE_KEYS else key] = redact_value(value, key)
        if record.exc_info:
            out["exc"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact_text(record.exc_text)
        if record.stack_info:
            out["stack"] = redact_text(self.formatStack(record.stack_info))
        return orjson.dumps(out, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            tail = " ".join(
                f"{k}={orjson.dumps(redact_value(v, k), default=_default).decode()}" for k, v in extras.items()
            )
            first, sep, rest = line.partition("\n")
            line = f"{first} {tail}{sep}{rest}"
        return line


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_handler: logging.Handler | None = None


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Route the root logger to stdout; calling it again replaces the previous setup."""
    global _handler
    try:
        numeric = _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"log.level: unknown level {level!r} (one of {', '.join(_LEVELS)})") from None
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"log.format: must be 'json' or 'text' (got {fmt!r})")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler


def log_event(
    logger: logging.Logger | logging.LoggerAdapter[Any],
    event: str,
    /,
    *,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log a structured event: msg and the ``event`` field are both the event name.

    Fields that clash with LogRecord attributes (e.g. ``name``, ``msg``) get a ``_`` suffix
    instead of crashing the logging call.
    """
    if not logger.isEnabledFor(level):
        return
    extra = {(k + "_" if k in _RECORD_ATTRS else k): v for k, v in fields.items()}
    extra["event"] = event
    logger.log(level, event, extra=extra)
