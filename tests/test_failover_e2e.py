"""Zero lost words, end to end: the official ``deepgram-sdk`` -> gateway -> fault relay -> marker engine.

Real sockets everywhere; faults are injected by ``streamproxy.faults.FaultRelay`` at exact audio
byte offsets of each upstream connection (close with any code, TCP reset, stall, refused
handshakes, delayed messages). The marker engine makes the expected transcript exact, so every
assertion on words and timestamps is ``==``.

Total run time on the 2-core CI box: about 35 s (the 200 schedules take ~20 s of it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from deepgram import AsyncDeepgramClient
from websockets.exceptions import ConnectionClosed

from streamproxy.faults import Fault, FaultKind, FaultRelay, RelayEvent
from streamproxy.metrics import Metrics
from tests.helpers.gateway import engine, gateway, gateway_config, sdk_env, to_dict, validate_strict
from tests.helpers.marker import Segment, expected_words, final_words, marker_audio, segment_samples, spaced_words

SR = 16000
BPS = SR * 2  # bytes per second of linear16 mono
STALL_S = 1.0
FAST = {
    "session.stall_timeout_s": STALL_S,
    "session.close_timeout_s": 30.0,  # a closing session may go through several faults
    "reconnect.first_retry_s": 0.05,
    "reconnect.base_s": 0.1,
    "reconnect.cap_s": 0.5,
    "reconnect.max_attempts": 50,
}
N_SCHEDULES = 200
CONCURRENCY = 25


# ----------------------------------------------------------------------------- helpers
def random_marker_audio(rng: random.Random, seconds: float) -> tuple[bytes, list[tuple[str, float, float]]]:
    """Random marker audio and its exact transcript (word values >= 1000 never touch noise values)."""
    segs: list[Segment] = [("sil", 0, rng.randint(0, 400))]
    pos = segment_samples(segs[0][2], SR)
    while pos < seconds * SR:
        r = rng.random()
        if r < 0.55:
            k, ms = rng.randint(1000, 30000), rng.randint(20, 450)
            if segs[-1][0] == "word" and segs[-1][1] == k:
                k += 1
            segs.append(("word", k, ms))
        elif r < 0.9:
            ms = rng.choice([rng.randint(1, 250), rng.randint(300, 900)])
            segs.append(("sil", 0, ms))
        else:
            ms = rng.randint(1, 15)
            segs.append(("noise", 0, ms))
        pos += segment_samples(segs[-1][2], SR)
    segs.append(("sil", 0, rng.randint(0, 500)))
    return marker_audio(segs, SR, seed=rng.randint(0, 1000)), expected_words(segs, SR)


def random_plan(rng: random.Random, audio_len: int) -> list[Fault]:
    """2-5 faults on consecutive connections; later ones at small offsets so they land mid-replay."""
    plan: list[Fault] = []
    stalls = 0
    for j in range(rng.randint(2, 5)):
        kinds = ["close", "reset", "refuse", "delay"] + (["stall"] if stalls < 2 else [])
        kind = rng.choice(kinds)
        stalls += kind == "stall"
        limit = audio_len if j == 0 else min(audio_len, 2 * BPS)
        at = rng.randrange(0, max(2, limit))  # odd offsets too: a sample split across connections
        if kind == "close":
            code = rng.choice([1011, 1011, 1001, 1012, 1013, 1014, 4000])
            plan.append(Fault("close", at, code=code, delay_ms=rng.choice([0, 0, 30])))
        elif kind == "reset":
            plan.append(Fault("reset", at))
        elif kind == "stall":
            plan.append(Fault("stall", at))
        elif kind == "refuse":
            plan.append(Fault("refuse", status=rng.choice([429, 503, 500, 502])))
        else:
            plan.append(Fault("delay", delay_ms=rng.uniform(10, 250)))
    return plan


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of a family's samples matching ``labels`` (all label values when none given)."""
    total = 0.0
    for fam in metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@functools.cache
def _http() -> httpx.AsyncClient:
    return httpx.AsyncClient()  # never sends a request here: listen.v1 is WebSocket only


@dataclass
class Stream:
    messages: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # loop time each message arrived
    close_code: int | None = None
    closed_at: float = 0.0  # loop time the client sent CloseStream
    error: str = ""


async def sdk_stream(
    port: int,
    audio: bytes,
    *,
    chunk_bytes: int = 3200,
    speed: float | None = None,
    interim: bool = True,
    timeout: float = 40.0,
    params: dict[str, str] | None = None,
) -> Stream:
    """Stream with the official async SDK; ``speed`` None = as fast as possible, 1.0 = real time."""
    loop = asyncio.get_running_loop()
    out = Stream()
    # One shared httpx client: the SDK's default builds a TLS context per client (~30 ms of CPU).
    client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(port), httpx_client=_http())
    query = {"model": "nova-3", "encoding": "linear16", "sample_rate": str(SR)}
    query["interim_results"] = "true" if interim else "false"
    query.update(params or {})
    async with client.listen.v1.connect(**query) as sock:

        async def reader() -> None:
            try:
                async for msg in sock:
                    if msg is None or isinstance(msg, bytes):
                        continue
                    out.messages.append(to_dict(msg))
                    out.times.append(loop.time())
            except ConnectionClosed as e:
                out.error = str(e)

        task = asyncio.create_task(reader())
        start = loop.time()
        try:
            for i in range(0, len(audio), chunk_bytes):
                await sock.send_media(audio[i : i + chunk_bytes])
                if speed:
                    due = start + (i + chunk_bytes) / BPS / speed
                    await asyncio.sleep(max(0.0, due - loop.time()))
            out.closed_at = loop.time()
            await sock.send_close_stream()
        except ConnectionClosed:
            pass
        await asyncio.wait_for(task, timeout)
        out.close_code = sock._websocket.close_code
    return out


def check_clean(s: Stream, audio: bytes) -> None:
    for m in s.messages:
        validate_strict(m)
    assert s.close_code == 1000, s.error
    assert s.messages[-1]["type"] == "Metadata"
    assert s.messages[-1]["duration"] == pytest.approx(len(audio) / BPS)


# ----------------------------------------------------------------------------- 200 schedules
@dataclass
class Outcome:
    seed: int
    plan: list[Fault]
    words: list[tuple[str, float, float]]
    reference: list[tuple[str, float, float]]
    expected: list[tuple[str, float, float]]
    close_code: int | None
    fired: list[RelayEvent]
    connections: int
    reconnects: float
    in_flight: int  # faults that fired while the client was still streaming
    mid_replay: int  # faults that fired inside the replay of a reconnect


async def run_schedule(seed: int, engine_url: str, clean_port: int) -> Outcome:
    rng = random.Random(seed)
    audio, expected = random_marker_audio(rng, rng.uniform(3.0, 6.0))
    plan = random_plan(rng, len(audio))
    chunk = rng.choice([640, 1600, 3200, 8000, 15360]) + rng.choice([0, 0, 1])  # odd sizes split samples
    speed = rng.choice([None, None, 25.0, 10.0])
    interim = rng.random() < 0.5

    ref = await sdk_stream(clean_port, audio, chunk_bytes=chunk, interim=interim)
    check_clean(ref, audio)

    # Per connection: how much audio the gateway holds for replay when it opens (read, not changed).
    replay_at_accept: dict[int, int] = {}
    holder: dict[str, Any] = {}

    def on_event(ev: RelayEvent) -> None:
        if ev.event == "accept" and holder.get("gw") is not None:
            runners = list(holder["gw"].gateway.sessions)
            if runners:
                core = runners[0].core
                replay_at_accept[ev.conn] = core.ring.nbytes

    relay = FaultRelay(engine_url, on_event=on_event)
    await relay.start()
    relay.set_plan(plan)
    try:
        async with gateway(gateway_config([relay.url], **FAST)) as gw:
            holder["gw"] = gw
            got = await sdk_stream(gw.port, audio, chunk_bytes=chunk, speed=speed, interim=interim)
            reconnects = metric(gw.gateway.metrics, "streamproxy_upstream_reconnects_total")
    finally:
        await relay.stop()
    check_clean(got, audio)
    fired = relay.fired()
    in_flight = sum(1 for e in fired if e.event == "fault" and e.t < got.closed_at)
    mid_replay = sum(
        1 for e in fired if e.event == "fault" and e.conn > 1 and e.detail["at_bytes"] < replay_at_accept.get(e.conn, 0)
    )
    return Outcome(
        seed,
        plan,
        final_words(got.messages),
        final_words(ref.messages),
        expected,
        got.close_code,
        fired,
        relay.connections,
        reconnects,
        in_flight,
        mid_replay,
    )


async def test_200_random_fault_schedules_lose_and_duplicate_nothing() -> None:
    """Every schedule's finals (words, start, end) == the fault-free run's, which == the marker contract."""
    t0 = time.monotonic()
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **FAST)) as clean:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> Outcome:
            async with sem:
                return await run_schedule(i, f"ws://127.0.0.1:{eport}", clean.port)

        outcomes = await asyncio.gather(*(one(i) for i in range(N_SCHEDULES)))
    bad = [o.seed for o in outcomes if o.words != o.reference or o.reference != o.expected]
    assert not bad, f"seeds with lost/duplicated/shifted words: {bad}"
    for o in outcomes:
        assert o.close_code == 1000
        assert o.reconnects == o.connections - 1, f"seed {o.seed}: every reconnect counted once"
    kinds = Counter(e.detail.get("kind") for o in outcomes for e in o.fired)
    kinds["delay"] = sum(1 for o in outcomes for f in o.plan[: o.connections] if f.kind == "delay")
    summary: dict[str, Any] = {
        "fired": dict(kinds),
        "in_flight": sum(o.in_flight for o in outcomes),
        "mid_replay": sum(o.mid_replay for o in outcomes),
        "multi_fault_streams": sum(1 for o in outcomes if len(o.fired) >= 2),
        "words": sum(len(o.words) for o in outcomes),
        "connections": sum(o.connections for o in outcomes),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(summary)
    for kind in ("close", "reset", "stall", "refuse", "delay"):
        assert kinds[kind] >= 40, summary
    assert summary["in_flight"] >= 50, summary  # drops while the client is still sending audio
    assert summary["mid_replay"] >= 50, summary  # drops inside the replay after a reconnect
    assert summary["multi_fault_streams"] >= 100, summary


# ----------------------------------------------------------------------------- fixed scenarios
WORDS_AUDIO_SEGS = spaced_words(range(1001, 1009), word_ms=150, gap_ms=350, lead_ms=100)
WORDS_AUDIO = marker_audio(WORDS_AUDIO_SEGS, SR)  # 4.1 s, a final every 0.5 s
WORDS_EXPECTED = expected_words(WORDS_AUDIO_SEGS, SR)  # w1001 at 0.1-0.25 s, then one every 0.5 s


@pytest.mark.parametrize("kind", ["close", "reset", "stall", "refuse"])
async def test_failover_to_healthy_second_upstream(kind: FaultKind) -> None:
    """Upstream A (priority 0) fails and stays down; the session moves to B and loses nothing."""
    async with engine("marker") as eport:
        a, b = FaultRelay(f"ws://127.0.0.1:{eport}"), FaultRelay(f"ws://127.0.0.1:{eport}")
        await a.start()
        await b.start()
        a.set_plan([Fault(kind, at_bytes=BPS + 1001, outage_s=60.0)])
        try:
            async with gateway(gateway_config({"a": a.url, "b": b.url}, **FAST)) as gw:
                got = await sdk_stream(gw.port, WORDS_AUDIO, speed=4.0)
                m = gw.gateway.metrics
                failovers_b = metric(m, "streamproxy_upstream_failovers_total", upstream="b")
        finally:
            await a.stop()
            await b.stop()
    check_clean(got, WORDS_AUDIO)
    assert final_words(got.messages) == WORDS_EXPECTED
    assert a.connections == 1 and b.connections == 1  # one failure, straight to B, never back to A
    assert failovers_b == 1


async def test_region_first_then_failover_across_regions_with_region_labels() -> None:
    """A gateway in region eu with "us" (priority 0, region us) and "eu" (priority 1, region eu):
    the session goes to eu despite the worse priority; eu then drops and stays down, the session
    crosses to us and loses nothing; the metrics carry the regions (gateway's on sessions,
    upstream's on upstream families) and ``streamproxy_gateway_info`` names the gateway's."""
    async with engine("marker") as eport:
        us, eu = FaultRelay(f"ws://127.0.0.1:{eport}"), FaultRelay(f"ws://127.0.0.1:{eport}")
        await us.start()
        await eu.start()
        eu.set_plan([Fault("close", at_bytes=BPS + 1001, code=1011, outage_s=60.0)])
        regions = {"server.region": "eu", "upstream.us.region": "us", "upstream.eu.region": "eu"}
        try:
            async with gateway(gateway_config({"us": us.url, "eu": eu.url}, **FAST, **regions)) as gw:
                got = await sdk_stream(gw.port, WORDS_AUDIO, speed=4.0)
                m = gw.gateway.metrics
                connects = {
                    (u, r): metric(m, "streamproxy_upstream_connects_total", upstream=u, region=r)
                    for u in ("us", "eu")
                    for r in ("us", "eu", "")
                }
                failovers = metric(m, "streamproxy_upstream_failovers_total", upstream="us", region="us")
                reconnects = metric(m, "streamproxy_upstream_reconnects_total", upstream="eu", region="eu")
                ok_eu = metric(m, "streamproxy_sessions_total", outcome="ok", protocol="v1", region="eu")
                info = metric(m, "streamproxy_gateway_info", region="eu")
        finally:
            await us.stop()
            await eu.stop()
    check_clean(got, WORDS_AUDIO)
    assert final_words(got.messages) == WORDS_EXPECTED
    assert eu.connections == 1 and us.connections == 1  # local first, then across, never back
    assert connects == {(u, r): float(u == r) for u in ("us", "eu") for r in ("us", "eu", "")}
    assert failovers == 1 and reconnects == 1 and ok_eu == 1 and info == 1


async def test_sigkill_one_of_two_engine_processes_loses_nothing() -> None:
    """serve.start with the embedded engine (2 processes): SIGKILL the one the session is on."""
    cfg = gateway_config([], **FAST, **{"engine.kind": "marker", "engine.processes": 2})
    async with gateway(cfg) as gw:
        sup = gw.supervisor
        assert sup is not None and len(sup.children) == 2
        loop = asyncio.get_running_loop()
        stream = asyncio.create_task(sdk_stream(gw.port, WORDS_AUDIO[: 3 * BPS], speed=1.0))
        await asyncio.sleep(1.3)
        runner = next(iter(gw.gateway.sessions))
        assert runner.upstream is not None
        victim = sup.children[int(runner.upstream.name.split("-")[1])]
        assert victim.proc is not None
        old_pid = victim.proc.pid
        os.kill(old_pid, signal.SIGKILL)
        got = await stream
        # the supervisor restarts the dead process on the same port
        deadline = loop.time() + 20
        while loop.time() < deadline:
            if victim.restarts == 1 and victim.proc.pid != old_pid and victim.proc.returncode is None:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", victim.port)
                    w.close()
                    break
                except OSError:
                    pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"engine {victim.index} was not restarted (restarts={victim.restarts})")
        failovers = metric(gw.gateway.metrics, "streamproxy_upstream_failovers_total")
    check_clean(got, WORDS_AUDIO[: 3 * BPS])
    assert final_words(got.messages) == [w for w in WORDS_EXPECTED if w[2] <= 3.0]
    assert failovers == 1


async def _expect_fatal(port: int, relay: FaultRelay, params: dict[str, str]) -> tuple[dict[str, Any], Stream]:
    got = await sdk_stream(port, WORDS_AUDIO, speed=4.0, timeout=10, params=params)
    errors = [m for m in got.messages if m["type"] == "Error"]
    assert len(errors) == 1, got.messages
    validate_strict(errors[0])
    assert got.close_code == 1008
    await asyncio.sleep(FAST["reconnect.cap_s"] + 0.1)  # longer than any retry would wait
    assert relay.connections == 1  # not retried
    return errors[0], got


async def test_fatal_refusals_and_1008_are_not_retried() -> None:
    """Relay 401, the engine's own 401 (wrong key), the engine's 400 (sample_rate=4000, which the
    gateway's allow-list accepts but the engine does not) and a close with 1008: each ends the
    session with one Deepgram-shaped Error and close code 1008, after exactly one connection."""
    async with engine("marker", api_key="right-key") as eport:
        target = f"ws://127.0.0.1:{eport}"
        cases: list[tuple[str, list[Fault], str, dict[str, str], str]] = [
            ("relay 401", [Fault("refuse", status=401)], "right-key", {}, "HTTP 401"),
            ("engine 401", [], "wrong-key", {}, "HTTP 401"),
            ("engine 400", [], "right-key", {"sample_rate": "4000"}, "HTTP 400"),
            ("close 1008", [Fault("close", at_bytes=BPS, code=1008)], "right-key", {}, "(1008)"),
        ]
        for name, plan, key, params, needle in cases:
            relay = FaultRelay(target)
            await relay.start()
            relay.set_plan(plan)
            cfg = gateway_config({"u": relay.url}, **FAST, **{"upstream.u.api_key": key})
            try:
                async with gateway(cfg) as gw:
                    err, _ = await _expect_fatal(gw.port, relay, params)
                    assert metric(gw.gateway.metrics, "streamproxy_upstream_fatal_errors_total") == 1, name
                    assert metric(gw.gateway.metrics, "streamproxy_upstream_reconnects_total") == 0, name
            finally:
                await relay.stop()
            assert needle in err["description"], (name, err)
        # control: the right key through the same relay path transcribes exactly
        relay = FaultRelay(target)
        await relay.start()
        try:
            cfg = gateway_config({"u": relay.url}, **FAST, **{"upstream.u.api_key": "right-key"})
            async with gateway(cfg) as gw:
                got = await sdk_stream(gw.port, WORDS_AUDIO)
        finally:
            await relay.stop()
        assert final_words(got.messages) == WORDS_EXPECTED


async def test_stall_detected_within_stall_timeout() -> None:
    """The relay goes silent (socket open, nothing forwarded); the gateway drops it and reconnects."""
    async with engine("marker") as eport:
        relay = FaultRelay(f"ws://127.0.0.1:{eport}")
        await relay.start()
        relay.set_plan([Fault("stall", at_bytes=BPS + 3200)])
        try:
            async with gateway(gateway_config([relay.url], **FAST)) as gw:
                got = await sdk_stream(gw.port, WORDS_AUDIO[: 3 * BPS], speed=1.0)
        finally:
            await relay.stop()
    check_clean(got, WORDS_AUDIO[: 3 * BPS])
    assert final_words(got.messages) == WORDS_EXPECTED[:6]
    stall = relay.fired("stall")[0]
    dropped = next(e for e in relay.events if e.event == "gateway_gone" and e.conn == stall.conn)
    reconnect = next(e for e in relay.events if e.event == "accept" and e.conn == stall.conn + 1)
    detect = dropped.t - stall.t
    # Audio flows every 100 ms, so the unanswered clock starts at most ~0.1 s after the stall;
    # results come every <= 0.5 s before it, so detection cannot come much earlier either.
    assert STALL_S - 0.6 < detect <= STALL_S + 0.3, detect
    assert reconnect.t - dropped.t <= FAST["reconnect.first_retry_s"] + 0.2


async def test_long_outage_overflows_bounded_buffer_and_reports_it() -> None:
    """buffer_seconds=1, upstream down for 2 s while audio arrives at 2x real time: the oldest audio
    is dropped, counted (metric), reported (ProxyStatus degraded), and the ring never exceeds 1 s."""
    audio_segs = spaced_words(range(2001, 2013), word_ms=150, gap_ms=350, lead_ms=100)
    audio = marker_audio(audio_segs, SR)  # 6.1 s
    reference = expected_words(audio_segs, SR)
    async with engine("marker") as eport:
        relay = FaultRelay(f"ws://127.0.0.1:{eport}")
        await relay.start()
        relay.set_plan([Fault("close", at_bytes=BPS, outage_s=2.0)])
        cfg = gateway_config([relay.url], **FAST, **{"session.buffer_seconds": 1.0})
        try:
            async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
                url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate={SR}&proxy_events=true"
                peak = {"ring": 0, "cap": 0, "gauge": 0.0}

                async def watch() -> None:
                    while True:
                        for r in list(gw.gateway.sessions):
                            peak["ring"] = max(peak["ring"], r.core.ring.nbytes)
                            peak["cap"] = r.core.ring.capacity
                        peak["gauge"] = max(peak["gauge"], gw.gateway.metrics.audio_buffered._value.get())
                        await asyncio.sleep(0.02)

                watcher = asyncio.create_task(watch())
                async with http.ws_connect(url) as ws:
                    for i in range(0, len(audio), 3200):
                        await ws.send_bytes(audio[i : i + 3200])
                        await asyncio.sleep(0.05)
                    await ws.send_str('{"type":"CloseStream"}')
                    msgs = [orjson.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
                    assert ws.close_code == 1000
                watcher.cancel()
                dropped_metric = metric(gw.gateway.metrics, "streamproxy_audio_dropped_seconds_total")
        finally:
            await relay.stop()
    degraded = [m for m in msgs if m["type"] == "ProxyStatus" and m["state"] == "degraded"]
    assert degraded and degraded[-1]["dropped_s"] > 0
    assert dropped_metric == pytest.approx(degraded[-1]["dropped_s"], abs=0.01)
    assert dropped_metric > 0.5  # ~2 s down at 2x real time = ~4 s of audio against a 1 s buffer
    assert peak["cap"] == BPS and 0 < peak["ring"] <= BPS  # memory bound held throughout
    assert peak["gauge"] <= 1.0 + 1e-9
    # What survives is exact: every delivered word is a reference word with its timestamps, except
    # that a word cut by the drop may start late (its head was dropped). Nothing duplicated.
    words = final_words([m for m in msgs if m["type"] == "Results"])
    assert len(words) < len(reference)
    ref = {w: (s, e) for w, s, e in reference}
    truncated = 0
    for w, s, e in words:
        rs, re_ = ref[w]
        assert e == re_ and s >= rs, (w, s, e)
        truncated += s != rs
    assert truncated <= 1
    ends = [e for _, _, e in words]
    assert ends == sorted(set(ends))  # in order, none twice


async def test_reconnect_counter_and_replay_on_metrics_endpoint() -> None:
    """One injected 1011 close: /metrics shows the reconnect (reason closed) and replayed audio."""
    async with engine("marker") as eport:
        relay = FaultRelay(f"ws://127.0.0.1:{eport}")
        await relay.start()
        relay.set_plan([Fault("close", at_bytes=2 * BPS, code=1011)])
        try:
            async with gateway(gateway_config({"main": relay.url}, **FAST)) as gw, aiohttp.ClientSession() as http:
                before = metric(gw.gateway.metrics, "streamproxy_upstream_reconnects_total")
                got = await sdk_stream(gw.port, WORDS_AUDIO, speed=8.0)
                async with http.get(f"http://127.0.0.1:{gw.port}/metrics") as r:
                    text = await r.text()
        finally:
            await relay.stop()
    assert final_words(got.messages) == WORDS_EXPECTED
    assert before == 0
    samples = {}
    for line in text.splitlines():
        if line.startswith(("streamproxy_upstream_reconnects_total", "streamproxy_audio_replayed_seconds_total")):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    reconnects = {k: v for k, v in samples.items() if k.startswith("streamproxy_upstream_reconnects_total")}
    assert sum(reconnects.values()) == 1, samples
    assert any('reason="closed"' in k and 'upstream="main"' in k for k in reconnects), samples
    assert samples["streamproxy_audio_replayed_seconds_total"] > 0


async def test_upstream_1000_close_before_closestream_is_answered_loses_nothing() -> None:
    """The client has sent everything and CloseStream; the upstream closes with 1000 after 2 s of
    audio, before answering CloseStream: the trailing audio must be replayed on a new connection."""
    async with engine("marker") as eport:
        relay = FaultRelay(f"ws://127.0.0.1:{eport}")
        await relay.start()
        relay.set_plan([Fault("close", at_bytes=2 * BPS, code=1000)])
        try:
            async with gateway(gateway_config([relay.url], **FAST)) as gw:
                got = await sdk_stream(gw.port, WORDS_AUDIO)  # as fast as possible: closing at the fault
        finally:
            await relay.stop()
    assert got.close_code == 1000
    assert final_words(got.messages) == WORDS_EXPECTED  # today: [] (the session ends at the close)
