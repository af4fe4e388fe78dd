"""The built-in page (``GET /``, ``GET /static/*``) and the small JSON figures it shows (``GET /v1/stats``).

The page is plain HTML/JS shipped in the package (``streamproxy/static``): no build step. Files
are read once and served from memory with a strict Content-Security-Policy (same-origin scripts
and connections only). ``/v1/stats`` turns the Prometheus latency histograms into p50/p95 figures
(the same interpolation as PromQL's ``histogram_quantile``), since start and over the last minute.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from ..gateway.state import GATEWAY, Gateway

STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(html|js|css|svg|png|ico)$")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "ico": "image/x-icon",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self)",
    "Cache-Control": "no-cache",
}
#: The "recent" figures cover about this long (snapshots are taken when /v1/stats is asked).
WINDOW_S = 60.0
#: Histograms reported by /v1/stats: name -> (metric attribute, label value or None).
KINDS = {"interim": ("latency", "interim"), "final": ("latency", "final"), "first_word": ("first_word", None)}

_files: dict[str, bytes] | None = None


def _shipped() -> dict[str, bytes]:
    """Every file of ``streamproxy/static`` with a servable name, read once."""
    global _files
    if _files is None:
        d = resources.files("streamproxy").joinpath("static")
        _files = {f.name: f.read_bytes() for f in d.iterdir() if f.is_file() and STATIC_NAME.match(f.name)}
    return _files


def static_file(name: str) -> bytes | None:
    """A file shipped in ``streamproxy/static``, or None: a request's name is only looked up in
    that listing, never given to the file system (a 3000-character name was a 500)."""
    return _shipped().get(name)


def _serve(name: str) -> web.Response:
    body = static_file(name)
    if body is None:
        raise web.HTTPNotFound(text=f"no such file: {name}")
    ext = name.rsplit(".", 1)[1]
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPES[ext], **SECURITY_HEADERS})


async def index(request: web.Request) -> web.Response:
    return _serve("index.html")


async def static(request: web.Request) -> web.Response:
    return _serve(request.match_info["name"])


# ----------------------------------------------------------------------------- stats
Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last


def histogram_buckets(gw: Gateway) -> dict[str, Buckets]:
    """Cumulative bucket counts per reported kind, read from the live Prometheus histograms."""
    out: dict[str, Buckets] = {}
    for kind, (attr, label) in KINDS.items():
        hist = getattr(gw.metrics, attr)
        buckets: Buckets = []
        for metric in hist.collect():
            for s in metric.samples:
                if s.name.endswith("_bucket") and (label is None or s.labels.get("kind") == label):
                    buckets.append((float(s.labels["le"]), s.value))
        out[kind] = sorted(buckets)
    return out


def quantile(q: float, buckets: Buckets) -> float | None:
    """PromQL ``histogram_quantile``: linear within the bucket holding rank q; None without data."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its bound is all we know
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _figures(buckets: Buckets) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "count": int(buckets[-1][1]) if buckets else 0,
        "p50_ms": ms(quantile(0.5, buckets)),
        "p95_ms": ms(quantile(0.95, buckets)),
    }


@dataclass
class StatsWindow:
    """Recent snapshots of the histograms, so "recent" figures are deltas over about a minute."""

    snaps: deque[tuple[float, dict[str, Buckets]]] = field(default_factory=deque)

    def recent(self, now: float, current: dict[str, Buckets]) -> tuple[float | None, dict[str, Buckets]]:
        """(seconds covered, None on the first call: then since start; bucket deltas)."""
        while len(self.snaps) > 1 and self.snaps[1][0] <= now - WINDOW_S:
            self.snaps.popleft()
        base_t, base = self.snaps[0] if self.snaps else (None, {})
        if not self.snaps or now - self.snaps[-1][0] >= 1.0:
            self.snaps.append((now, current))
        delta: dict[str, Buckets] = {}
        for kind, cur in current.items():
            old = dict(base.get(kind, []))
            delta[kind] = [(b, c - old.get(b, 0.0)) for b, c in cur]
        return (None if base_t is None else now - base_t), delta


STATS = web.AppKey("stats_window", StatsWindow)


async def stats(request: web.Request) -> web.Response:
    """``GET /v1/stats``: active sessions and latency p50/p95 per kind, since start and recently."""
    gw = request.app[GATEWAY]
    window = request.app[STATS]
    now = asyncio.get_running_loop().time()
    current = histogram_buckets(gw)
    span, delta = window.recent(now, current)
    active = sum(s.value for m in gw.metrics.sessions_active.collect() for s in m.samples)
    body = {
        "sessions_active": int(active),
        "draining": gw.draining,
        "latency": {kind: _figures(b) for kind, b in current.items()},
        "recent": {
            "window_s": None if span is None else round(span, 1),
            **{kind: _figures(b) for kind, b in delta.items()},
        },
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def add_page_routes(app: web.Application) -> None:
    app[STATS] = StatsWindow()
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/v1/stats", stats)
