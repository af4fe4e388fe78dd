"""Log lines are single JSON objects with extras, and never carry secrets or raw audio."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from streamproxy import logs
from streamproxy.logs import JsonFormatter, RedactFilter, TextFormatter, log_event, redact_text, setup_logging


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("streamproxy.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [orjson.loads(line) for line in text.splitlines()]


def test_json_line_shape(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("hello %s\nsecond line", "world", extra={"session_id": "s1", "request_id": "r1", "n": 3})
    (rec,) = lines(stream)
    assert rec["msg"] == "hello world\nsecond line"
    assert rec["level"] == "info"
    assert rec["logger"] == "streamproxy.test.logs"
    assert rec["ts"].endswith("Z") and "T" in rec["ts"]
    assert rec["session_id"] == "s1" and rec["request_id"] == "r1" and rec["n"] == 3
    assert list(rec)[:4] == ["ts", "level", "logger", "msg"]


def test_log_event(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    log_event(logger, "session.open", session_id="abc", name="clash", level=logging.WARNING)
    log_event(logger, "debug.only", level=logging.DEBUG)
    first, second = lines(stream)
    assert first["event"] == "session.open" and first["msg"] == "session.open"
    assert first["level"] == "warning"
    assert first["session_id"] == "abc"
    assert first["name_"] == "clash"
    assert second["event"] == "debug.only"


def test_exception_included(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    try:
        raise RuntimeError("bad token=abc123")
    except RuntimeError:
        logger.exception("failed")
    (rec,) = lines(stream)
    assert "RuntimeError" in rec["exc"]
    assert "abc123" not in rec["exc"]


def test_secret_fields_redacted(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info(
        "connect",
        extra={
            "api_key": "sk-live-1",
            "token": "tok-2",
            "Authorization": "Token abc",
            "key": "k-3",
            "headers": {
                "authorization": "Bearer xyz-4",
                "sec-websocket-protocol": "token, zzz-5",
                "ok": "fine",
            },
            "key_id": "kid",
            "empty_token": "",
        },
    )
    (rec,) = lines(stream)
    raw = stream.getvalue()
    for secret in ("sk-live-1", "tok-2", "abc", "k-3", "xyz-4", "zzz-5"):
        assert secret not in raw
    assert rec["api_key"] == "***" and rec["token"] == "***" and rec["key"] == "***"
    assert rec["headers"]["ok"] == "fine"
    assert rec["key_id"] == "kid"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Token 0123456789abcdef", "0123456789abcdef"),
        ("header Bearer abc.def.ghi", "abc.def.ghi"),
        ("wss://h/v1/listen?model=nova&token=s3cret&x=1", "s3cret"),
        ("url ?api_key=s3cret", "s3cret"),
        ('{"api_key": "s3cret"}', "s3cret"),
        ("DEEPGRAM_API_KEY=s3cret", "s3cret"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl here", "eyJzdWIiOiIxIn0"),
        ("protocols token, 0123456789abcdef0123", "0123456789abcdef0123"),
    ],
)
def test_message_patterns_redacted(capture: tuple[logging.Logger, io.StringIO], text: str, secret: str) -> None:
    logger, stream = capture
    logger.info(text)
    logger.info("via args: %s", text)
    assert secret not in stream.getvalue()
    assert all("***" in rec["msg"] for rec in lines(stream))


def test_plain_prose_survives() -> None:
    assert redact_text("session s1 closed after 12.5 s") == "session s1 closed after 12.5 s"
    assert redact_text("the token expired") == "the token expired"


def test_bytes_never_logged(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    audio = b"\x00\x01secret-audio" * 10
    logger.info("frame %r", audio, extra={"frame": audio, "nested": {"chunks": [b"ab", bytearray(b"cde")]}})
    logger.info(audio)
    first, second = lines(stream)
    assert "secret-audio" not in stream.getvalue()
    assert first["frame"] == f"<{len(audio)} bytes>"
    assert first["nested"]["chunks"] == ["<2 bytes>", "<3 bytes>"]
    assert f"<{len(audio)} bytes>" in first["msg"]
    assert second["msg"] == f"<{len(audio)} bytes>"


def test_unserialisable_extra(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = capture
    logger.info("odd", extra={"obj": object(), "ts": "mine"})
    (rec,) = lines(stream)
    assert rec["obj"].startswith("<object")
    assert rec["ts_"] == "mine" and rec["ts"] != "mine"


def test_setup_logging_json_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging("debug", "json")
        setup_logging("debug", "json")  # idempotent: one handler, one line
        logging.getLogger("some.library").debug("Authorization: Token abcdef", extra={"request_id": "r"})
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1
        rec = orjson.loads(out[0])
        assert rec["request_id"] == "r" and "abcdef" not in out[0]
        setup_logging("warning", "text")
        logging.getLogger("x").warning("plain", extra={"session_id": "s9"})
        text = capsys.readouterr().out
        assert "plain" in text and 'session_id="s9"' in text
        assert isinstance(logs._handler and logs._handler.formatter, TextFormatter)
    finally:
        if logs._handler is not None:
            root.removeHandler(logs._handler)
            logs._handler = None
        root.handlers[:] = before[0]
        root.setLevel(before[1])


def test_setup_logging_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"log\.level"):
        setup_logging("loud")
    with pytest.raises(ValueError, match=r"log\.format"):
        setup_logging("info", "xml")
