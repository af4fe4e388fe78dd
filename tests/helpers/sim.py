"""A deterministic, in-memory world for the sans-I/O session core.

The client, the upstream (a real ``MarkerRecognizer`` behind Deepgram-shaped JSON) and the clock
are simulated; faults (upstream drops with or without a close frame, failed handshakes, stalls)
and result delays are scheduled by the caller. No sockets, no sleeps: hypothesis can run
thousands of schedules a minute.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import orjson

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.deepgram.messages import metadata_message, results_message
from streamproxy.deepgram.types import Result
from streamproxy.engine.marker import MarkerRecognizer
from streamproxy.session.core import (
    CloseClient,
    Connect,
    Count,
    DropUpstream,
    SendClient,
    SendUpstream,
    Session,
    SessionSettings,
)


def build_audio(segments: list[tuple[str, int, int]], sr: int, seed: int = 0) -> bytes:
    """Segments of (kind, value, ms): word (constant k), sil (zeros), noise (random short runs)."""
    rng = np.random.default_rng(seed)
    parts = []
    for kind, value, ms in segments:
        n = max(1, ms * sr // 1000)
        if kind == "word":
            parts.append(np.full(n, value, dtype="<i2"))
        elif kind == "sil":
            parts.append(np.zeros(n, dtype="<i2"))
        else:  # noise: values alternate every sample, never a 20 ms run
            parts.append(rng.integers(-300, 300, n, dtype=np.int16).astype("<i2") | 1)
    return b"".join(p.tobytes() for p in parts)


def finals_of(messages: list[dict]) -> list[tuple[float, float, tuple[tuple[str, float, float], ...]]]:
    out = []
    for m in messages:
        if m.get("type") == "Results" and m.get("is_final"):
            words = tuple((w["word"], w["start"], w["end"]) for w in m["channel"]["alternatives"][0]["words"])
            out.append((m["start"], m["duration"], words))
    return out


def words_of(messages: list[dict]) -> list[tuple[str, float, float]]:
    return [w for f in finals_of(messages) for w in f[2]]


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
    segments: list[tuple[str, int, int]] = field(default_factory=list)

    def run(self, max_steps: int = 100_000) -> tuple[list[dict], Session]:
        rng = random.Random(self.delay_seed)
        now = 0.0
        core = Session(AudioFormat("linear16", self.sr, 1), self.settings, now=now, session_id="s", rng=rng)
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
        step = 0
        pos = 0
        chunk_i = 0
        finalize_at = sorted(self.finalize_at)
        close_sent = False

        def handle(actions: list) -> None:
            nonlocal upstream, gen, closed_client, stalled, close_sent
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
                    client_msgs.append(orjson.loads(a.data))
                elif isinstance(a, Connect):
                    pending_connect.append((now + a.delay, a))
                elif isinstance(a, DropUpstream):
                    upstream = None
                    inflight.clear()
                    stalled = False
                elif isinstance(a, CloseClient):
                    closed_client = True
                elif isinstance(a, Count):
                    pass

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
            # connections
            for item in sorted(pending_connect, key=lambda x: x[0]):
                at, c = item
                if at <= now:
                    pending_connect.remove(item)
                    if c.gen != core.gen:
                        continue
                    if fail_handshakes:
                        fail_handshakes -= 1
                        handle(core.upstream_failed(c.gen, 503, "fault", now))
                        continue
                    upstream = MarkerRecognizer(self.sr, endpointing_ms=self.endpointing_ms)
                    stalled = False
                    gen = c.gen
                    inflight.clear()
                    handle(core.upstream_connected(c.gen, "up", now))
            # client audio
            if pos < len(self.audio):
                n = self.chunks[chunk_i % len(self.chunks)]
                chunk_i += 1
                end = min(len(self.audio), pos + n)
                while finalize_at and finalize_at[0] <= end:
                    at = max(pos, finalize_at.pop(0))
                    if at > pos:
                        handle(core.client_audio(self.audio[pos:at], now))
                        pos = at
                    handle(core.client_text('{"type":"Finalize"}', now))
                if end > pos:
                    handle(core.client_audio(self.audio[pos:end], now))
                    pos = end
            elif pos >= len(self.audio) and not core.closing:
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
