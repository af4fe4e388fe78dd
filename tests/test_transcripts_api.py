"""Stored transcripts end to end: streams through ``serve`` (the official deepgram-sdk, the marker
engine), then ``GET /v1/transcripts/{dg-request-id}`` answers the same words, times and all, in
Deepgram's prerecorded shape. The embedded SQLite default, Flux turns, owner scoping and paging,
file jobs by job id, ``storage.url = "off"``, and a PostgreSQL outage in the middle of a session
(which must not notice it)."""

from __future__ import annotations

import asyncio
import signal
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import websockets
from deepgram import AsyncDeepgramClient
from deepgram.types.listen_v1response import ListenV1Response

from streamproxy.jobs.routes import start_jobs
from streamproxy.storage.setup import SQLITE_FILE
from tests.helpers.clients import open_stream, words_audio
from tests.helpers.gateway import engine, gateway, gateway_config, metric, sdk_env, to_dict
from tests.helpers.jobs import (
    marker_wav,
    queue_sections,
    redis_server,
    start_worker,
    unique_prefix,
    words_of,
    write_config,
)
from tests.helpers.marker import final_words, marker_audio, spaced_words
from tests.helpers.pg import PG_HOST, PG_PORT, pg_schema, pg_url
from tests.helpers.serve_proc import serve_proc
from tests.helpers.tcpcut import TcpCut

SR = 16000
FAST = {"storage.flush_interval_s": 0.05}


def stored_words(body: dict[str, Any]) -> list[tuple[str, float, float]]:
    return [(w["word"], w["start"], w["end"]) for w in body["results"]["channels"][0]["alternatives"][0]["words"]]


async def fetch(
    http: aiohttp.ClientSession, port: int, path: str, *, key: str | None = None, method: str = "GET"
) -> tuple[int, Any]:
    headers = {"Authorization": f"Token {key}"} if key else {}
    async with http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def complete(http: aiohttp.ClientSession, port: int, tid: str, key: str | None = None) -> dict[str, Any]:
    """The transcript once its end is written (the writer flushes in the background)."""
    deadline = time.monotonic() + 20
    while True:
        status, body = await fetch(http, port, f"/v1/transcripts/{tid}", key=key)
        if status == 200 and body["stored"]["status"] == "complete":
            return dict(body)
        assert time.monotonic() < deadline, (status, body)
        await asyncio.sleep(0.05)


async def test_live_session_stored_in_sqlite_and_fetched_exactly(tmp_path: Path) -> None:
    """No [storage] set: the SQLite file in the data dir; the SDK's stream and the stored
    transcript have the same words with the same floats, under Metadata.request_id."""
    audio = marker_audio(spaced_words([11, 12, 13, 14], word_ms=230, gap_ms=340, tail_ms=200), SR)
    cfg_over = {"server.data_dir": str(tmp_path / "data"), **FAST}
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **cfg_over)) as gw:
        client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(gw.port))
        got: list[dict[str, Any]] = []
        async with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=str(SR), interim_results="true"
        ) as sock:

            async def reader() -> None:
                async for msg in sock:
                    got.append(to_dict(msg))

            task = asyncio.create_task(reader())
            n = SR * 2 // 10
            for i in range(0, len(audio), n):
                await sock.send_media(audio[i : i + n])
            await sock.send_close_stream()
            await asyncio.wait_for(task, 20)
        assert got[-1]["type"] == "Metadata"
        rid = got[-1]["request_id"]
        assert [w[0] for w in final_words(got)] == ["w11", "w12", "w13", "w14"]
        async with aiohttp.ClientSession() as http:
            body = await complete(http, gw.port, rid)
            ListenV1Response.model_validate(body)
            assert stored_words(body) == final_words(got)  # exactly: same words, same floats
            alt = body["results"]["channels"][0]["alternatives"][0]
            assert alt["transcript"] == "w11 w12 w13 w14" and alt["confidence"] == 1.0
            assert body["metadata"]["request_id"] == rid
            assert body["metadata"]["duration"] == pytest.approx(len(audio) / 2 / SR, abs=1e-3)
            assert body["metadata"]["model_info"][body["metadata"]["models"][0]]["name"] == "nova-3"
            assert (body["stored"]["kind"], body["stored"]["source"], body["stored"]["outcome"]) == (
                "stream",
                "v1",
                "ok",
            )
            status, page = await fetch(http, gw.port, "/v1/transcripts")
            assert status == 200 and page["transcripts"][0]["request_id"] == rid
            assert page["transcripts"][0]["preview"] == "w11 w12 w13 w14" and page["next_before"] is None
            # Bad input, each refused with a message naming it: limit out of range, not a number,
            # an unknown parameter, a cursor that is no transcript, an id no one has.
            for path, needle in [
                ("/v1/transcripts?limit=0", "limit"),
                ("/v1/transcripts?limit=abc", "limit"),
                ("/v1/transcripts?limit=101", "limit"),
                ("/v1/transcripts?page=2", "page"),
                ("/v1/transcripts?before=nope", "before"),
            ]:
                status, err = await fetch(http, gw.port, path)
                assert status == 400 and needle in err["err_msg"], (path, err)
            status, err = await fetch(http, gw.port, "/v1/transcripts/no-such-id")
            assert status == 404 and "no-such-id" in err["err_msg"]
        assert metric(gw, "streamproxy_storage_records_written_total") >= 5  # begin, 4 finals, end
        assert metric(gw, "streamproxy_storage_records_dropped_total") == 0
    db = tmp_path / "data" / SQLITE_FILE
    assert db.is_file() and stat.S_IMODE(db.stat().st_mode) == 0o600  # only the service reads them


async def test_flux_turns_stored_by_connected_request_id(tmp_path: Path) -> None:
    segs = [("sil", 0, 200), ("word", 31, 300), ("sil", 0, 900), ("word", 32, 250), ("word", 33, 250),
            ("sil", 0, 900), ("word", 34, 400), ("sil", 0, 300)]  # fmt: skip
    audio = marker_audio(segs, SR)
    cfg = gateway_config([], **FAST, **{"engine.kind": "marker", "server.data_dir": str(tmp_path)})
    async with gateway(cfg) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate={SR}"
        msgs: list[dict[str, Any]] = []
        async with websockets.connect(url) as ws:
            n = SR * 2 // 10
            for i in range(0, len(audio), n):
                await ws.send(audio[i : i + n])
            await ws.send('{"type":"CloseStream"}')
            async for raw in ws:
                msgs.append(orjson.loads(raw))
        rid = msgs[0]["request_id"]
        assert msgs[0]["type"] == "Connected" and ws.response is not None
        assert ws.response.headers["dg-request-id"] == rid
        turns = [m for m in msgs if m.get("event") == "EndOfTurn"]
        assert [t["transcript"] for t in turns] == ["w31", "w32 w33", "w34"]
        async with aiohttp.ClientSession() as http:
            body = await complete(http, gw.port, rid)
        assert body["stored"]["source"] == "v2"
        want = [(w["word"], w["start"], w["end"]) for t in turns for w in t["words"]]
        assert stored_words(body) == want
        assert body["results"]["channels"][0]["alternatives"][0]["transcript"] == "w31 w32 w33 w34"


async def test_owner_scoping_paging_and_delete(tmp_path: Path) -> None:
    """Alice's transcripts are Alice's: Bob gets 404 for them (GET and DELETE) and an empty list;
    Alice pages through hers newest first with limit and before, and deletes one."""
    alice, bob = "key-alice-1234567", "key-bob-7654321"
    over = {"server.data_dir": str(tmp_path), **FAST}
    async with (
        engine("marker") as eport,
        gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over), client_keys=(alice, bob)) as gw,
        aiohttp.ClientSession() as http,
    ):
        ids = []
        for ks in ([21], [22, 23], [24]):
            st = await open_stream(http, gw.port, key=alice)
            assert st.ws._response is not None
            ids.append(st.ws._response.headers["dg-request-id"])
            await st.send(words_audio(ks))
            await st.close_stream()
            assert st.words == [f"w{k}" for k in ks]
            await complete(http, gw.port, ids[-1], key=alice)
        assert (await fetch(http, gw.port, "/v1/transcripts"))[0] == 401  # no key at all

        for tid in ids:
            assert (await fetch(http, gw.port, f"/v1/transcripts/{tid}", key=bob))[0] == 404
            assert (await fetch(http, gw.port, f"/v1/transcripts/{tid}", key=bob, method="DELETE"))[0] == 404
        status, page = await fetch(http, gw.port, "/v1/transcripts", key=bob)
        assert status == 200 and page == {"transcripts": [], "next_before": None}
        status, _ = await fetch(http, gw.port, f"/v1/transcripts?before={ids[2]}", key=bob)
        assert status == 400  # another key's transcript is no cursor either

        seen: list[str] = []
        path = "/v1/transcripts?limit=2"
        while True:
            status, page = await fetch(http, gw.port, path, key=alice)
            assert status == 200
            seen += [t["request_id"] for t in page["transcripts"]]
            if page["next_before"] is None:
                break
            path = f"/v1/transcripts?limit=2&before={page['next_before']}"
        assert seen == ids[::-1]  # newest first, each once

        status, body = await fetch(http, gw.port, f"/v1/transcripts/{ids[1]}", key=alice)
        assert status == 200 and words_of(body) == ["w22", "w23"]
        status, body = await fetch(http, gw.port, f"/v1/transcripts/{ids[1]}", key=alice, method="DELETE")
        assert status == 200 and body == {"request_id": ids[1], "deleted": True}
        assert (await fetch(http, gw.port, f"/v1/transcripts/{ids[1]}", key=alice))[0] == 404
        status, page = await fetch(http, gw.port, "/v1/transcripts", key=alice)
        assert [t["request_id"] for t in page["transcripts"]] == [ids[2], ids[0]]


async def test_job_results_stored_by_job_id(tmp_path: Path) -> None:
    """An async job (the in-process worker) is stored under its job id, a synchronous POST
    /v1/listen under the dg-request-id it answered with; both as they were answered."""
    wav = marker_wav([5, 6, 7])
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        over = {
            "queue.redis_url": rs.url,
            "queue.prefix": unique_prefix(),
            "queue.serve_worker": True,
            "server.data_dir": str(tmp_path / "data"),
            **FAST,
        }
        async with gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw, aiohttp.ClientSession() as http:
            await start_jobs(gw.runner.app)
            base = f"http://127.0.0.1:{gw.port}"
            async with http.post(f"{base}/v1/transcribe?mode=async&model=nova-3", data=wav) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["job_id"]
            body = await complete(http, gw.port, job_id)
            ListenV1Response.model_validate(body)
            assert words_of(body) == ["w5", "w6", "w7"] and body["metadata"]["request_id"] == job_id
            assert (body["stored"]["kind"], body["stored"]["source"]) == ("job", "async")
            status, job = await fetch(http, gw.port, f"/v1/jobs/{job_id}")
            assert status == 200 and job["result"]["results"] == body["results"]  # as the job answered

            async with http.post(f"{base}/v1/listen?model=nova-3", data=wav) as r:
                assert r.status == 200
                rid = r.headers["dg-request-id"]
                answered = await r.json()
            body = await complete(http, gw.port, rid)
            assert body["results"] == answered["results"] and body["stored"]["source"] == "sync"
            status, page = await fetch(http, gw.port, "/v1/transcripts")
            assert [t["request_id"] for t in page["transcripts"]] == [rid, job_id]
            assert page["transcripts"][0]["preview"] == "w5 w6 w7"


async def test_storage_off_stores_nothing(tmp_path: Path) -> None:
    over = {"server.data_dir": str(tmp_path), "storage.url": "off"}
    async with (
        engine("marker") as eport,
        gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw,
        aiohttp.ClientSession() as http,
    ):
        assert gw.gateway.transcripts is None
        st = await open_stream(http, gw.port)
        await st.send(words_audio([9]))
        await st.close_stream()
        assert st.words == ["w9"]
        status, err = await fetch(http, gw.port, "/v1/transcripts")
        assert status == 404 and "storage.url" in err["err_msg"]
    assert not (tmp_path / SQLITE_FILE).exists()


async def test_postgres_outage_mid_session_is_invisible_to_it(tmp_path: Path) -> None:
    """PostgreSQL (behind a forwarder) goes away in the middle of a session: the client gets every
    final, on time and exactly once, and a clean close; the writer's backlog grows and its retries
    are counted; reads answer 503. When the database is back, the whole transcript is written."""
    ks = list(range(41, 53))
    audio = words_audio(ks)
    async with pg_schema() as schema:
        cut = TcpCut(PG_HOST, PG_PORT)
        port = await cut.start()
        over = {"server.data_dir": str(tmp_path), "storage.url": pg_url(schema, port=port), **FAST}
        try:
            async with (
                engine("marker") as eport,
                gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw,
                aiohttp.ClientSession() as http,
            ):
                writer = gw.gateway.transcripts
                assert writer is not None and writer.ready
                st = await open_stream(http, gw.port)
                assert st.ws._response is not None
                rid = st.ws._response.headers["dg-request-id"]
                n = SR * 2 // 10
                chunks = [audio[i : i + n] for i in range(0, len(audio), n)]
                half = len(chunks) // 2
                for c in chunks[:half]:
                    await st.ws.send_bytes(c)
                    await asyncio.sleep(0.02)
                while len(st.words) < 3:  # some finals are in (and written) before the outage
                    await asyncio.sleep(0.02)
                assert await writer.flushed()
                written_before = metric(gw, "streamproxy_storage_records_written_total")

                cut.cut()
                for c in chunks[half:]:
                    await st.ws.send_bytes(c)
                    await asyncio.sleep(0.02)
                await st.close_stream()
                assert st.close_code == 1000
                assert st.words == [f"w{k}" for k in ks]  # every final, once, in order
                deadline = time.monotonic() + 10
                while metric(gw, "streamproxy_storage_write_failures_total") < 1:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                assert metric(gw, "streamproxy_storage_backlog") >= 2  # later finals and the end, waiting
                assert metric(gw, "streamproxy_storage_records_written_total") == written_before
                assert metric(gw, "streamproxy_sessions_total", {"outcome": "ok"}) == 1
                status, err = await fetch(http, gw.port, f"/v1/transcripts/{rid}")
                assert status == 503 and "unavailable" in err["err_msg"]

                cut.restore()
                body = await complete(http, gw.port, rid)
                assert stored_words(body) == final_words(st.msgs)
                assert metric(gw, "streamproxy_storage_backlog") == 0
                assert metric(gw, "streamproxy_storage_records_dropped_total") == 0
        finally:
            await cut.stop()


async def test_page_lists_recent_transcripts(tmp_path: Path) -> None:
    """The built-in page's small panel (headless Chromium) lists the stored transcripts, newest
    first, with their text: fetched from /v1/transcripts at load and on refresh."""
    from tests.test_page_browser import _require_browser, browser_page, until

    _require_browser()
    silence = tmp_path / "silence.wav"
    silence.write_bytes(marker_wav([]))  # the fake microphone needs a file; the page never starts it
    over = {"server.data_dir": str(tmp_path), **FAST}
    async with (
        engine("marker") as eport,
        gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw,
        aiohttp.ClientSession() as http,
    ):
        ids = []
        for ks in ([61, 62], [63]):
            st = await open_stream(http, gw.port)
            assert st.ws._response is not None
            ids.append(st.ws._response.headers["dg-request-id"])
            await st.send(words_audio(ks))
            await st.close_stream()
            await complete(http, gw.port, ids[-1])
        async with browser_page(silence) as page:
            await page.goto(f"http://127.0.0.1:{gw.port}/")
            await until(page, "document.querySelectorAll('#transcripts li').length === 2", 10)
            items = await page.evaluate(
                "[...document.querySelectorAll('#transcripts li')].map(li => [li.dataset.id, li.textContent])"
            )
            assert [i[0] for i in items] == ids[::-1]
            assert items[0][1].endswith("w63") and items[1][1].endswith("w61 w62") and "v1" in items[0][1]
            st = await open_stream(http, gw.port)
            await st.send(words_audio([64]))
            await st.close_stream()
            await complete(http, gw.port, st.ws._response.headers["dg-request-id"])  # type: ignore[union-attr]
            await page.click("#refresh-transcripts")
            await until(page, "document.querySelectorAll('#transcripts li').length === 3", 10)
            assert (await page.inner_text("#transcripts li:first-child")).endswith("w64")
            assert not page.errors, page.errors


async def test_killed_gateway_keeps_every_flushed_final(tmp_path: Path) -> None:
    """SIGKILL of ``serve`` in the middle of a session: every final written before (the writer
    flushes every flush_interval_s) is in the SQLite file; the next start answers it, status open."""
    prefix = unique_prefix()
    async with engine("marker") as eport:
        # No child processes of serve's own (engine, embedded Redis) that its SIGKILL would orphan.
        env = {
            "STREAMPROXY_STORAGE_FLUSH_INTERVAL_S": "0.05",
            "STREAMPROXY_UPSTREAM_U0_URL": f"ws://127.0.0.1:{eport}",
            "STREAMPROXY_QUEUE_REDIS_URL": "redis://127.0.0.1:6379/0",
            "STREAMPROXY_QUEUE_PREFIX": prefix,
        }
        try:
            await _killed_mid_session(tmp_path, env)
        finally:
            r = aioredis.from_url("redis://127.0.0.1:6379/0")
            keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()


async def _killed_mid_session(tmp_path: Path, env: dict[str, str]) -> None:
    with serve_proc(tmp_path, env=env) as sp:
        async with aiohttp.ClientSession() as http:
            st = await open_stream(http, sp.port)
            assert st.ws._response is not None
            rid = st.ws._response.headers["dg-request-id"]
            await st.send(words_audio([71, 72, 73]))  # each word followed by 350 ms of silence: all final
            deadline = time.monotonic() + 15
            while len(st.words) < 3:
                assert time.monotonic() < deadline, st.words
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # ten flush intervals
            delivered = final_words(st.msgs)
            sp.signal(signal.SIGKILL)
            assert sp.wait(10) == -signal.SIGKILL
    with serve_proc(tmp_path, env=env) as sp:
        async with aiohttp.ClientSession() as http:
            status, body = await fetch(http, sp.port, f"/v1/transcripts/{rid}")
    assert status == 200 and body["stored"]["status"] == "open" and body["stored"]["ended"] is None
    assert stored_words(body) == delivered


async def test_worker_process_stores_results_in_shared_postgres(tmp_path: Path) -> None:
    """``streamproxy worker`` as its own process writes job results to the PostgreSQL the gateway
    reads: the transcript of an async job is answered by the gateway under the job id."""
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport, pg_schema() as schema:
        prefix = unique_prefix()
        url = pg_url(schema)
        sections = queue_sections(rs.url, prefix, f"ws://127.0.0.1:{eport}")
        sections["storage"] = {"url": url, "flush_interval_s": 0.05}
        worker = await start_worker(write_config(tmp_path / "worker.toml", sections))
        try:
            over = {"queue.redis_url": rs.url, "queue.prefix": prefix, "queue.serve_worker": False,
                    "server.data_dir": str(tmp_path / "data"), "storage.url": url, **FAST}  # fmt: skip
            async with (
                gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw,
                aiohttp.ClientSession() as http,
            ):
                async with http.post(
                    f"http://127.0.0.1:{gw.port}/v1/transcribe?mode=async", data=marker_wav([8, 9])
                ) as r:
                    assert r.status == 202, await r.text()
                    job_id = (await r.json())["job_id"]
                body = await complete(http, gw.port, job_id)
                assert words_of(body) == ["w8", "w9"] and body["stored"]["source"] == "async"
                assert metric(gw, "streamproxy_storage_records_written_total") == 0  # the worker wrote it
        finally:
            await worker.stop()


async def test_twilio_call_stored_under_its_stream_sid(tmp_path: Path) -> None:
    """A Twilio Media Stream is a Live session: its transcript is kept under the streamSid, with
    the exact words and times (from the media timestamps) the subscribers got."""
    from tests.test_twilio import STREAM_SID, _marker_ulaw, send_call, twilio_events

    ulaw, expected = _marker_ulaw()
    over = {"server.data_dir": str(tmp_path), **FAST}
    async with (
        engine("marker") as eport,
        gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw,
        aiohttp.ClientSession() as http,
    ):
        assert await send_call(gw.port, twilio_events(ulaw)) == 1000
        body = await complete(http, gw.port, STREAM_SID)
    assert body["stored"]["source"] == "twilio"
    assert stored_words(body) == expected


async def test_delete_while_the_session_runs_is_not_undone(tmp_path: Path) -> None:
    """DELETE of a session's transcript while it still streams: what it delivers afterwards (more
    finals, its end) does not bring the transcript back."""
    over = {"server.data_dir": str(tmp_path), **FAST}
    async with (
        engine("marker") as eport,
        gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **over)) as gw,
        aiohttp.ClientSession() as http,
    ):
        st = await open_stream(http, gw.port)
        assert st.ws._response is not None
        rid = st.ws._response.headers["dg-request-id"]
        await st.send(words_audio([81]))
        while len(st.words) < 1:
            await asyncio.sleep(0.02)
        assert gw.gateway.transcripts is not None and await gw.gateway.transcripts.flushed()
        status, body = await fetch(http, gw.port, f"/v1/transcripts/{rid}")
        assert status == 200 and body["stored"]["status"] == "open" and words_of(body) == ["w81"]
        assert (await fetch(http, gw.port, f"/v1/transcripts/{rid}", method="DELETE"))[0] == 200
        await st.send(words_audio([82, 83]))
        await st.close_stream()
        assert st.words == ["w81", "w82", "w83"]  # the session itself goes on as before
        await asyncio.sleep(0.3)  # several flush intervals
        assert await gw.gateway.transcripts.flushed()
        assert (await fetch(http, gw.port, f"/v1/transcripts/{rid}"))[0] == 404
        status, page = await fetch(http, gw.port, "/v1/transcripts")
        assert rid not in [t["request_id"] for t in page["transcripts"]]
