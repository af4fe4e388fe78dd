"""The upstreams a process talks to, from its configuration: one wiring for ``serve`` and ``worker``."""

from __future__ import annotations

from ..config import Config
from ..engine.launch import engine_supervisor
from ..engine.supervisor import EngineSupervisor
from .pool import Upstream, UpstreamPool


async def upstreams_from_config(
    cfg: Config, *, base_port: int | None = None
) -> tuple[UpstreamPool, EngineSupervisor | None]:
    """The configured ``[upstream.NAME]`` pool, else a started embedded engine's processes.

    ``base_port=0`` puts the engine children on free ports (a worker beside a ``serve`` on one host).
    The supervisor, if any, is the caller's to stop.
    """
    supervisor: EngineSupervisor | None = None
    if cfg.upstreams:
        upstreams = [Upstream(u.name, u.url, u.api_key, u.priority, region=u.region) for u in cfg.upstreams]
    else:
        supervisor = engine_supervisor(cfg, base_port=base_port)
        await supervisor.start()
        upstreams = supervisor.upstreams()
    pool = UpstreamPool(
        upstreams,
        breaker_failures=cfg.reconnect.breaker_failures,
        breaker_cooldown_s=cfg.reconnect.breaker_cooldown_s,
        region=cfg.server.region,
    )
    return pool, supervisor
