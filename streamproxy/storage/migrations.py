"""Versioned schema migrations: ordered SQL steps per dialect, applied at start.

The database records the version it is at in ``schema_version``; at start every step above it is
applied, each in its own transaction together with the new version number, so a step is applied
once and a database is never left half-migrated. New steps are appended (never edited once
released): an older database is brought forward step by step, a current one is left as it is.
"""

from __future__ import annotations

__all__ = ["LATEST", "MIGRATIONS", "Step", "pending"]

Step = tuple[int, tuple[str, ...]]  # (version, statements)

_SQLITE: tuple[Step, ...] = (
    (
        1,
        (
            """CREATE TABLE transcripts (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL DEFAULT '',
                kind TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                ended_at REAL,
                duration REAL,
                outcome TEXT,
                params TEXT NOT NULL DEFAULT '{}',
                meta TEXT NOT NULL DEFAULT '{}',
                preview TEXT NOT NULL DEFAULT '',
                result TEXT
            )""",
            "CREATE INDEX transcripts_owner_created ON transcripts (owner, created_at, id)",
            """CREATE TABLE segments (
                transcript_id TEXT NOT NULL,
                channel INTEGER NOT NULL,
                start_s REAL NOT NULL,
                end_s REAL NOT NULL,
                transcript TEXT NOT NULL,
                confidence REAL NOT NULL,
                words TEXT NOT NULL,
                PRIMARY KEY (transcript_id, channel, end_s)
            )""",
        ),
    ),
    # The retention purge selects by age across owners.
    (2, ("CREATE INDEX transcripts_created ON transcripts (created_at)",)),
)

_POSTGRESQL: tuple[Step, ...] = (
    (
        1,
        (
            """CREATE TABLE transcripts (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL DEFAULT '',
                kind TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '',
                status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                ended_at DOUBLE PRECISION,
                duration DOUBLE PRECISION,
                outcome TEXT,
                params TEXT NOT NULL DEFAULT '{}',
                meta TEXT NOT NULL DEFAULT '{}',
                preview TEXT NOT NULL DEFAULT '',
                result TEXT
            )""",
            "CREATE INDEX transcripts_owner_created ON transcripts (owner, created_at, id)",
            """CREATE TABLE segments (
                transcript_id TEXT NOT NULL,
                channel INTEGER NOT NULL,
                start_s DOUBLE PRECISION NOT NULL,
                end_s DOUBLE PRECISION NOT NULL,
                transcript TEXT NOT NULL,
                confidence DOUBLE PRECISION NOT NULL,
                words TEXT NOT NULL,
                PRIMARY KEY (transcript_id, channel, end_s)
            )""",
        ),
    ),
    (2, ("CREATE INDEX transcripts_created ON transcripts (created_at)",)),
)

MIGRATIONS: dict[str, tuple[Step, ...]] = {"sqlite": _SQLITE, "postgresql": _POSTGRESQL}
LATEST = max(v for v, _ in _SQLITE)
assert LATEST == max(v for v, _ in _POSTGRESQL), "both dialects have the same versions"


def pending(dialect: str, current: int, upto: int | None = None) -> list[Step]:
    """The steps above ``current`` (up to ``upto``, for tests of an older schema), in order."""
    steps = MIGRATIONS[dialect]
    versions = [v for v, _ in steps]
    assert versions == sorted(versions) and len(set(versions)) == len(versions), "steps are ordered"
    top = LATEST if upto is None else upto
    return [(v, sql) for v, sql in steps if current < v <= top]
