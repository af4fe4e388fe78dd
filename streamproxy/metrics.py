"""Prometheus metric families (prefix ``streamproxy_``); labels are bounded, never a session id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

#: Transcript latency: from tens of milliseconds to many seconds (replay after an outage).
PROTOCOLS = ("v1", "v2", "twilio")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
#: Time spent inside the proxy: tens of microseconds to a few milliseconds.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    """All families on one registry, so tests and embedded uses do not share global state."""

    def __init__(self, registry: CollectorRegistry | None = None, *, region: str = "") -> None:
        r = self.registry = registry or CollectorRegistry()
        p = "streamproxy_"
        # region: on session families the gateway's ([server] region), on upstream families the
        # upstream's ([upstream.NAME] region), so cross-region failover shows as a region mismatch.
        self.region = region
        self.info = Info(p + "gateway", "This gateway process", registry=r)
        self.info.info({"region": region})
        # protocol: v1 (Live), v2 (Flux), twilio (Twilio Media Streams over a Live session).
        self.sessions_active = Gauge(
            p + "sessions_active", "Client streaming sessions open", ["protocol", "region"], registry=r
        )
        self.sessions_total = Counter(
            p + "sessions_total",
            "Client streaming sessions ended, by outcome",
            ["outcome", "protocol", "region"],
            registry=r,
        )
        self.upstream_connects = Counter(
            p + "upstream_connects_total", "Upstream connections opened", ["upstream", "region"], registry=r
        )
        self.upstream_reconnects = Counter(
            p + "upstream_reconnects_total",
            "Upstream reconnects, by upstream and reason",
            ["upstream", "reason", "region"],
            registry=r,
        )
        self.upstream_failovers = Counter(
            p + "upstream_failovers_total",
            "Reconnects that moved to another upstream",
            ["upstream", "region"],
            registry=r,
        )
        self.audio_buffered = Gauge(
            p + "audio_buffered_seconds", "Unacknowledged audio held in ring buffers", registry=r
        )
        self.audio_replayed = Counter(
            p + "audio_replayed_seconds_total", "Audio replayed to a new upstream", registry=r
        )
        self.audio_dropped = Counter(
            p + "audio_dropped_seconds_total", "Audio dropped by ring-buffer overflow", registry=r
        )
        self.audio_received = Counter(p + "audio_received_seconds_total", "Audio received from clients", registry=r)
        self.duplicates = Counter(
            p + "duplicate_results_suppressed_total", "Final results dropped as already delivered", registry=r
        )
        self.latency = Histogram(
            p + "transcript_latency_seconds",
            "Arrival of the audio's last byte to arrival of its result",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_word = Histogram(
            p + "first_word_latency_seconds",
            "Latency of the first result with words in a session",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            p + "proxy_overhead_seconds",
            "Time a message spends inside the proxy, by direction",
            ["direction"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.fatal = Counter(p + "upstream_fatal_errors_total", "Sessions ended by a fatal upstream error", registry=r)
        self.upstream_invalid = Counter(
            p + "upstream_invalid_messages_total",
            "Upstream messages that were not valid Deepgram (never shown to clients; connection dropped)",
            ["upstream", "kind"],
            registry=r,
        )
        self.end_of_turn = Histogram(
            p + "end_of_turn_latency_seconds",
            "Flux: audio end of a turn's last word to its EndOfTurn at the gateway",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.turns = Counter(p + "turns_total", "Flux turns delivered, by EndOfTurn trigger", ["trigger"], registry=r)
        self.audio_lost = Counter(
            p + "audio_lost_seconds_total",
            "Audio never transcribed because a session had to end before its upstream answered",
            registry=r,
        )
        self.jobs = Counter(p + "jobs_total", "File jobs by mode and status", ["mode", "status"], registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Jobs waiting in the queue", registry=r)
        self.job_duration = Histogram(
            p + "job_duration_seconds",
            "File job processing time",
            ["mode"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        # Hot path (every frame, every result): pre-bound children skip labels()' lock and dict lookup,
        # and their series exist at 0 from the first scrape, so dashboards' rate() works at once.
        self.latency_by_kind = {k: self.latency.labels(k) for k in ("interim", "final")}
        for protocol in PROTOCOLS:  # every series exists at 0 from the first scrape
            self.sessions_active.labels(protocol, region)
        self.overhead_upstream = self.overhead.labels("upstream")
        self.overhead_downstream = self.overhead.labels("downstream")
