"""Ring buffer of unacknowledged audio (and the control messages interleaved with it).

Items are keyed by their absolute byte position in the client's stream. ``release(ack)`` frees
everything before the acknowledgement watermark; ``replay()`` yields what a fresh upstream must
receive to continue from there. The byte bound is hard: overflow drops the oldest audio
and returns how much, so the caller can count and report it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class Item:
    pos: int  # absolute byte position of the first byte (for a control: where it was sent)
    data: bytes | None  # audio bytes, or None for a control message
    control: str | None = None  # serialized control message (e.g. Finalize)

    @property
    def end(self) -> int:
        return self.pos + (len(self.data) if self.data is not None else 0)


class RingBuffer:
    """Bounded FIFO of frames and controls, positions strictly increasing for audio."""

    __slots__ = ("_items", "capacity", "dropped_bytes", "nbytes", "start")

    def __init__(self, capacity: int) -> None:
        self._items: deque[Item] = deque()
        self.capacity = capacity
        self.nbytes = 0  # audio bytes held
        self.start = 0  # absolute position of the oldest byte held (== watermark unless overflowed)
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def end(self) -> int:
        return self.start + self.nbytes

    def append_audio(self, pos: int, data: bytes, *, align: int = 1) -> int:
        """Add a frame; returns bytes dropped from the head to stay within capacity."""
        if not self._items and self.nbytes == 0:
            self.start = pos
        self._items.append(Item(pos, data))
        self.nbytes += len(data)
        if self.nbytes <= self.capacity:
            return 0
        excess = self.nbytes - self.capacity
        excess += (-excess) % align  # never split a sample frame
        return self._drop_head(excess)

    def append_control(self, pos: int, message: str) -> None:
        if not self._items and self.nbytes == 0:
            self.start = pos
        self._items.append(Item(pos, None, message))

    def _drop_head(self, nbytes: int) -> int:
        # Controls in the dropped audio stay: a Finalize is still owed its answer after a replay.
        dropped = self._cut(self.start + nbytes, answered=0)
        self.dropped_bytes += dropped
        return dropped

    def release(self, ack: int, answered: int = 0) -> int:
        """Free audio before ``ack`` and the ``answered`` oldest controls; returns bytes freed.

        A control is only released once answered (a Finalize by its ``from_finalize`` final): if
        the connection dies first, it must be replayed even though audio after it was acknowledged.
        """
        return self._cut(max(ack, self.start), answered=answered)

    def _cut(self, target: int, *, answered: int) -> int:
        freed = 0
        items = self._items
        kept: list[Item] = []  # unanswered controls that stay at the head
        while items:
            head = items[0]
            if head.data is None:
                if head.pos > target:
                    break
                items.popleft()
                if answered > 0:
                    answered -= 1
                else:
                    kept.append(head)
                continue
            if head.end <= target:
                items.popleft()
                freed += len(head.data)
                continue
            if head.pos < target:
                cut = target - head.pos
                head.data = head.data[cut:]
                head.pos = target
                freed += cut
            break
        if answered > 0:  # answers for controls queued behind audio still held
            for i, item in enumerate(items):
                if answered == 0:
                    break
                if item.data is None:
                    del items[i]
                    answered -= 1
                    break
        items.extendleft(reversed(kept))
        self.nbytes -= freed
        self.start = target
        return freed

    def replay(self) -> Iterator[Item]:
        """Everything held, oldest first: what a new upstream connection must be sent."""
        return iter(tuple(self._items))
