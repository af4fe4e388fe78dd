"""The transcript writer's Prometheus families (prefix ``streamproxy_storage_``).

On the gateway's registry inside ``serve`` (one ``/metrics``), on the worker's in ``streamproxy
worker``. The backlog is read from the writer at scrape time, like the buffered-audio gauge:
nothing is updated per record on the session path but a counter when a record is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["StorageMetrics"]


class StorageMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        p = "streamproxy_storage_"
        self.backlog = Gauge(
            p + "backlog", "Transcript records waiting to be written (grows during a storage outage)", registry=r
        )
        self.written = Counter(p + "records_written_total", "Transcript records written to the store", registry=r)
        self.failed = Counter(
            p + "write_failures_total",
            "Failed attempts to write a batch of transcript records (retried with backoff)",
            registry=r,
        )
        self.dropped = Counter(
            p + "records_dropped_total",
            "Transcript records dropped: backlog full (storage.max_backlog) or left unwritten at shutdown",
            registry=r,
        )

    def watch(self, backlog: Callable[[], float]) -> None:
        self.backlog.set_function(backlog)
