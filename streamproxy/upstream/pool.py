"""Upstream selection: priority first, then health (a circuit breaker per upstream), then load.

Plain state, no I/O: the session runner reports each connection outcome and asks where the next
connection should go. The embedded engine's processes are upstreams like any other, so killing
one fails its sessions over to the next.
"""

from __future__ import annotations

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
        self, upstreams: list[Upstream], *, breaker_failures: int = 3, breaker_cooldown_s: float = 30.0
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is required")
        self.upstreams = sorted(upstreams, key=lambda u: (u.priority, u.name))
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s

    def choose(self, now: float, avoid: str | None = None) -> Upstream:
        """Healthiest by priority; ``avoid`` (the upstream that just failed us) only as last resort."""

        def rank(u: Upstream) -> tuple[int, int, int, int, int]:
            return (not u.healthy(now), u.name == avoid, u.priority, u.failures, u.active)

        return min(self.upstreams, key=rank)

    def success(self, name: str) -> None:
        u = self._get(name)
        if u is not None:
            u.failures = 0
            u.open_until = 0.0

    def failure(self, name: str, now: float) -> None:
        u = self._get(name)
        if u is None:
            return
        u.failures += 1
        if u.failures >= self.breaker_failures:
            u.open_until = now + self.breaker_cooldown_s

    def any_healthy(self, now: float) -> bool:
        return any(u.healthy(now) for u in self.upstreams)

    def _get(self, name: str) -> Upstream | None:
        for u in self.upstreams:
            if u.name == name:
                return u
        return None
