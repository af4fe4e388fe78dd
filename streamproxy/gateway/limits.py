"""Per-key admission limits: concurrent sessions, sessions and requests per minute, browser ``Origin``s.

Counters live in Redis when ``queue.redis_url`` is set, so a key's limits hold across every
instance behind a load balancer; otherwise in this process. Rates use a sliding window (the
previous minute's count weighted by how much of it still overlaps, plus this minute's), which
avoids the double burst a fixed window allows at the minute boundary. Concurrent sessions in
Redis are a sorted set of session ids scored by a lease expiry that live instances refresh, so
the sessions of a crashed instance stop counting after ``LEASE_S``.

If Redis is unreachable the limits fail open (logged): refusing paying traffic because the
limiter's store is down would turn a Redis outage into a full outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

from ..config import Config
from ..redisconn import RedisClient, connect

__all__ = ["LEASE_S", "WINDOW_S", "Lease", "Limiter", "Refusal", "normalise_origin"]

log = logging.getLogger("streamproxy.limits")

WINDOW_S = 60.0
LEASE_S = 30.0
_REFRESH_S = LEASE_S / 3

# KEYS: current window, previous window. ARGV: limit, fraction of the current window elapsed.
_RATE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(ARGV[1])
local frac = tonumber(ARGV[2])
if prev * (1 - frac) + cur + 1 > limit then
  return {0, cur, prev}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 150)
return {1, cur + 1, prev}
"""
# KEYS: the key's session set. ARGV: now, lease expiry, limit (0 = none), session id.
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], 120)
return 1
"""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a session or request is not admitted: an HTTP status before a WebSocket upgrade, or
    ``close_code`` for a stream refused after it (Twilio learns its credential in ``start``)."""

    status: int
    message: str
    retry_after: int | None = None

    @property
    def close_code(self) -> int:
        return 1013 if self.status in (429, 503) else 1008


def retry_after(limit: int, cur: int, prev: int, frac: float) -> int:
    """Seconds until one more event fits the sliding window (whole seconds, at least 1)."""
    if cur + 1 > limit:
        # Wait out this window; then this window's count is the weighted "previous" one.
        extra = 1.0 - (limit - 1) / cur if cur else 0.0
        wait = (1.0 - frac) * WINDOW_S + max(0.0, extra) * WINDOW_S
    else:
        need = 1.0 - (limit - 1 - cur) / prev if prev else 0.0
        wait = max(0.0, need - frac) * WINDOW_S
    return max(1, math.ceil(wait))


def normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@dataclass
class Limiter:
    cfg: Config
    _rates: dict[tuple[str, str], tuple[int, int, int]] = field(default_factory=dict)  # window, cur, prev
    _sessions: dict[str, set[str]] = field(default_factory=dict)
    _redis: RedisClient | None = None
    _refresher: asyncio.Task[None] | None = None
    _last_error_log: float = 0.0

    def __post_init__(self) -> None:
        if self.cfg.queue.redis_url:
            # Fail fast (no retries): a slow limits store must not hold up admission.
            self._redis = connect(self.cfg, socket_timeout=2.0, connect_timeout=2.0, retries=0)
            self._rate_script = self._redis.register_script(_RATE_LUA)
            self._acquire_script = self._redis.register_script(_ACQUIRE_LUA)

    def reload(self, cfg: Config) -> None:
        """New limits apply to new sessions and requests; the store (Redis URL) stays."""
        self.cfg = cfg

    @property
    def _prefix(self) -> str:
        return self.cfg.queue.prefix + ":limits"

    def _redis_failed(self, e: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.warning(
                "limits store unreachable; limits not enforced",
                extra={"event": "limits_store_error", "error": type(e).__name__},
            )

    # ---- origins
    def check_origin(self, origin: str | None) -> Refusal | None:
        allowed = self.cfg.limits.allowed_origins
        if not allowed or origin is None:
            return None  # non-browser clients send no Origin
        if normalise_origin(origin) in {normalise_origin(o) for o in allowed}:
            return None
        return Refusal(403, "Origin not allowed (limits.allowed_origins).")

    # ---- rates
    async def _hit(self, kind: str, principal: str, limit: int) -> Refusal | None:
        if limit <= 0:
            return None
        now = time.time()
        window = int(now // WINDOW_S)
        frac = (now % WINDOW_S) / WINDOW_S
        if self._redis is not None:
            base = f"{self._prefix}:{kind}:{principal}"
            try:
                ok, cur, prev = await self._rate_script(
                    keys=[f"{base}:{window}", f"{base}:{window - 1}"], args=[limit, frac]
                )
            except Exception as e:  # redis errors, timeouts, connection refused
                self._redis_failed(e)
                return None
            if ok:
                return None
            return self._rate_refusal(kind, limit, int(cur), int(prev), frac)
        w, cur, prev = self._rates.get((kind, principal), (window, 0, 0))
        if w != window:
            prev = cur if w == window - 1 else 0
            cur, w = 0, window
        if prev * (1 - frac) + cur + 1 > limit:
            self._rates[(kind, principal)] = (w, cur, prev)
            return self._rate_refusal(kind, limit, cur, prev, frac)
        self._rates[(kind, principal)] = (w, cur + 1, prev)
        if len(self._rates) > 100_000:
            self._rates = {k: v for k, v in self._rates.items() if v[0] >= window - 1}
        return None

    @staticmethod
    def _rate_refusal(kind: str, limit: int, cur: int, prev: int, frac: float) -> Refusal:
        what = "sessions" if kind == "sess" else "requests"
        return Refusal(
            429, f"Too many new {what}: limit {limit} per minute for this key.", retry_after(limit, cur, prev, frac)
        )

    async def hit_request(self, principal: str) -> Refusal | None:
        return await self._hit("req", principal, self.cfg.limits.requests_per_minute)

    # ---- concurrent sessions
    async def open_session(self, principal: str, session_id: str) -> Refusal | None:
        """Take a concurrent-session slot and count a new session; None means admitted."""
        limit = self.cfg.limits.max_sessions_per_key
        refused = Refusal(429, f"Too many concurrent sessions for this key (limit {limit}).", 1)
        if self._redis is not None:
            now = time.time()
            try:
                ok = await self._acquire_script(
                    keys=[f"{self._prefix}:live:{principal}"], args=[now, now + LEASE_S, limit, session_id]
                )
            except Exception as e:
                self._redis_failed(e)
                ok = 1
            if not ok:
                return refused
        else:
            live = self._sessions.get(principal, set())
            if limit > 0 and len(live) >= limit:
                return refused
        self._sessions.setdefault(principal, set()).add(session_id)
        rate = await self._hit("sess", principal, self.cfg.limits.sessions_per_minute)
        if rate is not None:
            await self.close_session(principal, session_id)
            return rate
        if self._redis is not None and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_leases())
        return None

    async def adopt_session(self, principal: str, session_id: str) -> None:
        """Hold the slot of a session taken over from another instance: the same session, so no
        limit applies and nothing is counted; this instance refreshes its lease from now on."""
        self._sessions.setdefault(principal, set()).add(session_id)
        if self._redis is not None:
            try:
                await self._redis.zadd(f"{self._prefix}:live:{principal}", {session_id: time.time() + LEASE_S})
            except Exception as e:
                self._redis_failed(e)
            if self._refresher is None:
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_leases())

    async def close_session(self, principal: str, session_id: str) -> None:
        live = self._sessions.get(principal)
        if live is not None:
            live.discard(session_id)
            if not live:
                del self._sessions[principal]
        if self._redis is not None:
            try:
                await self._redis.zrem(f"{self._prefix}:live:{principal}", session_id)
            except Exception as e:
                self._redis_failed(e)

    async def _refresh_leases(self) -> None:
        """Keep this instance's session leases alive in Redis while the sessions are."""
        redis = self._redis
        assert redis is not None
        while True:
            await asyncio.sleep(_REFRESH_S)
            if not self._sessions:
                continue
            expiry = time.time() + LEASE_S
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    for principal, sids in list(self._sessions.items()):
                        pipe.zadd(f"{self._prefix}:live:{principal}", dict.fromkeys(sids, expiry), xx=True)
                    await pipe.execute()
            except Exception as e:
                self._redis_failed(e)

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()


@dataclass(slots=True)
class Lease:
    """A taken per-key session slot; ``release`` is idempotent."""

    limiter: Limiter | None
    principal_id: str
    session_id: str
    released: bool = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.limiter is not None:
            await self.limiter.close_session(self.principal_id, self.session_id)
