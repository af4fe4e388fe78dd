"""A deterministic, in-memory world for the sans-I/O session core.

The client, the upstream (a real ``MarkerRecognizer`` behind Deepgram-shaped JSON) and the clock
are simulated; faults (upstream drops with or without a close frame, failed handshakes, stalls,
outages of a given length), result delays, a client that drops and resumes, and a gateway drain
are scheduled by the caller. No sockets, no sleeps: hypothesis can run thousands of schedules a
minute. ``World.trace`` records what the client's messages alone do not show.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import orjson

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.deepgram.messages import metadata_message, results_message
from streamproxy.deepgram.types import Result
from streamproxy.engine.marker import MarkerRecognizer
from streamproxy.session.core import (
    CloseClient,
    Connect,
    Count,
    Counter,
    DropUpstream,
    SendClient,
    SendUpstream,
    Session,
    SessionSettings,
)
from tests.helpers.marker import Segment


def reference_run(audio: bytes, sr: int, finalize_at: list[int], endpointing_ms: int | None = 300) -> list[dict]:
    """What an uninterrupted upstream produces: fed at once, Finalize at the given byte positions."""
    rec = MarkerRecognizer(sr, endpointing_ms=endpointing_ms)
    msgs: list[dict] = []
    pos = 0
    for f in sorted(finalize_at):
        f = min(f - f % 2, len(audio))
        if f > pos:
            msgs += to_json(rec.feed(audio[pos:f]), sr)
            pos = f
        msgs += to_json(rec.finalize(), sr)
    if pos < len(audio):
        msgs += to_json(rec.feed(audio[pos:]), sr)
    msgs += to_json(rec.close(), sr)
    return msgs


def to_json(events: list, sr: int) -> list[dict]:
    return [results_message(e, request_id="r", model_name="marker") for e in events if isinstance(e, Result)]


@dataclass
class Fault:
    at_step: int
    kind: str  # "close1011", "close1000", "reset", "handshake503", "stall"


@dataclass
class Detach:
    """The client's socket drops at step ``at`` (if the session is still streaming then).

    The last ``lost`` messages sent to it never arrived. ``steps`` later it resumes with the last
    seq it got and ``audio_offset = client_pos - resend`` (``resend`` None: no offset, nothing is
    resent) and sends its audio again from there, as a client that keeps what it sent would.
    """

    at: int
    steps: int = 5
    lost: int = 0
    resend: int | None = None


@dataclass
class Trace:
    """What happened in a run, beyond the client's messages, for the properties to check."""

    close: CloseClient | None = None
    #: Finalize sent by the client: the stream position (bytes) it was sent at.
    finalize_sent: list[int] = field(default_factory=list)
    #: Messages that were sent to the client while its socket was dropping, and never arrived.
    lost: list[dict] = field(default_factory=list)
    last_seq: int = -1  # the seq the client resumed with (-1: no resume)
    audio_offset: int | None = None
    drained_at: int | None = None  # client_pos when the gateway drained the session
    #: Audio dropped by ring overflows: (start byte, end byte, an upstream was connected).
    dropped: list[tuple[int, int, bool]] = field(default_factory=list)
    dropped_counted_s: float = 0.0  # the sum of Count(DROPPED_S) actions


@dataclass
class World:
    audio: bytes = field(repr=False)
    sr: int
    chunks: list[int]
    faults: list[Fault]
    finalize_at: list[int] = field(default_factory=list)
    delay_seed: int = 0
    max_delay_steps: int = 3
    settings: SessionSettings = field(
        # A generous close timeout: the property is "nothing lost once the upstream works again";
        # giving up at close_timeout_s during a long outage is specified behaviour (tested apart).
        default_factory=lambda: SessionSettings(max_attempts=0, stall_timeout_s=5.0, close_timeout_s=600.0)
    )
    endpointing_ms: int | None = 300
    segments: list[Segment] = field(default_factory=list)
    detach: Detach | None = None
    drain_at: int | None = None  # the gateway drains (1012) at this step, if not closing yet
    #: (from, to) in simulated seconds: the upstream is unreachable. The connection open at
    #: ``from`` is reset without a close frame and every handshake until ``to`` is refused (503).
    outages: list[tuple[float, float]] = field(default_factory=list)
    trace: Trace = field(default_factory=Trace, init=False, repr=False)

    def run(self, max_steps: int = 100_000) -> tuple[list[dict], Session]:
        rng = random.Random(self.delay_seed)
        now = 0.0
        core = Session(AudioFormat("linear16", self.sr, 1), self.settings, now=now, session_id="s", rng=rng)
        trace = self.trace = Trace()
        client_msgs: list[dict] = []
        upstream: MarkerRecognizer | None = None
        gen = 0
        inflight: deque[tuple[int, bytes | None]] = deque()  # (deliver at step, message or None=close)
        pending_connect: list[tuple[float, Connect]] = []
        closed_client = False
        stalled = False
        faults = sorted(self.faults, key=lambda f: f.at_step)
        fault_i = 0
        fail_handshakes = 0
        outages_started = 0
        outages = sorted(self.outages)
        step = 0
        pos = 0
        chunk_i = 0
        finalize_at = sorted(self.finalize_at)
        close_sent = False
        detached_until: int | None = None  # the client's socket is down until this step
        client_done = False  # the client sends nothing more (drained)
        dropped_seen = 0

        def handle(actions: list) -> None:
            nonlocal upstream, gen, closed_client, stalled, close_sent, dropped_seen
            for a in actions:
                if isinstance(a, SendUpstream):
                    if upstream is None or stalled:
                        continue
                    if isinstance(a.data, bytes):
                        events = upstream.feed(a.data)
                    elif '"Finalize"' in a.data:
                        events = upstream.finalize()
                    elif '"CloseStream"' in a.data:
                        events = upstream.close()
                        close_sent = True
                    else:
                        events = []
                    for m in to_json(events, self.sr):
                        inflight.append((step + rng.randint(0, self.max_delay_steps), orjson.dumps(m)))
                    if close_sent:
                        meta = metadata_message(request_id="r", duration=0.0, channels=1, model_name="marker")
                        at = step + rng.randint(0, self.max_delay_steps)
                        inflight.append((at, orjson.dumps(meta)))
                        inflight.append((at, None))
                        close_sent = False
                elif isinstance(a, SendClient):
                    if detached_until is None:  # a detached client's runner writes nowhere
                        client_msgs.append(orjson.loads(a.data))
                elif isinstance(a, Connect):
                    pending_connect.append((now + a.delay, a))
                elif isinstance(a, DropUpstream):
                    upstream = None
                    inflight.clear()
                    stalled = False
                elif isinstance(a, CloseClient):
                    closed_client = True
                    trace.close = a
                elif isinstance(a, Count) and a.name is Counter.DROPPED_S:
                    trace.dropped_counted_s += a.value
            if core.stats.dropped_bytes > dropped_seen:  # drops come off the ring's head, in one piece
                delta = core.stats.dropped_bytes - dropped_seen
                dropped_seen = core.stats.dropped_bytes
                trace.dropped.append((core.ring.start - delta, core.ring.start, core.connected))

        def in_outage(t: float) -> bool:
            return any(t0 <= t < t1 for t0, t1 in outages)

        handle(core.start(now))
        while not closed_client and step < max_steps:
            step += 1
            # The client sends in real time: the clock advances by the audio a chunk holds.
            now += self.chunks[chunk_i % len(self.chunks)] / (2 * self.sr) if pos < len(self.audio) else 0.02
            # faults
            while fault_i < len(faults) and faults[fault_i].at_step <= step:
                f = faults[fault_i]
                fault_i += 1
                if f.kind == "handshake503":
                    fail_handshakes += 1
                elif upstream is not None:
                    if f.kind == "stall":
                        stalled = True  # messages stop; audio vanishes
                        inflight.clear()
                    else:
                        upstream = None
                        inflight.clear()
                        code = {"close1011": 1011, "close1000": 1000}.get(f.kind)
                        handle(core.upstream_closed(gen, code, "fault", now))
            while outages_started < len(outages) and outages[outages_started][0] <= now:
                outages_started += 1
                if upstream is not None:
                    upstream = None
                    inflight.clear()
                    handle(core.upstream_closed(gen, None, "outage", now))
            # connections
            for item in sorted(pending_connect, key=lambda x: x[0]):
                at, c = item
                if at <= now:
                    pending_connect.remove(item)
                    if c.gen != core.gen:
                        continue
                    if fail_handshakes or in_outage(now):
                        fail_handshakes -= 1 if fail_handshakes else 0
                        handle(core.upstream_failed(c.gen, 503, "fault", now))
                        continue
                    upstream = MarkerRecognizer(self.sr, endpointing_ms=self.endpointing_ms)
                    stalled = False
                    gen = c.gen
                    inflight.clear()
                    handle(core.upstream_connected(c.gen, "up", now))
            # the client's socket
            d = self.detach
            if d is not None and step == d.at and not core.closing and detached_until is None:
                handle(core.client_detached(now))
                detached_until = step + d.steps
                if d.lost:
                    trace.lost, client_msgs[-d.lost :] = client_msgs[-d.lost :], []
            elif detached_until is not None and step >= detached_until:
                detached_until = None
                seqs = [m["proxy"]["seq"] for m in client_msgs if "seq" in m.get("proxy", {})]
                trace.last_seq = max(seqs, default=0)
                trace.audio_offset = None if d is None or d.resend is None else max(0, core.client_pos - d.resend)
                handle(core.client_resumed(trace.last_seq, trace.audio_offset, now))
                pos = core.client_pos if trace.audio_offset is None else trace.audio_offset
            if self.drain_at is not None and step == self.drain_at and not core.closing and detached_until is None:
                trace.drained_at = core.client_pos
                client_done = True
                handle(core.drain(now, 1012))
            # client audio
            if detached_until is not None or client_done:
                pass
            elif pos < len(self.audio):
                n = self.chunks[chunk_i % len(self.chunks)]
                chunk_i += 1
                end = min(len(self.audio), pos + n)
                while finalize_at and finalize_at[0] <= end:
                    at = max(pos, finalize_at.pop(0))
                    if at > pos:
                        handle(core.client_audio(self.audio[pos:at], now))
                        pos = at
                    trace.finalize_sent.append(at)
                    handle(core.client_text('{"type":"Finalize"}', now))
                if end > pos:
                    handle(core.client_audio(self.audio[pos:end], now))
                    pos = end
            elif not core.closing:
                handle(core.client_text('{"type":"CloseStream"}', now))
            # upstream messages due
            while inflight and inflight[0][0] <= step:
                _, m = inflight.popleft()
                if m is None:
                    upstream = None
                    handle(core.upstream_closed(gen, 1000, "", now))
                else:
                    handle(core.upstream_message(gen, m.decode(), now))  # a text frame
            dl = core.next_deadline()
            if dl is not None and dl <= now:
                handle(core.tick(now))
        return client_msgs, core
