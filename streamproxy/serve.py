"""``streamproxy serve``: wire config, upstreams (or the embedded engine), the edge and systemd."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .auth.authenticator import Authenticator, is_loopback
from .config import Config, ConfigError
from .edge.app import build_app
from .engine.supervisor import EngineSupervisor
from .gateway.limits import Limiter
from .gateway.shared import from_config as shared_sessions
from .gateway.state import Gateway
from .jobs.routes import start_jobs
from .loop import run as run_loop
from .metrics import Metrics
from .redisconn import check_server
from .storage.setup import writer_from_config
from .tracing import Tracer, tracer_from_config
from .upstream.metrics import register_upstream_metrics
from .upstream.setup import upstreams_from_config

log = logging.getLogger("streamproxy.serve")


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def check_exposure(cfg: Config, has_keys: bool) -> None:
    """Refuse to serve anonymous clients on a non-loopback address unless explicitly allowed."""
    if has_keys or cfg.auth.allow_anonymous is True or is_loopback(cfg.server.host):
        return
    raise ConfigError(
        "auth.allow_anonymous",
        f"refusing to listen on {cfg.server.host} without client keys; create keys "
        "(streamproxy keys create) or set allow_anonymous = true to serve anyone who can reach it",
    )


@dataclass
class Running:
    gateway: Gateway
    runner: web.AppRunner
    port: int
    supervisor: EngineSupervisor | None
    owns_tracer: bool = True  # made from [tracing] here (a tracer passed in is its owner's to stop)

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.gateway.close()
        if self.gateway.transcripts is not None:  # last: the sessions and jobs above ended into it
            await self.gateway.transcripts.close()
        if self.owns_tracer:
            self.gateway.tracer.shutdown()  # flushes the spans still batched
        if self.supervisor is not None:
            await self.supervisor.stop()


async def start(cfg: Config, *, client_keys: tuple[str, ...] = (), tracer: Tracer | None = None) -> Running:
    """Start everything; returns once the port accepts connections."""
    await check_server(cfg)  # queue.redis_cluster vs what the server at redis_url is, before any engine
    auth = Authenticator(cfg, static_keys=client_keys)  # reads the key file: bad file -> ConfigError
    check_exposure(cfg, auth.has_keys)
    pool, supervisor = await upstreams_from_config(cfg)
    owns_tracer = tracer is None
    tracer = tracer or tracer_from_config(cfg.tracing.otlp_endpoint, "streamproxy")
    gw = Gateway(
        cfg,
        pool,
        auth=auth,
        limiter=Limiter(cfg),
        tracer=tracer,
        metrics=Metrics(region=cfg.server.region),
        shared=shared_sessions(cfg),
    )
    if gw.shared is not None:
        gw.shared.start()
    register_upstream_metrics(gw.metrics.registry, pool)  # breaker state, read at scrape time
    gw.transcripts = writer_from_config(cfg, gw.metrics.registry)  # [storage]; None when "off"
    # Sessions are closed by drain() before cleanup; don't let a straggler hold the stop for 60 s.
    runner = web.AppRunner(build_app(gw), handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port, backlog=4096, reuse_address=True)
    await site.start()
    if gw.transcripts is not None:  # once listening: nothing to stop if the port was taken
        await gw.transcripts.start()  # migrations and the retention purge; an outage is retried
    port = cfg.server.port
    sockets = getattr(site._server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    log.info(
        "listening",
        extra={
            "event": "listening",
            "host": cfg.server.host,
            "port": port,
            "upstreams": [u.name for u in pool.upstreams],
            "client_keys": auth.active_keys,
            "anonymous": auth.anonymous_allowed(),
        },
    )
    return Running(gw, runner, port, supervisor, owns_tracer)


def reload(running: Running, new: Config) -> None:
    """SIGHUP: re-read the key file and take ``[auth]`` and ``[limits]`` from ``new``.

    Live sessions are untouched; new limits apply to new sessions and requests. Other sections
    need a restart. On error (bad key file or config) nothing changes.
    """
    gw = running.gateway
    cfg = dataclasses.replace(gw.cfg, auth=new.auth, limits=new.limits)
    auth = gw.auth
    auth.reload(cfg)
    gw.limiter.reload(cfg)
    gw.cfg = cfg
    log.info(
        "reloaded keys and limits",
        extra={
            "event": "reloaded",
            "client_keys": auth.active_keys,
            "anonymous": auth.anonymous_allowed(),
            "limits": dataclasses.asdict(cfg.limits),
        },
    )


def _on_sighup(started: list[Running], load: Callable[[], Config] | None) -> None:
    if not started or started[0].gateway.draining:
        return  # still starting (the config is being read anyway), or stopping
    running = started[0]
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        reload(running, load() if load is not None else running.gateway.cfg)
    except (ConfigError, ValueError, OSError) as e:
        log.error(
            "reload failed; keeping the previous keys and limits",
            extra={"event": "reload_failed", "error": str(e)},
        )
    sd_notify(f"READY=1\nSTATUS={_status(running.gateway)}")


def _status(gw: Gateway) -> str:
    state = "draining, " if gw.draining else ""
    return f"{state}{len(gw.sessions)} sessions"


async def drain(running: Running, cfg: Config) -> None:
    """SIGTERM: refuse new sessions, let live ones finish, then finalise and close them with 1012."""
    gw = running.gateway
    gw.draining = True
    sd_notify(f"STOPPING=1\nSTATUS={_status(gw)}")
    await gw.drain()


async def serve_forever(cfg: Config, load: Callable[[], Config] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain. ``load`` re-reads the configuration on SIGHUP."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: a SIGTERM while starting still drains
        loop.add_signal_handler(sig, stop.set)
    started: list[Running] = []  # SIGHUP's default action is to exit: handle it from the start too
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, started, load)
    running = await start(cfg)
    started.append(running)
    await start_jobs(running.runner.app)  # Redis (embedded if none) and the in-process job worker
    sd_notify(f"READY=1\nSTATUS=listening on {cfg.server.host}:{running.port}")
    watchdog = asyncio.create_task(_watchdog(running.gateway))
    await stop.wait()
    await drain(running, cfg)
    watchdog.cancel()
    await running.stop()
    log.info("stopped", extra={"event": "stopped"})


async def _watchdog(gw: Gateway) -> None:
    """Ping systemd from the event loop itself, so a blocked loop is noticed and restarted."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    interval = usec / 2e6 if usec else 10.0
    while True:
        sd_notify(f"WATCHDOG=1\nSTATUS={_status(gw)}")
        await asyncio.sleep(interval)


def run(cfg: Config, load: Callable[[], Config] | None = None) -> None:
    run_loop(serve_forever(cfg, load))
