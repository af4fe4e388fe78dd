"""The recognizer contract every engine kind implements (marker, pocketsphinx, whisper)."""

from __future__ import annotations

from typing import Protocol

from ..deepgram.types import Event


class Recognizer(Protocol):
    """Sans-I/O streaming recognizer: bytes in, events out."""

    @property
    def position_s(self) -> float:
        """Audio received so far, in seconds."""
        ...

    def feed(self, pcm: bytes) -> list[Event]: ...

    def finalize(self) -> list[Event]: ...

    def close(self) -> list[Event]: ...
