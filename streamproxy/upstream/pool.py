"""Upstream selection: health first (a circuit breaker per upstream), then region, priority, load.

Plain state, no I/O: live sessions and prerecorded requests report each outcome and ask where the
next attempt should go, on one ranking and one clock (injected, ``time.monotonic`` by default).
The embedded engine's processes are upstreams like any other, so killing one fails its sessions
over to the next.

Regions: a gateway of region R prefers upstreams of region R (and unlabelled ones, which are local
to every gateway, like the embedded engine) over those of other regions, whatever their priority;
another region's upstream is used only when no healthy local one is left, or the local one just
failed us. That is failover across regions without ever sending a healthy region's traffic away.
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
    region: str = ""  # "" = local to every gateway

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
        region: str = "",
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is required")
        self.upstreams = sorted(upstreams, key=lambda u: (u.priority, u.name))
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.clock = clock
        self.region = region

    def remote(self, u: Upstream) -> bool:
        """Whether ``u`` is in another region than this gateway's."""
        return bool(self.region and u.region and u.region != self.region)

    def ranked(self, avoid: str | None = None) -> list[Upstream]:
        """Every upstream, best first; ``avoid`` (the one that just failed us) only as last resort."""
        now = self.clock()

        def rank(u: Upstream) -> tuple[int, int, int, int, int, int]:
            return (not u.healthy(now), u.name == avoid, self.remote(u), u.priority, u.failures, u.active)

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

    def region_of(self, name: str) -> str:
        """The region label of an upstream's metrics ("" if unknown or unlabelled)."""
        u = self._get(name)
        return u.region if u is not None else ""

    def any_healthy(self) -> bool:
        now = self.clock()
        return any(u.healthy(now) for u in self.upstreams)

    def _get(self, name: str) -> Upstream | None:
        for u in self.upstreams:
            if u.name == name:
                return u
        return None
