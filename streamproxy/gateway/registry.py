"""Every live session of this process, and the resumable ones by id (one place edits both)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: the runner registers itself through the gateway, not by import
    from .runner import SessionRunner


class SessionRegistry:
    def __init__(self) -> None:
        self._live: set[SessionRunner] = set()
        self._resumable: dict[str, SessionRunner] = {}

    def add(self, runner: SessionRunner) -> None:
        self._live.add(runner)
        if runner.core.resumable:
            self._resumable[runner.core.session_id] = runner

    def remove(self, runner: SessionRunner) -> None:
        self._live.discard(runner)
        if self._resumable.get(runner.core.session_id) is runner:
            del self._resumable[runner.core.session_id]

    def resumable(self, session_id: str) -> SessionRunner | None:
        """The session a client may reattach to, if it is still within its life."""
        runner = self._resumable.get(session_id)
        return None if runner is None or runner.finished.is_set() else runner

    def resumable_ids(self) -> list[str]:
        return list(self._resumable)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[SessionRunner]:
        return iter(list(self._live))  # a snapshot: sessions end while callers iterate

    def buffered_seconds(self) -> float:
        return sum(r.core.fmt.bytes_to_seconds(r.core.ring.nbytes) for r in self)
