"""``queue.redis_cluster = true`` on a real 3-master Redis Cluster: per-key limits shared by two
gateways, async jobs through a ``streamproxy worker`` (and a callback), readiness, a resume, and a session
moving to another instance with its state in the cluster.

``queue.redis_url`` always names a node that does *not* serve the prefix's slot, so every command
works only because the client follows the cluster's redirections ("any node" of the contract).
Bad input: the setting contradicting the server (true on a plain Redis, false on a cluster node),
true with no URL / a unix socket / a db number, a prefix without a hash tag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import websockets

from streamproxy.auth.keys import KeyStore
from streamproxy.config import ConfigError, load_config
from streamproxy.jobs.routes import start_jobs
from streamproxy.outbound.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from streamproxy.redisconn import check_server, connect
from streamproxy.serve import Running
from tests.helpers.clients import open_stream, refused, words_audio
from tests.helpers.gateway import engine, final_words, gateway, gateway_config
from tests.helpers.jobs import (
    Receiver,
    http_server,
    marker_wav,
    queue_sections,
    redis_server,
    start_worker,
    unique_prefix,
    wait_for,
    words_of,
    write_config,
)
from tests.helpers.marker import marker_audio, spaced_words
from tests.helpers.redis_cluster import RedisCluster, redis_cluster
from tests.helpers.serve_proc import cli

SHORT = marker_wav([5, 6, 7])  # 1.9 s at 8 kHz


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _queue(c: RedisCluster, prefix: str) -> dict[str, Any]:
    """Cluster settings naming a node that does not hold the prefix's slot."""
    return {
        "queue.redis_cluster": True,
        "queue.redis_url": c.url(c.not_owner_of(prefix)),
        "queue.prefix": prefix,
    }


def _keys_on(c: RedisCluster, node: int, pattern: str) -> list[bytes]:
    with redis.Redis(port=c.ports[node]) as r:
        return list(r.scan_iter(match=pattern))


@contextlib.asynccontextmanager
async def gateways(tmp_path: Path, overrides: dict[str, Any], n: int = 1) -> AsyncIterator[list[Running]]:
    async with engine("marker") as eport, contextlib.AsyncExitStack() as stack:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"server.data_dir": str(tmp_path), **overrides})
        yield [await stack.enter_async_context(gateway(cfg)) for _ in range(n)]


async def test_limits_hold_across_instances_on_a_cluster(tmp_path: Path, cluster: RedisCluster) -> None:
    store = KeyStore(tmp_path / "keys.json")
    a, b = store.create("a")[1], store.create("b")[1]
    prefix = unique_prefix()
    o = {**_queue(cluster, prefix), "limits.max_sessions_per_key": 1, "limits.requests_per_minute": 2}
    async with gateways(tmp_path, o, n=2) as [g1, g2], aiohttp.ClientSession() as s:
        first = await open_stream(s, g1.port, key=a)
        status, body, _ = await refused(s, g2.port, {"Authorization": f"Token {a}"})  # the other instance knows
        assert status == 429 and "concurrent sessions" in body["err_msg"]
        # The lease is in the cluster, on the node serving the prefix's slot (and only there).
        owner = cluster.owner_of(prefix)
        assert _keys_on(cluster, owner, f"{prefix}:limits:live:*")
        assert not _keys_on(cluster, cluster.not_owner_of(prefix), f"{prefix}*")
        other = await open_stream(s, g2.port, key=b)  # another key is not affected
        await first.send(words_audio([41, 42]))
        await first.close_stream()
        assert first.words == ["w41", "w42"]
        for _ in range(50):  # released in the cluster right after the session ends
            with contextlib.suppress(aiohttp.WSServerHandshakeError):
                again = await open_stream(s, g2.port, key=a)
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("slot not released")
        for st in (again, other):
            await st.close_stream()
            assert st.close_code == 1000
        # Requests per minute (the sliding-window script, two keys in one slot), shared.
        for port in (g1.port, g2.port):
            async with s.post(f"http://127.0.0.1:{port}/v1/auth/grant", headers={"Authorization": f"Token {a}"}) as r:
                assert r.status == 200
        async with s.post(f"http://127.0.0.1:{g1.port}/v1/auth/grant", headers={"Authorization": f"Token {a}"}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1


async def test_async_job_callback_and_readyz_on_a_cluster(tmp_path: Path, cluster: RedisCluster) -> None:
    """A job submitted to one gateway is processed by a ``streamproxy worker`` on the cluster; a
    waiting job can be cancelled; a callback is delivered through the webhooks queue."""
    prefix = unique_prefix()
    receiver = Receiver()
    async with engine("marker") as eport, http_server(receiver.handle) as cb_port:
        q = _queue(cluster, prefix)
        overrides = {
            **q,
            "queue.serve_worker": False,
            "queue.url_allow": "127.0.0.1",
            "server.data_dir": str(tmp_path / "data"),
        }
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **overrides)
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{gw.port}"
            await start_jobs(gw.runner.app)  # what `serve` does after start: the queue connects now
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200 and (await r.json())["redis"] is True
            # No worker yet: the job waits in the cluster and is cancelled there.
            async with http.post(f"{base}/v1/transcribe?mode=async", data=SHORT) as r:
                assert r.status == 202, await r.text()
                waiting = orjson.loads(await r.read())["job_id"]
            assert _keys_on(cluster, cluster.owner_of(prefix), f"{prefix}:transcribe:{waiting}")
            async with http.delete(f"{base}/v1/jobs/{waiting}") as r:
                assert r.status == 200 and (await r.json())["state"] == "cancelled"

            sections = queue_sections(
                q["queue.redis_url"], prefix, f"ws://127.0.0.1:{eport}", redis_cluster=True, webhook_secret=""
            )
            worker = await start_worker(write_config(tmp_path / "worker.toml", sections))
            try:
                async with http.post(f"{base}/v1/transcribe?mode=async", data=SHORT) as r:
                    assert r.status == 202
                    job_id = orjson.loads(await r.read())["job_id"]

                async def done() -> bool:
                    async with http.get(f"{base}/v1/jobs/{job_id}") as r:
                        return bool((await r.json())["state"] == "completed")

                await wait_for(done, 20, "the async job on the cluster")
                async with http.get(f"{base}/v1/jobs/{job_id}") as r:
                    st = await r.json()
                assert words_of(st["result"]) == ["w5", "w6", "w7"] and st["attempts"] == 1
                assert st["result"]["metadata"]["request_id"] == job_id

                cb = f"http://127.0.0.1:{cb_port}/hook"
                async with http.post(f"{base}/v1/listen", params={"callback": cb}, data=SHORT) as r:
                    assert r.status == 200
                    cb_job = (await r.json())["request_id"]
                await asyncio.wait_for(receiver.event.wait(), 20)
                (_, _, headers, payload) = receiver.delivered[0]
                assert words_of(orjson.loads(payload)) == ["w5", "w6", "w7"]
                assert orjson.loads(payload)["metadata"]["request_id"] == cb_job
                # Signed with the random secret the worker created in the cluster (webhook_secret = "").
                with redis.RedisCluster.from_url(q["queue.redis_url"]) as rc:
                    secret = rc.get(f"{prefix}:sp:webhook-secret")
                assert secret and verify(secret, payload, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
            finally:
                assert await worker.stop() == 0
            assert not [ln for ln in worker.lines if ln.get("event") == "worker_error"], worker.lines[-5:]


async def test_fresh_cluster_clients_take_concurrent_commands(cluster: RedisCluster) -> None:
    """Many tasks on a client that has not met the cluster yet (a gateway's first requests): every
    command succeeds. redis-py's own client sends a few of them on connections it is resetting."""
    prefix = unique_prefix()
    cfg = load_config(None, env={}, overrides=_queue(cluster, prefix))
    failures: list[BaseException] = []
    for _ in range(10):
        client = connect(cfg)
        try:
            got = await asyncio.gather(
                *(client.set(f"{prefix}:k{i}", b"x" * 50_000, ex=30) for i in range(50)), return_exceptions=True
            )
        finally:
            await client.aclose()
        failures += [g for g in got if isinstance(g, BaseException)]
    assert failures == []


SR = 16000
AUDIO = marker_audio(spaced_words(range(31, 43), word_ms=200, gap_ms=350, lead_ms=100), SR)
EXPECTED = [(f"w{k}", round(0.1 + i * 0.55, 6), round(0.3 + i * 0.55, 6)) for i, k in enumerate(range(31, 43))]
CHUNK = SR * 2 // 10  # 100 ms


async def _recv(ws: Any, out: list[dict[str, Any]], stop_after_finals: int | None = None) -> None:
    finals = 0
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            msg = orjson.loads(raw)
            out.append(msg)
            if msg.get("type") == "Results" and msg.get("is_final") and msg["channel"]["alternatives"][0]["words"]:
                finals += 1
                if stop_after_finals is not None and finals >= stop_after_finals:
                    return


async def test_resume_on_a_cluster(tmp_path: Path, cluster: RedisCluster) -> None:
    """A client whose socket died resumes its session: while detached it keeps its per-key slot in
    the cluster (a limit of 1 refuses another session, not the resume); the finals are exactly the
    uninterrupted run's."""
    key = KeyStore(tmp_path / "keys.json").create("k")[1]
    auth = {"Authorization": f"Token {key}"}
    o = {**_queue(cluster, unique_prefix()), "session.resume_grace_s": 10.0, "limits.max_sessions_per_key": 1}
    url = f"/v1/listen?encoding=linear16&sample_rate={SR}&proxy_events=true"
    async with gateways(tmp_path, o) as [gw]:
        first: list[dict[str, Any]] = []
        ws = await websockets.connect(f"ws://127.0.0.1:{gw.port}{url}", additional_headers=auth)
        assert ws.response is not None
        sid = ws.response.headers["dg-request-id"]
        reader = asyncio.create_task(_recv(ws, first, stop_after_finals=3))
        sent = 0
        while not reader.done() and sent < len(AUDIO) * 2 // 3:
            await ws.send(AUDIO[sent : sent + CHUNK])
            sent += CHUNK
            await asyncio.sleep(0.02)
        await reader
        ws.transport.abort()  # no close frame
        for _ in range(50):
            if (r := gw.gateway.sessions.resumable(sid)) is not None and r.core.detached:
                break
            await asyncio.sleep(0.05)
        # Detached, the session still holds the key's one slot, in the cluster: a new session is refused.
        async with aiohttp.ClientSession() as s:
            status, body, _ = await refused(s, gw.port, auth)
        assert status == 429 and "concurrent sessions" in body["err_msg"]
        results = [m for m in first if m.get("type") != "ProxyStatus"]
        last_seq = max(m["proxy"]["seq"] for m in results)
        second: list[dict[str, Any]] = []
        resume = f"{url}&resume={sid}&last_seq={last_seq}&audio_offset=0"
        async with websockets.connect(f"ws://127.0.0.1:{gw.port}{resume}", additional_headers=auth) as ws2:
            status = orjson.loads(await ws2.recv())
            assert status["type"] == "ProxyStatus" and status["state"] == "resumed"
            reader2 = asyncio.create_task(_recv(ws2, second))
            for pos in range(0, len(AUDIO), CHUNK):
                await ws2.send(AUDIO[pos : pos + CHUNK])
            await ws2.send('{"type":"CloseStream"}')
            await asyncio.wait_for(reader2, 15)
            assert ws2.close_code == 1000
    union = results + [m for m in second if m.get("type") != "ProxyStatus"]
    seqs = [m["proxy"]["seq"] for m in union]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [(w, round(s, 6), round(e, 6)) for w, s, e in final_words(union)] == EXPECTED


async def test_session_moves_to_another_instance_on_a_cluster(tmp_path: Path, cluster: RedisCluster) -> None:
    """Cross-instance resume with the session state in the cluster: a client streaming to A (still
    connected) resumes on B; A lets go (its socket closed 4000), B claims the session from the
    checkpoints (the claim script, the holder's inbox and the per-final writes all run on the
    cluster), tells the client where to resend from, and the finals equal the uninterrupted run."""
    o = {**_queue(cluster, unique_prefix()), "session.resume_grace_s": 10.0}
    url = f"/v1/listen?encoding=linear16&sample_rate={SR}&proxy_events=true"
    async with gateways(tmp_path, o, n=2) as [a, b]:
        first: list[dict[str, Any]] = []
        ws = await websockets.connect(f"ws://127.0.0.1:{a.port}{url}")
        assert ws.response is not None
        sid = ws.response.headers["dg-request-id"]
        reader = asyncio.create_task(_recv(ws, first, stop_after_finals=3))
        sent = 0
        while not reader.done() and sent < len(AUDIO) * 2 // 3:
            await ws.send(AUDIO[sent : sent + CHUNK])
            sent += CHUNK
            await asyncio.sleep(0.02)
        await reader
        results = [m for m in first if m.get("type") != "ProxyStatus"]
        last_seq = max(m["proxy"]["seq"] for m in results)
        # The client holds its audio from the end of its last final and resends from there.
        held_from = round(max(m["start"] + m["duration"] for m in results if m.get("is_final")) * SR) * 2
        second: list[dict[str, Any]] = []
        resume = f"{url}&resume={sid}&last_seq={last_seq}&audio_offset={held_from}"
        async with websockets.connect(f"ws://127.0.0.1:{b.port}{resume}") as ws2:
            status = orjson.loads(await ws2.recv())
            assert status["type"] == "ProxyStatus" and status["state"] == "resumed", status
            offset = status["audio_bytes_received"]
            assert 0 < offset == held_from <= sent
            reader2 = asyncio.create_task(_recv(ws2, second))
            for pos in range(held_from, len(AUDIO), CHUNK):
                await ws2.send(AUDIO[pos : pos + CHUNK])
            await ws2.send('{"type":"CloseStream"}')
            await asyncio.wait_for(reader2, 15)
            assert ws2.close_code == 1000
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4000  # A let go of it
        assert not a.gateway.sessions.resumable(sid)
    union = results + [m for m in second if m.get("type") != "ProxyStatus"]
    seqs = [m["proxy"]["seq"] for m in union]
    assert seqs == sorted(set(seqs)), seqs  # never repeats, never goes back
    assert [(w, round(s, 6), round(e, 6)) for w, s, e in final_words(union)] == EXPECTED


async def test_setting_contradicting_the_server_fails_at_start(tmp_path: Path, cluster: RedisCluster) -> None:
    """Bad input: redis_cluster = true on a plain redis-server, and false on a cluster node: serve
    and worker exit 2 naming queue.redis_cluster, before starting anything."""
    async with redis_server(tmp_path / "plain") as plain:
        env = {"STREAMPROXY_QUEUE_REDIS_URL": plain.url.removesuffix("/0"), "STREAMPROXY_QUEUE_REDIS_CLUSTER": "true"}
        for cmd in ("serve", "worker"):
            out = await asyncio.to_thread(cli, tmp_path / cmd, cmd, env=env)
            assert out.returncode == 2, out.stdout + out.stderr
            assert "configuration error: queue.redis_cluster: is true but" in out.stderr
            assert "is not a cluster node" in out.stderr
    env = {"STREAMPROXY_QUEUE_REDIS_URL": cluster.url(0)}
    out = await asyncio.to_thread(cli, tmp_path / "serve2", "serve", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "queue.redis_cluster: is false but" in out.stderr and "set queue.redis_cluster = true" in out.stderr
    # The matching setting passes the same check.
    ok = {"queue.redis_cluster": True, "queue.redis_url": cluster.url(1)}
    await check_server(load_config(None, env={}, overrides=ok))


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        ({}, "queue.redis_cluster", "needs queue.redis_url"),  # the embedded Redis is no cluster
        ({"queue.redis_url": "unix:///run/redis.sock"}, "queue.redis_cluster", "no unix socket"),
        ({"queue.redis_url": "redis://127.0.0.1:7000/3"}, "queue.redis_cluster", "only db 0"),
        ({"queue.redis_url": "redis://127.0.0.1:7000", "queue.prefix": "streamproxy"}, "queue.prefix", "hash tag"),
        ({"queue.redis_url": "redis://127.0.0.1:7000", "queue.prefix": "{}sp"}, "queue.prefix", "hash tag"),
    ],
)
def test_bad_cluster_config_names_the_key(overrides: dict[str, str], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(None, env={}, overrides={"queue.redis_cluster": "true", **overrides})
    assert ei.value.key == key and says in str(ei.value)
