"""``[storage]`` → a store and its writer, shared by ``serve`` and ``streamproxy worker``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ..config import Config, resolve_data_dir
from .metrics import StorageMetrics
from .postgres import PostgresStore
from .sqlite import SqliteStore
from .store import Store
from .writer import TranscriptWriter

__all__ = ["SQLITE_FILE", "store_from_config", "writer_from_config"]

SQLITE_FILE = "transcripts.db"


def store_from_config(cfg: Config) -> Store | None:
    """None for ``url = "off"``; SQLite in the data dir for ""; else PostgreSQL (the URL was
    checked when the configuration was loaded)."""
    url = cfg.storage.url
    if url == "off":
        return None
    if url == "":
        return SqliteStore(resolve_data_dir(cfg.server) / SQLITE_FILE)
    return PostgresStore(url)


def writer_from_config(cfg: Config, registry: CollectorRegistry | None = None) -> TranscriptWriter | None:
    store = store_from_config(cfg)
    if store is None:
        return None
    s = cfg.storage
    return TranscriptWriter(
        store,
        max_backlog=s.max_backlog,
        flush_interval_s=s.flush_interval_s,
        retention_days=s.retention_days,
        metrics=StorageMetrics(registry),
    )
