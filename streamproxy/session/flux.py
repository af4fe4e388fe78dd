"""The Flux (``/v2/listen``) session: the same machinery as Live, the vocabulary of turns.

Everything that makes the promise hold - framing, the ring, replay from the watermark, rebasing by
audio position, reconnects, stalls, close, drain, resume, Configure - is :class:`Session`'s. This
subclass only says what Flux's messages mean:

- the acknowledgement is the ``audio_window_end`` of the latest ``EndOfTurn``: a replacement
  connection starts there, so it reproduces every later turn (a turn open when the upstream died is
  completed by the replacement, not repeated);
- the client sees one timeline: ``sequence_id`` renumbered 0, 1, 2 … across connections (one
  ``Connected``), ``turn_index`` continuous, exactly one ``StartOfTurn`` and one ``EndOfTurn`` per
  turn in order, never an event for a turn it has not seen start, never an ``Update`` that goes
  back, an ``EagerEndOfTurn`` / ``TurnResumed`` only when it changes the turn's state;
- on ``CloseStream`` the gateway sends ``ForceEndTurn`` first, so the last turn's words are
  delivered (Deepgram itself drops an open turn at ``CloseStream``);
- there is no KeepAlive (WebSocket pings keep both sockets open) and no ``Metadata``.
"""

from __future__ import annotations

from typing import Any

from ..deepgram.flux import error_message as flux_error
from ..deepgram.flux import warning_message
from ..deepgram.messages import CLOSE_STREAM
from ..deepgram.validate import flux_problem
from .checkpoint import Checkpoint, CheckpointError, restart_point
from .core import Action, Count, Counter, Final, Latency, Observe, ResumeError, SendUpstream, Session

FORCE_END_TURN = '{"type":"ForceEndTurn"}'

#: Between turns an upstream legitimately says nothing while audio (silence) flows: silence from
#: it counts as a stall only after this many stall timeouts, inside a turn after one.
_BETWEEN_TURNS_STALL_FACTOR = 3


class FluxSession(Session):
    KEEPALIVE_MESSAGE = None
    CLIENT_TYPES = ("CloseStream", "ForceEndTurn", "Configure")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sequence_id = 0
        self._connected_sent = False
        self.turns_ended = 0  # EndOfTurns delivered: the client's next turn_index
        self._up_turns_ended = 0  # EndOfTurns the current connection has sent
        self._turn_open = False  # the client has this turn's StartOfTurn
        self._eager = False  # ... and an EagerEndOfTurn not followed by TurnResumed
        self._turn_high = -1  # audio_window_end (samples) of the turn's latest delivered event
        self._client_has = 0  # after a takeover: the client has every message numbered up to this

    # ------------------------------------------------------------------ vocabulary
    def _problem(self, msg: Any) -> str | None:
        return flux_problem(msg)

    def _client_message(self, kind: str | None, text: str, now: float) -> bool:
        if kind == "CloseStream":
            self._begin_close(now)
        elif kind == "ForceEndTurn":
            if not self.closing:
                # No answer is owed: without an open turn the upstream says nothing to it.
                self._control_at_position(FORCE_END_TURN, now, answered=False)
        elif kind == "Configure":
            self._client_configure(text)
        else:
            return False
        return True

    def _client_error(self, code: str, description: str, short: str) -> None:
        # A Flux Error is fatal (the server closes after it); a message it cannot use is a Warning.
        self._deliver(warning_message(request_id=self.session_id, sequence_id=0, code=code, description=description))

    def _emit_error(self, code: str, description: str, variant: str) -> None:
        self._deliver(flux_error(sequence_id=0, code=code, description=description))

    def _send_close(self, now: float) -> None:
        # ForceEndTurn first: the upstream ends an open turn (and does nothing without one), then
        # CloseStream; it answers in order, so its 1000 close after them means all was delivered.
        self._actions.append(SendUpstream(FORCE_END_TURN))
        self._send_control(CLOSE_STREAM, now)
        self._close_answered = True

    def _final_messages(self) -> None:
        return None  # Flux has no Metadata

    def _on_new_connection(self, now: float) -> None:
        self._up_turns_ended = 0  # a replacement numbers its turns from 0 again

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {"sequence_id": self._next_sequence_id, "turns": self.turns_ended}

    def _restore_extra(self, extra: dict[str, Any], position_samples: int) -> None:
        # The client has had Connected and every turn up to the restart point; the replacement's
        # turns are numbered on from there.
        self._connected_sent = True
        self._next_sequence_id = int(extra.get("sequence_id", 0))
        self.turns_ended = int(extra.get("turns", 0))

    def take_over(self, records: list[Checkpoint], last_seq: int, audio_offset: int | None, now: float) -> list[Action]:
        """A takeover restarts at the latest ``EndOfTurn``; the client may have had more than that
        (the open turn's ``StartOfTurn``, its ``Update`` s: they are not checkpointed). The
        replacement reproduces them (the same audio from the same point), so they are numbered
        again from that ``EndOfTurn`` on, as they first were, and those the client has (``seq`` up
        to its ``last_seq``) are not sent again: one ``StartOfTurn`` per turn, ``sequence_id`` and
        ``seq`` without repeats or holes. A client that lacks the latest ``EndOfTurn`` s (stored,
        then the instance died before they went out) restarts at the last one it has, like the
        turn in progress: the replacement says the turns it lacks again (on v1 the store re-sends
        them and the exactly-once filter drops the recogniser's repetition; Flux has no such
        filter, and the stored ``EndOfTurn`` alone would lack its ``StartOfTurn``)."""
        missed = next((i for i, r in enumerate(records) if r.text is not None and r.seq > last_seq), None)
        if missed is not None:
            try:
                restart_point(records, last_seq)  # refuses a client further behind than what is held
            except CheckpointError as e:
                raise ResumeError(str(e)) from None
            configure = records[-1].configure
            records = records[:missed]
        out = super().take_over(records, last_seq, audio_offset, now)
        if missed is not None:
            self._configure_latest = configure
        finals = [r for r in records if r.text is not None]
        base = finals[-1] if finals else None
        if base is None:
            self.outbox.seq = self._next_sequence_id = self.turns_ended = 0
            self._connected_sent = False  # the replacement's Connected is the client's first message again
        else:
            self.outbox.seq = base.seq
            self._next_sequence_id = int(base.extra.get("sequence_id", base.seq))
            self.turns_ended = int(base.extra.get("turns", self.turns_ended))
        self._client_has = last_seq
        return out

    def _catch_up(self, replay: bool) -> bool:
        """After a takeover: True if the next number is one the client already has and the message
        is the replacement's reproduction of it (not sent again); anything else (an ``EndOfTurn``,
        a ``Warning`` …) is numbered after the client's ``last_seq``."""
        have = self._client_has
        if not have:
            return False
        if self.outbox.seq < have:
            if replay:
                self.outbox.seq += 1
                self._next_sequence_id += 1
                return True
            self._next_sequence_id += have - self.outbox.seq
            self.outbox.seq = have
        self._client_has = 0
        return False

    @property
    def _stall_timeout(self) -> float:
        factor = 1 if self._turn_open else _BETWEEN_TURNS_STALL_FACTOR
        return factor * super()._stall_timeout

    def _deliver(self, msg: dict[str, Any]) -> None:
        """Every message the client gets has the next ``sequence_id``, whichever connection sent it."""
        if self._catch_up(replay=msg.get("type") == "Connected"):
            return
        msg["sequence_id"] = self._next_sequence_id
        self._next_sequence_id += 1
        super()._deliver(msg)

    def _on_message(self, kind: str, msg: dict[str, Any], raw: str, now: float) -> None:
        if kind == "TurnInfo":
            self._on_turn(msg, now)
        elif kind == "Connected":
            if not self._connected_sent:  # a replacement's Connected is not news to the client
                self._connected_sent = True
                msg["request_id"] = self.session_id
                self._deliver(msg)
        elif kind in ("ConfigureSuccess", "ConfigureFailure"):
            self._on_configure_answer(msg)
        elif kind == "Warning":
            self._deliver(msg)
        elif kind == "Error":
            self._held_error = msg  # fatal if the connection closes now; else shown (non-fatal)

    # ------------------------------------------------------------------ turns
    def _on_turn(self, msg: dict[str, Any], now: float) -> None:
        event = msg["event"]
        if msg["turn_index"] < self._up_turns_ended:
            return  # an event of a turn this connection already ended
        turn = self.turns_ended  # the client's numbering: continuous whatever the connections
        start, end = self._rebase(msg["audio_window_start"]), self._rebase(msg["audio_window_end"])
        if event == "StartOfTurn":
            if self._turn_open:
                return  # the replacement restarting the turn the client already has
            self._turn_open, self._eager = True, False
        elif not self._turn_open:
            if event != "EndOfTurn" or not msg["words"]:
                if event == "EndOfTurn":
                    self._end_turn(end, msg, now, deliver=False)  # an empty turn: nothing to show
                return
            start_msg = {**msg, "event": "StartOfTurn"}  # a turn must start before it ends
            start_msg.pop("trigger", None)
            self._turn_open = True
            self._emit_turn(start_msg, turn, start, end)
        elif event == "Update":
            if end <= self._turn_high:
                return  # replayed audio the client has already seen transcribed
        elif event == "EagerEndOfTurn":
            if self._eager:
                return
            self._eager = True
        elif event == "TurnResumed":
            if not self._eager:
                return
            self._eager = False
        if event == "EndOfTurn":
            self._end_turn(end, msg, now, deliver=True, turn=turn, start=start)
            return
        self._emit_turn(msg, turn, start, end)

    def _emit_turn(
        self, msg: dict[str, Any], turn: int, start: int, end: int, *, final_before: int | None = None, **proxy: Any
    ) -> dict[str, Any]:
        sr = self._sr
        self._turn_high = max(self._turn_high, end)
        out = {**msg, "turn_index": turn, "audio_window_start": start / sr, "audio_window_end": end / sr}
        if self.base:
            out["words"] = [
                {**w, **{k: self._rebase(w[k]) / sr for k in ("start", "end") if w.get(k) is not None}}
                for w in msg["words"]
            ]
        self.stats.results += 1
        if self._catch_up(replay=msg["event"] != "EndOfTurn"):
            return out
        if self.s.proxy_events:
            out["sequence_id"] = self._next_sequence_id
            self._next_sequence_id += 1
            self._emit_seq(out, final_before=final_before, **proxy)
        else:
            self._deliver(out)
        return out

    def _end_turn(
        self, end: int, msg: dict[str, Any], now: float, *, deliver: bool, turn: int = 0, start: int = 0
    ) -> None:
        manual = msg.get("trigger") == "manual"
        latency = None
        words = msg["words"]
        if deliver and words and words[-1].get("end") is not None and self.fmt.raw:
            latency = self._latency(self.fmt.samples_to_bytes(self._rebase(words[-1]["end"])), now)
        before = self.ack_pos
        # The watermark: everything up to the turn's end is acknowledged (and a ForceEndTurn the
        # client sent is answered by a manual end); moved before the EndOfTurn goes out, so its
        # checkpoint says where a replacement starts.
        if self.fmt.raw:
            self._release_to(self.fmt.samples_to_bytes(end), 1 if manual else 0)
        if deliver:
            if latency is not None:
                self.stats.latencies.append(latency)
                self._actions.append(Observe(Latency.END_OF_TURN, latency))
                if self.stats.first_word_latency is None:
                    self.stats.first_word_latency = latency
            self._actions.append(Count(Counter.TURN, 1, str(msg.get("trigger") or "")))
            lat = None if latency is None else round(latency * 1000, 3)
            proxy = {} if lat is None else {"latency_ms": lat}
            out = self._emit_turn(msg, turn, start, end, final_before=before, **proxy)
            self._actions.append(Final(out))
        self._up_turns_ended += 1
        self.turns_ended += deliver
        self._turn_open, self._eager, self._turn_high = False, False, -1
