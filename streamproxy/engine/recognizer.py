"""The recognizer contract every engine kind implements (marker, pocketsphinx, whisper)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..deepgram.types import Event
from .dsp import StreamResampler


class Recognizer(Protocol):
    """Sans-I/O streaming recognizer: bytes in, events out."""

    @property
    def position_s(self) -> float:
        """Audio received so far, in seconds."""
        ...

    def feed(self, pcm: bytes) -> list[Event]: ...

    def finalize(self) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class Resampled:
    """A recognizer fed at another sample rate: 8 kHz telephone audio for a 16 kHz-only model.

    Times stay in seconds of the client's audio (the resampler's delay is a few samples), so the
    wrapped recognizer's events need no rebasing; its tail is flushed only at close, since a
    ``Finalize`` does not end the stream."""

    def __init__(self, inner: Recognizer, rate_in: int, rate_out: int) -> None:
        self.inner = inner
        self.rate_in = rate_in
        self._resample = StreamResampler(rate_in, rate_out)
        self._bytes = 0
        self._odd = b""  # a chunk's trailing half sample, completed by the next chunk

    @property
    def position_s(self) -> float:
        return self._bytes / 2 / self.rate_in

    def _pcm(self, x: np.ndarray) -> bytes:
        return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()

    def feed(self, pcm: bytes) -> list[Event]:
        self._bytes += len(pcm)
        data = self._odd + pcm
        n = len(data) - len(data) % 2
        self._odd = data[n:]
        if not n:
            return []
        return self.inner.feed(self._pcm(self._resample(np.frombuffer(data[:n], dtype="<i2"))))

    def finalize(self) -> list[Event]:
        return self.inner.finalize()

    def close(self) -> list[Event]:
        tail = self._resample.flush()
        out = self.inner.feed(self._pcm(tail)) if tail.size else []
        return out + self.inner.close()
