"""A shared PostgreSQL (``asyncpg``): every gateway and worker writes to one database.

Connections come from a small pool; a connection broken by an outage is discarded and a new one
opened on the next use, so the writer's retry after an outage needs nothing special. Migrations
hold a transaction-scoped advisory lock: instances starting together migrate one after another.
Query parameters of the URL other than libpq's are server settings (``?search_path=myschema``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from .migrations import pending
from .records import Record, Stored, Summary
from .store import SUMMARY_COLUMNS, StoreError, dumps, end_row, loads, segment_of, split, summary_of

__all__ = ["PostgresStore"]

#: pg_advisory_xact_lock key for schema migrations ("streamproxy" in ASCII, as a bigint).
_MIGRATION_LOCK = 0x73747265616D70
_COMMAND_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5.0

_INSERT_BEGIN = """INSERT INTO transcripts (id, owner, kind, source, status, created_at, params)
    VALUES ($1, $2, $3, $4, 'open', $5, $6) ON CONFLICT (id) DO NOTHING"""
_INSERT_SEGMENT = """INSERT INTO segments (transcript_id, channel, start_s, end_s, transcript, confidence, words)
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"""
_UPSERT_END = """INSERT INTO transcripts
    (id, owner, kind, source, status, created_at, ended_at, duration, outcome, params, meta, preview, result)
    VALUES ($1, $2, $3, $4, 'complete', $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, kind = excluded.kind, source = excluded.source,
        status = 'complete', ended_at = excluded.ended_at, duration = excluded.duration,
        outcome = excluded.outcome, params = excluded.params, meta = excluded.meta,
        preview = excluded.preview, result = excluded.result"""


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the transcript store is not open")
        return self._pool

    async def open(self, *, upto: int | None = None) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=4, command_timeout=_COMMAND_TIMEOUT_S, timeout=_CONNECT_TIMEOUT_S
        )
        try:
            async with pool.acquire() as con:
                await self._migrate(con, upto)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _migrate(self, con: Any, upto: int | None) -> None:
        async with con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        for version, statements in pending(self.dialect, await self._version(con), upto):
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                if await self._version(con) >= version:  # another instance applied it meanwhile
                    continue
                for sql in statements:
                    await con.execute(sql)
                await con.execute("DELETE FROM schema_version")
                await con.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    @staticmethod
    async def _version(con: Any) -> int:
        v = await con.fetchval("SELECT MAX(version) FROM schema_version")
        return int(v) if v is not None else 0

    async def schema_version(self) -> int:
        async with self.pool.acquire() as con:
            return await self._version(con)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:  # an outage: the connections are gone anyway
                pool.terminate()

    async def write(self, batch: Sequence[Record]) -> None:
        begins, segments, ends = split(batch)
        async with self.pool.acquire() as con, con.transaction():
            if begins:
                await con.executemany(
                    _INSERT_BEGIN, [(b.id, b.owner, b.kind, b.source, b.created_at, dumps(b.params)) for b in begins]
                )
            if segments:
                await con.executemany(
                    _INSERT_SEGMENT,
                    [(s.id, s.channel, s.start, s.end, s.transcript, s.confidence, dumps(s.words)) for s in segments],
                )
            if ends:
                await con.executemany(_UPSERT_END, [end_row(e) for e in ends])

    async def summary(self, transcript_id: str) -> Summary | None:
        row = await self.pool.fetchrow(f"SELECT {SUMMARY_COLUMNS} FROM transcripts WHERE id = $1", transcript_id)
        return None if row is None else summary_of(tuple(row))

    async def get(self, transcript_id: str) -> Stored | None:
        async with self.pool.acquire() as con, con.transaction(readonly=True, isolation="repeatable_read"):
            row = await con.fetchrow(
                f"SELECT {SUMMARY_COLUMNS}, params, meta, result FROM transcripts WHERE id = $1", transcript_id
            )
            if row is None:
                return None
            rows = await con.fetch(
                "SELECT channel, start_s, end_s, transcript, confidence, words FROM segments"
                " WHERE transcript_id = $1 ORDER BY channel, start_s, end_s",
                transcript_id,
            )
        segs = [segment_of(transcript_id, tuple(r)) for r in rows]
        return Stored(summary_of(tuple(row)), loads(row[10]), loads(row[11]), loads(row[12]), segs)

    async def list(self, owner: str, limit: int, before: tuple[float, str] | None) -> list[Summary]:
        if before is None:
            rows = await self.pool.fetch(
                f"SELECT {SUMMARY_COLUMNS} FROM transcripts WHERE owner = $1"
                " ORDER BY created_at DESC, id DESC LIMIT $2",
                owner,
                limit,
            )
        else:
            rows = await self.pool.fetch(
                f"SELECT {SUMMARY_COLUMNS} FROM transcripts WHERE owner = $1 AND (created_at, id) < ($2, $3)"
                " ORDER BY created_at DESC, id DESC LIMIT $4",
                owner,
                before[0],
                before[1],
                limit,
            )
        return [summary_of(tuple(r)) for r in rows]

    async def delete(self, transcript_id: str) -> bool:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("DELETE FROM segments WHERE transcript_id = $1", transcript_id)
            status = await con.execute("DELETE FROM transcripts WHERE id = $1", transcript_id)
        return _count(status) > 0

    async def purge(self, older_than: float) -> int:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute(
                "DELETE FROM segments WHERE transcript_id IN (SELECT id FROM transcripts WHERE created_at < $1)",
                older_than,
            )
            status = await con.execute("DELETE FROM transcripts WHERE created_at < $1", older_than)
        return _count(status)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
