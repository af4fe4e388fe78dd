"""The transcript store and its writer, against the real backends: the embedded SQLite file and the
machine's PostgreSQL (a private schema per test). Migrations step by step and idempotent, the same
rows from both backends, a batch written twice adds nothing, retention, the bounded backlog during
an outage (a TCP forwarder in front of PostgreSQL, cut and restored), and bad ``[storage]`` values."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from streamproxy.config import ConfigError, load_config, redact
from streamproxy.storage.metrics import StorageMetrics
from streamproxy.storage.migrations import LATEST
from streamproxy.storage.postgres import PostgresStore
from streamproxy.storage.records import Begin, End, Segment
from streamproxy.storage.setup import SQLITE_FILE, store_from_config
from streamproxy.storage.sqlite import SqliteStore
from streamproxy.storage.store import Store
from streamproxy.storage.writer import TranscriptWriter, segment_of_message
from tests.helpers.pg import PG_HOST, PG_PORT, pg_schema, pg_url
from tests.helpers.serve_proc import cli
from tests.helpers.tcpcut import TcpCut

DAY = 86400.0


def seg(tid: str, k: int, start: float) -> Segment:
    words = [{"word": f"w{k}", "start": start, "end": start + 0.2, "confidence": 1.0, "punctuated_word": f"w{k}"}]
    return Segment(tid, 0, start, start + 0.5, f"w{k}", 1.0, words)


def end(tid: str, created: float, owner: str = "") -> End:
    return End(tid, owner, "stream", "v1", created, created + 1, 2.5, "ok", {"model": "nova-3"}, {"audio_s": 2.5})


@contextlib.asynccontextmanager
async def postgres() -> AsyncIterator[tuple[str, str]]:
    async with pg_schema() as schema:
        yield schema, pg_url(schema)


async def _indexes(store: Store) -> set[str]:
    if isinstance(store, SqliteStore):
        async with store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'") as cur:
            return {r[0] for r in await cur.fetchall()}
    assert isinstance(store, PostgresStore)
    rows = await store.pool.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {r[0] for r in rows}


async def _migrations_are_stepwise(make: Any) -> None:
    old = make()
    await old.open(upto=1)  # a database made by the first release
    assert await old.schema_version() == 1
    assert "transcripts_created" not in await _indexes(old)
    await old.write([Begin("kept", "", "stream", "v1", 1000.0), seg("kept", 1, 0.0)])
    await old.close()

    a, b = make(), make()
    await asyncio.gather(a.open(), b.open())  # two instances starting at once: one migrates, once
    assert await a.schema_version() == LATEST == await b.schema_version()
    assert "transcripts_created" in await _indexes(a)
    await b.close()
    await a.close()

    again = make()
    await again.open()  # nothing pending: nothing applied, nothing lost
    assert await again.schema_version() == LATEST
    got = await again.get("kept")
    assert got is not None and [s.transcript for s in got.segments] == ["w1"]
    await again.close()


async def test_sqlite_migrations_stepwise_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.db"  # the directory does not exist yet
    await _migrations_are_stepwise(lambda: SqliteStore(path))
    import sqlite3

    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]


async def test_postgres_migrations_stepwise_idempotent() -> None:
    async with postgres() as (schema, url):
        await _migrations_are_stepwise(lambda: PostgresStore(url))
        con = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
        try:
            rows = await con.fetch(f'SELECT version FROM "{schema}".schema_version')
        finally:
            await con.close()
        assert [r[0] for r in rows] == [LATEST]


async def _same_rows(store: Store) -> None:
    await store.open()
    try:
        t0 = 1_700_000_000.0
        batch = [
            Begin("a", "alice", "stream", "v1", t0, {"model": "nova-3"}),
            seg("a", 2, 1.0),
            seg("a", 1, 0.0),  # out of order: read back by position
            end("a", t0, "alice"),
            Begin("b", "alice", "stream", "v2", t0 + 1),
            seg("b", 3, 0.0),
            end("c", t0 + 2, "bob"),  # its Begin was dropped: the End alone makes the row
        ]
        await store.write(batch)
        await store.write(batch)  # a retry after a lost commit acknowledgement adds nothing
        a = await store.get("a")
        assert a is not None
        assert [s.transcript for s in a.segments] == ["w1", "w2"]
        assert a.segments[0].words == [
            {"word": "w1", "start": 0.0, "end": 0.2, "confidence": 1.0, "punctuated_word": "w1"}
        ]
        assert (a.summary.status, a.summary.owner, a.summary.duration, a.summary.outcome) == (
            "complete",
            "alice",
            2.5,
            "ok",
        )
        assert a.params == {"model": "nova-3"} and a.meta == {"audio_s": 2.5} and a.result is None
        b = await store.get("b")
        assert b is not None and b.summary.status == "open" and b.summary.duration is None
        assert [s.id for s in await store.list("alice", 10, None)] == ["b", "a"]  # newest first
        page1 = await store.list("alice", 1, None)
        page2 = await store.list("alice", 1, (page1[-1].created_at, page1[-1].id))
        assert [s.id for s in page1 + page2] == ["b", "a"]
        assert await store.list("alice", 1, (page2[-1].created_at, page2[-1].id)) == []
        assert [s.id for s in await store.list("bob", 10, None)] == ["c"]
        assert await store.list("mallory", 10, None) == []
        assert await store.delete("a") and not await store.delete("a")
        assert await store.get("a") is None and await store.summary("a") is None
        assert await store.purge(t0 + 1.5) == 1  # b (c is newer)
        assert [s.id for s in await store.list("bob", 10, None)] == ["c"] and await store.get("b") is None
    finally:
        await store.close()


async def test_sqlite_and_postgres_keep_the_same_rows(tmp_path: Path) -> None:
    await _same_rows(SqliteStore(tmp_path / "t.db"))
    async with postgres() as (_, url):
        await _same_rows(PostgresStore(url))


async def test_retention_purges_old_transcripts_at_start(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    now = time.time()
    store = SqliteStore(path)
    await store.open()
    await store.write([end("old", now - 31 * DAY), seg("old", 1, 0.0), end("new", now - 29 * DAY), seg("new", 2, 0.0)])
    await store.close()

    keep_all = TranscriptWriter(SqliteStore(path), retention_days=0)  # 0: kept forever
    waits = 0
    real_wait = keep_all._wait

    async def counted(event: asyncio.Event, timeout: float | None) -> None:
        nonlocal waits
        waits += 1
        await real_wait(event, timeout)

    keep_all._wait = counted  # type: ignore[method-assign]
    await keep_all.start()
    await asyncio.sleep(0.3)  # time for a purge, were there one
    assert {s.id for s in await keep_all.store.list("", 10, None)} == {"old", "new"}
    assert waits <= 1, f"an idle writer woke {waits} times in 0.3 s"  # it sleeps until a record comes
    await keep_all.close()

    w = TranscriptWriter(SqliteStore(path), retention_days=30)
    await w.start()  # purges right after start, in the background (then hourly)
    try:
        deadline = time.monotonic() + 10
        while len(await w.store.list("", 10, None)) > 1:
            assert time.monotonic() < deadline, "not purged"
            await asyncio.sleep(0.02)
        assert [s.id for s in await w.store.list("", 10, None)] == ["new"]
        assert await w.store.get("old") is None
        assert isinstance(w.store, SqliteStore)
        async with w.store.db.execute("SELECT COUNT(*) FROM segments WHERE transcript_id = 'old'") as cur:
            assert (await cur.fetchone()) == (0,)  # its finals went with it
    finally:
        await w.close()


def _value(m: StorageMetrics, name: str) -> float:
    v = m.registry.get_sample_value(name)
    return 0.0 if v is None else v


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_outage_grows_a_bounded_backlog_and_is_written_after() -> None:
    """PostgreSQL behind a forwarder that is cut: accepting records never blocks nor raises, the
    backlog stops at max_backlog (the rest dropped, counted), everything kept is written once the
    database answers again; a writer started during the outage starts anyway and catches up."""
    async with postgres() as (_, _url):
        schema = _url.rsplit("=", 1)[1]
        cut = TcpCut(PG_HOST, PG_PORT)
        port = await cut.start()
        metrics = StorageMetrics()
        w = TranscriptWriter(
            PostgresStore(pg_url(schema, port=port)), max_backlog=5, flush_interval_s=0.02, metrics=metrics
        )
        try:
            await w.start()
            assert w.ready
            w.begin("s1", owner="", source="v1", query="model=nova-3")
            assert await w.flushed()
            assert _value(metrics, "streamproxy_storage_records_written_total") == 1

            cut.cut()
            for k in range(1, 9):  # 8 finals: 5 fit
                w.final("s1", {"type": "Results", "start": k, "duration": 0.5,
                               "channel": {"alternatives": [{"transcript": f"w{k}", "confidence": 1.0,
                                                             "words": [{"word": f"w{k}", "start": k, "end": k + 0.2,
                                                                        "confidence": 1.0}]}]}})  # fmt: skip
            assert w.backlog == 5
            assert _value(metrics, "streamproxy_storage_backlog") == 5
            assert _value(metrics, "streamproxy_storage_records_dropped_total") == 3
            await _until(lambda: _value(metrics, "streamproxy_storage_write_failures_total") >= 2, 10, "retries")
            assert w.backlog == 5 and _value(metrics, "streamproxy_storage_records_written_total") == 1

            cut.restore()
            assert await w.flushed(15)
            assert _value(metrics, "streamproxy_storage_records_written_total") == 6
            assert _value(metrics, "streamproxy_storage_backlog") == 0
            got = await w.store.get("s1")
            assert got is not None and [s.transcript for s in got.segments] == [f"w{k}" for k in range(1, 6)]
        finally:
            await w.close()

        cut.cut()  # down before the writer starts
        late = TranscriptWriter(PostgresStore(pg_url(schema, port=port)), flush_interval_s=0.02)
        try:
            t0 = time.monotonic()
            await late.start()  # does not raise: the gateway starts, the writer keeps trying
            assert not late.ready and time.monotonic() - t0 < 8
            late.job_result("j1", owner="", source="async", params={}, result={"metadata": {"duration": 1.0}})
            assert late.backlog == 1
            cut.restore()
            assert await late.flushed(15) and late.ready
            j = await late.store.get("j1")
            assert j is not None and j.result == {"metadata": {"duration": 1.0}} and j.summary.kind == "job"
        finally:
            await late.close()
            await cut.stop()


async def test_close_writes_what_is_waiting(tmp_path: Path) -> None:
    w = TranscriptWriter(SqliteStore(tmp_path / "t.db"), flush_interval_s=30.0)  # never flushed by time
    await w.start()
    w.begin("x", owner="", source="v1", query="")
    w.final(
        "x",
        {
            "type": "TurnInfo",
            "event": "EndOfTurn",
            "audio_window_start": 0.0,
            "audio_window_end": 1.0,
            "transcript": "w7",
            "end_of_turn_confidence": 0.9,
            "words": [{"word": "w7", "confidence": 1.0}],
        },
    )
    await w.close()
    assert w.backlog == 0
    s = SqliteStore(tmp_path / "t.db")
    await s.open()
    got = await s.get("x")
    await s.close()
    assert got is not None and [g.words for g in got.segments] == [[{"word": "w7", "confidence": 1.0}]]


def test_records_from_messages(tmp_path: Path) -> None:
    """Live finals and Flux EndOfTurns become segments; a final without words is not stored; a
    malformed message (start "soon") is skipped, never raised into the session."""
    live = {
        "type": "Results",
        "start": 1.5,
        "duration": 0.75,
        "channel_index": [1, 2],
        "channel": {
            "alternatives": [
                {
                    "transcript": "a b",
                    "confidence": 0.5,
                    "words": [{"word": "a", "start": 1.5, "end": 1.7, "confidence": 0.5}],
                }
            ]
        },
    }
    s = segment_of_message("t", live)
    assert s == Segment("t", 1, 1.5, 2.25, "a b", 0.5, [{"word": "a", "start": 1.5, "end": 1.7, "confidence": 0.5}])
    empty = {
        "type": "Results",
        "start": 0,
        "duration": 3,
        "channel": {"alternatives": [{"transcript": "", "words": []}]},
    }
    assert segment_of_message("t", empty) is None
    w = TranscriptWriter(SqliteStore(tmp_path / "never-opened.db"))  # the record path needs no store
    w.final("t", {"type": "Results", "start": "soon", "channel": {}})
    w.final("t", empty)
    assert w.backlog == 0
    w.final("t", live)
    assert w.backlog == 1


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"STREAMPROXY_STORAGE_URL": "mysql://db/x"}, "storage.url"),
        ({"STREAMPROXY_STORAGE_URL": "postgresql://"}, "storage.url"),  # no host
        ({"STREAMPROXY_STORAGE_URL": "postgresql://db:port/x"}, "storage.url"),  # port not a number
        ({"STREAMPROXY_STORAGE_URL": "sqlite:///tmp/x.db"}, "storage.url"),  # "" is the SQLite store
        ({"STREAMPROXY_STORAGE_RETENTION_DAYS": "-1"}, "storage.retention_days"),
        ({"STREAMPROXY_STORAGE_MAX_BACKLOG": "0"}, "storage.max_backlog"),
        ({"STREAMPROXY_STORAGE_FLUSH_INTERVAL_S": "0"}, "storage.flush_interval_s"),
    ],
)
def test_bad_storage_config_fails_naming_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env)
    assert info.value.key.endswith(needle)


def test_storage_urls_accepted(tmp_path: Path) -> None:
    for url in ("", "off", "postgresql://u:pw@db.example:5432/t", "postgres:///t?host=/run/postgresql"):
        assert load_config(None, env={"STREAMPROXY_STORAGE_URL": url}).storage.url == url
    shown = redact(load_config(None, env={"STREAMPROXY_STORAGE_URL": "postgresql://u:s3cret@db/t"}))
    assert shown["storage"]["url"] == "postgresql://u:***@db/t"  # the password never reaches a log line
    cfg = load_config(None, env={}, overrides={"server.data_dir": str(tmp_path)})
    store = store_from_config(cfg)
    assert isinstance(store, SqliteStore) and store.path == tmp_path / SQLITE_FILE
    assert store_from_config(load_config(None, env={"STREAMPROXY_STORAGE_URL": "off"})) is None


def test_serve_refuses_a_bad_storage_url_at_start(tmp_path: Path) -> None:
    r = cli(tmp_path, "serve", env={"STREAMPROXY_STORAGE_URL": "mysql://db/x"})
    assert r.returncode != 0
    assert "storage.url" in r.stderr + r.stdout and "mysql://db/x" in r.stderr + r.stdout


def test_deepgram_shape_per_channel_and_for_jobs() -> None:
    """One alternative per audio channel (a declared channel without words is there, empty); a
    job's result is answered as it was, under its id."""
    from deepgram.types.listen_v1response import ListenV1Response

    from streamproxy.storage.records import Stored, Summary
    from streamproxy.storage.shape import response

    summary = Summary("t", "", "stream", "v1", "complete", 1_700_000_000.0, 1_700_000_010.0, 4.0, "ok", "")
    segs = [seg("t", 1, 0.0), Segment("t", 1, 0.5, 1.0, "w2", 0.5, [{"word": "w2", "start": 0.5, "end": 0.7}])]
    body = response(Stored(summary, {"channels": "3", "model": "nova-3"}, {}, None, segs))
    ListenV1Response.model_validate(body)
    chans = body["results"]["channels"]
    assert body["metadata"]["channels"] == 3 and len(chans) == 3
    assert [[w["word"] for w in c["alternatives"][0]["words"]] for c in chans] == [["w1"], ["w2"], []]
    assert chans[1]["alternatives"][0]["confidence"] == 0.0  # the word carried none
    assert body["metadata"]["created"] == "2023-11-14T22:13:20.000Z" and body["metadata"]["duration"] == 4.0

    job = Summary("j", "", "job", "async", "complete", 1_700_000_000.0, 1_700_000_001.0, 2.0, "completed", "")
    result = {"metadata": {"request_id": "upstream-id", "duration": 2.0}, "results": {"channels": []}}
    out = response(Stored(job, {}, {}, result, []))
    assert out["metadata"] == {"request_id": "j", "duration": 2.0} and out["results"] == {"channels": []}
    assert out["stored"]["kind"] == "job"
