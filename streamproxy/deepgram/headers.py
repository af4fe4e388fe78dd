"""Header values built from what a client sent (``dg-error``, ``dg-request-id``).

A message quoting a query key, a URL or a path may carry CR, LF, other control characters or
non-ASCII text; aiohttp refuses to write such a header and the client gets no status line at
all (and CR/LF would split headers). Every such value goes through :func:`header_value`.
"""

from __future__ import annotations

__all__ = ["header_value"]

#: Longer values are cut: a header is a summary, the JSON body carries the whole message.
MAX_HEADER_CHARS = 500


def header_value(text: str, limit: int = MAX_HEADER_CHARS) -> str:
    """``text`` as printable ASCII: other characters escaped as ``\\xNN``/``\\uNNNN``, cut at ``limit``."""
    if text.isascii() and text.isprintable():
        return text[:limit]
    out = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)
    return out[:limit]
