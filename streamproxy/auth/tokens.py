"""Grant tokens: HS256 JWTs signed with ``auth.token_secret``, or with a random secret created once
in the data dir (shared by everything using that data dir; set ``token_secret`` to share it
across machines)."""

from __future__ import annotations

import math
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

from .keys import keep_owner

__all__ = ["GRANT_TTL_MAX", "MIN_SECRET", "TOKEN_ISSUER", "issue", "load_or_create_secret", "verify"]

GRANT_TTL_MAX = 3600
TOKEN_ISSUER = "streamproxy"
MIN_SECRET = 32


def issue(secret: bytes, subject: str, ttl_s: float) -> str:
    now = time.time()
    claims = {
        "iss": TOKEN_ISSUER,
        "sub": subject,
        "iat": int(now),
        "exp": math.ceil(now + ttl_s),  # never shorter than asked (at most 1 s longer)
        "jti": uuid.uuid4().hex,
        "scope": "usage:write",
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(secret: bytes, token: str) -> dict[str, Any] | None:
    """The claims of a valid, unexpired token of ours; None otherwise."""
    if len(token) > 4096:
        return None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=TOKEN_ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.PyJWTError:
        return None
    return claims


def load_or_create_secret(path: Path, create: bool) -> bytes | None:
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
    keep_owner(path, path)
    return value
