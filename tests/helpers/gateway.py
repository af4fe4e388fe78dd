"""Start real engines and gateways on loopback ports for tests (in-process, same event loop)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from streamproxy.config import Config, load_config
from streamproxy.engine.app import start_engine
from streamproxy.serve import Running, start
from tests.helpers.marker import final_words

__all__ = ["engine", "final_words", "gateway", "gateway_config", "sdk_env", "to_dict", "validate_strict"]


@contextlib.asynccontextmanager
async def engine(kind: str = "marker", **kw: Any) -> AsyncIterator[int]:
    runner, port = await start_engine("127.0.0.1", 0, kind, **kw)
    try:
        yield port
    finally:
        await runner.cleanup()


def gateway_config(upstream_urls: list[str] | dict[str, str], **overrides: Any) -> Config:
    """Config with the given upstreams (name -> url, or a list named u0, u1 ... by priority)."""
    o: dict[str, Any] = {"server.port": 0}
    urls = upstream_urls if isinstance(upstream_urls, dict) else {f"u{i}": u for i, u in enumerate(upstream_urls)}
    for i, (name, url) in enumerate(urls.items()):
        o[f"upstream.{name}.url"] = url
        o[f"upstream.{name}.priority"] = i
    o.update(overrides)
    return load_config(None, env={}, overrides=o)


@contextlib.asynccontextmanager
async def gateway(cfg: Config, **kw: Any) -> AsyncIterator[Running]:
    running = await start(cfg, **kw)
    try:
        yield running
    finally:
        await running.stop()


def sdk_env(port: int) -> Any:
    from deepgram.environment import DeepgramClientEnvironment

    return DeepgramClientEnvironment(
        base=f"http://127.0.0.1:{port}",
        production=f"ws://127.0.0.1:{port}",
        agent=f"ws://127.0.0.1:{port}",
        agent_rest=f"http://127.0.0.1:{port}",
    )


def validate_strict(msg: dict[str, Any]) -> Any:
    """Parse with the official SDK's pydantic models (required fields, types) - strict, not lenient."""
    from deepgram.listen.v1.types import (
        ListenV1Error,
        ListenV1Metadata,
        ListenV1Results,
        ListenV1SpeechStarted,
        ListenV1UtteranceEnd,
    )

    models: dict[str, Any] = {
        "Results": ListenV1Results,
        "Metadata": ListenV1Metadata,
        "SpeechStarted": ListenV1SpeechStarted,
        "UtteranceEnd": ListenV1UtteranceEnd,
        "Error": ListenV1Error,
    }
    return models[msg["type"]].model_validate(msg)


def to_dict(msg: Any) -> dict[str, Any]:
    if isinstance(msg, dict):
        return msg
    if isinstance(msg, (str, bytes)):
        return json.loads(msg)
    return msg.model_dump(mode="json", exclude_none=True)


def metric(gw: Any, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a gateway's samples named ``name`` whose labels include ``labels`` (0 if none)."""
    want = labels or {}
    return sum(
        s.value
        for fam in gw.gateway.metrics.registry.collect()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items())
    )
