"""Flux (``/v2/listen``) through the gateway, end to end: the official SDK 7.x ``listen.v2`` client,
``serve.start`` with the embedded marker engine (two real processes), faults by SIGKILL. Every
message the client gets validates against the SDK's pydantic models (no undeclared fields)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import pytest
import websockets
from deepgram import AsyncDeepgramClient, DeepgramClient

from tests.helpers.gateway import gateway, gateway_config, sdk_env
from tests.helpers.marker import marker_audio
from tests.test_engine_flux import validate
from tests.test_flux_core import reference, turns

SR = 16000
SEGMENTS = [("sil", 0, 200), ("word", 31, 300), ("sil", 0, 900), ("word", 32, 250), ("word", 33, 250),
            ("sil", 0, 900), ("word", 34, 400), ("sil", 0, 300)]  # fmt: skip
AUDIO = marker_audio(SEGMENTS, SR)
FAST = {"reconnect.first_retry_s": 0.05, "session.stall_timeout_s": 3.0}


def expected(audio: bytes) -> list[tuple]:
    return turns(reference(audio, SR))


async def _drain(ws: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), 15)
        except websockets.ConnectionClosed:
            return out
        out.append(validate(raw))


def check_timeline(msgs: list[dict[str, Any]]) -> None:
    assert [m["sequence_id"] for m in msgs] == list(range(len(msgs)))
    assert [m["type"] for m in msgs].count("Connected") == 1 and msgs[0]["type"] == "Connected"
    open_turn = None
    ended = []
    for m in msgs:
        if m["type"] != "TurnInfo":
            continue
        if m["event"] == "StartOfTurn":
            assert open_turn is None
            open_turn = m["turn_index"]
            assert open_turn == len(ended)  # continuous
        else:
            assert open_turn == m["turn_index"], f"{m['event']} outside its turn"
            if m["event"] == "EndOfTurn":
                ended.append(open_turn)
                open_turn = None
    assert open_turn is None


async def _stream(port: int, audio: bytes, *, kill: Any = None, configure: dict | None = None) -> list[dict]:
    client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(port))
    async with client.listen.v2.connect(model="flux-general-en", encoding="linear16", sample_rate=str(SR)) as sock:
        ws = sock._websocket
        got: list[dict] = []

        async def reader() -> None:
            got.extend(await _drain(ws))

        task = asyncio.create_task(reader())
        if configure is not None:
            await sock.send_configure(configure)
        chunk = SR * 2 // 10
        for i in range(0, len(audio), chunk):
            await sock.send_media(audio[i : i + chunk])
            await asyncio.sleep(0.1)  # real time
            if kill is not None:
                await kill(i // chunk)
        await sock.send_close_stream()
        await asyncio.wait_for(task, 30)
    return got


async def test_sdk_v2_through_the_gateway_exact_turns_and_last_turn_at_close() -> None:
    """The stream ends 300 ms after its last word: Deepgram would drop that turn at CloseStream; the
    gateway ends it first (ForceEndTurn), so every turn arrives, exactly the engine's."""
    cfg = gateway_config([], **FAST, **{"engine.kind": "marker", "engine.processes": 1})
    async with gateway(cfg) as gw:
        got = await _stream(gw.port, AUDIO)
        reg = gw.gateway.metrics.registry
        for _ in range(100):  # the session's accounting runs just after its close
            if reg.get_sample_value("streamproxy_sessions_total", {"outcome": "ok", "protocol": "v2", "region": ""}):
                break
            await asyncio.sleep(0.02)
        assert (
            reg.get_sample_value("streamproxy_sessions_total", {"outcome": "ok", "protocol": "v2", "region": ""}) == 1
        )
        assert not reg.get_sample_value("streamproxy_sessions_total", {"outcome": "ok", "protocol": "v1", "region": ""})
        assert reg.get_sample_value("streamproxy_turns_total", {"trigger": "manual"}) == 1
        assert reg.get_sample_value("streamproxy_end_of_turn_latency_seconds_count") == 3
    check_timeline(got)
    assert turns(got) == expected(AUDIO)
    assert [t[3] for t in turns(got)] == ["w31", "w32 w33", "w34"]
    assert turns(got)[-1][5] == "manual"


async def test_sigkill_engine_mid_turn_and_during_replay_loses_and_repeats_nothing() -> None:
    """Two engine processes; SIGKILL the one the session is on inside a turn, then again right after
    the replacement took over (during its replay). The client's turns equal an uninterrupted run."""
    cfg = gateway_config([], **FAST, **{"engine.kind": "marker", "engine.processes": 2})
    async with gateway(cfg) as gw:
        sup = gw.supervisor
        assert sup is not None
        kills: list[int] = []

        async def kill(chunk: int) -> None:
            if chunk in (4, 5):  # inside the first turn's word, then during the replacement's replay
                runner = next(iter(gw.gateway.sessions))
                if runner.upstream is None:
                    return
                victim = sup.children[int(runner.upstream.name.split("-")[1])]
                assert victim.proc is not None
                os.kill(victim.proc.pid, signal.SIGKILL)
                kills.append(chunk)

        got = await _stream(gw.port, AUDIO, kill=kill)
        reg = gw.gateway.metrics.registry
        reconnects = sum(
            s.value for f in reg.collect() if f.name == "streamproxy_upstream_reconnects"
            for s in f.samples if s.name.endswith("_total")
        )  # fmt: skip
        active = reg.get_sample_value("streamproxy_sessions_active", {"protocol": "v2", "region": ""})
    assert kills == [4, 5]
    assert reconnects >= 2
    check_timeline(got)
    assert turns(got) == expected(AUDIO)
    assert active == 0


async def test_configure_answered_once_and_reapplied_after_a_reconnect() -> None:
    """A client Configure is answered once; after the engine is killed the replacement connection
    gets the same Configure again before the replay, and its answer is not shown to the client."""
    cfg = gateway_config([], **FAST, **{"engine.kind": "marker", "engine.processes": 2})
    configure = {"type": "Configure", "thresholds": {"eot_threshold": 0.5}}
    async with gateway(cfg) as gw:
        sup = gw.supervisor
        assert sup is not None

        async def kill(chunk: int) -> None:
            if chunk == 6:
                runner = next(iter(gw.gateway.sessions))
                assert runner.core._configure_latest is not None  # accepted by the first engine
                victim = sup.children[int(runner.upstream.name.split("-")[1])] if runner.upstream else None
                if victim is not None and victim.proc is not None:
                    os.kill(victim.proc.pid, signal.SIGKILL)

        got = await _stream(gw.port, AUDIO, kill=kill, configure=configure)
        connects = gw.gateway.metrics.registry.get_sample_value(
            "streamproxy_upstream_connects_total", {"upstream": "engine-0", "region": ""}
        )
        connects = (connects or 0) + (
            gw.gateway.metrics.registry.get_sample_value(
                "streamproxy_upstream_connects_total", {"upstream": "engine-1", "region": ""}
            )
            or 0
        )
    assert connects == 2  # the engine was killed and replaced once
    check_timeline(got)
    answers = [m for m in got if m["type"].startswith("Configure")]
    assert [a["type"] for a in answers] == ["ConfigureSuccess"]
    assert answers[0]["thresholds"]["eot_threshold"] == 0.5
    # eot 0.5 -> turns end after 500 ms of silence, on both connections: the replay used it too.
    ends = [m for m in got if m.get("event") == "EndOfTurn" and m["trigger"] == "model"]
    assert ends and all(round(m["end_of_turn_confidence"], 3) == 0.5 for m in ends)


async def test_sync_sdk_v2_and_bad_query_400() -> None:
    cfg = gateway_config([], **{"engine.kind": "marker", "engine.processes": 1})
    async with gateway(cfg) as gw:

        def run() -> list[str]:
            client = DeepgramClient(api_key="anything", environment=sdk_env(gw.port))
            out: list[str] = []
            with client.listen.v2.connect(model="flux-general-en", encoding="linear16", sample_rate=str(SR)) as sock:
                ws = sock._websocket
                sock.send_media(marker_audio([("word", 9, 300), ("sil", 0, 60)], SR))
                sock.send_close_stream()
                try:
                    while True:
                        out.append(ws.recv(timeout=10))
                except Exception:
                    pass
            return out

        raw: list[str] = []
        t = threading.Thread(target=lambda: raw.extend(run()))
        t.start()
        await asyncio.to_thread(t.join, 30)
        got = [validate(r) for r in raw]
        assert [m["transcript"] for m in got if m.get("event") == "EndOfTurn"] == ["w9"]
        with pytest.raises(websockets.InvalidStatus) as ei:
            await websockets.connect(f"ws://127.0.0.1:{gw.port}/v2/listen?model=flux-general-en&interim_results=true")
        assert ei.value.response.status_code == 400
        assert b"interim_results" in ei.value.response.body
