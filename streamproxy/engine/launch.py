"""How ``serve`` and ``worker`` start the embedded engine: one resolution of ``engine.kind`` and one
set of child-process flags, so every process's engines honour every ``[engine]`` key."""

from __future__ import annotations

import logging

from ..config import Config, resolve_data_dir
from .supervisor import EngineSupervisor
from .whisper.model import auto_kind

log = logging.getLogger("streamproxy.engine")


def engine_kind(cfg: Config) -> str:
    """Resolve ``auto`` to the best installed recogniser, saying which and why."""
    kind = cfg.engine.kind
    if kind != "auto":
        return kind
    e = cfg.engine
    kind, why = auto_kind(e.model_dir, e.model_package, model=e.model, data_dir=resolve_data_dir(cfg.server))
    log.info(f"engine kind auto -> {kind}: {why}", extra={"event": "engine_kind", "kind": kind, "reason": why})
    return kind


def engine_args(cfg: Config) -> list[str]:
    """``streamproxy engine`` flags for the ``[engine]`` keys the children need besides kind and port."""
    e = cfg.engine
    return [
        f"--model-package={e.model_package}",
        f"--model={e.model}",
        f"--data-dir={resolve_data_dir(cfg.server)}",
        f"--max-batch={e.max_batch}",
        f"--max-streams={e.max_streams}",
        f"--max-concurrent-decodes={e.max_concurrent_decodes}",
        f"--max-decode-wait={e.max_decode_wait_s}",
        f"--interim-every={e.interim_every_s}",
    ]


def engine_supervisor(cfg: Config, *, base_port: int | None = None) -> EngineSupervisor:
    """The supervisor of ``engine.processes`` children configured from ``[engine]`` (not started)."""
    e = cfg.engine
    return EngineSupervisor(
        engine_kind(cfg),
        e.processes,
        e.host,
        e.base_port if base_port is None else base_port,
        e.idle_timeout_s,
        e.model_dir,
        extra_args=engine_args(cfg),
    )
