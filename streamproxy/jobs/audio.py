"""Audio bodies: recognise the format, measure the duration, refuse what is not audio.

The gateway must know a file's duration before it routes it (sync vs queued) and must refuse
garbage *before* anything is enqueued, so this is a cheap header parser, never a decoder.
Exact durations come from WAV and FLAC headers and from raw encodings; other containers are
recognised by their magic bytes and their duration is *estimated* from the size at 128 kbit/s
(which over-estimates typical speech codecs, so such files err towards the queue).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ..deepgram.encodings import CONTAINER_BYTES_PER_SECOND as _ESTIMATE_BYTES_PER_S
from ..deepgram.encodings import CONTAINER_ENCODINGS as _CODED_ENCODINGS
from ..deepgram.encodings import RAW_BYTES_PER_SAMPLE as RAW_ENCODINGS
from ..deepgram.params import bounded_int

__all__ = ["AudioInfo", "BadAudio", "probe"]

_WAV_FORMATS = {1: "pcm", 3: "float", 6: "alaw", 7: "mulaw", 0xFFFE: "extensible"}


class BadAudio(ValueError):
    """The body is not audio we can route; the message is shown to the client (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class AudioInfo:
    container: str  # wav, raw, flac, ogg, mp3, webm, mp4
    duration_s: float
    exact: bool  # False: estimated from the size
    sample_rate: int = 0
    channels: int = 0
    content_type: str = "application/octet-stream"


def _wav(body: bytes) -> AudioInfo:
    if len(body) < 12 or body[8:12] != b"WAVE":
        raise BadAudio("not a WAV file: RIFF header without WAVE")
    pos = 12
    fmt: tuple[int, int, int, int, int] | None = None
    while pos + 8 <= len(body):
        cid = body[pos : pos + 4]
        (size,) = struct.unpack_from("<I", body, pos + 4)
        pos += 8
        if cid == b"fmt ":
            if size < 16 or pos + 16 > len(body):
                raise BadAudio("truncated WAV: incomplete fmt chunk")
            tag, channels, rate, byte_rate, _align = struct.unpack_from("<HHIIH", body, pos)
            fmt = (tag, channels, rate, byte_rate, _align)
        elif cid == b"data":
            if fmt is None:
                raise BadAudio("invalid WAV: data chunk before the fmt chunk")
            tag, channels, rate, byte_rate, _ = fmt
            if tag not in _WAV_FORMATS:
                raise BadAudio(f"unsupported WAV format tag {tag:#x} (PCM, float, mu-law or A-law only)")
            if not channels or not 1000 <= rate <= 384_000 or not byte_rate:
                raise BadAudio(f"invalid WAV header: {channels} channels, {rate} Hz, {byte_rate} bytes/s")
            present = len(body) - pos
            if size in (0, 0xFFFFFFFF):  # written while streaming: "until the end of the file"
                size = present
            if size > present:
                raise BadAudio(f"truncated WAV: the data chunk declares {size} bytes but only {present} are present")
            if size == 0:
                raise BadAudio("empty WAV: no audio samples")
            return AudioInfo("wav", size / byte_rate, True, rate, channels, "audio/wav")
        pos += size + (size & 1)
    raise BadAudio("truncated WAV: no data chunk" if fmt is not None else "truncated WAV: no fmt chunk")


def _flac(body: bytes) -> AudioInfo:
    # fLaC, then the STREAMINFO metadata block: 4-byte block header, 18 bytes of fixed fields.
    if len(body) < 8 + 18:
        raise BadAudio("truncated FLAC: no STREAMINFO block")
    info = body[8 : 8 + 18]
    bits = int.from_bytes(info[10:18], "big")
    rate = bits >> 44
    channels = ((bits >> 41) & 0x7) + 1
    total = bits & ((1 << 36) - 1)
    if not rate:
        raise BadAudio("invalid FLAC: sample rate 0")
    if total:
        return AudioInfo("flac", total / rate, True, rate, channels, "audio/flac")
    return AudioInfo("flac", len(body) / _ESTIMATE_BYTES_PER_S, False, rate, channels, "audio/flac")


def _sniff(body: bytes) -> tuple[str, str] | None:
    head = body[:12]
    if head.startswith(b"OggS"):
        return "ogg", "audio/ogg"
    if head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3", "audio/mpeg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm", "audio/webm"
    if head[4:8] == b"ftyp":
        return "mp4", "audio/mp4"
    if head.startswith(b"#!AMR"):
        return "amr", "audio/amr"
    return None


def _int_param(params: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        if default is None:
            raise BadAudio(f"{name} is required with encoding={params.get('encoding')}")
        return default
    return bounded_int(name, raw, lo, hi, error=BadAudio)


def probe(body: bytes, params: Mapping[str, str]) -> AudioInfo:
    """Format and duration of ``body`` given the request's Deepgram parameters; raises BadAudio."""
    if not body:
        raise BadAudio('empty request body: send audio bytes, or JSON {"url": ...}')
    encoding = params.get("encoding", "").lower()
    if encoding in RAW_ENCODINGS and not body.startswith(b"RIFF"):
        rate = _int_param(params, "sample_rate", None, 1000, 384_000)
        channels = _int_param(params, "channels", 1, 1, 16)
        frame = RAW_ENCODINGS[encoding] * channels
        if len(body) < frame:
            raise BadAudio(f"body too short for one {encoding} sample frame")
        return AudioInfo("raw", len(body) / (frame * rate), True, rate, channels)
    if encoding and encoding not in RAW_ENCODINGS and encoding not in _CODED_ENCODINGS:
        known = ", ".join(sorted([*RAW_ENCODINGS, *_CODED_ENCODINGS]))
        raise BadAudio(f"unknown encoding {encoding!r} (known: {known})")
    if body.startswith(b"RIFF"):
        return _wav(body)
    if body.startswith(b"fLaC"):
        return _flac(body)
    sniffed = _sniff(body)
    if sniffed is not None:
        container, ctype = sniffed
        return AudioInfo(container, len(body) / _ESTIMATE_BYTES_PER_S, False, content_type=ctype)
    if encoding:  # a coded stream without a container we recognise: trust the declared encoding
        return AudioInfo("raw", len(body) / _ESTIMATE_BYTES_PER_S, False)
    raise BadAudio(
        "unrecognised audio: send a WAV, FLAC, Ogg, MP3, WebM or MP4 file, or raw audio with "
        "encoding=linear16|linear32|mulaw|alaw and sample_rate"
    )
