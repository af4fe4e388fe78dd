"""PCM helpers of the engine: WAV decoding, down-mixing, and the two resamplers.

Every recognizer takes mono int16 (or float32 at 16 kHz for whisper), so whatever a client sends
is brought to that here, once. PyAV is imported only when the streaming resampler is used: the
marker and pocketsphinx kinds must not pay for it.
"""

from __future__ import annotations

import io
import struct
import wave
from typing import Any

import numpy as np

from streamproxy.engine.options import BadRequest

__all__ = ["StreamResampler", "downmix", "resample", "wav_to_pcm16"]


def downmix(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved ``channels`` int samples → their rounded mean (a trailing partial frame is dropped)."""
    if channels <= 1:
        return samples
    return samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1).round()


def wav_to_pcm16(body: bytes) -> tuple[np.ndarray, int]:
    """Decode a PCM WAV (8/16/24/32-bit, any channels) to mono int16; raises :class:`BadRequest`.

    A WAV written while streaming declares its data size as 0xFFFFFFFF ("until the end") and may
    end in the middle of a sample frame: that partial frame is dropped, as a streaming reader
    would. Whatever the body, a bad one is the client's error (400), never the engine's (500).
    """
    try:
        with wave.open(io.BytesIO(body), "rb") as w:
            sr, width, nch = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, ValueError, OverflowError, struct.error) as exc:
        raise BadRequest(f"could not read the WAV file (PCM only): {exc}") from None
    frames = frames[: len(frames) // (width * nch) * (width * nch)]
    if width == 1:
        a = (np.frombuffer(frames, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        a = np.frombuffer(frames, dtype="<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        a = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8) >> 16
    elif width == 4:
        a = np.frombuffer(frames, dtype="<i4") >> 16
    else:
        raise BadRequest(f"unsupported WAV sample width {width * 8} bits")
    if nch > 1:
        a = downmix(a, nch).astype(np.int32)
    return a.astype("<i2"), sr


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Whole-signal int16 resampling: windowed-sinc low-pass plus linear interpolation.

    Good enough to feed pocketsphinx a file at another rate, and needs nothing beyond numpy.
    """
    if sr_in == sr_out or x.size == 0:
        return x
    xf = x.astype(np.float32)
    if sr_out < sr_in:
        fc = 0.45 * sr_out / sr_in
        n = np.arange(-64, 65)
        h = (2 * fc * np.sinc(2 * fc * n) * np.hamming(n.size)).astype(np.float32)
        xf = np.convolve(xf, h / h.sum(), mode="same")
    n_out = int(x.size * sr_out // sr_in)
    t = np.arange(n_out, dtype=np.float64) * (sr_in / sr_out)
    y = np.interp(t, np.arange(x.size, dtype=np.float64), xf)
    return np.clip(np.round(y), -32768, 32767).astype("<i2")


class StreamResampler:
    """Streaming int16 → float32 mono resampler (libswresample through PyAV, which faster-whisper brings).

    Stateful across calls, so chunk boundaries leave no clicks; :meth:`flush` returns the filter's
    delayed tail at the end of the audio.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        import av

        self.rate = rate_in
        self._r = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
        self._pts = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import av

        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += x.size
        return self._join(self._r.resample(frame))

    def flush(self) -> np.ndarray:
        """The filter's delayed tail, at the end of the audio."""
        return self._join(self._r.resample(None))

    @staticmethod
    def _join(outs: list[Any]) -> np.ndarray:
        if not outs:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([o.to_ndarray().reshape(-1) for o in outs]).astype(np.float32, copy=False)
