"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..gateway.state import GATEWAY

#: Named readiness checks other parts of the app register (True ready, False not, None not in use).
READINESS = web.AppKey("streamproxy_readiness", dict[str, Callable[[], Awaitable[bool | None]]])
#: Gauges read from elsewhere (the queue's depth) are refreshed when scraped, not on a timer: an
#: idle gateway is not woken to keep a figure nobody reads; each refresh is bounded by this.
COLLECTORS = web.AppKey("streamproxy_collectors", dict[str, Callable[[], Awaitable[None]]])
COLLECT_TIMEOUT_S = 1.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    checks: dict[str, bool] = {"draining": gw.draining, "upstream_healthy": gw.pool.any_healthy()}
    ready = not gw.draining and checks["upstream_healthy"]
    for name, check in request.app.get(READINESS, {}).items():
        ok = await check()
        if ok is not None:
            checks[name] = ok
            ready = ready and ok
    return web.json_response({"ready": ready, **checks}, status=200 if ready else 503)


async def metrics_route(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    collectors = list(request.app.get(COLLECTORS, {}).values())
    if collectors:  # a collector that fails (its exception returned) or hangs leaves its gauge as it was
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(COLLECT_TIMEOUT_S):
                await asyncio.gather(*(c() for c in collectors), return_exceptions=True)
    return web.Response(body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application, *, metrics: bool) -> None:
    app[READINESS] = {}
    app[COLLECTORS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics:
        app.router.add_get("/metrics", metrics_route)
