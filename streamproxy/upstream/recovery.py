"""Coordinated recovery: when an upstream comes back, the sessions waiting for it reconnect within
a probe interval, paced so that one upstream never sees more than ``max_connects_per_s``.

Without it, every waiting session sleeps its own full-jitter backoff (up to ``reconnect.cap_s``)
and an outage's tail is set by the unluckiest draw. Instead one waiting session at a time is the
*prober*: it retries every ``probe_interval_s`` whatever its backoff says, and the first reconnect
that works (the prober's or any other's) wakes every waiter. Probing this way costs no extra
connections: the probe is a real session's reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["Recovery"]


class Recovery:
    def __init__(self, *, max_connects_per_s: float = 200.0, probe_interval_s: float = 0.5) -> None:
        self.interval = 1.0 / max_connects_per_s
        self.probe_interval_s = probe_interval_s
        self._recovered = asyncio.Event()
        self._prober: object | None = None
        self._next_slot: dict[str, float] = {}

    async def wait(self, delay: float, who: object) -> None:
        """Sleep ``delay`` (``who``'s backoff), or less: the prober waits at most a probe interval,
        everyone else wakes as soon as a reconnect somewhere succeeds."""
        if delay <= 0:
            return
        if self._prober is None or self._prober is who:
            self._prober = who
            delay = min(delay, self.probe_interval_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._recovered.wait(), delay)

    async def pace(self, name: str) -> None:
        """Take the next reconnect slot for upstream ``name``: slots are ``1 / max_connects_per_s`` apart."""
        now = time.monotonic()
        slot = max(now, self._next_slot.get(name, 0.0))
        self._next_slot[name] = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def reconnected(self, who: object) -> None:
        """``who`` got a working connection after a failure: the upstream answers again."""
        self.release(who)
        self._recovered.set()
        self._recovered = asyncio.Event()

    def release(self, who: object) -> None:
        """``who`` no longer waits (it connected or ended): another waiter becomes the prober."""
        if self._prober is who:
            self._prober = None
