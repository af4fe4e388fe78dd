"""The key file: hashed API keys, their format, and safe concurrent edits.

Keys look like ``sp_<id>_<secret>``. Only a salted scrypt hash is stored (``keys.json`` in the
data dir, or ``auth.keys_file``); the secret is shown once, by ``streamproxy keys create``. The
id is not secret: it selects the record, so one scrypt per check suffices. Writers take an
exclusive lock and replace the file atomically (0600).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import Config, ConfigError, resolve_data_dir

__all__ = ["KEY_PREFIX", "KeyRecord", "KeyStore", "derive", "keep_owner", "keys_path", "split_key"]

KEY_PREFIX = "sp_"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(slots=True)
class KeyRecord:
    id: str
    name: str
    created: str
    salt: str  # base64
    hash: str  # base64 scrypt(key, salt)
    kdf: str = "scrypt"
    n: int = SCRYPT["n"]
    r: int = SCRYPT["r"]
    p: int = SCRYPT["p"]
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def public(self) -> dict[str, Any]:
        """What ``keys list`` shows: never the hash or salt."""
        return {"id": self.id, "name": self.name, "created": self.created, "revoked": self.revoked}


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def derive(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
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
        keep_owner(tmp, self.path)
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
            digest = derive(key, salt, **SCRYPT)
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


def keep_owner(tmp: Path, target: Path) -> None:
    """When root edits the service's key file, keep it owned by the service user (DynamicUser)."""
    if os.geteuid() != 0:
        return
    ref = target if target.exists() else target.parent
    st = ref.stat()
    if st.st_uid != 0 or st.st_gid != 0:
        os.chown(tmp, st.st_uid, st.st_gid)
