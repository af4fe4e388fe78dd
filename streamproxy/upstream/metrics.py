"""Upstream health as Prometheus gauges, read from the pool at scrape time.

A circuit breaker opens and closes inside :class:`UpstreamPool` without any event the metrics could
count, so its state is computed when Prometheus scrapes: nothing on the hot path, and the gauge is
right even when no session is running (the alert "breaker open" must not wait for traffic).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .pool import UpstreamPool

__all__ = ["UpstreamCollector", "register_upstream_metrics"]


class UpstreamCollector(Collector):
    """``streamproxy_upstream_breaker_open{upstream,region}`` (1 = skipped by selection) and
    ``streamproxy_upstream_consecutive_failures{upstream,region}``."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()  # the clock the session runner reports failures with
        breaker = GaugeMetricFamily(
            "streamproxy_upstream_breaker_open",
            "1 while an upstream's circuit breaker is open (it gets no new connections)",
            labels=["upstream", "region"],
        )
        failures = GaugeMetricFamily(
            "streamproxy_upstream_consecutive_failures",
            "Consecutive connection failures of an upstream (0 after a success)",
            labels=["upstream", "region"],
        )
        for u in self.pool.upstreams:
            breaker.add_metric([u.name, u.region], 0.0 if u.healthy(now) else 1.0)
            failures.add_metric([u.name, u.region], float(u.failures))
        yield breaker
        yield failures


def register_upstream_metrics(registry: CollectorRegistry, pool: UpstreamPool) -> UpstreamCollector:
    c = UpstreamCollector(pool)
    registry.register(c)
    return c
