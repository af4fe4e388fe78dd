"""Where each Twilio media frame goes on the stream timeline."""

from __future__ import annotations

from dataclasses import dataclass

from .codec import TWILIO_RATE

#: A timestamp jump larger than this is not a lost packet: the stream is refused rather than padded.
MAX_GAP_S = 60.0


@dataclass(slots=True)
class MediaPlacer:
    """Places Twilio media frames on the stream timeline by their ``timestamp``.

    ``pos`` counts 8 kHz samples placed so far; a frame claiming to start later is preceded by
    silence, one claiming to start earlier has its overlap trimmed.
    """

    pos: int = 0
    filled: int = 0  # samples of silence inserted
    trimmed: int = 0  # samples dropped as already placed

    def place(self, payload: bytes, timestamp_ms: int | None) -> tuple[int, bytes]:
        """(silence samples to insert first, μ-law bytes to append)."""
        gap = 0
        if timestamp_ms is not None:
            at = timestamp_ms * TWILIO_RATE // 1000
            if at > self.pos:
                gap = at - self.pos
                if gap > MAX_GAP_S * TWILIO_RATE:
                    raise ValueError(
                        f"media timestamp {timestamp_ms} ms jumps {gap / TWILIO_RATE:.1f} s ahead of the audio "
                        f"received (more than {MAX_GAP_S:.0f} s)"
                    )
            elif at < self.pos:
                skip = min(len(payload), self.pos - at)
                self.trimmed += skip
                payload = payload[skip:]
        self.filled += gap
        self.pos += gap + len(payload)
        return gap, payload
