"""A private schema on the machine's PostgreSQL (127.0.0.1:5432, trust auth, database ``test``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DB = "test"


def pg_url(schema: str, *, port: int = PG_PORT) -> str:
    """A storage URL whose tables live in ``schema`` (``search_path`` is passed as a server setting)."""
    return f"postgresql://postgres@{PG_HOST}:{port}/{PG_DB}?search_path={schema}"


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A schema with a random name, dropped (with everything in it) afterwards."""
    name = "sp_test_" + uuid.uuid4().hex[:12]
    try:
        con = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=PG_DB, timeout=10)
    except (OSError, asyncpg.PostgresError) as e:  # fail loudly, never skip
        raise AssertionError(
            f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} (user postgres, trust auth, database {PG_DB}): {e}"
        ) from e
    try:
        await con.execute(f'CREATE SCHEMA "{name}"')
        yield name
    finally:
        await con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await con.close()
