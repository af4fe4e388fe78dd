"""What another instance needs to carry a session on: one record per delivered final, as plain data.

The session core produces a :class:`Checkpoint` each time it delivers a final (a Live final result,
a Flux ``EndOfTurn``) and can continue from a list of them (``Session.take_over``); the asyncio layer
stores them (``gateway/shared.py``). No I/O here: only the record, its encoding, and the one decision
a takeover needs, :func:`restart_point` (where the replacement starts and what it re-sends).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson


class CheckpointError(ValueError):
    """The checkpoints cannot serve this resume; the message says why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The session right after one delivered message (``text``), or its state alone (``text`` None).

    Positions are absolute byte offsets in the client's audio: ``before`` is the acknowledgement
    before this final, ``ack`` after it (where a replacement upstream starts); ``ends`` the end of
    the last delivered final per channel, in samples (the exactly-once filter); ``prev`` the ``seq``
    of the final before this one (0: none), which says whether the held records are complete.
    """

    seq: int
    before: int
    ack: int
    ends: dict[int, int]
    prev: int = 0
    text: str | None = None
    configure: str | None = None  # the latest accepted Configure, re-applied to the new upstream
    extra: dict[str, Any] = field(default_factory=dict)  # protocol state (Flux turn numbering ...)

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "seq": self.seq,
                "before": self.before,
                "ack": self.ack,
                "ends": {str(k): v for k, v in self.ends.items()},
                "prev": self.prev,
                "text": self.text,
                "configure": self.configure,
                "extra": self.extra,
            }
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> Checkpoint:
        d = orjson.loads(raw)
        return cls(
            seq=int(d["seq"]),
            before=int(d["before"]),
            ack=int(d["ack"]),
            ends={int(k): int(v) for k, v in (d.get("ends") or {}).items()},
            prev=int(d.get("prev") or 0),
            text=d.get("text"),
            configure=d.get("configure"),
            extra=dict(d.get("extra") or {}),
        )


@dataclass(frozen=True, slots=True)
class RestartPoint:
    """Where a taken-over session starts: the client resends audio from ``position`` (the end of
    the last final it has), gets ``missed`` again (finals after its ``last_seq``, original
    numbers), and the next ``seq`` given out is ``seq + 1``."""

    position: int
    missed: tuple[str, ...]
    seq: int
    latest: Checkpoint | None


def restart_point(records: Sequence[Checkpoint], last_seq: int) -> RestartPoint:
    """From the held records (oldest first) and the client's ``last_seq``: never beyond the end of
    the last final the client has, and every final it lacks re-sent."""
    if last_seq < 0:
        raise CheckpointError(f"last_seq must be >= 0 (got {last_seq})")
    if not records:
        return RestartPoint(0, (), last_seq, None)
    latest = records[-1]
    finals = [r for r in records if r.text is not None]
    missed = [r for r in finals if r.seq > last_seq]
    if missed:
        first = missed[0]
        if first.prev > last_seq:
            raise CheckpointError(
                f"results after seq {last_seq} are no longer held (oldest kept: {first.seq}); start a new session"
            )
        position = first.before
    else:
        position = latest.ack  # the acknowledgement moves only with finals: the last one's end
    texts = tuple(r.text for r in missed if r.text is not None)
    return RestartPoint(position, texts, max(last_seq, latest.seq), latest)
