"""Admission limits over real sockets: each refusal has the right status, ``Retry-After`` and a
Deepgram-shaped body, and never spills over onto other keys. Redis-backed limits are checked
across two gateway instances sharing a real ``redis-server``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from streamproxy.auth.keys import KeyStore
from streamproxy.gateway.limits import WINDOW_S, retry_after
from streamproxy.serve import Running
from tests.helpers.clients import SR, assert_deepgram_error, open_stream, refused, words_audio
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.marker import marker_audio

AUDIO = words_audio([41, 42])


def keys(tmp_path: Path, n: int) -> list[str]:
    store = KeyStore(tmp_path / "keys.json")
    return [store.create(f"k{i}")[1] for i in range(n)]


@contextlib.asynccontextmanager
async def gateways(tmp_path: Path, overrides: dict[str, Any], n: int = 1) -> AsyncIterator[list[Running]]:
    async with engine("marker") as eport, contextlib.AsyncExitStack() as stack:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"server.data_dir": str(tmp_path), **overrides})
        yield [await stack.enter_async_context(gateway(cfg)) for _ in range(n)]


def assert_429(status: int, body: dict[str, Any], headers: dict[str, str]) -> int:
    assert status == 429
    assert_deepgram_error(body, headers, "TOO_MANY_REQUESTS")
    wait = int(headers["Retry-After"])
    assert 1 <= wait <= 2 * WINDOW_S
    return wait


async def test_concurrent_sessions_per_key(tmp_path: Path) -> None:
    a, b = keys(tmp_path, 2)
    async with gateways(tmp_path, {"limits.max_sessions_per_key": 1}) as [gw], aiohttp.ClientSession() as s:
        first = await open_stream(s, gw.port, key=a)
        assert_429(*await refused(s, gw.port, {"Authorization": f"Token {a}"}))
        other = await open_stream(s, gw.port, key=b)  # another key is not affected
        await first.send(AUDIO)
        await first.close_stream()
        assert first.words == ["w41", "w42"]
        again = await open_stream(s, gw.port, key=a)  # the slot came back when the session ended
        for st in (again, other):
            await st.close_stream()
            assert st.close_code == 1000


async def test_sessions_per_minute(tmp_path: Path) -> None:
    a, b = keys(tmp_path, 2)
    async with gateways(tmp_path, {"limits.sessions_per_minute": 2}) as [gw], aiohttp.ClientSession() as s:
        for _ in range(2):
            st = await open_stream(s, gw.port, key=a)
            await st.close_stream()
        assert_429(*await refused(s, gw.port, {"Authorization": f"Token {a}"}))
        st = await open_stream(s, gw.port, key=b)
        await st.close_stream()
        assert st.close_code == 1000


async def test_requests_per_minute(tmp_path: Path) -> None:
    a, b = keys(tmp_path, 2)
    async with gateways(tmp_path, {"limits.requests_per_minute": 2}) as [gw], aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{gw.port}/v1/auth/grant"
        for _ in range(2):
            async with s.post(url, headers={"Authorization": f"Token {a}"}) as r:
                assert r.status == 200
        async with s.post(url, headers={"Authorization": f"Token {a}"}) as r:
            assert_429(r.status, await r.json(), dict(r.headers))
        async with s.post(url, headers={"Authorization": f"Token {b}"}) as r:
            assert r.status == 200
        for _ in range(3):  # probes are never rate limited
            async with s.get(f"http://127.0.0.1:{gw.port}/healthz") as r:
                assert r.status == 200


async def test_origin_allow_list(tmp_path: Path) -> None:
    (a,) = keys(tmp_path, 1)
    allowed = {"limits.allowed_origins": "https://app.example, https://other.example:8443"}
    async with gateways(tmp_path, allowed) as [gw], aiohttp.ClientSession() as s:
        for bad in ("https://evil.example", "http://app.example", "https://app.example.evil.example", "null"):
            status, body, hdrs = await refused(s, gw.port, {"Authorization": f"Token {a}", "Origin": bad})
            assert status == 403, bad
            assert_deepgram_error(body, hdrs, "INSUFFICIENT_PERMISSIONS")
        for ok in ("https://app.example", "https://APP.example/", "https://other.example:8443", None):
            st = await open_stream(s, gw.port, key=a, origin=ok)  # None: not a browser, no Origin
            await st.close_stream()
            assert st.close_code == 1000


async def test_max_session_duration_closes_cleanly(tmp_path: Path) -> None:
    (a,) = keys(tmp_path, 1)
    async with gateways(tmp_path, {"limits.max_session_s": 1.0}) as [gw], aiohttp.ClientSession() as s:
        st = await open_stream(s, gw.port, key=a)
        t0 = time.monotonic()
        # two words, the second one still open (no trailing silence) when the limit strikes
        await st.send(marker_audio([("sil", 0, 100), ("word", 51, 200), ("sil", 0, 350), ("word", 52, 200)], SR))
        await st.finish(timeout=15)
        took = time.monotonic() - t0
    assert 0.9 <= took < 5.0
    assert st.close_code == 1000
    assert st.words == ["w51", "w52"]  # trailing results delivered, including the unfinished word
    assert st.msgs[-1]["type"] == "Metadata"


async def test_max_upload_is_413_in_deepgram_shape(tmp_path: Path) -> None:
    (a,) = keys(tmp_path, 1)
    async with gateways(tmp_path, {"limits.max_upload_bytes": 1000}) as [gw], aiohttp.ClientSession() as s:
        async with s.post(
            f"http://127.0.0.1:{gw.port}/v1/auth/grant",
            data=b'{"ttl_seconds": 30' + b" " * 2000 + b"}",
            headers={"Authorization": f"Token {a}"},
        ) as r:
            assert r.status == 413
            body = await r.json()
            assert "limits.max_upload_bytes" in body["err_msg"] and set(body) == {"err_code", "err_msg", "request_id"}


def test_retry_after_is_when_the_window_admits_again() -> None:
    # limit 10, 10 this minute at 50 %: 30 s to the minute's end, then those 10 weigh 100 % -> 6 s
    # more until 10 * (1 - 0.1) + 1 <= 10
    assert retry_after(10, 10, 0, 0.5) == 36
    # 5 now, 10 in the previous minute at 50 %: estimate 10 -> the old ones must decay by 1
    assert retry_after(10, 5, 10, 0.5) == 6
    assert retry_after(1, 0, 1, 0.999) == 1


# ------------------------------------------------------------------ across instances (Redis)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (.ci/run installs it)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


async def test_limits_hold_across_instances_with_redis(tmp_path: Path, redis_url: str) -> None:
    a, b = keys(tmp_path, 2)
    o: dict[str, Any] = {
        "queue.redis_url": redis_url,
        "queue.prefix": f"{{t{time.time_ns()}}}",
        "limits.max_sessions_per_key": 1,
        "limits.requests_per_minute": 2,
    }
    async with gateways(tmp_path, o, n=2) as [g1, g2], aiohttp.ClientSession() as s:
        first = await open_stream(s, g1.port, key=a)
        assert_429(*await refused(s, g2.port, {"Authorization": f"Token {a}"}))  # the other instance knows
        other = await open_stream(s, g2.port, key=b)
        await first.close_stream()
        for _ in range(50):  # released in Redis right after the session ends
            with contextlib.suppress(aiohttp.WSServerHandshakeError):
                again = await open_stream(s, g2.port, key=a)
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("slot not released")
        for st in (again, other):
            await st.close_stream()
        # requests per minute, shared: two on one instance, the third on the other is refused
        for port in (g1.port, g1.port):
            async with s.post(f"http://127.0.0.1:{port}/v1/auth/grant", headers={"Authorization": f"Token {a}"}) as r:
                assert r.status == 200
        async with s.post(f"http://127.0.0.1:{g2.port}/v1/auth/grant", headers={"Authorization": f"Token {a}"}) as r:
            assert_429(r.status, await r.json(), dict(r.headers))
        async with s.post(f"http://127.0.0.1:{g2.port}/v1/auth/grant", headers={"Authorization": f"Token {b}"}) as r:
            assert r.status == 200


async def test_unreachable_redis_fails_open(tmp_path: Path) -> None:
    (a,) = keys(tmp_path, 1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # nothing listens here once the socket is closed
    o: dict[str, Any] = {"queue.redis_url": f"redis://127.0.0.1:{dead}/0", "limits.max_sessions_per_key": 1}
    async with gateways(tmp_path, o) as [gw], aiohttp.ClientSession() as s:
        st = await open_stream(s, gw.port, key=a)  # admitted: a limiter outage is not a service outage
        await st.close_stream()
        assert st.close_code == 1000
