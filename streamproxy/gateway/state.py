"""The gateway's process state, built once by ``serve`` and handed to every handler (``GATEWAY``)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..auth.authenticator import Authenticator
from ..config import Config
from ..deepgram.encodings import AudioFormat
from ..metrics import Metrics
from ..session.checkpoint import Checkpoint
from ..session.core import Session, SessionSettings
from ..session.flux import FluxSession
from ..storage.writer import TranscriptWriter
from ..tracing import Tracer
from ..upstream.connection import FLUX_PATH, LISTEN_PATH, client_session
from ..upstream.pool import UpstreamPool
from ..upstream.recovery import Recovery
from .limits import Lease, Limiter
from .registry import SessionRegistry
from .runner import ClientSocket, SessionRunner, clock
from .shared import GATE_S, SharedSessions

log = logging.getLogger("streamproxy.edge")

#: Flux upstreams close idle streams (no KeepAlive in that protocol): pings keep them open.
UPSTREAM_PING_S = 5.0


@dataclass
class Gateway:
    cfg: Config
    pool: UpstreamPool
    auth: Authenticator
    limiter: Limiter
    metrics: Metrics = field(default_factory=Metrics)
    sessions: SessionRegistry = field(default_factory=SessionRegistry)
    draining: bool = False
    tracer: Tracer = field(default_factory=Tracer)
    shared: SharedSessions | None = None  # resumable sessions in the shared Redis (any instance resumes)
    transcripts: TranscriptWriter | None = None  # stored transcripts ([storage]); None = off
    _http: aiohttp.ClientSession | None = None
    _recovery: Recovery | None = None
    _releases: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Computed at scrape time rather than updated on every audio frame.
        self.metrics.audio_buffered.set_function(self.sessions.buffered_seconds)
        if self.shared is not None:
            self.shared.on_release = self._release_to_other
            self.shared.on_lost = self._lost_to_other
            self.shared.held = self.sessions.resumable_ids

    @property
    def http(self) -> aiohttp.ClientSession:
        """One HTTP client per gateway for all upstream connections (closed by ``close``)."""
        if self._http is None or self._http.closed:
            self._http = client_session()
        return self._http

    @property
    def recovery(self) -> Recovery:
        """Reconnect coordination shared by every session of this gateway."""
        if self._recovery is None:
            self._recovery = Recovery(max_connects_per_s=self.cfg.reconnect.max_connects_per_s)
        return self._recovery

    def settings(self, proxy_events: bool, *, resumable: bool = True, flux: bool = False) -> SessionSettings:
        s, r = self.cfg.session, self.cfg.reconnect
        return SessionSettings(
            frame_ms=s.frame_ms,
            buffer_seconds=s.buffer_seconds,
            keepalive_s=s.keepalive_s,
            stall_timeout_s=s.stall_timeout_s,
            close_timeout_s=s.close_timeout_s,
            first_retry_s=r.first_retry_s,
            backoff_base_s=r.base_s,
            backoff_cap_s=r.cap_s,
            max_attempts=r.max_attempts,
            proxy_events=proxy_events,
            resume_grace_s=s.resume_grace_s if resumable else 0.0,
            # Flux has no KeepAlive: an idle client is kept by its pongs, not by messages.
            client_idle_timeout_s=0.0 if flux else s.client_idle_timeout_s,
        )

    def open_session(
        self,
        sid: str,
        fmt: AudioFormat,
        upstream_query: str,
        client: ClientSocket,
        *,
        abort: Callable[[], None] | None = None,
        owner: str,
        lease: Lease,
        proxy_events: bool,
        resumable: bool = True,
        flux: bool = False,
        protocol: str | None = None,
        query: str = "",
        takeover: tuple[list[Checkpoint], int, int | None] | None = None,
    ) -> SessionRunner:
        """Start a session (Live, or Flux with ``flux``); from here on it owns ``lease`` and ends only
        through its runner. ``query``: the request's, kept for a resume on another instance;
        ``takeover`` (checkpoints, last_seq, audio_offset): continue a session another instance
        held (raises ResumeError before anything starts)."""
        shared = self.shared
        settings = self.settings(proxy_events, resumable=resumable, flux=flux)
        if shared is not None and settings.resume_grace_s > 0 and proxy_events:
            settings = dataclasses.replace(settings, checkpoints=True)
        core = (FluxSession if flux else Session)(fmt, settings, now=clock(), session_id=sid)
        first = core.take_over(*takeover, now=clock()) if takeover is not None else []
        runner = SessionRunner(
            core,
            client,
            self.pool,
            upstream_query,
            self.metrics,
            on_done=self._session_done,
            max_message_bytes=self.cfg.session.max_message_bytes,
            max_duration_s=self.cfg.limits.max_session_s,
            client_write_timeout_s=self.cfg.session.client_write_timeout_s,
            recovery=self.recovery,
            listen_path=FLUX_PATH if flux else LISTEN_PATH,
            upstream_ping_s=UPSTREAM_PING_S if flux else None,
            http=self.http,
            tracer=self.tracer,
        )
        runner.client_abort = abort
        runner.owner = owner
        runner.protocol = protocol or ("v2" if flux else "v1")
        runner.span = self.tracer.start("session", session_id=sid, protocol=runner.protocol)
        runner.lease = lease
        if settings.checkpoints and shared is not None:
            runner.on_checkpoint = lambda record: shared.save(sid, record)
            runner.checkpoint_gate_s = GATE_S
            if takeover is None:
                shared.opened(sid, owner=owner, protocol=runner.protocol, query=query)
        if self.transcripts is not None:
            self.transcripts.begin(sid, owner=owner, source=runner.protocol, query=upstream_query)
            runner.on_final = functools.partial(self.transcripts.final, sid)
        self.sessions.add(runner)
        self.metrics.sessions_active.labels(runner.protocol, self.metrics.region).inc()
        runner.apply(first)  # a takeover: "resumed", then the finals the client missed
        runner.start()
        return runner

    def _release_to_other(self, sid: str) -> None:
        """Another instance resumes this session: stop it here (its upstream with it), leaving the
        last checkpoint to the successor."""
        runner = self.sessions.resumable(sid)
        if self.shared is None:
            return
        if runner is not None:
            self.shared.save(sid, runner.core.checkpoint_now())
            runner.shutdown(4000, force=True, outcome="moved")
        self.shared.let_go(sid)

    def _lost_to_other(self, sid: str) -> None:
        """Another instance took this session over (this one was presumed dead): end the copy here."""
        runner = self.sessions.resumable(sid)
        if runner is not None:
            runner.shutdown(4000, force=True, outcome="moved")

    def _session_done(self, runner: SessionRunner) -> None:
        """Accounting once per session, whichever way it ended."""
        core = runner.core
        self.sessions.remove(runner)
        self.metrics.sessions_active.labels(runner.protocol, self.metrics.region).dec()
        outcome = runner.outcome
        if core.idle_closed:
            outcome = "client_idle"  # ended by the gateway: no audio and no message (NET-0001)
        elif core.stats.fatal:
            outcome = "upstream_error"
        elif runner.close_code == 1012:
            outcome = "drained"
        self.metrics.sessions_total.labels(outcome, runner.protocol, self.metrics.region).inc()
        if self.shared is not None and core.s.checkpoints and outcome != "moved":
            self.shared.ended(core.session_id)  # over: no instance can resume it any more
        self.metrics.audio_received.inc(core.fmt.bytes_to_seconds(core.stats.audio_bytes))
        summary = runner.summary()
        log.info(
            "session end",
            extra={"event": "session_end", "outcome": outcome, "region": self.metrics.region, **summary},
        )
        if self.transcripts is not None and outcome != "moved":  # a moved session ends where it went
            self.transcripts.end(
                core.session_id, owner=runner.owner, source=runner.protocol, query=runner.query, outcome=outcome,
                summary=summary,
            )  # fmt: skip
        self.tracer.end(runner.span, error=core.stats.fatal, attributes={"outcome": outcome, **summary})
        lease = runner.lease
        if lease is not None and not lease.released:
            task = asyncio.get_running_loop().create_task(lease.release())
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def drain(self) -> None:
        """Refuse new sessions, let live ones finish for ``drain_timeout_s``, then end each with 1012."""
        self.draining = True
        log.info("draining", extra={"event": "draining", "sessions": len(self.sessions)})
        for r in self.sessions:
            r.announce_draining()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.session.drain_timeout_s
        while len(self.sessions) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        waits = []
        for r in self.sessions:
            r.shutdown(1012)
            waits.append(asyncio.ensure_future(r.finished.wait()))
        if waits:
            await asyncio.wait(waits, timeout=self.cfg.session.close_timeout_s + 1.0)
        for r in self.sessions:  # the client did not take the close in time: end it anyway
            r.shutdown(1012, force=True)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.limiter.aclose()


GATEWAY = web.AppKey("gateway", Gateway)
