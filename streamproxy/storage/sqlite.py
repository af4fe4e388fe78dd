"""The embedded default: one SQLite file in the data dir (``aiosqlite``: sqlite3 on its own thread).

WAL mode, so ``serve`` and ``streamproxy worker`` processes on one host can share the file (one
writer at a time, readers never blocked); ``busy_timeout`` makes a writer wait for the other's
transaction instead of failing at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from .migrations import pending
from .records import Record, Stored, Summary
from .store import SUMMARY_COLUMNS, StoreError, dumps, end_row, loads, segment_of, split, summary_of

__all__ = ["SqliteStore"]

_BUSY_TIMEOUT_MS = 10_000

_INSERT_BEGIN = """INSERT INTO transcripts (id, owner, kind, source, status, created_at, params)
    VALUES (?, ?, ?, ?, 'open', ?, ?) ON CONFLICT (id) DO NOTHING"""
_INSERT_SEGMENT = """INSERT INTO segments (transcript_id, channel, start_s, end_s, transcript, confidence, words)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"""
_UPSERT_END = """INSERT INTO transcripts
    (id, owner, kind, source, status, created_at, ended_at, duration, outcome, params, meta, preview, result)
    VALUES (?, ?, ?, ?, 'complete', ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, kind = excluded.kind, source = excluded.source,
        status = 'complete', ended_at = excluded.ended_at, duration = excluded.duration,
        outcome = excluded.outcome, params = excluded.params, meta = excluded.meta,
        preview = excluded.preview, result = excluded.result"""


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the transcript store is not open")
        return self._db

    async def open(self, *, upto: int | None = None) -> None:
        """Open the file (created with its directory) and apply the pending migrations."""
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Transcripts are the users' words: only the service reads them (SQLite gives the -wal
            # and -shm files the database file's mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            db = await aiosqlite.connect(self.path, isolation_level=None)  # explicit BEGIN/COMMIT
        except (OSError, aiosqlite.Error) as e:
            raise StoreError(f"cannot open {self.path}: {e}") from e
        try:
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
            await self._migrate(db, upto)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def _migrate(self, db: aiosqlite.Connection, upto: int | None) -> None:
        await db.execute("BEGIN IMMEDIATE")  # the write lock: another process migrating waits
        try:
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await self._version(db)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        for version, statements in pending(self.dialect, current, upto):
            await db.execute("BEGIN IMMEDIATE")
            try:
                if await self._version(db) >= version:  # another process applied it meanwhile
                    await db.execute("COMMIT")
                    continue
                for sql in statements:
                    await db.execute(sql)
                await db.execute("DELETE FROM schema_version")
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise

    @staticmethod
    async def _version(db: aiosqlite.Connection) -> int:
        async with db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def schema_version(self) -> int:
        return await self._version(self.db)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def write(self, batch: Sequence[Record]) -> None:
        begins, segments, ends = split(batch)
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            if begins:
                await db.executemany(
                    _INSERT_BEGIN, [(b.id, b.owner, b.kind, b.source, b.created_at, dumps(b.params)) for b in begins]
                )
            if segments:
                await db.executemany(
                    _INSERT_SEGMENT,
                    [(s.id, s.channel, s.start, s.end, s.transcript, s.confidence, dumps(s.words)) for s in segments],
                )
            if ends:
                await db.executemany(_UPSERT_END, [end_row(e) for e in ends])
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def summary(self, transcript_id: str) -> Summary | None:
        async with self.db.execute(f"SELECT {SUMMARY_COLUMNS} FROM transcripts WHERE id = ?", (transcript_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else summary_of(tuple(row))

    async def get(self, transcript_id: str) -> Stored | None:
        db = self.db
        async with db.execute(
            f"SELECT {SUMMARY_COLUMNS}, params, meta, result FROM transcripts WHERE id = ?", (transcript_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        async with db.execute(
            "SELECT channel, start_s, end_s, transcript, confidence, words FROM segments"
            " WHERE transcript_id = ? ORDER BY channel, start_s, end_s",
            (transcript_id,),
        ) as cur:
            segs = [segment_of(transcript_id, tuple(r)) for r in await cur.fetchall()]
        return Stored(summary_of(tuple(row)), loads(row[10]), loads(row[11]), loads(row[12]), segs)

    async def list(self, owner: str, limit: int, before: tuple[float, str] | None) -> list[Summary]:
        where = "owner = ?"
        args: list[object] = [owner]
        if before is not None:
            where += " AND (created_at, id) < (?, ?)"
            args += [before[0], before[1]]
        sql = f"SELECT {SUMMARY_COLUMNS} FROM transcripts WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?"
        async with self.db.execute(sql, (*args, limit)) as cur:
            return [summary_of(tuple(r)) for r in await cur.fetchall()]

    async def delete(self, transcript_id: str) -> bool:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("DELETE FROM segments WHERE transcript_id = ?", (transcript_id,))
            cur = await db.execute("DELETE FROM transcripts WHERE id = ?", (transcript_id,))
            found = cur.rowcount > 0
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return found

    async def purge(self, older_than: float) -> int:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                "DELETE FROM segments WHERE transcript_id IN (SELECT id FROM transcripts WHERE created_at < ?)",
                (older_than,),
            )
            cur = await db.execute("DELETE FROM transcripts WHERE created_at < ?", (older_than,))
            n = cur.rowcount
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return max(0, n)
