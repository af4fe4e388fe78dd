"""Upstream selection: health first (a circuit breaker per upstream), then priority, then load.

Plain state, no I/O: live sessions and prerecorded requests report each outcome and ask where the
next attempt should go, on one ranking and one clock (injected, ``time.monotonic`` by default).
The embedded engine's processes are upstreams like any other, so killing one fails its sessions
over to the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Upstream:
    name: str
    url: str  # base URL, ws:// or wss://; the listen path is appended
    api_key: str = ""
    priority: int = 0
    failures: int = 0  # consecutive failures
    open_until: float = 0.0  # circuit breaker open (skipped) until this time
    active: int = 0  # sessions currently connected

    def healthy(self, now: float) -> bool:
        return now >= self.open_until


class UpstreamPool:
    def __init__(
        self,
        upstreams: list[Upstream],
        *,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is required")
        self.upstreams = sorted(upstreams, key=lambda u: (u.priority, u.name))
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.clock = clock

    def ranked(self, avoid: str | None = None) -> list[Upstream]:
        """Every upstream, best first; ``avoid`` (the one that just failed us) only as last resort."""
        now = self.clock()

        def rank(u: Upstream) -> tuple[int, int, int, int, int]:
            return (not u.healthy(now), u.name == avoid, u.priority, u.failures, u.active)

        return sorted(self.upstreams, key=rank)

    def choose(self, avoid: str | None = None) -> Upstream:
        return self.ranked(avoid)[0]

    def success(self, name: str) -> None:
        u = self._get(name)
        if u is not None:
            u.failures = 0
            u.open_until = 0.0

    def failure(self, name: str) -> None:
        u = self._get(name)
        if u is None:
            return
        u.failures += 1
        if u.failures >= self.breaker_failures:
            u.open_until = self.clock() + self.breaker_cooldown_s

    def any_healthy(self) -> bool:
        now = self.clock()
        return any(u.healthy(now) for u in self.upstreams)

    def _get(self, name: str) -> Upstream | None:
        for u in self.upstreams:
            if u.name == name:
                return u
        return None
