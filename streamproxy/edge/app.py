"""The client edge: one aiohttp application serving every public route on one port."""

from __future__ import annotations

from aiohttp import web

from ..gateway.state import GATEWAY, Gateway
from ..jobs.routes import setup_routes as add_job_routes
from .grant import grant_route
from .health import add_health_routes
from .listen import listen_v2_ws, listen_ws
from .middleware import PUBLIC_PATHS, edge_middleware
from .page import add_page_routes
from .transcripts import add_transcript_routes
from .twilio.routes import add_twilio_routes


def build_app(gw: Gateway) -> web.Application:
    app = web.Application(client_max_size=gw.cfg.limits.max_upload_bytes, middlewares=[edge_middleware])
    app[GATEWAY] = gw
    # Paths under /v1/ reachable without a credential in the request itself: the page's figures
    # (the same as /metrics) and Twilio, which cannot send one in its handshake (the key comes in
    # its `start` event).
    app[PUBLIC_PATHS] = frozenset({"/v1/stats", "/v1/twilio"})
    app.router.add_get("/v1/listen", listen_ws)
    app.router.add_get("/v2/listen", listen_v2_ws)
    app.router.add_post("/v1/auth/grant", grant_route)
    add_health_routes(app, metrics=gw.cfg.metrics.enabled)
    add_page_routes(app)
    add_twilio_routes(app)
    add_transcript_routes(app)  # stored transcripts: GET/DELETE /v1/transcripts
    add_job_routes(app, gw)  # files and jobs: POST /v1/listen, /v1/transcribe, /v1/jobs
    return app
