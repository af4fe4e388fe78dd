"""The job worker's Prometheus families (prefix ``streamproxy_worker_``).

Inside ``streamproxy serve`` they live on the gateway's registry (one ``/metrics`` for both);
``streamproxy worker --metrics-port N`` serves its own. They count what the worker did, so
several workers sum: jobs finished by mode and final status, the duration of the attempt that
finished them, how many attempts they took, retries, stalled-job recoveries and webhook deliveries.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["MODES", "WorkerMetrics", "job_mode", "serve_metrics"]

#: Job modes as the gateway sets ``data.mode``; a foreign producer's job (Node, Bull Board) is ``external``.
MODES = ("async", "callback", "sync", "external")
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def job_mode(data: object) -> str:
    """The label for a job: bounded, whatever a foreign producer put in ``data.mode``."""
    mode = data.get("mode") if isinstance(data, dict) else None
    return mode if isinstance(mode, str) and mode in MODES else "external"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        p = "streamproxy_worker_"
        self.jobs = Counter(
            p + "jobs_total",
            "Jobs finished by this worker, by mode and final status (completed, failed, cancelled)",
            ["mode", "status"],
            registry=r,
        )
        self.duration = Histogram(
            p + "job_duration_seconds",
            "Processing time of the attempt that finished a job, by mode and final status",
            ["mode", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.attempts = Histogram(
            p + "job_attempts",
            "Attempts a finished job took (1 = first try)",
            ["mode"],
            buckets=(1, 2, 3, 4, 5, 10),
            registry=r,
        )
        self.retries = Counter(
            p + "job_retries_total", "Failed attempts that will be retried (with backoff)", ["mode"], registry=r
        )
        self.stalled = Counter(
            p + "stalled_jobs_total",
            "Jobs whose worker died or stalled, moved back to the queue by this worker's stalled-job check",
            registry=r,
        )
        self.active = Gauge(p + "jobs_active", "Jobs this worker is processing now", registry=r)
        self.webhooks = Counter(
            p + "webhooks_total",
            "Callback delivery attempts, by result (delivered, retry, failed)",
            ["result"],
            registry=r,
        )
        # Series at 0 from the first scrape, so rate() and the alert rules work before the first job.
        for mode in MODES:
            for status in ("completed", "failed", "cancelled"):
                self.jobs.labels(mode, status)
            self.retries.labels(mode)


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[web.AppRunner, int]:
    """``GET /metrics`` (and ``/healthz``) for ``streamproxy worker --metrics-port``; returns the bound port."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None)
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound
