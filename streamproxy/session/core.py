"""The sans-I/O session core: one client stream, any number of upstream connections over its life.

Nothing here touches a socket, a clock or a task. The asyncio layer feeds it what happened
(``client_audio``, ``upstream_message``, ``upstream_closed`` ... each with ``now``) and executes
the actions it returns (``SendUpstream``, ``SendClient``, ``Connect`` ...). That keeps the hard
guarantees (no word lost, none duplicated, continuous timestamps) testable exhaustively.

Positions are absolute byte offsets into the client's audio. The current upstream connection
started at ``base`` (the watermark when it connected), so an upstream time ``t`` is the client
time ``(round(t * sr) + base_samples) / sr``.
"""

from __future__ import annotations

import enum
import random
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..deepgram.encodings import AudioFormat
from ..deepgram.messages import CLOSE_STREAM, FINALIZE, KEEPALIVE, error_message, metadata_message
from ..deepgram.validate import live_problem
from .checkpoint import Checkpoint, CheckpointError, restart_point
from .outbox import Outbox, OutboxError
from .ring import RingBuffer

#: Upstream close codes that mean "do not retry": the request itself is wrong.
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 4001, 4003, 4008})
#: Handshake statuses that are fatal (bad key, bad parameters).
FATAL_STATUSES = frozenset({400, 401, 402, 403, 404, 405, 413, 426})


@dataclass(frozen=True, slots=True)
class SessionSettings:
    frame_ms: int = 100
    buffer_seconds: float = 60.0
    keepalive_s: float = 4.0
    stall_timeout_s: float = 10.0
    close_timeout_s: float = 10.0
    first_retry_s: float = 0.25
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    max_attempts: int = 10  # 0 = unlimited
    proxy_events: bool = False
    resume_grace_s: float = 0.0  # > 0 (with proxy_events) keeps a dropped client's session resumable
    outbox_max: int = 1024  # delivered messages kept for a resuming client
    client_idle_timeout_s: float = 0.0  # > 0: no audio and no message from the client -> NET-0001, 1011
    checkpoints: bool = False  # a resumable session reports a Checkpoint per delivered final (shared state)


# ----------------------------------------------------------------------------- actions
@dataclass(slots=True)
class SendUpstream:
    data: bytes | str


@dataclass(slots=True)
class SendClient:
    data: str | bytes


@dataclass(slots=True)
class Connect:
    """Open a new upstream connection after ``delay`` seconds; report back with ``gen``."""

    delay: float
    attempt: int
    gen: int
    reason: str


@dataclass(slots=True)
class DropUpstream:
    """Abort the current upstream connection (a stall); its close is then ignored."""

    reason: str


@dataclass(slots=True)
class SaveCheckpoint:
    """Store this record where another instance can take the session over from it; a ``SendClient``
    after it carries the final the record describes, so the caller may hold that until it is stored."""

    record: Checkpoint


@dataclass(slots=True)
class CloseClient:
    code: int
    reason: str


class Latency(enum.Enum):
    """What a latency observation measures (audio's last byte in -> its result out)."""

    INTERIM = "interim"
    FINAL = "final"
    FIRST_WORD = "first_word"
    END_OF_TURN = "end_of_turn"  # Flux: audio end of the turn's last word -> its EndOfTurn


class Counter(enum.Enum):
    RECONNECT = "reconnect"  # label: the reason
    REPLAYED_S = "replayed_s"
    DROPPED_S = "dropped_s"
    DUPLICATE = "duplicate"
    FATAL = "fatal"
    INVALID = "invalid"  # label: what was wrong with an upstream message (bounded values)
    LOST_S = "lost_s"  # audio that could not be transcribed when the session had to end
    TURN = "turn"  # Flux: an EndOfTurn delivered; label: its trigger


@dataclass(slots=True)
class Observe:
    """A latency observation in seconds."""

    kind: Latency
    seconds: float


@dataclass(slots=True)
class Count:
    name: Counter
    value: float = 1.0
    label: str = ""


@dataclass(slots=True)
class Final:
    """A final result on the client's timeline (a Live final with words, a Flux ``EndOfTurn``), also
    while the client is away: what a transcript store keeps. ``msg`` is the message as delivered."""

    msg: dict[str, Any]


Action = SendUpstream | SendClient | Connect | DropUpstream | CloseClient | Observe | Count | SaveCheckpoint | Final


class Phase(enum.Enum):
    """The session's life. Upstream connections come and go inside every phase but CLOSED.

    STREAMING -> DETACHED (client dropped, resumable) -> STREAMING (resumed) or CLOSING;
    STREAMING | DETACHED -> CLOSING (CloseStream, disconnect, drain, grace over) -> CLOSED.
    A fatal upstream error goes straight to CLOSED.
    """

    STREAMING = "streaming"
    DETACHED = "detached"
    CLOSING = "closing"
    CLOSED = "closed"


class ResumeError(Exception):
    """A resume request that cannot be honoured; the message is shown to the client."""


@dataclass(slots=True)
class SessionStats:
    audio_bytes: int = 0
    reconnects: int = 0
    replayed_bytes: int = 0
    dropped_bytes: int = 0
    duplicates: int = 0
    results: int = 0
    latencies: list[float] = field(default_factory=list)
    first_word_latency: float | None = None
    fatal: str | None = None
    invalid: int = 0  # upstream messages that were not valid Deepgram
    lost_bytes: int = 0  # audio never covered by a final when the session ended


def full_jitter_delay(attempt: int, s: SessionSettings, rng: random.Random) -> float:
    """Full-jitter exponential backoff: first retry within ``first_retry_s``, then 1, 2, 4 ... cap."""
    if attempt <= 1:
        ceiling = s.first_retry_s
    else:
        ceiling = min(s.backoff_cap_s, s.backoff_base_s * 2 ** (attempt - 2))
    return rng.uniform(0.0, ceiling)


class Session:
    """State of one client stream; methods take inputs and return the actions to perform.

    Contract: call ``start`` once, then feed every event (``client_*``, ``upstream_*``, ``tick``
    at ``next_deadline()``) with the current monotonic time; each returns the actions to carry
    out, in order. ``phase`` says where the session is in its life.
    """

    def __init__(
        self,
        fmt: AudioFormat,
        settings: SessionSettings,
        *,
        now: float,
        session_id: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.fmt = fmt
        self.s = settings
        self.session_id = session_id
        self.rng = rng or random.Random()
        self.stats = SessionStats()
        self.created = now
        self._actions: list[Action] = []

        self._frame_bytes = fmt.frame_bytes(settings.frame_ms)
        self._frame_s = settings.frame_ms / 1000.0
        self._partial = bytearray()
        self._partial_since: float | None = None
        self.client_pos = 0  # bytes received from the client
        self.framed_pos = 0  # bytes cut into frames (<= client_pos)

        self.ring = RingBuffer(max(self._frame_bytes, int(settings.buffer_seconds * fmt.bytes_per_second)))
        self.ring.start = 0

        # Upstream connection state.
        self.gen = 0
        self.connected = False
        self.upstream_name = ""
        self.attempt = 0
        self.base = 0  # absolute byte position the current upstream's time 0 maps to
        self.sent_pos = 0  # absolute byte position sent to the current upstream
        self._unanswered_since: float | None = None  # first audio sent since the upstream last spoke
        self._last_sent_at = now  # last audio frame sent upstream
        self._controls_pending = 0  # Finalize/CloseStream sent on this connection, not yet answered
        self._stall_strikes = 0  # stalls since the upstream last said anything
        self._control_since: float | None = None
        self._finalize_owed = 0  # client Finalize/CloseStream whose final the client has not had yet
        self._last_activity = now  # last client audio or keepalive sent upstream
        self._last_client_input = now  # last audio or message from the client (idle timeout)
        self._idle_closed = False

        # Delivery state (client timeline, in samples).
        self.delivered_end: dict[int, int] = {}  # per channel: end of last delivered final
        self._interim_end: dict[int, int] = {}
        self._speech_started = -1
        self._utterance_end = -1
        self._arrivals: deque[tuple[int, float]] = deque()  # (client_pos after chunk, arrival time)
        # Resumption: what was delivered (by seq), and the state of a dropped client.
        self.outbox = Outbox(settings.outbox_max, keep=self.resumable)
        self.phase = Phase.STREAMING
        self._detach_deadline: float | None = None
        self._resume_pos: int | None = None  # stream offset of the next byte from a resumed client
        # Shared state: the acknowledgement (bytes) and the finals whose checkpoints are due.
        self.ack_pos = 0
        self._last_final_seq = 0
        self._ck_due: list[tuple[int, Checkpoint]] = []  # (index in _actions, record)
        self._ck_state_due = False  # state changed without a final (an accepted Configure)

        # Closing.
        self.client_gone = False  # nothing more can be sent to the client
        self.close_code = 1000
        self._close_deadline: float | None = None
        self._close_started: float | None = None
        self._metadata: dict[str, Any] | None = None
        self._close_answered = False  # this connection delivered CloseStream's trailing results
        self._last_failure = ""  # why the latest upstream connection failed
        self._held_error: dict[str, Any] | None = None

        # Mid-stream Configure: serialised (one unanswered at a time), answered to the client once,
        # and the latest accepted one re-applied to every replacement before replayed audio.
        self._configure_queue: deque[str] = deque()
        self._configure_inflight: tuple[str, bool] | None = None  # (message, sent for the client)
        self._configure_latest: str | None = None

    # ------------------------------------------------------------------ protocol hooks (v1: Live)
    #: Sent upstream while the client is idle; None: the protocol has none (Flux).
    KEEPALIVE_MESSAGE: str | None = KEEPALIVE
    #: Client message types, for the error a client gets for anything else.
    CLIENT_TYPES: tuple[str, ...] = ("KeepAlive", "Finalize", "CloseStream", "Configure")

    def _problem(self, msg: Any) -> str | None:
        """Why an upstream message is not valid in this protocol (None: it is)."""
        return live_problem(msg)

    def _client_message(self, kind: str | None, text: str, now: float) -> bool:
        """Handle a client control message; False: not one of this protocol's."""
        if kind == "KeepAlive":
            if self.connected and not self.closing:
                self._actions.append(SendUpstream(KEEPALIVE))
        elif kind == "Finalize":
            if not self.closing:
                self._finalize_owed += 1
                self._control_at_position(FINALIZE, now, answered=True)
        elif kind == "CloseStream":
            self._begin_close(now)
        elif kind == "Configure":
            self._client_configure(text)
        else:
            return False
        return True

    def _control_at_position(self, message: str, now: float, *, answered: bool) -> None:
        """A client control that belongs between two audio bytes (Finalize, ForceEndTurn): kept in
        the ring at that position, so a replay sends it where the client did. ``answered``: the
        upstream owes an answer to it (an unanswered one is a stall)."""
        self._flush_partial(now)
        self.ring.append_control(self.framed_pos, message)
        if self.connected:
            if answered:
                self._send_control(message, now)
            else:
                self._actions.append(SendUpstream(message))

    def _client_error(self, code: str, description: str, short: str) -> None:
        """A client message this protocol does not take (the stream goes on)."""
        self._emit_client(error_message(code, description, "SchemaError", message=short))

    def _emit_error(self, code: str, description: str, variant: str) -> None:
        """The ``Error`` that precedes a close."""
        self._emit_client(error_message(code, description, variant))

    def _send_close(self, now: float) -> None:
        """What ends the stream upstream once the client closed (v1: CloseStream)."""
        self._send_control(CLOSE_STREAM, now)

    def _final_messages(self) -> None:
        """Delivered at a clean end (v1: Metadata)."""
        meta = self._metadata or metadata_message(
            request_id=self.session_id,
            duration=0.0,
            channels=self.fmt.channels,
            model_name=None,
            sha256="",
            created="",
        )
        meta["duration"] = round(self.fmt.bytes_to_seconds(self.client_pos), 6)
        meta["request_id"] = self.session_id  # the client's id (dg-request-id), whichever upstream(s) served it
        self._deliver(meta)

    def _on_new_connection(self, now: float) -> None:
        """A replacement connection is about to get the replay: reset per-connection state."""

    def _on_message(self, kind: str, msg: dict[str, Any], raw: str, now: float) -> None:
        if kind == "Results":
            self._on_results(msg, raw, now)
        elif kind == "Metadata":
            if self.closing:
                self._metadata = msg
                self._close_answered = True  # Metadata follows the trailing results of CloseStream
        elif kind == "SpeechStarted":
            t = self._rebase(msg.get("timestamp", 0.0))
            if t > self._speech_started:
                self._speech_started = t
                msg["timestamp"] = t / self._sr
                self._deliver(msg)
        elif kind == "UtteranceEnd":
            t = self._rebase(msg.get("last_word_end", 0.0))
            if t > self._utterance_end:
                self._utterance_end = t
                msg["last_word_end"] = t / self._sr
                self._deliver(msg)
        elif kind in ("ConfigureSuccess", "ConfigureFailure"):
            self._on_configure_answer(msg)
        elif kind == "Error":
            self._held_error = msg  # fatal if the connection closes now; else shown (non-fatal)
        else:
            self._deliver(msg)

    # ------------------------------------------------------------------ Configure (both protocols)
    def _client_configure(self, text: str) -> None:
        if self.closing:
            return
        self._configure_queue.append(text)
        self._pump_configure()

    def _pump_configure(self) -> None:
        if self.connected and self._configure_inflight is None and self._configure_queue:
            text = self._configure_queue.popleft()
            self._configure_inflight = (text, True)
            self._actions.append(SendUpstream(text))

    def _reapply_configure(self) -> None:
        """On a new connection, before any replayed audio: what the client had configured."""
        if self._configure_inflight is not None and self._configure_inflight[1]:
            self._configure_queue.appendleft(self._configure_inflight[0])  # unanswered: send again
        self._configure_inflight = None
        if self._configure_latest is not None:
            self._configure_inflight = (self._configure_latest, False)
            self._actions.append(SendUpstream(self._configure_latest))

    def _on_configure_answer(self, msg: dict[str, Any]) -> None:
        inflight, self._configure_inflight = self._configure_inflight, None
        if inflight is not None and inflight[1]:  # the client's: it gets the answer, once
            if msg.get("type") == "ConfigureSuccess":
                self._configure_latest = inflight[0]
                self._ck_state_due = True
            self._deliver(msg)
        self._pump_configure()  # answers to re-applied (or unsolicited) Configures stay here

    def start(self, now: float) -> list[Action]:
        """The first actions: connect upstream at once."""
        self._connect(now, delay=0.0, reason="initial")
        return self._take()

    # ------------------------------------------------------------------ helpers
    def _take(self) -> list[Action]:
        out, self._actions = self._actions, []
        if self._ck_due or self._ck_state_due:
            self._insert_checkpoints(out)
        return out

    def _insert_checkpoints(self, out: list[Action]) -> None:
        """Each final's record goes just before the ``SendClient`` that carries it; protocol state is
        taken now, after the message was fully handled."""
        extra, cfg = self._checkpoint_extra(), self._configure_latest
        for index, rec in reversed(self._ck_due):
            out.insert(index, SaveCheckpoint(Checkpoint(
                rec.seq, rec.before, rec.ack, rec.ends, rec.prev, rec.text, cfg, extra,
            )))  # fmt: skip
        if self._ck_state_due and not self._ck_due and not self.done:
            out.append(SaveCheckpoint(self.checkpoint_now()))
        self._ck_due.clear()
        self._ck_state_due = False

    def checkpoint_now(self) -> Checkpoint:
        """The state alone (no message): what a replacement needs if this instance lets go now."""
        return Checkpoint(
            self.outbox.seq, self.ack_pos, self.ack_pos, dict(self.delivered_end), self._last_final_seq,
            None, self._configure_latest, self._checkpoint_extra(),
        )  # fmt: skip

    def _checkpoint_extra(self) -> dict[str, Any]:
        """Protocol state a replacement needs (v1: what SpeechStarted/UtteranceEnd have reached)."""
        return {"speech_started": self._speech_started, "utterance_end": self._utterance_end}

    def _restore_extra(self, extra: dict[str, Any], position_samples: int) -> None:
        self._speech_started = max(int(extra.get("speech_started", -1)), position_samples)
        self._utterance_end = max(int(extra.get("utterance_end", -1)), position_samples)

    @property
    def closing(self) -> bool:
        """CloseStream (or its equivalent) was received: no more audio is taken."""
        return self.phase in (Phase.CLOSING, Phase.CLOSED)

    @property
    def idle_closed(self) -> bool:
        """The session was ended for client idleness (NET-0001)."""
        return self._idle_closed

    @property
    def detached(self) -> bool:
        return self.phase is Phase.DETACHED

    @property
    def done(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def resumable(self) -> bool:
        return self.s.proxy_events and self.s.resume_grace_s > 0

    def _emit_client(self, msg: dict[str, Any] | bytes | str) -> None:
        if self.client_gone or self.detached:
            return
        if isinstance(msg, dict):
            msg = orjson.dumps(msg).decode()
        self._actions.append(SendClient(msg))

    def _status(self, state: str, **extra: Any) -> None:
        if not self.s.proxy_events:
            return
        msg: dict[str, Any] = {
            "type": "ProxyStatus",
            "state": state,
            "attempt": self.attempt,
            "buffered_s": round(self.fmt.bytes_to_seconds(self.ring.nbytes), 3),
            "upstream": self.upstream_name,
            "session_id": self.session_id,
        }
        msg.update(extra)
        self._emit_client(msg)

    def _connect(self, now: float, *, delay: float, reason: str) -> None:
        self.gen += 1
        self.connected = False
        self._unanswered_since = None
        self._control_since = None
        self._controls_pending = 0
        self._close_answered = False
        self._held_error = None  # an upstream Error: the close that follows it decides
        self._actions.append(Connect(delay, self.attempt, self.gen, reason))

    @property
    def _sr(self) -> int:
        return self.fmt.sample_rate

    # ------------------------------------------------------------------ client side
    def client_audio(self, data: bytes, now: float) -> list[Action]:
        """Audio from the client: re-frame, buffer, forward; empty data is ignored (not a close)."""
        if self.closing or not data:
            return self._take()
        if self._resume_pos is not None:  # a resumed client resends audio we may already have
            skip = self.client_pos - self._resume_pos
            if skip >= len(data):
                self._resume_pos += len(data)
                return self._take()
            data = data[skip:] if skip > 0 else data
            self._resume_pos = None
        self.client_pos += len(data)
        self.stats.audio_bytes += len(data)
        self._last_client_input = now
        if self.fmt.raw:  # container audio has no byte->time mapping, so no latency to measure
            self._arrivals.append((self.client_pos, now))
        self._last_activity = now
        fb = self._frame_bytes
        if not self._partial and len(data) == fb:
            self._frame(data, now)
        else:
            if not self._partial:
                self._partial_since = now
            self._partial += data
            while len(self._partial) >= fb:
                self._frame(bytes(self._partial[:fb]), now)
                del self._partial[:fb]
            if not self._partial:
                self._partial_since = None
        return self._take()

    def _flush_partial(self, now: float) -> None:
        n = self.fmt.align(len(self._partial))
        if n:
            self._frame(bytes(self._partial[:n]), now)
            del self._partial[:n]
        self._partial_since = now if self._partial else None

    def _frame(self, frame: bytes, now: float) -> None:
        pos = self.framed_pos
        self.framed_pos += len(frame)
        dropped = self.ring.append_audio(pos, frame, align=self.fmt.sample_bytes)
        if dropped:
            self._on_overflow(dropped)
        if self.connected:
            self._actions.append(SendUpstream(frame))
            self.sent_pos = self.framed_pos
            # After a pause in the audio the upstream may rightly have been quiet: the window in
            # which silence from it is a stall starts again with the audio.
            if self._unanswered_since is None or now - self._last_sent_at > self._stall_gap:
                self._unanswered_since = now
            self._last_sent_at = now

    def _on_overflow(self, dropped: int) -> None:
        self.stats.dropped_bytes += dropped
        self._drop_arrivals(self.ring.start)  # stamps of dropped audio go with it: bounded like the ring
        secs = self.fmt.bytes_to_seconds(dropped)
        self._actions.append(Count(Counter.DROPPED_S, secs))
        self._status("degraded", dropped_s=round(self.fmt.bytes_to_seconds(self.stats.dropped_bytes), 3))
        if self.connected and self.sent_pos < self.ring.start:
            # Cannot happen while connected (sent audio is always in the ring) - kept as a guard.
            self.sent_pos = self.ring.start

    def client_text(self, text: str, now: float) -> list[Action]:
        """A text frame from the client: KeepAlive, Finalize, CloseStream; others get an Error."""
        try:
            msg = orjson.loads(text)
            kind = msg.get("type") if isinstance(msg, dict) else None
        except orjson.JSONDecodeError:
            kind = None
            msg = None
        if kind in self.CLIENT_TYPES:
            self._last_client_input = now
        if not self._client_message(kind if isinstance(kind, str) else None, text, now):
            what = "not valid JSON" if msg is None else f"unsupported message type {kind!r}"
            expected = ", ".join(self.CLIENT_TYPES)
            self._client_error("INVALID_MESSAGE", f"Text frame {what}; expected {expected}.", f"Text frame {what}.")
        return self._take()

    def client_closed(self, now: float) -> list[Action]:
        """The client socket went away without CloseStream: finish upstream cleanly anyway."""
        self.client_gone = True
        self._begin_close(now)
        return self._take()

    def drain(self, now: float, code: int = 1012) -> list[Action]:
        """Finalise now (trailing results delivered), then close with ``code`` (1012: restart)."""
        self.close_code = code
        self._status("draining")
        self._begin_close(now)
        return self._take()

    def announce_draining(self) -> list[Action]:
        self._status("draining")
        return self._take()

    def abort(self, code: int, reason: str) -> list[Action]:
        """End now, whatever is still owed (the client would not take the close in time)."""
        self._finish(code, reason)
        return self._take()

    def _begin_close(self, now: float) -> None:
        if self.closing:
            return
        self.phase = Phase.CLOSING
        self._finalize_owed += 1
        self._flush_partial(now)
        if self._partial:  # a dangling odd byte cannot be sent as audio
            self._partial.clear()
            self._partial_since = None
        self._close_deadline = now + self.s.close_timeout_s
        self._close_started = now
        if not self.connected and not self.ring.nbytes:
            self._finish(self.close_code, "stream closed")  # nothing left to transcribe
        elif self.connected:
            self._send_close(now)

    def _finish(self, code: int, reason: str) -> None:
        if self.done:
            return
        self.phase = Phase.CLOSED
        if code in (1000, 1012) and not self.stats.fatal:
            self._final_messages()
        if self._idle_closed and not self.stats.fatal:
            self._emit_error(
                "NET-0001",
                "No audio data or text message was received within the timeout window "
                f"({self.s.client_idle_timeout_s:g} s); send KeepAlive while idle.",
                "NetworkError",
            )
        if self.connected:
            self._actions.append(DropUpstream("session finished"))
            self.connected = False
        self._actions.append(CloseClient(code, reason))

    # ------------------------------------------------------------------ upstream side
    def upstream_connected(self, gen: int, name: str, now: float) -> list[Action]:
        """A new upstream connection is open: replay from the watermark, then go live."""
        if gen != self.gen or self.done:
            return self._take()
        self.connected = True
        self.upstream_name = name
        self.base = self.ring.start if self.fmt.raw else 0
        # Raw audio replays from the watermark; container audio was never released, so this
        # replays it from byte 0 with its header (degraded once the buffer has overflowed).
        replay = list(self.ring.replay())
        replay_bytes = sum(len(i.data) for i in replay if i.data is not None)
        if self.attempt or self.stats.reconnects:
            self._status("replaying", replay_s=round(self.fmt.bytes_to_seconds(replay_bytes), 3))
        self._controls_pending = 0
        self._control_since = None
        self._on_new_connection(now)
        self._reapply_configure()
        self._pump_configure()  # a Configure the client sent before this connection opened
        for item in replay:
            if item.data is not None:
                self._actions.append(SendUpstream(item.data))
            else:
                self._send_control(item.control or "", now)
        self.sent_pos = self.framed_pos
        if replay_bytes and self.stats.reconnects:
            self.stats.replayed_bytes += replay_bytes
            self._actions.append(Count(Counter.REPLAYED_S, self.fmt.bytes_to_seconds(replay_bytes)))
        if replay:
            self._unanswered_since = now
        self._last_activity = now
        if self.closing:
            self._send_close(now)
            if self._close_deadline is not None:  # each replacement gets the whole close wait
                self._close_deadline = max(self._close_deadline, now + self.s.close_timeout_s)
        self._status("connected")
        return self._take()

    def _send_control(self, message: str, now: float) -> None:
        """Finalize and CloseStream must be answered; an unanswered one is a stall too."""
        self._actions.append(SendUpstream(message))
        self._controls_pending += 1
        if self._control_since is None:
            self._control_since = now

    def upstream_failed(self, gen: int, status: int | None, reason: str, now: float) -> list[Action]:
        """The handshake failed (``status`` is the HTTP status, None for a network error)."""
        if gen != self.gen or self.done:
            return self._take()
        if status is not None and status in FATAL_STATUSES:
            self._fatal(f"upstream rejected the connection (HTTP {status}): {reason}", code=1008)
            return self._take()
        self._retry(now, f"handshake {status or 'error'}")
        return self._take()

    def upstream_closed(self, gen: int, code: int | None, reason: str, now: float) -> list[Action]:
        """The upstream connection ended (``code`` None: reset without a close frame)."""
        if gen != self.gen or self.done:
            return self._take()
        self.connected = False
        if self.closing and code == 1000 and (self._close_answered or not self.ring.nbytes):
            self._finish(self.close_code, "stream closed")
            return self._take()
        if code in FATAL_CLOSE_CODES:
            self._fatal(f"upstream closed the stream ({code}): {reason}", code=code or 1011)
            return self._take()
        self._retry(now, "closed" if code else "reset")
        return self._take()

    def _retry(self, now: float, reason: str) -> None:
        self._last_failure = reason
        self.connected = False
        self.attempt += 1
        self.stats.reconnects += 1
        self._actions.append(Count(Counter.RECONNECT, 1, reason))
        if self.s.max_attempts and self.attempt > self.s.max_attempts and (self.client_gone or self.detached):
            # While the client is there the session never gives up (it is told, and the ring keeps
            # buffer_seconds); without one, an endless outage must end somewhere.
            self._fatal(f"upstream unavailable after {self.attempt - 1} attempts ({reason})", code=1011)
            return
        delay = 0.0 if reason == "invalid" else full_jitter_delay(self.attempt, self.s, self.rng)
        self._status("reconnecting", reason=reason, retry_in_s=round(delay, 3))
        self._connect(now, delay=delay, reason=reason)

    def _fatal(self, description: str, *, code: int) -> None:
        self.stats.fatal = description
        self._record_loss()
        self._actions.append(Count(Counter.FATAL, 1))
        self._emit_error("UPSTREAM_ERROR", description, "UpstreamError")
        self._finish(code if 1000 <= code < 5000 and code not in (1005, 1006) else 1011, "upstream error")

    def upstream_invalid(self, gen: int, problem: str, now: float) -> list[Action]:
        """The upstream sent something that is not valid Deepgram (or handling it failed): never
        shown to the client; the connection is dropped and the ring replayed elsewhere at once."""
        if gen != self.gen or self.done:
            return self._take()
        self.stats.invalid += 1
        self._actions.append(Count(Counter.INVALID, 1, problem))
        self._actions.append(DropUpstream("invalid message"))
        self._retry(now, "invalid")
        return self._take()

    def _record_loss(self) -> None:
        if self.ring.nbytes and not self.stats.lost_bytes:
            self.stats.lost_bytes = self.ring.nbytes  # container audio: an upper bound
            if self.fmt.raw:
                self._actions.append(Count(Counter.LOST_S, self.fmt.bytes_to_seconds(self.ring.nbytes)))

    def upstream_message(self, gen: int, text: str | bytes, now: float) -> list[Action]:
        """A message from the upstream: rebase, de-duplicate, acknowledge, deliver."""
        if gen != self.gen or self.done:
            return self._take()
        if isinstance(text, bytes | bytearray | memoryview) and not isinstance(text, str):
            return self.upstream_invalid(gen, "binary", now)
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self.upstream_invalid(gen, "not_json", now)
        problem = self._problem(msg)
        if problem is not None:
            return self.upstream_invalid(gen, problem, now)
        self._unanswered_since = None
        self._stall_strikes = 0
        if self.attempt:
            self.attempt = 0  # the connection works: the next failure starts the backoff again
        if self._held_error is not None:  # the stream went on after it: a non-fatal Error
            held, self._held_error = self._held_error, None
            self._deliver(held)
        self._on_message(msg["type"], msg, text, now)
        return self._take()

    def _rebase(self, t: Any) -> int:
        """Upstream seconds -> client samples."""
        return round(float(t) * self._sr) + self.fmt.bytes_to_samples(self.base)

    def _on_results(self, msg: dict[str, Any], raw: str | bytes, now: float) -> None:
        sr = self._sr
        ch_index = msg.get("channel_index") or [0, 1]
        ch = int(ch_index[0]) if ch_index else 0
        start = self._rebase(msg.get("start", 0.0))
        # The end from integer samples: start + duration may not round-trip exactly in floats.
        end = start + round(float(msg.get("duration", 0.0)) * sr)
        is_final = bool(msg.get("is_final"))
        delivered = self.delivered_end.get(ch, -1)
        alts = (msg.get("channel") or {}).get("alternatives") or []
        changed = self.base != 0
        filtered = False
        nwords = 0
        for alt in alts:
            words = alt.get("words") or []
            kept = []
            for w in words:
                ws = self._rebase(w.get("start", 0.0))
                we = self._rebase(w.get("end", 0.0))
                if we <= delivered:
                    filtered = True
                    continue
                if changed:
                    w["start"] = ws / sr
                    w["end"] = we / sr
                kept.append(w)
            if filtered:
                alt["words"] = kept
                alt["transcript"] = " ".join(str(w.get("punctuated_word") or w.get("word", "")) for w in kept)
            nwords = max(nwords, len(kept))
        if is_final and msg.get("from_finalize") and self._controls_pending:
            self._controls_pending -= 1
            self._control_since = now if self._controls_pending else None
        if is_final:
            from_finalize = bool(msg.get("from_finalize"))
            if end <= delivered and not (from_finalize and self._finalize_owed):
                # Already delivered; a re-sent Finalize/CloseStream's answer after a reconnect
                # is a duplicate too once the client has had one for each it sent.
                self.stats.duplicates += 1
                self._actions.append(Count(Counter.DUPLICATE))
                return
            if start < delivered:
                start = delivered
                changed = True
            if from_finalize and self._finalize_owed:
                self._finalize_owed -= 1
            self.delivered_end[ch] = max(delivered, end)
            before = self.ack_pos
            self._ack(answered=1 if from_finalize else 0)
        else:
            floor = max(delivered, self._interim_end.get(ch, -1))
            if end <= floor:
                return  # interim results never go backwards
            self._interim_end[ch] = end
        if changed or filtered:
            msg["start"] = start / sr
            msg["duration"] = (end - start) / sr
        latency = self._latency(self.fmt.samples_to_bytes(end), now) if self.fmt.raw else None
        if latency is not None:
            self.stats.latencies.append(latency)
            self._actions.append(Observe(Latency.FINAL if is_final else Latency.INTERIM, latency))
            if nwords and self.stats.first_word_latency is None:
                self.stats.first_word_latency = latency
                self._actions.append(Observe(Latency.FIRST_WORD, latency))
        self.stats.results += 1
        if is_final and nwords:
            self._actions.append(Final(msg))
        if self.s.proxy_events:
            lat_ms = None if latency is None else round(latency * 1000, 3)
            self._emit_seq(msg, final_before=before if is_final else None, latency_ms=lat_ms)
        elif changed or filtered:
            self._emit_client(msg)
        else:
            self._emit_client(raw if isinstance(raw, str) else raw.decode())

    def _deliver(self, msg: dict[str, Any]) -> None:
        if self.s.proxy_events:
            self._emit_seq(msg)
        else:
            self._emit_client(msg)

    def _emit_seq(self, msg: dict[str, Any], *, final_before: int | None = None, **proxy: Any) -> None:
        """Number a message for the client and keep it for a resume; a final (``final_before``: the
        acknowledgement before it) also gets its checkpoint, placed before it."""
        seq = self.outbox.number()
        msg["proxy"] = {"seq": seq, **proxy}
        text = orjson.dumps(msg).decode()
        self.outbox.hold(seq, text)
        if final_before is not None and self.s.checkpoints and self.resumable:
            rec = Checkpoint(seq, final_before, self.ack_pos, dict(self.delivered_end), self._last_final_seq, text)
            self._ck_due.append((len(self._actions), rec))
            self._last_final_seq = seq
        self._emit_client(text)

    # ------------------------------------------------------------------ resumption
    def client_detached(self, now: float) -> list[Action]:
        """The socket dropped without CloseStream: hold the session (upstream alive) for the grace window."""
        if not self.resumable or self.closing or self.done:
            return self.client_closed(now)
        self.phase = Phase.DETACHED
        self._detach_deadline = now + self.s.resume_grace_s
        return self._take()

    def client_resumed(self, last_seq: int, audio_offset: int | None, now: float) -> list[Action]:
        """A client reattached: re-send what it missed; audio it resends from ``audio_offset`` is de-duplicated."""
        if self.done or self.closing:
            raise ResumeError("session already closed")
        try:
            self.outbox.check(last_seq)
        except OutboxError as e:
            raise ResumeError(str(e)) from None
        if audio_offset is not None and audio_offset > self.client_pos:
            raise ResumeError(
                f"audio_offset {audio_offset} is beyond the audio received ({self.client_pos} bytes): "
                "audio would be lost"
            )
        self.phase = Phase.STREAMING
        self._last_client_input = now
        self._detach_deadline = None
        self._resume_pos = audio_offset if audio_offset is not None else self.client_pos
        self._status("resumed", audio_bytes_received=self.client_pos, last_seq=self.outbox.seq)
        self._actions.extend(SendClient(text) for text in self.outbox.after(last_seq))
        return self._take()

    def take_over(self, records: list[Checkpoint], last_seq: int, audio_offset: int | None, now: float) -> list[Action]:
        """Continue, on this instance, a session another one held, from its checkpoints (oldest
        first): the client resends from the end of the last final it has, gets the finals it
        missed again, and ``seq`` goes on. Call before ``start``; raises ResumeError."""
        try:
            point = restart_point(records, last_seq)
        except CheckpointError as e:
            raise ResumeError(str(e)) from None
        pos = point.position
        if audio_offset is not None and audio_offset > pos:
            raise ResumeError(
                f"audio_offset {audio_offset} is beyond the audio received ({pos} bytes): audio would be lost"
            )
        latest = point.latest
        self.client_pos = self.framed_pos = self.sent_pos = self.ack_pos = pos
        self.ring.start = pos
        self.stats.audio_bytes = 0
        self.outbox.seq = point.seq
        if latest is not None:
            self.delivered_end = dict(latest.ends)
            self._interim_end = dict(latest.ends)
            self._last_final_seq = latest.seq if latest.text is not None else latest.prev
            self._configure_latest = latest.configure
            self._restore_extra(latest.extra, self.fmt.bytes_to_samples(pos))
        held = [r for r in records if r.text is not None and r.seq > last_seq]
        for r in held:
            self.outbox.hold(r.seq, r.text or "")
        self._last_client_input = now
        self._resume_pos = audio_offset if audio_offset is not None else pos
        self._status("resumed", audio_bytes_received=pos, last_seq=self.outbox.seq)
        self._actions.extend(SendClient(text) for text in point.missed)
        return self._take()

    def _ack(self, answered: int) -> None:
        """The watermark is the minimum over channels of the last final's end."""
        if not self.fmt.raw:
            return  # container audio is replayed from its start; nothing is released
        ends = self.delivered_end
        if len(ends) < self.fmt.channels:
            self.ring.release(self.ring.start, answered)
            return
        self._release_to(self.fmt.samples_to_bytes(min(ends.values())), answered)

    def _release_to(self, ack: int, answered: int) -> None:
        """Move the watermark to ``ack`` (bytes): the ring and the arrival stamps before it go."""
        ack = min(ack, self.framed_pos)
        self.ack_pos = max(self.ack_pos, ack)
        self.ring.release(ack, answered)
        self._drop_arrivals(ack)

    def _drop_arrivals(self, pos: int) -> None:
        arrivals = self._arrivals
        while len(arrivals) > 1 and arrivals[0][0] <= pos:
            arrivals.popleft()

    def _latency(self, end_pos: int, now: float) -> float | None:
        """Seconds since the arrival of the client chunk holding the result's last byte."""
        arrivals = self._arrivals
        if not arrivals or end_pos <= 0:
            return None
        # arrivals is sorted by position; find the first chunk ending at or after end_pos.
        i = bisect_left(arrivals, end_pos, key=lambda a: a[0])
        if i >= len(arrivals):
            return None
        return max(0.0, now - arrivals[i][1])

    # ------------------------------------------------------------------ time
    def next_deadline(self) -> float | None:
        """The earliest time ``tick`` has something to do, or None."""
        cands = []
        if self._partial_since is not None:
            cands.append(self._partial_since + self._frame_s)
        if self.KEEPALIVE_MESSAGE and self.connected and not self.closing:
            cands.append(self._last_activity + self.s.keepalive_s)
        stall_since = self._stall_since()
        if self.connected and stall_since is not None:
            cands.append(stall_since + self._stall_timeout)
        if self.s.client_idle_timeout_s > 0 and self.phase is Phase.STREAMING:
            cands.append(self._last_client_input + self.s.client_idle_timeout_s)
        if self._close_deadline is not None and not self.done:
            cands.append(self._close_deadline)
        if self._detach_deadline is not None:
            cands.append(self._detach_deadline)
        return min(cands) if cands else None

    @property
    def _stall_timeout(self) -> float:
        """Doubles after each stall without a message in between (up to 8x).

        A recognizer that legitimately says nothing for long (one long utterance without interim
        results) would otherwise be "stalled" again after every replay and never get through.
        """
        return self.s.stall_timeout_s * 2 ** min(self._stall_strikes, 3)

    def _stall_since(self) -> float | None:
        a, b = self._unanswered_since, self._control_since
        if a is None:
            return b
        return a if b is None else min(a, b)

    def tick(self, now: float) -> list[Action]:
        if self.done:
            return self._take()
        if self._partial_since is not None and now >= self._partial_since + self._frame_s:
            self._flush_partial(now)
        keepalive = self.KEEPALIVE_MESSAGE
        if keepalive and self.connected and not self.closing and now >= self._last_activity + self.s.keepalive_s:
            self._actions.append(SendUpstream(keepalive))
            self._last_activity = now
        if self.connected and self._stalled(now):
            self._stall_strikes += 1
            self._actions.append(DropUpstream("stall"))
            self._retry(now, "stall")
        idle = self.s.client_idle_timeout_s
        if idle > 0 and self.phase is Phase.STREAMING and now >= self._last_client_input + idle:
            self._idle_closed = True
            self.close_code = 1011
            self._begin_close(now)  # trailing results of what was received, then the Error
        if self._detach_deadline is not None and now >= self._detach_deadline:
            self._detach_deadline = None
            self.phase = Phase.STREAMING  # the close below takes it on to CLOSING
            self.client_gone = True
            self._begin_close(now)  # grace window over: finish the upstream side cleanly
        if self._close_deadline is not None and now >= self._close_deadline and not self.done:
            self._close_due(now)
        return self._take()

    def _stalled(self, now: float) -> bool:
        """No message while an answer is owed: an unanswered Finalize/CloseStream, or audio that
        kept flowing for the whole stall timeout. A client that only sends KeepAlive owes nothing."""
        timeout = self._stall_timeout
        if self._control_since is not None and now >= self._control_since + timeout:
            return True
        since = self._unanswered_since
        if since is None or now < since + timeout:
            return False
        if now - self._last_sent_at > self._stall_gap:
            self._unanswered_since = None  # the audio stopped: nothing more is owed for it
            return False
        return True

    @property
    def _stall_gap(self) -> float:
        """A pause in the audio longer than this ends the window in which upstream silence is a stall."""
        return self.s.stall_timeout_s / 2

    def _close_due(self, now: float) -> None:
        """The close wait is over. With audio still unacknowledged and the client waiting, keep going
        (reconnects continue) up to ``buffer_seconds`` more; after that, say what was lost."""
        # Raw audio: what the ring holds is unacknowledged. Container audio is never released, so
        # there only an unanswered CloseStream says that its end was not transcribed.
        owed = self.ring.nbytes if self.fmt.raw or not self._close_answered else 0
        if not owed:
            self._finish(self.close_code, "close timeout")
            return
        started = self._close_started if self._close_started is not None else now
        if not self.client_gone and now < started + self.s.close_timeout_s + self.s.buffer_seconds:
            self._close_deadline = now + self.s.close_timeout_s
            return
        self._record_loss()
        why = (
            f"the upstream did not answer in time (last failure: {self._last_failure})"
            if self._last_failure
            else ("the upstream did not answer in time")
        )
        if self.fmt.raw:
            lost = self.fmt.bytes_to_seconds(self.stats.lost_bytes)
            description = f"{lost:.2f} s of audio could not be transcribed: {why}"
        else:
            description = f"the end of the audio could not be transcribed: {why}"
        self.stats.fatal = description
        self._emit_error("UNTRANSCRIBED_AUDIO", description, "UpstreamError")
        self._finish(1011, "audio not transcribed")
