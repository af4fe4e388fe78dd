"""Metrics, per-result latency and the session summary, observed through real sessions.

Everything runs on loopback: the marker engine and the gateway in-process, a plain ``websockets``
client (so the ``dg-request-id`` response header is readable), ``/metrics`` fetched over HTTP and
parsed with the Prometheus text parser. The upstream fault is injected by ``streamproxy.faults.FaultRelay``
(a TCP reset at an exact audio byte offset). Total run time about 3 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from streamproxy.faults import Fault, FaultRelay
from streamproxy.jobs.routes import start_jobs
from streamproxy.logs import JsonFormatter
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.marker import final_words, marker_audio

SR = 16000
CHUNK = SR * 2 // 10  # 100 ms of linear16
# Words with 350 ms of silence after each: the marker's 300 ms endpointing gives a final per word,
# interim_results gives interims while a word is pending.
SEGMENTS = [
    ("sil", 0, 100),
    ("word", 21, 200),
    ("sil", 0, 350),
    ("word", 22, 150),
    ("sil", 0, 350),
    ("word", 23, 250),
    ("sil", 0, 350),
    ("word", 24, 120),
    ("sil", 0, 130),
]
AUDIO = marker_audio(SEGMENTS, SR)
EXPECTED_WORDS = ["w21", "w22", "w23", "w24"]

#: The families the brief (section 6) names, as the text parser reports them (counters lose ``_total``).
BRIEF_FAMILIES = {
    "streamproxy_sessions_active": "gauge",
    "streamproxy_sessions": "counter",  # total, by outcome
    "streamproxy_upstream_connects": "counter",
    "streamproxy_upstream_reconnects": "counter",
    "streamproxy_upstream_failovers": "counter",
    "streamproxy_audio_buffered_seconds": "gauge",
    "streamproxy_audio_replayed_seconds": "counter",
    "streamproxy_audio_dropped_seconds": "counter",
    "streamproxy_duplicate_results_suppressed": "counter",
    "streamproxy_transcript_latency_seconds": "histogram",
    "streamproxy_first_word_latency_seconds": "histogram",
    "streamproxy_proxy_overhead_seconds": "histogram",
    "streamproxy_jobs": "counter",
    "streamproxy_queue_depth": "gauge",
    "streamproxy_job_duration_seconds": "histogram",
}
SESSION_LIKE = re.compile(r"(?i)session|request_id|^id$|sid|uuid|conn")
DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "streamproxy-dashboard.json"


# ----------------------------------------------------------------------------- helpers
class Scrape:
    """One parsed ``/metrics`` exposition."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample: str, **labels: str) -> float:
        """Sum of the samples named ``sample`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for fam in self.families.values():
            for s in fam.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def labels(self) -> list[tuple[str, dict[str, str]]]:
        return [(s.name, s.labels) for f in self.families.values() for s in f.samples]


async def scrape(port: int) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return Scrape(await r.text())


async def wait_value(port: int, sample: str, want: float, timeout: float = 3.0, **labels: str) -> Scrape:
    """Poll ``/metrics`` until ``sample`` equals ``want`` (session accounting runs after the close)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        s = await scrape(port)
        if s.value(sample, **labels) == want or loop.time() > deadline:
            return s
        await asyncio.sleep(0.02)


async def stream(
    port: int,
    audio: bytes,
    *,
    pace_s: float = 0.01,
    during: dict[int, Any] | None = None,
    **params: str,
) -> tuple[str, list[dict[str, Any]]]:
    """Stream ``audio`` in 100 ms chunks, CloseStream, and collect every message until the close.

    ``during`` maps a chunk index to an async callable run before that chunk is sent.
    Returns the session id (``dg-request-id``) and the messages.
    """
    q = "&".join(f"{k}={v}" for k, v in {"encoding": "linear16", "sample_rate": str(SR), **params}.items())
    got: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/v1/listen?{q}", max_size=None) as ws:
        assert ws.response is not None
        sid = ws.response.headers["dg-request-id"]

        async def reader() -> None:
            async for m in ws:
                got.append(orjson.loads(m))

        task = asyncio.create_task(reader())
        for i in range(0, len(audio), CHUNK):
            if during and i // CHUNK in during:
                await during[i // CHUNK]()
            await ws.send(audio[i : i + CHUNK])
            await asyncio.sleep(pace_s)
        await ws.send('{"type":"CloseStream"}')
        await asyncio.wait_for(task, 10)
        assert ws.close_code == 1000
    return sid, got


def results(msgs: list[dict[str, Any]], final: bool) -> list[dict[str, Any]]:
    return [m for m in msgs if m.get("type") == "Results" and bool(m.get("is_final")) is final]


def session_end_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The session summaries, rendered by the product's JSON formatter exactly as journald gets them."""
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if getattr(r, "event", None) == "session_end"]


def metric_names(exposition: Scrape) -> set[str]:
    """Every series name the exposition's families can produce (children appear only once used)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names = set()
    for name, fam in exposition.families.items():
        names |= {name + s for s in suffixes.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


# ----------------------------------------------------------------------------- tests
async def test_metrics_follow_one_session(caplog: pytest.LogCaptureFixture) -> None:
    """Gauge up then down, one latency observation per delivered Results (per kind), first word once,
    proxy latency on every result, all brief families present, no session id in any label."""
    caplog.set_level(logging.INFO)
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        before = await scrape(gw.port)
        assert before.value("streamproxy_sessions_active") == 0
        seen_active: list[float] = []

        async def look() -> None:
            seen_active.append((await scrape(gw.port)).value("streamproxy_sessions_active"))

        sid, msgs = await stream(
            gw.port, AUDIO, during={5: look}, interim_results="true", proxy_events="true", endpointing="300"
        )
        after = await wait_value(gw.port, "streamproxy_sessions_active", 0)

    assert seen_active == [1]
    assert after.value("streamproxy_sessions_active") == 0
    assert after.value("streamproxy_sessions_total", outcome="ok") == 1

    interims, finals = results(msgs, False), results(msgs, True)
    assert [w[0] for w in final_words(msgs)] == EXPECTED_WORDS
    assert interims and len(finals) >= len(EXPECTED_WORDS)
    # One histogram observation per Results message the client received, per kind.
    assert after.value("streamproxy_transcript_latency_seconds_count", kind="interim") == len(interims)
    assert after.value("streamproxy_transcript_latency_seconds_count", kind="final") == len(finals)
    assert after.value("streamproxy_first_word_latency_seconds_count") == 1
    # Every result carries its measured latency with the opt-in.
    lat_ms = [m["proxy"]["latency_ms"] for m in interims + finals]
    assert all(isinstance(x, (int, float)) and x >= 0 for x in lat_ms), lat_ms
    assert after.value("streamproxy_transcript_latency_seconds_sum") == pytest.approx(sum(lat_ms) / 1000, abs=1e-3)
    # Time inside the proxy, both directions; buffered audio returned to zero; audio accounted.
    assert after.value("streamproxy_proxy_overhead_seconds_count", direction="upstream") > 0
    assert after.value("streamproxy_proxy_overhead_seconds_count", direction="downstream") > 0
    assert after.value("streamproxy_audio_buffered_seconds") == pytest.approx(0, abs=1e-9)
    assert after.value("streamproxy_audio_received_seconds_total") == pytest.approx(len(AUDIO) / 2 / SR)
    assert after.value("streamproxy_upstream_connects_total") == 1
    assert after.value("streamproxy_upstream_reconnects_total") == 0

    # The exposition has every family of the brief, with the right type.
    for name, kind in BRIEF_FAMILIES.items():
        assert name in after.families, name
        assert after.families[name].type == kind, name
    # Bounded labels: no value is the session id, no label name looks per-session.
    for sample, labels in after.labels():
        assert sid not in labels.values(), (sample, labels)
        assert not any(SESSION_LIKE.search(k) for k in labels), (sample, labels)
    assert sid not in after.text

    # The session summary: one JSON line whose percentiles agree with what the client was told.
    (line,) = session_end_lines(caplog)
    assert line["session_id"] == sid and line["outcome"] == "ok"
    for key in ("duration_s", "audio_s", "reconnects", "replayed_s", "dropped_s", "latency_p50_ms", "latency_p95_ms"):
        assert key in line, key
    assert line["audio_s"] == pytest.approx(len(AUDIO) / 2 / SR)
    assert line["duration_s"] >= line["audio_s"] * 0.05
    assert line["reconnects"] == 0 and line["replayed_s"] == 0 and line["dropped_s"] == 0
    srt = sorted(lat_ms)
    assert line["latency_p50_ms"] == pytest.approx(srt[int(0.5 * len(srt))], abs=0.06)
    assert line["latency_p95_ms"] == pytest.approx(srt[min(len(srt) - 1, int(0.95 * len(srt)))], abs=0.06)


async def test_reconnect_counter_moves_when_upstream_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    """Reset the upstream TCP connection mid-word (``FaultRelay``, no close frame): reconnect counted once
    for that upstream, unacknowledged audio replayed, words still exact, and the session summary says so."""
    caplog.set_level(logging.INFO)
    async with engine("marker") as eport:
        relay = FaultRelay(f"ws://127.0.0.1:{eport}")
        await relay.start()
        # Byte 23 000 is 0.72 s, inside w22 (0.65-0.80 s): audio since the last final is unacknowledged.
        relay.set_plan([Fault("reset", at_bytes=23_000)])
        try:
            async with gateway(gateway_config([relay.url])) as gw:
                _, msgs = await stream(gw.port, AUDIO, pace_s=0.02, proxy_events="true")
                after = await wait_value(gw.port, "streamproxy_sessions_active", 0)
        finally:
            await relay.stop()

    assert len(relay.fired("reset")) == 1
    assert [w[0] for w in final_words(msgs)] == EXPECTED_WORDS
    reconnects = {
        (s.labels["upstream"], s.labels["reason"]): s.value
        for s in after.families["streamproxy_upstream_reconnects"].samples
        if s.name == "streamproxy_upstream_reconnects_total"
    }
    # Labelled by the upstream that failed (not ""), and by why: a reset without a close frame.
    assert reconnects == {("u0", "reset"): 1.0}, reconnects
    assert after.value("streamproxy_upstream_connects_total", upstream="u0") == 2
    assert after.value("streamproxy_audio_replayed_seconds_total") > 0
    statuses = [m["state"] for m in msgs if m.get("type") == "ProxyStatus"]
    assert "reconnecting" in statuses and "replaying" in statuses

    (line,) = session_end_lines(caplog)
    assert line["reconnects"] == 1
    assert line["replayed_s"] == pytest.approx(after.value("streamproxy_audio_replayed_seconds_total"), abs=1e-3)
    assert line["replayed_s"] > 0 and line["dropped_s"] == 0
    assert line["latency_p50_ms"] is not None and line["latency_p95_ms"] >= line["latency_p50_ms"]


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    def panels(ps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    return [t["expr"] for p in panels(dash["panels"]) for t in p.get("targets", []) if t.get("expr")]


async def test_dashboard_uses_only_exported_metrics(tmp_path: Path) -> None:
    """Every metric a dashboard query names is one the running gateway (with its in-process job
    worker, whose families the dashboard shows too) exports: the JSON cannot drift."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    assert any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in dash["templating"]["list"])
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 10
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    used = {n for e in exprs for n in re.findall(r"\bstreamproxy_[a-z0-9_]+", e)}
    queue = {"queue.redis_url": "", "queue.serve_worker": True, "server.data_dir": str(tmp_path)}  # embedded Redis
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **queue)) as gw:
        await start_jobs(gw.runner.app)
        exported = metric_names(await scrape(gw.port))
    assert used, exprs
    assert used <= exported, sorted(used - exported)
    # Every family of the brief is on the dashboard.
    for fam, kind in BRIEF_FAMILIES.items():
        stem = fam + ("_total" if kind == "counter" else "_bucket" if kind == "histogram" else "")
        assert any(n.startswith(stem) for n in used), fam
    # Panels read the datasource variable, so the dashboard imports into any Grafana.
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p.get("type") != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_latency_has_sub_millisecond_resolution_under_uvloop() -> None:
    """``serve`` runs on uvloop; the per-result latency must not be quantised to whole milliseconds."""
    import uvloop

    async def main() -> list[float]:
        async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
            _, msgs = await stream(gw.port, AUDIO, interim_results="true", proxy_events="true")
        return [m["proxy"]["latency_ms"] for m in msgs if m.get("type") == "Results"]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        lat_ms = r.run(main())
    assert len(lat_ms) >= 8
    assert any(x != round(x) for x in lat_ms), lat_ms
