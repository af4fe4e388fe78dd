"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..gateway.state import GATEWAY

#: Named readiness checks other parts of the app register (True ready, False not, None not in use).
READINESS = web.AppKey("streamproxy_readiness", dict[str, Callable[[], Awaitable[bool | None]]])


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
    return web.Response(body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application, *, metrics: bool) -> None:
    app[READINESS] = {}
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics:
        app.router.add_get("/metrics", metrics_route)
