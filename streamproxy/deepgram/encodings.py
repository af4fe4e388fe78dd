"""Deepgram's encodings, and how many bytes a second of a client's audio takes.

Positions in the session core are byte offsets into the client's audio stream; they are
turned into seconds only at the edges, by integer sample counts, so rebased timestamps are
bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Raw encodings get the full guarantee (replay from any sample boundary).
RAW_BYTES_PER_SAMPLE = {"linear16": 2, "linear32": 4, "mulaw": 1, "alaw": 1}
#: Containerised / compressed encodings: replay only from the start of the stream.
CONTAINER_ENCODINGS = frozenset({"opus", "ogg-opus", "flac", "amr-nb", "amr-wb", "g729", "speex", "webm", "mp3"})
#: Assumed byte rate of container audio (128 kbit/s, above typical speech codecs): it bounds the
#: ring for streams and estimates a file's duration, so both err long (more kept, sooner queued).
CONTAINER_BYTES_PER_SECOND = 16_000


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What the client said it sends; ``encoding=None`` means a self-describing container."""

    encoding: str | None = "linear16"
    sample_rate: int = 16_000
    channels: int = 1

    @property
    def raw(self) -> bool:
        return self.encoding in RAW_BYTES_PER_SAMPLE

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample frame (all channels); 1 for containers (no alignment)."""
        if not self.raw:
            return 1
        return RAW_BYTES_PER_SAMPLE[self.encoding or ""] * self.channels

    @property
    def bytes_per_second(self) -> int:
        if not self.raw:
            return CONTAINER_BYTES_PER_SECOND
        return self.sample_bytes * self.sample_rate

    def frame_bytes(self, frame_ms: int) -> int:
        """Bytes in one upstream frame, a whole number of sample frames."""
        n = self.bytes_per_second * frame_ms // 1000
        return max(self.sample_bytes, n - n % self.sample_bytes)

    def align(self, nbytes: int) -> int:
        return nbytes - nbytes % self.sample_bytes

    # Time <-> position conversions go through integer sample counts.
    def samples_to_bytes(self, samples: int) -> int:
        return samples * self.sample_bytes

    def bytes_to_samples(self, nbytes: int) -> int:
        return nbytes // self.sample_bytes

    def bytes_to_seconds(self, nbytes: int) -> float:
        return nbytes / self.bytes_per_second
