"""Ring buffer of unacknowledged audio (and the control messages interleaved with it).

Items are keyed by their absolute byte position in the client's stream. ``release(ack)`` frees
everything before the acknowledgement watermark; ``replay(start)`` yields what a fresh upstream
must receive to continue from ``start``. The byte bound is hard: overflow drops the oldest audio
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
        target = self.start + nbytes
        dropped = self._cut(target)
        self.dropped_bytes += dropped
        return dropped

    def release(self, ack: int) -> int:
        """Free audio before ``ack`` and controls at or before it; returns bytes released."""
        if ack <= self.start:
            # Controls sent exactly at the watermark are acknowledged with it.
            while self._items and self._items[0].data is None and self._items[0].pos <= ack:
                self._items.popleft()
            return 0
        return self._cut(ack)

    def _cut(self, target: int) -> int:
        freed = 0
        items = self._items
        while items:
            head = items[0]
            if head.data is None:
                if head.pos <= target:
                    items.popleft()
                    continue
                break
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
        self.nbytes -= freed
        self.start = target
        return freed

    def replay(self) -> Iterator[Item]:
        """Everything held, oldest first: what a new upstream connection must be sent."""
        return iter(tuple(self._items))
