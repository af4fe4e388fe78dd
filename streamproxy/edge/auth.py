"""Client authentication: hashed API keys, short-lived grant tokens (JWT), and the edge middleware.

Keys look like ``sp_<id>_<secret>``. Only a salted scrypt hash is stored (``keys.json`` in the
data dir, or ``auth.keys_file``); the secret is shown once, by ``streamproxy keys create``. The
id is not secret: it selects the record, so one scrypt per check suffices and the comparison of
the derived hash is constant-time. A successful check is cached under a keyed digest so a busy
client does not pay ~50 ms of scrypt per connection; the cache is dropped on every reload.

Grant tokens are HS256 JWTs signed with ``auth.token_secret``, or with a random secret created
once in the data dir (shared by everything using that data dir; set ``token_secret`` to share it
across machines). A token names the key it was granted for and dies with that key's revocation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from aiohttp import web

from ..config import Config, ConfigError, resolve_data_dir
from ..logs import REQUEST_ID as REQUEST_ID_VAR

if TYPE_CHECKING:
    from .app import Gateway

__all__ = [
    "CLEANUPS",
    "PRINCIPAL",
    "PUBLIC_PATHS",
    "REQUEST_ID",
    "Authenticator",
    "KeyRecord",
    "KeyStore",
    "Principal",
    "edge_middleware",
    "grant_route",
    "keys_path",
    "request_authorized",
]

log = logging.getLogger("streamproxy.auth")

PRINCIPAL = web.RequestKey("streamproxy_principal", object)  # Principal
REQUEST_ID = web.RequestKey("streamproxy_request_id", str)
CLEANUPS = web.RequestKey("streamproxy_cleanups", list[Callable[[], Any]])  # run when the request ends

# Paths under /v1/ that need no credential (everything else under /v1/ does; nothing outside it).
PUBLIC_PATHS: set[str] = set()

KEY_PREFIX = "sp_"
GRANT_TTL_MAX = 3600
TOKEN_ISSUER = "streamproxy"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_CACHE_MAX = 4096
_MIN_SECRET = 32
_SLOW_CHECKS = 2  # concurrent scrypt verifications


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key id (``kind`` key/token) or ``anon:<address>`` for anonymous clients.

    ``id`` is what per-key limits count against; it is never secret.
    """

    id: str
    kind: str  # "key" | "token" | "anonymous"
    name: str = ""


# --------------------------------------------------------------------------- key store


@dataclass(slots=True)
class KeyRecord:
    id: str
    name: str
    created: str
    salt: str  # base64
    hash: str  # base64 scrypt(key, salt)
    kdf: str = "scrypt"
    n: int = _SCRYPT["n"]
    r: int = _SCRYPT["r"]
    p: int = _SCRYPT["p"]
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: never the hash or salt."""
        return {"id": self.id, "name": self.name, "created": self.created, "revoked": self.revoked}


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _derive(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * n * r * p + 2**20, dklen=32)


def split_key(presented: str) -> str | None:
    """The key id of a well-formed ``sp_<id>_<secret>``, else None."""
    if not presented.startswith(KEY_PREFIX):
        return None
    kid, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not sep or not kid or not secret or len(presented) > 256:
        return None
    return kid


def keys_path(cfg: Config) -> Path:
    return Path(cfg.auth.keys_file).expanduser() if cfg.auth.keys_file else resolve_data_dir(cfg.server) / "keys.json"


class KeyStore:
    """The JSON key file. Writers take an exclusive lock and replace the file atomically (0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[KeyRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ConfigError("auth.keys_file", f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            data = orjson.loads(raw)
            return [KeyRecord(**k) for k in data["keys"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError("auth.keys_file", f"{self.path} is not a valid key file ({e})") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[KeyRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        with lock.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            records = self.load()
            yield records
            self._write(records)

    def _write(self, records: list[KeyRecord]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = orjson.dumps({"version": 1, "keys": [asdict(r) for r in records]}, option=orjson.OPT_INDENT_2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        _keep_owner(tmp, self.path)
        os.replace(tmp, self.path)

    def create(self, name: str = "") -> tuple[KeyRecord, str]:
        """A new key; returns the record and the only copy of the secret."""
        with self._locked() as records:
            taken = {r.id for r in records}
            kid = secrets.token_hex(6)
            while kid in taken:
                kid = secrets.token_hex(6)
            key = f"{KEY_PREFIX}{kid}_{secrets.token_hex(24)}"
            salt = secrets.token_bytes(16)
            digest = _derive(key, salt, **_SCRYPT)
            rec = KeyRecord(
                id=kid,
                name=name,
                created=_now_iso(),
                salt=base64.b64encode(salt).decode(),
                hash=base64.b64encode(digest).decode(),
            )
            records.append(rec)
        return rec, key

    def revoke(self, kid: str) -> KeyRecord | None:
        with self._locked() as records:
            for rec in records:
                if rec.id == kid:
                    if rec.revoked is None:
                        rec.revoked = _now_iso()
                    return rec
        return None


def _keep_owner(tmp: Path, target: Path) -> None:
    """When root edits the service's key file, keep it owned by the service user (DynamicUser)."""
    if os.geteuid() != 0:
        return
    ref = target if target.exists() else target.parent
    st = ref.stat()
    if st.st_uid != 0 or st.st_gid != 0:
        os.chown(tmp, st.st_uid, st.st_gid)


def _load_or_create_secret(path: Path, create: bool) -> bytes | None:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_bytes().strip()
    try:
        os.write(fd, value + b"\n")
    finally:
        os.close(fd)
    _keep_owner(path, path)
    return value


# --------------------------------------------------------------------------- authenticator


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

    def __post_init__(self) -> None:
        self.reload(self.cfg)

    def reload(self, cfg: Config) -> None:
        records = KeyStore(keys_path(cfg)).load()
        secret = cfg.auth.token_secret.encode()
        if secret and len(secret) < _MIN_SECRET:
            raise ConfigError("auth.token_secret", f"must be at least {_MIN_SECRET} characters (HS256 key)")
        self.cfg = cfg
        self.records = {r.id: r for r in records}
        self._cache = {}
        self._secret = secret or None
        if self._secret is None:
            self._secret = _load_or_create_secret(self._secret_path(), create=False)

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
        from .app import is_loopback

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
            derived = _derive(presented, salt, rec.n, rec.r, rec.p)
        except (ValueError, MemoryError):
            return False
        return hmac.compare_digest(derived, want)

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
            if not self._slow_check(presented, rec):
                return None
            self._remember(presented, rec)
        return Principal(rec.id, "key", rec.name)

    async def check_key_async(self, presented: str) -> Principal | None:
        """Like ``check_key`` but scrypt runs in a thread, off the event loop."""
        rec = self._candidate(presented)
        if rec is None:
            return self._static(presented)
        if not self._cached(presented, rec):
            if self._slow_gate is None:
                self._slow_gate = asyncio.Semaphore(_SLOW_CHECKS)
            async with self._slow_gate:
                ok = await asyncio.to_thread(self._slow_check, presented, rec)
            if not ok:
                return None
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
            self._secret = _load_or_create_secret(self._secret_path(), create=True)
        assert self._secret is not None
        now = time.time()
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": principal.id,
            "iat": int(now),
            "exp": math.ceil(now + ttl_s),  # never shorter than asked (at most 1 s longer)
            "jti": uuid.uuid4().hex,
            "scope": "usage:write",
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def check_token(self, token: str) -> Principal | None:
        if self._secret is None or len(token) > 4096:
            return None
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        sub = str(claims["sub"])
        if sub.startswith("anon:"):
            return Principal(sub, "anonymous") if self.anonymous_allowed() else None
        if not self._known(sub):  # the key it was granted for is revoked or gone
            return None
        rec = self.records.get(sub)
        return Principal(sub, "token", rec.name if rec else "")

    # ---- requests
    async def authenticate(self, request: web.Request) -> Principal | None:
        """The caller, or None when a credential is required and none valid was given."""
        from .app import client_credential

        cred = client_credential(request)
        found: Principal | None = None
        if cred is not None:
            scheme, secret = cred
            if scheme == "token":
                found = await self.check_key_async(secret)
            elif scheme == "bearer":
                found = self.check_token(secret)
        return self._finish(found, request)

    def authenticate_sync(self, request: web.Request) -> Principal | None:
        from .app import client_credential

        cred = client_credential(request)
        found: Principal | None = None
        if cred is not None:
            scheme, secret = cred
            if scheme == "token":
                found = self.check_key(secret)
            elif scheme == "bearer":
                found = self.check_token(secret)
        return self._finish(found, request)

    def _finish(self, found: Principal | None, request: web.Request) -> Principal | None:
        if found is not None:
            return found
        if self.anonymous_allowed():
            # Credentials are optional then (SDKs always send some key): count the client by address.
            return Principal(f"anon:{request.remote or 'unknown'}", "anonymous")
        return None


def get_auth(gw: Gateway) -> Authenticator:
    """The gateway's authenticator, created on first use for gateways built without ``serve.start``."""
    if gw.auth is None:
        gw.auth = Authenticator(gw.cfg, static_keys=gw.client_keys)
    return gw.auth


def request_authorized(gw: Gateway, request: web.Request) -> bool:
    """True when the request carries a valid credential (or anonymous access is allowed)."""
    if request.get(PRINCIPAL) is not None:
        return True  # the middleware already authenticated it
    principal = get_auth(gw).authenticate_sync(request)
    if principal is None:
        return False
    request[PRINCIPAL] = principal
    return True


def principal_of(request: web.Request) -> Principal | None:
    p = request.get(PRINCIPAL)
    return p if isinstance(p, Principal) else None


# --------------------------------------------------------------------------- middleware and routes


def _protected(path: str) -> bool:
    return path.startswith("/v1/") and path not in PUBLIC_PATHS


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


@web.middleware
async def edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id for every log line, authentication and request rate limits for ``/v1/``,
    Deepgram-shaped 413s, and per-request cleanups (session leases, timers)."""
    from .app import GATEWAY, deepgram_error
    from .limits import get_limiter

    rid = str(uuid.uuid4())
    request[REQUEST_ID] = rid
    request[CLEANUPS] = []
    token = REQUEST_ID_VAR.set(rid)
    try:
        if not _protected(request.path):
            return await handler(request)
        gw = request.app[GATEWAY]
        principal = await get_auth(gw).authenticate(request)
        if principal is None:
            log.info(
                "unauthorized",
                extra={"event": "auth_failed", "path": request.path, "remote": request.remote},
            )
            return deepgram_error(401, "Invalid credentials.", request_id=rid)
        request[PRINCIPAL] = principal
        if not is_websocket(request):
            refusal = await get_limiter(gw).hit_request(principal.id)
            if refusal is not None:
                return refusal.response(rid)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = gw.cfg.limits.max_upload_bytes
            return deepgram_error(
                413, f"Request body larger than {limit} bytes (limits.max_upload_bytes).", request_id=rid
            )
    finally:
        cleanups: list[Callable[[], Any]] = request.get(CLEANUPS) or []
        for cleanup in reversed(cleanups):
            try:
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("request cleanup failed", extra={"event": "cleanup_failed"})
        REQUEST_ID_VAR.reset(token)


async def grant_route(request: web.Request) -> web.Response:
    """``POST /v1/auth/grant``: a short-lived token for browsers, shaped like Deepgram's answer."""
    from .app import GATEWAY, deepgram_error

    gw = request.app[GATEWAY]
    rid = request[REQUEST_ID]
    principal = principal_of(request)
    if principal is None:
        return deepgram_error(401, "Invalid credentials.", request_id=rid)
    if principal.kind == "token":
        return deepgram_error(403, "A granted token cannot grant tokens; use an API key.", request_id=rid)
    ttl: float = min(gw.cfg.auth.token_ttl_s, GRANT_TTL_MAX)
    body = await request.read()
    if body.strip():
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return deepgram_error(400, 'Body must be JSON, e.g. {"ttl_seconds": 30}.', request_id=rid)
        if not isinstance(data, dict):
            return deepgram_error(400, "Body must be a JSON object.", request_id=rid)
        value = data.get("ttl_seconds")
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return deepgram_error(400, "ttl_seconds must be a number.", request_id=rid)
            if not 1 <= value <= GRANT_TTL_MAX:
                return deepgram_error(400, f"ttl_seconds must be between 1 and {GRANT_TTL_MAX}.", request_id=rid)
            ttl = value
    token = get_auth(gw).issue_token(principal, ttl)
    expires_in: float = int(ttl) if float(ttl).is_integer() else ttl
    log.info("token granted", extra={"event": "token_granted", "key_id": principal.id, "ttl_s": expires_in})
    return web.json_response({"access_token": token, "expires_in": expires_in})
