"""What was delivered to the client, numbered: ``proxy.seq`` and the messages a resuming client missed.

Plain state, no I/O; the session core numbers every message it delivers with ``proxy_events`` and
asks here what to re-send when a client reattaches with its last ``seq``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator


class OutboxError(ValueError):
    """A resume this outbox cannot serve; the message says why."""


class Outbox:
    __slots__ = ("_held", "keep", "seq")

    def __init__(self, maxlen: int, *, keep: bool) -> None:
        self.seq = 0  # the last number given out
        self.keep = keep  # hold delivered messages (only resumable sessions need them)
        self._held: deque[tuple[int, str]] = deque(maxlen=maxlen)

    def number(self) -> int:
        self.seq += 1
        return self.seq

    def hold(self, seq: int, text: str) -> None:
        if self.keep:
            self._held.append((seq, text))

    def check(self, last_seq: int) -> None:
        """Raise OutboxError unless everything after ``last_seq`` can be re-sent."""
        if last_seq > self.seq:
            raise OutboxError(f"last_seq {last_seq} is ahead of the session (seq {self.seq})")
        oldest = self._held[0][0] if self._held else self.seq + 1
        if last_seq + 1 < oldest:
            raise OutboxError(f"results after seq {last_seq} are no longer held (oldest kept: {oldest})")

    def after(self, last_seq: int) -> Iterator[str]:
        return (text for seq, text in self._held if seq > last_seq)
