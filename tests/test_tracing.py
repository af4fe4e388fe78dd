"""OpenTelemetry traces: off by default at no cost; with a provider, a span tree per session
(session → upstream connection attempts, replay) and one per job (job → its upstream request and
its callback's delivery, a webhook job of its own), from real components (the gateway, a fault
relay that closes the first upstream connection, the marker engine, Redis, the in-process worker
and a callback receiver), captured with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import websockets
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamproxy.config import ConfigError
from streamproxy.faults import Fault, FaultRelay
from streamproxy.jobs.routes import start_jobs
from streamproxy.tracing import Tracer, tracer_from_config
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.jobs import Receiver, http_server, marker_wav, redis_server, unique_prefix
from tests.helpers.marker import marker_audio

SR = 16000


def in_memory() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(provider), exporter


def test_off_by_default_costs_nothing() -> None:
    """No endpoint: a no-op tracer whose calls do nothing (no provider, no span objects)."""
    t = tracer_from_config("", "x")
    assert not t.enabled and t.provider is None
    assert t.start("session", session_id="s") is None
    t.end(None, error="x", attributes={"a": 1})
    with t.span("job") as span:
        assert span is None


def test_an_endpoint_makes_an_exporting_tracer_and_a_bad_one_is_refused() -> None:
    t = tracer_from_config("http://127.0.0.1:4318", "streamproxy")
    assert t.enabled
    t.shutdown()
    from streamproxy.config import load_config

    with pytest.raises(ConfigError, match=r"tracing\.otlp_endpoint"):
        load_config(None, env={"STREAMPROXY_TRACING_OTLP_ENDPOINT": "collector:4318"})


async def test_span_tree_for_a_session_with_a_reconnect_and_for_a_job(tmp_path: Path) -> None:
    tracer, exporter = in_memory()
    async with engine("marker") as eport, redis_server(tmp_path / "redis") as rs:
        relay = FaultRelay(f"ws://127.0.0.1:{eport}")
        await relay.start()
        relay.set_plan([Fault("close", 20_000, code=1011)])  # the first connection dies mid-stream
        try:
            cfg = gateway_config(
                [relay.url],
                **{
                    "reconnect.first_retry_s": 0.05,
                    "queue.redis_url": rs.url,
                    "queue.prefix": unique_prefix(),
                    "server.data_dir": str(tmp_path / "data"),
                },
            )
            async with gateway(cfg, tracer=tracer) as gw:
                url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate={SR}"
                audio = marker_audio([("word", 5, 400), ("sil", 0, 600), ("word", 6, 400), ("sil", 0, 600)], SR)
                async with websockets.connect(url) as ws:
                    for i in range(0, len(audio), 3200):
                        await ws.send(audio[i : i + 3200])
                    await ws.send('{"type":"CloseStream"}')
                    async for _ in ws:
                        pass
            # The job on a gateway straight to the engine (the relay carries WebSockets only).
            cfg2 = gateway_config(
                [f"ws://127.0.0.1:{eport}"],
                **{
                    "queue.redis_url": rs.url,
                    "queue.prefix": unique_prefix(),
                    "queue.url_allow": ["127.0.0.1"],
                    "server.data_dir": str(tmp_path / "data2"),
                },
            )
            receiver = Receiver()
            async with (
                gateway(cfg2, tracer=tracer) as gw2,
                aiohttp.ClientSession() as http,
                http_server(receiver.handle) as cb_port,
            ):
                await start_jobs(gw2.runner.app)
                base = f"http://127.0.0.1:{gw2.port}"
                hook = f"http://127.0.0.1:{cb_port}/hook"
                async with http.post(f"{base}/v1/transcribe?mode=async&callback={hook}", data=marker_wav([7])) as r:
                    assert r.status == 202
                    job_id = (await r.json())["job_id"]
                await asyncio.wait_for(receiver.event.wait(), 20)
                for _ in range(100):
                    if {"job", "webhook"} <= {s.name for s in exporter.get_finished_spans()}:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await relay.stop()
    spans = exporter.get_finished_spans()
    [session] = [s for s in spans if s.name == "session"]
    assert session.parent is None and session.attributes["outcome"] == "ok"
    assert session.attributes["reconnects"] == 1
    connects = [s for s in spans if s.name == "upstream.connect"]
    replays = [s for s in spans if s.name == "replay"]
    assert len(connects) == 2 and len(replays) == 1
    for child in connects + replays:
        assert child.parent is not None and child.parent.span_id == session.context.span_id
        assert child.context.trace_id == session.context.trace_id
    assert [c.attributes["reason"] for c in connects] == ["initial", "closed"]
    assert replays[0].attributes["replay_s"] > 0
    [job] = [s for s in spans if s.name == "job"]
    assert job.attributes["job_id"] == job_id and job.attributes["mode"] == "callback"
    assert job.status.is_ok and job.parent is None
    # The job's children: its upstream request, inside it; the delivery of its callback, a
    # webhook job of its own that runs later, joined to the job's trace by the traceparent it carries.
    [upstream] = [s for s in spans if s.name == "upstream.prerecorded"]
    [webhook] = [s for s in spans if s.name == "webhook"]
    for child in (upstream, webhook):
        assert child.parent is not None and child.parent.span_id == job.context.span_id
        assert child.context.trace_id == job.context.trace_id
    assert job.start_time <= upstream.start_time and upstream.end_time <= job.end_time
    assert upstream.attributes["bytes"] == len(marker_wav([7])) and upstream.attributes["audio_s"] > 0
    assert webhook.attributes["job_id"] == job_id and webhook.attributes["event"] == "transcription.completed"
    assert webhook.start_time >= upstream.end_time and webhook.status.is_ok
    assert len(receiver.delivered) == 1


def test_a_carrier_names_its_span_and_bad_carriers_name_none() -> None:
    """The traceparent a webhook job carries: round trip, and what a foreign producer might put
    there instead (nothing, a string, garbage, a malformed traceparent) gives a root span."""
    tracer, _ = in_memory()
    with tracer.span("job") as job:
        carrier = tracer.carrier(job)
    assert carrier["traceparent"].split("-")[1] == format(job.context.trace_id, "032x")
    parent = tracer.remote_parent(carrier)
    assert parent is not None and parent.get_span_context().span_id == job.context.span_id
    for bad in (
        None,
        {},
        "00-abc",
        {"traceparent": "not-a-traceparent"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
    ):
        assert tracer.remote_parent(bad) is None, bad
        with tracer.span("webhook", tracer.remote_parent(bad)) as root:
            pass
        assert root.parent is None
    off = Tracer()
    assert off.carrier(job) == {} and off.remote_parent(carrier) is None
