"""The engine process: one recognizer kind behind Deepgram's ``/v1/listen`` (live and files) and
``/v2/listen`` (Flux turns).

:func:`make_engine_app` builds the state once (executors sized for the kind, the model loaded
before the first connection, since the supervisor's readiness check is a TCP connect) and hands it
to the routes; :func:`start_engine` serves it in-process (tests, benchmarks) and :func:`run_engine`
is ``streamproxy engine``'s main, serving until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from streamproxy.engine.flux_live import flux_handler
from streamproxy.engine.kinds import DEFAULT_MODELS, KINDS
from streamproxy.engine.live import live_handler
from streamproxy.engine.prerecorded import prerecorded_handler
from streamproxy.engine.sphinx import default_pool
from streamproxy.engine.state import STATE, EngineState, engine_state
from streamproxy.engine.whisper.model import ModelSource, resolve_model
from streamproxy.engine.whisper.pool import WhisperOptions, load_pool
from streamproxy.loop import run

__all__ = ["make_engine_app", "run_engine", "start_engine"]

log = logging.getLogger("streamproxy.engine")

_MAX_BODY = 512 * 1024 * 1024


async def _healthz(request: web.Request) -> web.Response:
    st = engine_state(request)
    body: dict[str, Any] = {"status": "ok", "kind": st.kind, "model": st.model_name, "streams": len(st.sockets)}
    if st.max_streams:
        body["max_streams"] = st.max_streams
        body["refused"] = st.refused
    if st.whisper is not None:
        body["decoder"] = st.whisper.stats_dict()
    return web.json_response(body)


def make_engine_app(
    kind: str,
    *,
    api_key: str | None = None,
    idle_timeout_s: float = 10.0,
    model_name: str | None = None,
    max_streams: int = 0,
    whisper: WhisperOptions | None = None,
) -> web.Application:
    """aiohttp app serving ``GET/POST /v1/listen``, ``GET /v2/listen`` and ``GET /healthz`` for one kind.

    ``max_streams`` > 0 refuses further streams with 429; ``whisper`` configures the whisper kind
    (its model is loaded before the app accepts connections; a missing model fails the start).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; expected one of {', '.join(KINDS)}")
    version = "1.0"
    wopts: WhisperOptions | None = None
    source: ModelSource | None = None
    if kind == "pocketsphinx":
        import pocketsphinx

        version = getattr(pocketsphinx, "__version__", "5")
        executor = ThreadPoolExecutor(max_workers=max(4, 2 * (os.cpu_count() or 1)), thread_name_prefix="sphinx")
    elif kind == "whisper":
        wopts = whisper or WhisperOptions()
        # ModelNotFound says how to fix it
        source = resolve_model(wopts.model_dir, wopts.model_package, model=wopts.model, data_dir=wopts.data_dir)
        version = source.version
        model_name = model_name or source.name
        # Threads mostly wait (for audio or for a decode slot); decoding itself is bounded by the pool.
        workers = (max_streams or 32) + 4
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")
    else:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="engine-files")
    app = web.Application(client_max_size=_MAX_BODY)
    st = EngineState(
        kind=kind,
        api_key=api_key or None,
        idle_timeout_s=idle_timeout_s,
        model_name=model_name or DEFAULT_MODELS[kind],
        model_version=version,
        executor=executor if kind in ("pocketsphinx", "whisper") else None,
        files=executor,
        sockets=set(),
        max_streams=max(0, max_streams),
        whisper_opts=wopts,
    )
    app[STATE] = st
    app.router.add_get("/v1/listen", live_handler)
    app.router.add_get("/v2/listen", flux_handler)
    app.router.add_post("/v1/listen", prerecorded_handler)
    app.router.add_get("/healthz", _healthz)

    async def on_startup(app: web.Application) -> None:
        if kind == "pocketsphinx":
            # Load the model before accepting connections: the supervisor's readiness check is a
            # TCP connect, and the first stream should not pay the load.
            await asyncio.get_running_loop().run_in_executor(executor, default_pool.prewarm, 1)
        elif kind == "whisper":
            assert wopts is not None
            st.whisper = await asyncio.get_running_loop().run_in_executor(executor, load_pool, wopts, source)

    async def on_shutdown(app: web.Application) -> None:
        for ws in list(st.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"engine shutting down")

    async def on_cleanup(app: web.Application) -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


async def start_engine(host: str, port: int, kind: str, **kw: Any) -> tuple[web.AppRunner, int]:
    """Start the engine on ``host:port`` (0 = ephemeral); returns the runner and the bound port."""
    app = make_engine_app(kind, **kw)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    return runner, bound


def run_engine(host: str, port: int, kind: str, **kw: Any) -> None:
    """Blocking entry point for ``streamproxy engine``: serve until SIGTERM/SIGINT."""

    async def main() -> None:
        runner, bound = await start_engine(host, port, kind, **kw)
        line = f"streamproxy engine ({kind}) listening on http://{host}:{bound}"
        if logging.getLogger().handlers:
            log.info(line, extra={"event": "engine_listening", "kind": kind, "host": host, "port": bound})
        else:
            print(line, file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    run(main())
