"""Where each Twilio media frame goes on the stream timeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .codec import TWILIO_RATE

#: A timestamp jump larger than this is not a lost packet: the stream is refused rather than padded.
MAX_GAP_S = 60.0
#: Silence generated for gaps never exceeds the call's elapsed wall time by more than this.
SILENCE_SLACK_S = 2.0


@dataclass(slots=True)
class MediaPlacer:
    """Places Twilio media frames on the stream timeline by their ``timestamp``.

    ``pos`` counts 8 kHz samples placed so far; a frame claiming to start later is preceded by
    silence, one claiming to start earlier has its overlap trimmed. The silence is audio the
    gateway makes up and an upstream bills, so in total it is bounded by the time the call has
    really lasted (a lost packet cannot hide more audio than that); a frame claiming a later start
    than that bound allows is placed right after what was placed, and the sender's timeline is
    shifted by what was not filled (``unfilled``), so its next frames follow on.
    """

    clock: Callable[[], float] = time.monotonic
    started: float = -1.0  # clock() at creation unless given
    pos: int = 0
    filled: int = 0  # samples of silence inserted
    trimmed: int = 0  # samples dropped as already placed
    unfilled: int = 0  # samples of claimed gaps not filled: beyond the call's elapsed time

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def place(self, payload: bytes, timestamp_ms: int | None) -> tuple[int, bytes]:
        """(silence samples to insert first, μ-law bytes to append)."""
        gap = 0
        if timestamp_ms is not None:
            at = timestamp_ms * TWILIO_RATE // 1000 - self.unfilled  # the sender's timeline, less what was not filled
            if at > self.pos:
                gap = at - self.pos
                if gap > MAX_GAP_S * TWILIO_RATE:
                    raise ValueError(
                        f"media timestamp {timestamp_ms} ms jumps {gap / TWILIO_RATE:.1f} s ahead of the audio "
                        f"received (more than {MAX_GAP_S:.0f} s)"
                    )
                budget = int((self.clock() - self.started + SILENCE_SLACK_S) * TWILIO_RATE) - self.filled
                if gap > budget:
                    self.unfilled += gap - max(0, budget)
                    gap = max(0, budget)
            elif at < self.pos:
                skip = min(len(payload), self.pos - at)
                self.trimmed += skip
                payload = payload[skip:]
        self.filled += gap
        self.pos += gap + len(payload)
        return gap, payload
