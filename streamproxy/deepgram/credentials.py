"""How a Deepgram client presents its credential (header or browser subprotocols)."""

from __future__ import annotations

from collections.abc import Mapping


def credentials(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """(scheme, secret) pairs a Deepgram client presented: ``Authorization: <scheme> <secret>``
    first, then the browser subprotocols ``token, <key>`` / ``bearer, <jwt>``."""
    found: list[tuple[str, str]] = []
    auth = headers.get("Authorization", "").strip()
    if " " in auth:
        scheme, _, secret = auth.partition(" ")
        found.append((scheme.lower(), secret.strip()))
    protos = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    if len(protos) >= 2 and protos[0].lower() in ("token", "bearer"):
        found.append((protos[0].lower(), protos[1]))
    return found
