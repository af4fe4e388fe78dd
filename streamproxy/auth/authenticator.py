"""Who is calling: API keys, grant tokens and the anonymous policy, checked in constant time.

A successful key check is cached under a keyed digest so a busy client does not pay ~50 ms of
scrypt per connection; the cache is dropped on every reload. A token names the key it was
granted for and dies with that key's revocation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError, resolve_data_dir
from ..deepgram.credentials import credentials
from . import tokens
from .keys import KeyRecord, KeyStore, derive, keys_path, split_key

__all__ = ["Authenticator", "Principal", "is_loopback"]

_CACHE_MAX = 4096
_SLOW_CHECKS = 2  # concurrent scrypt verifications
#: Uncached checks per key id: a burst, then this many per second. Key ids are not secret, so
#: without it anyone could keep the cores busy with wrong secrets for a known id. A successful
#: check gives its token back: only failures are throttled.
_ID_CHECKS_BURST = 10
_ID_CHECKS_PER_S = 1.0


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key id (``kind`` key/token) or ``anon:<address>`` for anonymous clients.

    ``id`` is what per-key limits count against; it is never secret.
    """

    id: str
    kind: str  # "key" | "token" | "anonymous"
    name: str = ""


@dataclass
class Authenticator:
    """Checks keys and tokens against the current key file; ``reload`` re-reads it (SIGHUP)."""

    cfg: Config
    static_keys: tuple[str, ...] = ()  # plaintext keys given programmatically (tests, embedding)
    records: dict[str, KeyRecord] = field(default_factory=dict)
    _pepper: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _cache: dict[bytes, str] = field(default_factory=dict)
    _secret: bytes | None = None
    # Uncached checks run scrypt in threads; bound them so a flood of wrong secrets for a known
    # key id cannot take every executor thread (cached keys never wait for this).
    _slow_gate: asyncio.Semaphore | None = None
    _id_budget: dict[str, tuple[float, float]] = field(default_factory=dict)  # key id -> (tokens, at)

    def __post_init__(self) -> None:
        self.reload(self.cfg)

    def reload(self, cfg: Config) -> None:
        records = KeyStore(keys_path(cfg)).load()
        secret = cfg.auth.token_secret.encode()
        if secret and len(secret) < tokens.MIN_SECRET:
            raise ConfigError("auth.token_secret", f"must be at least {tokens.MIN_SECRET} characters (HS256 key)")
        self.cfg = cfg
        self.records = {r.id: r for r in records}
        self._cache = {}
        self._secret = secret or None
        if self._secret is None:
            self._secret = tokens.load_or_create_secret(self._secret_path(), create=False)

    def _secret_path(self) -> Path:
        return resolve_data_dir(self.cfg.server) / "token_secret"

    @property
    def active_keys(self) -> int:
        return sum(r.active for r in self.records.values()) + len(self.static_keys)

    @property
    def has_keys(self) -> bool:
        return self.active_keys > 0

    def anonymous_allowed(self) -> bool:
        """``true``: always; ``false``: never; ``auto``: only on a loopback address with no keys."""
        allow = self.cfg.auth.allow_anonymous
        return allow is True or (allow is None and not self.has_keys and is_loopback(self.cfg.server.host))

    # ---- keys
    def _candidate(self, presented: str) -> KeyRecord | None:
        kid = split_key(presented)
        rec = self.records.get(kid) if kid else None
        return rec if rec is not None and rec.active else None

    def _cache_key(self, presented: str) -> bytes:
        return hmac.new(self._pepper, presented.encode(), hashlib.sha256).digest()

    def _cached(self, presented: str, rec: KeyRecord) -> bool:
        got = self._cache.get(self._cache_key(presented))
        return got is not None and hmac.compare_digest(got, rec.id)

    def _slow_check(self, presented: str, rec: KeyRecord) -> bool:
        try:
            salt, want = base64.b64decode(rec.salt), base64.b64decode(rec.hash)
            derived = derive(presented, salt, rec.n, rec.r, rec.p)
        except (ValueError, MemoryError):
            return False
        return hmac.compare_digest(derived, want)

    def _take(self, kid: str) -> bool:
        """Reserve one uncached check for ``kid``; False when its failed checks used the budget."""
        now = time.monotonic()
        tokens, at = self._id_budget.get(kid, (float(_ID_CHECKS_BURST), now))
        tokens = min(float(_ID_CHECKS_BURST), tokens + (now - at) * _ID_CHECKS_PER_S)
        if tokens < 1.0:
            self._id_budget[kid] = (tokens, now)
            return False
        self._id_budget[kid] = (tokens - 1.0, now)
        return True

    def _give_back(self, kid: str) -> None:
        tokens, at = self._id_budget.get(kid, (float(_ID_CHECKS_BURST), time.monotonic()))
        self._id_budget[kid] = (min(float(_ID_CHECKS_BURST), tokens + 1.0), at)

    def _verify_sync(self, presented: str, rec: KeyRecord) -> bool:
        if not self._take(rec.id):
            return False
        ok = self._slow_check(presented, rec)
        if ok:
            self._give_back(rec.id)
        return ok

    def _remember(self, presented: str, rec: KeyRecord) -> None:
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[self._cache_key(presented)] = rec.id

    def _static(self, presented: str) -> Principal | None:
        ok = False
        match = ""
        for k in self.static_keys:  # every key compared, each in constant time
            hit = hmac.compare_digest(presented.encode(), k.encode())
            if hit:
                match = k
            ok |= hit
        if not ok:
            return None
        return Principal("static-" + hashlib.sha256(match.encode()).hexdigest()[:12], "key")

    def check_key(self, presented: str) -> Principal | None:
        """Synchronous check (may run scrypt on the calling thread)."""
        rec = self._candidate(presented)
        if rec is None:
            return self._static(presented)
        if not self._cached(presented, rec):
            if not self._verify_sync(presented, rec):
                return None
            self._remember(presented, rec)
        return Principal(rec.id, "key", rec.name)

    async def check_key_async(self, presented: str) -> Principal | None:
        """Like ``check_key`` but scrypt runs in a thread, off the event loop."""
        rec = self._candidate(presented)
        if rec is None:
            return self._static(presented)
        if not self._cached(presented, rec):
            if not self._take(rec.id):
                return None  # this id's failed checks are over budget: no scrypt for it now
            if self._slow_gate is None:
                self._slow_gate = asyncio.Semaphore(_SLOW_CHECKS)
            async with self._slow_gate:
                ok = await asyncio.to_thread(self._slow_check, presented, rec)
            if not ok:
                return None
            self._give_back(rec.id)
            if self.records.get(rec.id) is not rec:  # reloaded meanwhile (revoked?): decide again
                return await self.check_key_async(presented)
            self._remember(presented, rec)
        return Principal(rec.id, "key", rec.name)

    def _known(self, sub: str) -> bool:
        if sub.startswith("static-"):
            return any(
                hmac.compare_digest(sub, "static-" + hashlib.sha256(k.encode()).hexdigest()[:12])
                for k in self.static_keys
            )
        rec = self.records.get(sub)
        return rec is not None and rec.active

    # ---- tokens
    def issue_token(self, principal: Principal, ttl_s: float) -> str:
        if self._secret is None:
            self._secret = tokens.load_or_create_secret(self._secret_path(), create=True)
        assert self._secret is not None
        return tokens.issue(self._secret, principal.id, ttl_s)

    def check_token(self, token: str) -> Principal | None:
        claims = None if self._secret is None else tokens.verify(self._secret, token)
        if claims is None:
            return None
        sub = str(claims["sub"])
        if sub.startswith("anon:"):
            return Principal(sub, "anonymous") if self.anonymous_allowed() else None
        if not self._known(sub):  # the key it was granted for is revoked or gone
            return None
        rec = self.records.get(sub)
        return Principal(sub, "token", rec.name if rec else "")

    # ---- requests
    async def authenticate(self, headers: Mapping[str, str], remote: str | None) -> Principal | None:
        """The caller, or None when a credential is required and none valid was given."""
        found: Principal | None = None
        for scheme, secret in credentials(headers)[:1]:
            if scheme == "token":
                found = await self.check_key_async(secret)
            elif scheme == "bearer":
                found = self.check_token(secret)
        return self._finish(found, remote)

    def authenticate_sync(self, headers: Mapping[str, str], remote: str | None) -> Principal | None:
        found: Principal | None = None
        for scheme, secret in credentials(headers)[:1]:
            if scheme == "token":
                found = self.check_key(secret)
            elif scheme == "bearer":
                found = self.check_token(secret)
        return self._finish(found, remote)

    def _finish(self, found: Principal | None, remote: str | None) -> Principal | None:
        if found is not None:
            return found
        if self.anonymous_allowed():
            # Credentials are optional then (SDKs always send some key): count the client by address.
            return Principal(f"anon:{remote or 'unknown'}", "anonymous")
        return None
