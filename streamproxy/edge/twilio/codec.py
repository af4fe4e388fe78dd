"""μ-law 8 kHz <-> linear16, and the 8 -> 16 kHz upsampling Twilio audio gets before a session.

Zero-order hold keeps a constant run constant and maps 8 kHz sample ``i`` to 16 kHz samples
``2i, 2i+1``, so every timestamp is exactly the 8 kHz one.
"""

from __future__ import annotations

import numpy as np

TWILIO_RATE = 8000
UPSTREAM_RATE = 16000


def _mulaw_table() -> np.ndarray:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    mag = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)
    mag -= 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


#: G.711 μ-law byte -> linear16 sample (0xFF and 0x7F are silence).
MULAW_DECODE = _mulaw_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes to int16 samples."""
    return MULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples to G.711 μ-law bytes (for tests and tools; Twilio does the encoding in production)."""
    x = samples.astype(np.int32)
    sign = (x < 0).astype(np.int32)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    return (~((sign << 7) | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def upsample2(samples: np.ndarray) -> bytes:
    """8 kHz -> 16 kHz little-endian linear16 by zero-order hold (exact positions, constant runs kept)."""
    return np.repeat(samples, 2).astype("<i2").tobytes()
