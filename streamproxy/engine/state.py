"""The engine process's state, built once by :func:`streamproxy.engine.app.make_engine_app` and
read by the routes through ``request.app[STATE]``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from streamproxy.engine.whisper.pool import DecodePool, WhisperOptions

__all__ = ["STATE", "EngineState", "engine_state"]


@dataclass
class EngineState:
    """One recognizer kind, its executors and its capacity accounting."""

    kind: str
    api_key: str | None
    idle_timeout_s: float
    model_name: str
    model_version: str
    executor: ThreadPoolExecutor | None  # recognizer calls; None = inline on the loop
    files: ThreadPoolExecutor  # prerecorded runs
    sockets: set[web.WebSocketResponse]
    max_streams: int = 0  # 0 = unlimited; past it the handshake gets 429
    admitted: int = 0  # streams past the admission check (counted before the upgrade)
    refused: int = 0
    whisper_opts: WhisperOptions | None = None
    whisper: DecodePool | None = None  # loaded at startup by the whisper kind


STATE = web.AppKey("streamproxy_engine_state", EngineState)


def engine_state(request: web.Request) -> EngineState:
    """The state of the app serving ``request``."""
    return request.app[STATE]
