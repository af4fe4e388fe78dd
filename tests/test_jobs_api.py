"""Files through the gateway, driven by the official deepgram-sdk and plain HTTP: the sync route,
the hybrid router, job status/cancel, callbacks, and bad input. Real Redis (a private
redis-server), real worker subprocesses, the marker engine on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from deepgram import AsyncDeepgramClient
from deepgram.types.listen_v1accepted_response import ListenV1AcceptedResponse
from deepgram.types.listen_v1response import ListenV1Response

from streamproxy.outbound.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from streamproxy.serve import Running
from tests.helpers.gateway import engine, gateway, gateway_config, sdk_env
from tests.helpers.jobs import (
    Receiver,
    RedisServer,
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

SHORT = marker_wav([5, 6, 7])  # 1.9 s at 8 kHz
WORDS = ["w5", "w6", "w7"]


@dataclass
class Stack:
    redis: RedisServer
    engine_port: int
    prefix: str
    gw: Running
    tmp: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gw.port}"

    def worker_config(self, **queue: Any) -> Path:
        sections = queue_sections(self.redis.url, self.prefix, f"ws://127.0.0.1:{self.engine_port}", **queue)
        return write_config(self.tmp / f"worker-{len(list(self.tmp.glob('worker-*')))}.toml", sections)

    async def keys(self) -> list[bytes]:
        r = aioredis.from_url(self.redis.url)
        try:
            return [k async for k in r.scan_iter(match=f"{self.prefix}*")]
        finally:
            await r.aclose()


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, **queue: Any) -> AsyncIterator[Stack]:
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as r, engine("marker") as eport:
        overrides: dict[str, Any] = {
            "queue.redis_url": r.url,
            "queue.prefix": prefix,
            "queue.serve_worker": False,
            "queue.url_allow": "127.0.0.1",
            "queue.webhook_secret": "test-secret",
            "queue.backoff_s": 0.2,
            "queue.callback_backoff_s": 0.2,
            "server.data_dir": str(tmp_path / "data"),
        }
        overrides.update({f"queue.{k}": v for k, v in queue.items()})
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **overrides)
        async with gateway(cfg) as gw:
            yield Stack(r, eport, prefix, gw, tmp_path)


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return orjson.loads(await resp.read())


async def test_sdk_transcribe_file_and_url(tmp_path: Path) -> None:
    """transcribe_file and transcribe_url through the gateway: expected words, strict parse."""

    async def serve_wav(request: web.Request) -> web.Response:
        return web.Response(body=SHORT, content_type="audio/wav")

    async with stack(tmp_path) as s, http_server(serve_wav) as wav_port:
        client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(s.gw.port))
        resp = await client.listen.v1.media.transcribe_file(request=SHORT, model="nova-3")
        assert isinstance(resp, ListenV1Response)
        assert [w.word for w in resp.results.channels[0].alternatives[0].words] == WORDS  # type: ignore[index,union-attr]
        assert resp.metadata.duration == pytest.approx(1.9)

        url = f"http://127.0.0.1:{wav_port}/audio/file.wav"
        resp = await client.listen.v1.media.transcribe_url(url=url, model="nova-3")
        assert isinstance(resp, ListenV1Response)
        assert [w.word for w in resp.results.channels[0].alternatives[0].words] == WORDS  # type: ignore[index,union-attr]

        # The raw JSON validates strictly against the SDK's pydantic model (not just lenient parsing).
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{s.base}/v1/listen?model=nova-3&punctuate=true", data=SHORT) as r:
                assert r.status == 200 and r.headers["X-Streamproxy-Mode"] == "sync"
                body = await _json(r)
            ListenV1Response.model_validate(body, strict=False)
            assert words_of(body) == WORDS
            # Raw linear16 with encoding/sample_rate.
            pcm = SHORT[44:]
            async with http.post(f"{s.base}/v1/listen?encoding=linear16&sample_rate=8000", data=pcm) as r:
                assert r.status == 200, await r.text()
                assert words_of(await _json(r)) == WORDS
        assert await s.keys() == [], "sync requests under sync_max_seconds store nothing in Redis"


async def test_long_sync_queued_and_callback(tmp_path: Path) -> None:
    """Audio over sync_max_seconds on the sync route runs through the queue (a worker process) and
    is awaited; callback=URL answers {request_id} at once and delivers a signed result later."""
    receiver = Receiver()
    async with stack(tmp_path, sync_max_seconds=1.0) as s, http_server(receiver.handle) as cb_port:
        worker = await start_worker(s.worker_config())
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{s.base}/v1/listen?model=nova-3", data=SHORT) as r:
                    assert r.status == 200, await r.text()
                    assert r.headers["X-Streamproxy-Mode"] == "queued"
                    job_id = r.headers["X-Streamproxy-Job-Id"]
                    body = await _json(r)
                ListenV1Response.model_validate(body)
                assert words_of(body) == WORDS and body["metadata"]["request_id"] == job_id
                async with http.get(f"{s.base}/v1/jobs/{job_id}") as r:
                    st = await _json(r)
                assert st["state"] == "completed" and st["attempts"] == 1 and st["progress"] == 100
                assert words_of(st["result"]) == WORDS

            client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(s.gw.port))
            callback = f"http://127.0.0.1:{cb_port}/hook"
            resp = await client.listen.v1.media.transcribe_file(request=SHORT, model="nova-3", callback=callback)
            assert isinstance(resp, ListenV1AcceptedResponse) and resp.request_id
            await asyncio.wait_for(receiver.event.wait(), 20)
            _, _status, headers, raw = receiver.delivered[0]
            assert verify("test-secret", raw, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
            assert headers[DELIVERY_HEADER] == resp.request_id
            delivered = orjson.loads(raw)
            ListenV1Response.model_validate(delivered)
            assert words_of(delivered) == WORDS and delivered["metadata"]["request_id"] == resp.request_id
        finally:
            await worker.stop()
        await wait_for(lambda: _no_audio(s), 5, "audio blobs deleted after the jobs finished")


async def _no_audio(s: Stack) -> bool:
    return not [k for k in await s.keys() if b":sp:audio:" in k]


async def test_hybrid_router_modes_status_and_cancel(tmp_path: Path) -> None:
    """mode=auto picks by duration (sync under sync_max, queued-and-awaited between, 202 over
    async_min); mode=async answers 202; GET shows state/progress/attempts/result; DELETE cancels."""
    long = marker_wav([8, 9], tail_ms=2000)  # 3.4 s
    mid = marker_wav([8, 9])  # 1.4 s
    async with stack(tmp_path, sync_max_seconds=1.0, async_min_seconds=3.0) as s:
        async with aiohttp.ClientSession() as http:
            # No worker yet: an async job waits, and can be cancelled.
            async with http.post(f"{s.base}/v1/transcribe?mode=async", data=SHORT) as r:
                assert r.status == 202
                queued = await _json(r)
            assert r.headers["Location"] == f"/v1/jobs/{queued['job_id']}"
            async with http.get(f"{s.base}/v1/jobs/{queued['job_id']}") as r:
                st = await _json(r)
            assert st["state"] == "waiting" and st["progress"] == 0 and st["attempts"] == 0
            assert st["max_attempts"] == 3 and st["duration_s"] == pytest.approx(1.9)
            async with http.delete(f"{s.base}/v1/jobs/{queued['job_id']}") as r:
                assert r.status == 200 and (await _json(r))["state"] == "cancelled"
            async with http.get(f"{s.base}/v1/jobs/{queued['job_id']}") as r:
                assert (await _json(r))["state"] == "cancelled"
            assert await _no_audio(s), "a cancelled job's audio is deleted"

            worker = await start_worker(s.worker_config())
            try:
                async with http.post(f"{s.base}/v1/transcribe", data=marker_wav([4], gap_ms=100)) as r:
                    assert r.status == 200 and r.headers["X-Streamproxy-Mode"] == "sync"  # 0.3 s: direct
                async with http.post(f"{s.base}/v1/transcribe?mode=auto", data=mid) as r:
                    assert r.status == 200 and r.headers["X-Streamproxy-Mode"] == "queued"
                    assert words_of(await _json(r)) == ["w8", "w9"]
                async with http.post(f"{s.base}/v1/transcribe", data=long) as r:
                    assert r.status == 202
                    job = await _json(r)
                assert job["mode"] == "async" and job["duration_s"] == pytest.approx(3.4)

                async def done() -> bool:
                    async with http.get(f"{s.base}/v1/jobs/{job['job_id']}") as r:
                        return (await _json(r))["state"] == "completed"

                await wait_for(done, 20, "the async job")
                async with http.get(f"{s.base}/v1/jobs/{job['job_id']}") as r:
                    st = await _json(r)
                assert words_of(st["result"]) == ["w8", "w9"] and st["attempts"] == 1
                assert st["started_at"] and st["finished_at"] >= st["started_at"]
                assert any("by worker" in line for line in st["log"])
                async with http.delete(f"{s.base}/v1/jobs/{job['job_id']}") as r:
                    assert r.status == 200 and (await _json(r))["state"] == "deleted"
            finally:
                await worker.stop()


async def test_bad_input_is_a_clear_4xx_and_nothing_is_enqueued(tmp_path: Path) -> None:
    """Each bad request gets a Deepgram-shaped 4xx naming the problem; Redis stays empty."""
    redirect_target = {"url": ""}

    async def redirector(request: web.Request) -> web.Response:
        raise web.HTTPFound(redirect_target["url"])

    async with stack(tmp_path, url_allow="127.0.0.1/32") as s, http_server(redirector) as rport:
        redirect_target["url"] = f"http://127.0.0.2:{rport}/secret.wav"  # loopback, not allow-listed
        worker_cfg = s.worker_config()
        assert worker_cfg.exists()
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", "/v1/listen", {"data": b"this is not audio, just text"}, 400, "unrecognised audio"),
            ("POST", "/v1/listen", {"data": SHORT[:1000]}, 400, "truncated WAV"),
            ("POST", "/v1/listen", {"data": SHORT[:30]}, 400, "truncated WAV"),
            ("POST", "/v1/listen", {"data": b""}, 400, "empty request body"),
            ("POST", "/v1/transcribe?mode=async", {"data": b"\x00\x01garbage" * 10}, 400, "unrecognised audio"),
            ("POST", "/v1/listen?encoding=linear16", {"data": b"\0" * 100}, 400, "sample_rate is required"),
            ("POST", "/v1/listen?encoding=mp7", {"data": b"\0" * 100}, 400, "unknown encoding"),
            ("POST", "/v1/listen?colour=blue", {"data": SHORT}, 400, "unknown query parameter"),
            ("POST", "/v1/transcribe?mode=later", {"data": SHORT}, 400, "mode must be one of"),
            ("POST", "/v1/listen", {"json": {"url": "http://10.1.2.3/a.wav"}}, 400, "not a public address"),
            ("POST", "/v1/listen", {"json": {"url": "http://169.254.169.254/latest"}}, 400, "not a public address"),
            ("POST", "/v1/listen", {"json": {"url": "http://[::1]:9/a.wav"}}, 400, "not a public address"),
            ("POST", "/v1/transcribe?mode=async", {"json": {"url": "http://127.0.0.2/x"}}, 400, "not a public"),
            ("POST", "/v1/listen", {"json": {"url": "file:///etc/passwd"}}, 400, "unsupported URL scheme"),
            ("POST", "/v1/listen", {"json": {"url": f"http://127.0.0.1:{rport}/r"}}, 400, "not a public address"),
            ("POST", "/v1/listen", {"json": {"uri": "x"}}, 400, "JSON body must be"),
            ("POST", "/v1/listen", {"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
            ("POST", "/v1/listen?callback=http://10.0.0.7/hook", {"data": SHORT}, 400, "not a public address"),
            ("POST", "/v1/listen?callback=http://127.0.0.1:9/h&callback_method=GET", {"data": SHORT}, 400, "POST"),
            ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000", {}, 404, "unknown job id"),
            ("DELETE", "/v1/jobs/no-such-job", {}, 404, "unknown job id"),
        ]
        async with aiohttp.ClientSession() as http:
            for method, path, kw, status, text in cases:
                async with http.request(method, s.base + path, **kw) as r:
                    body = await r.text()
                    assert r.status == status, (path, kw.get("json"), r.status, body)
                    assert text in body and "err_msg" in body, (path, body)
                    assert r.headers.get("dg-error"), path
        assert await s.keys() == [], "bad input must not store or enqueue anything"

    # Oversized upload: limits.max_upload_bytes.
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis2") as rs2, engine("marker") as eport:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{eport}"],
            **{"queue.redis_url": rs2.url, "queue.prefix": prefix, "queue.serve_worker": False},
            **{"limits.max_upload_bytes": 20_000},
        )
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
            big = marker_wav([5], tail_ms=3000)
            assert len(big) > 20_000
            async with http.post(f"http://127.0.0.1:{gw.port}/v1/transcribe?mode=async", data=big) as resp:
                assert resp.status == 413 and "max_upload_bytes" in await resp.text()

            async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
                for i in range(0, len(big), 4096):
                    yield big[i : i + 4096]

            async with http.post(f"http://127.0.0.1:{gw.port}/v1/listen", data=chunked()) as resp:
                assert resp.status == 413 and "max_upload_bytes" in await resp.text()
            # Default url_allow = []: loopback by name or number is refused (resolved, then checked).
            for url in ("http://localhost:9/a.wav", "http://127.0.0.1:9/a.wav"):
                async with http.post(f"http://127.0.0.1:{gw.port}/v1/listen", json={"url": url}) as resp:
                    assert resp.status == 400 and "public address" in await resp.text(), url
        client = aioredis.from_url(rs2.url)
        assert [k async for k in client.scan_iter(match=f"{prefix}*")] == []
        await client.aclose()


async def test_upstream_down_sync_is_503(tmp_path: Path) -> None:
    """The sync route with every upstream refusing connections: a clear 503, nothing enqueued."""
    from streamproxy.engine.supervisor import free_port

    dead = free_port()
    async with redis_server(tmp_path / "redis") as r:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{dead}"],
            **{"queue.redis_url": r.url, "queue.prefix": unique_prefix(), "queue.serve_worker": False},
        )
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{gw.port}/v1/listen", data=SHORT) as resp:
                body = await resp.text()
                assert resp.status == 503 and "no upstream could transcribe" in body and "u0" in body


def _forged_wav(width: int, data: bytes) -> bytes:
    """RIFF/WAVE, PCM mono 16 kHz of ``width`` bytes, data size 0xFFFFFFFF ("until the end")."""
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 16000 * width, width, 8 * width)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
        + data
    )


async def test_wav_data_size_ffffffff_with_odd_sample_bytes_keeps_the_upstream_in_rotation(tmp_path: Path) -> None:
    """A forged WAV (data size 0xFFFFFFFF, sample bytes not a multiple of the width) is the
    client's problem: never a 5xx, never counted against the upstream, so five in a row leave
    /readyz at 200 and the next honest request is served."""
    async with stack(tmp_path) as s, aiohttp.ClientSession() as http:
        for width, n in ((2, 3201), (3, 3202), (4, 3203), (2, 1), (4, 5)):
            async with http.post(f"{s.base}/v1/listen", data=_forged_wav(width, b"\x01" * n)) as r:
                body = await r.text()
                assert r.status < 500, (width, n, r.status, body)
        async with http.get(f"{s.base}/readyz") as r:
            assert r.status == 200, await r.text()
        async with http.post(f"{s.base}/v1/listen", data=SHORT) as r:
            assert r.status == 200 and words_of(await _json(r)) == WORDS


def _flac_claiming(seconds: int, rate: int = 16000) -> bytes:
    """A FLAC STREAMINFO header claiming ``seconds`` of audio, and no frames: the probe trusts it."""
    bits = (rate << 44) | (0 << 41) | (15 << 36) | (seconds * rate)
    info = bytes(10) + bits.to_bytes(8, "big")
    return b"fLaC" + bytes([0x80, 0, 0, 34]) + info + bytes(16) + b"\0" * 64


async def test_flac_header_claiming_a_long_duration_on_the_queued_sync_path_is_the_upstreams_400(
    tmp_path: Path,
) -> None:
    """Over sync_max_seconds the sync route queues and awaits the job; the engine refuses the
    audio (400): the client gets that 400 and its reason, not a 502 as if the upstream had failed."""
    async with stack(tmp_path, sync_max_seconds=1.0, serve_worker=True) as s, aiohttp.ClientSession() as http:
        async with http.post(f"{s.base}/v1/listen", data=_flac_claiming(100)) as r:
            body = await r.text()
            assert r.status == 400, (r.status, body)
            assert "rejected the audio" in body and "err_msg" in body
            assert "rejected the audio" in r.headers["dg-error"]
        async with http.get(f"{s.base}/readyz") as r:
            assert r.status == 200


async def test_control_characters_in_query_key_url_and_job_id_still_get_a_status_line(tmp_path: Path) -> None:
    """``?%0a=1``, a URL with U+0001, ``/v1/jobs/%0a``, a resume id with a control character: the
    text lands in dg-error/dg-request-id, which must stay valid header values (printable ASCII)
    so the client gets its 4xx instead of a dropped connection."""
    async with stack(tmp_path) as s, aiohttp.ClientSession() as http:
        cases: list[tuple[str, str, dict[str, Any], int]] = [
            ("POST", "/v1/listen?%0a=1", {"data": SHORT}, 400),
            ("POST", "/v1/listen?%0d%0aX-Evil:%201=1", {"data": SHORT}, 400),
            ("POST", "/v1/listen", {"json": {"url": "http://a\u0001b/x.wav"}}, 400),
            ("POST", "/v1/listen", {"json": {"url": "http://a\u00e9\u2028b/x.wav"}}, 400),
            ("GET", "/v1/jobs/%0a", {}, 404),
            ("DELETE", "/v1/jobs/%01%7f", {}, 404),
            ("GET", "/v1/listen?%0a=1", {"headers": {"Upgrade": "websocket", "Connection": "Upgrade"}}, 400),
            ("GET", "/v1/listen?resume=%0a%01", {"headers": {"Upgrade": "websocket", "Connection": "Upgrade"}}, 404),
        ]
        for method, path, kw, status in cases:
            async with http.request(method, s.base + path, **kw) as r:
                body = await r.text()
                assert r.status == status, (path, r.status, body)
                assert "err_msg" in body and "X-Evil" not in r.headers
                for name in ("dg-error", "dg-request-id"):
                    assert all(" " <= c <= "~" for c in r.headers.get(name, "")), (path, name, r.headers[name])
                assert r.headers["dg-error"], path


async def test_bullmq_key_names_as_job_ids_are_unknown_and_touch_nothing(tmp_path: Path) -> None:
    """``/v1/jobs/meta``, ``events``, ``active``, ``id``, ``stalled-check``, ``failed``, ``completed``,
    ``wait``, ``paused``: BullMQ's own keys under the queue's prefix. Only ids the gateway issues
    (UUIDs) are looked up, so each is a 404 (not a bogus job or a 503 WRONGTYPE) and a DELETE of
    ``meta`` leaves the queue paused (Bull Board's pause lives in that hash)."""
    from bullmq import Queue

    from streamproxy.jobs.queue import bullmq_connection

    async with stack(tmp_path) as s, aiohttp.ClientSession() as http:
        async with http.post(f"{s.base}/v1/transcribe?mode=async", data=SHORT) as r:
            assert r.status == 202
            real = (await _json(r))["job_id"]
        q = Queue("transcribe", {"connection": bullmq_connection(s.redis.url), "prefix": s.prefix})
        try:
            await q.pause()
            names = ["meta", "events", "active", "id", "stalled-check", "failed", "completed", "wait", "paused"]
            for name in [*names, real.upper(), real + "x", "1"]:
                for method in ("GET", "DELETE"):
                    async with http.request(method, f"{s.base}/v1/jobs/{name}") as r:
                        body = await r.text()
                        assert r.status == 404, (method, name, r.status, body)
                        assert "unknown job id" in body and "WRONGTYPE" not in body
            assert await q.isPaused(), "a DELETE must not wipe the queue's meta hash"
            async with http.get(f"{s.base}/v1/jobs/{real}") as r:
                assert r.status == 200 and (await _json(r))["state"] in ("waiting", "paused")
        finally:
            await q.close()


async def test_upstream_down_503_does_not_disclose_its_address_or_exception_type(tmp_path: Path) -> None:
    """A file-route 503 names the upstream (its configured name) and what happened, never the
    internal address it was reached at or Python's exception type."""
    from streamproxy.engine.supervisor import free_port

    dead = free_port()
    async with redis_server(tmp_path / "redis") as r:
        cfg = gateway_config(
            [f"ws://127.0.0.1:{dead}"],
            **{"queue.redis_url": r.url, "queue.prefix": unique_prefix(), "queue.serve_worker": False},
        )
        async with gateway(cfg) as gw, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{gw.port}"
            async with http.post(f"{base}/v1/listen", data=SHORT) as resp:
                body = await resp.text()
                assert resp.status == 503 and "u0" in body and "connection refused" in body, body
                for secret in ("127.0.0.1", str(dead), "ClientConnectorError", "Errno"):
                    assert secret not in body and secret not in resp.headers["dg-error"], (secret, body)
