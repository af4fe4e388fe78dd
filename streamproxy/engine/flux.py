"""Sans-I/O Flux turn machines: audio (or a recognizer's events) in, ``TurnEvent`` s out.

:class:`MarkerTurns` is the marker kind's exact contract on ``/v2/listen``. Words are the marker's
(a maximal run of >= 20 ms of one value ``k`` is ``w<k>``); everything is kept in integer sample
indices and only divided by the sample rate when an event is built, so events are identical
whatever the chunking, and a fresh machine started at an ``EndOfTurn``'s ``audio_window_end``
reproduces the following turns exactly, shifted. That is what lets the gateway replay from the
last ``EndOfTurn`` after a failure and assert the words of every turn.

Rules (``z`` = length of the zero run in progress, which always started at or after the turn's
last word ended; noise or a word in progress makes it 0, like v1's endpointing):

* a turn opens when a word completes (its run ends) while none is open: ``StartOfTurn`` at the
  word's end, carrying it;
* ``end_of_turn_confidence`` = ``min(1, z / 1 s)``;
* ``EndOfTurn`` at the first instant ``z`` reaches ``ceil(eot_threshold * sr)`` samples (trigger
  ``model``) or ``eot_timeout_ms`` (trigger ``timeout``, if strictly earlier), or at
  ``ForceEndTurn`` (trigger ``manual``; an open run of >= 20 ms becomes a word first);
* with ``eager_eot_threshold``: ``EagerEndOfTurn`` once ``z`` reaches it (once per turn, re-armed
  by ``TurnResumed``), and ``TurnResumed`` when the next word of the turn completes;
* ``Update`` at ``turn start + n * 240 ms`` while the turn is open, unless another event of the
  turn fires at that same instant;
* events at one instant: timers first (Eager, then End, then Update), then a word ending there, so
  a chunk boundary at that instant changes nothing;
* ``audio_window_start`` is the previous ``EndOfTurn``'s ``audio_window_end`` (0 at first).

:class:`EndpointTurns` maps a streaming recognizer's v1 events (whisper, pocketsphinx) to turns;
see its docstring for what holds there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from streamproxy.deepgram.flux import FluxThresholds, FluxWord, Trigger, TurnEvent, TurnEventName
from streamproxy.deepgram.types import Event, Result, SpeechStarted
from streamproxy.engine.marker import ms_to_samples

__all__ = ["UPDATE_MS", "EndpointTurns", "MarkerTurns", "ThresholdError", "check_thresholds", "fraction_samples"]

#: Cadence of ``Update`` events inside a turn (Deepgram's Flux sends them every 240 ms of audio).
UPDATE_MS = 240


class ThresholdError(ValueError):
    """A threshold outside Deepgram's documented range; ``str(exc)`` names it."""


def check_thresholds(th: FluxThresholds) -> FluxThresholds:
    """Deepgram's ranges: eot_threshold 0.5-0.9, eager_eot_threshold 0.3-0.9 and <= eot_threshold,
    eot_timeout_ms 500-10000."""
    if not 0.5 <= th.eot_threshold <= 0.9:
        raise ThresholdError(f"eot_threshold must be between 0.5 and 0.9, got {th.eot_threshold}")
    eager = th.eager_eot_threshold
    if eager is not None:
        if not 0.3 <= eager <= 0.9:
            raise ThresholdError(f"eager_eot_threshold must be between 0.3 and 0.9, got {eager}")
        if eager > th.eot_threshold:
            raise ThresholdError(f"eager_eot_threshold ({eager}) must not exceed eot_threshold ({th.eot_threshold})")
    if not 500 <= th.eot_timeout_ms <= 10_000:
        raise ThresholdError(f"eot_timeout_ms must be between 500 and 10000, got {th.eot_timeout_ms}")
    return th


def fraction_samples(seconds: float, sample_rate: int) -> int:
    """``ceil(seconds * sr)`` on the decimal value (0.7 * 16000 is 11200, not 11200.000000000002)."""
    return max(1, math.ceil(Fraction(str(seconds)) * sample_rate))


@dataclass(slots=True)
class _Turn:
    start: int  # instant of its StartOfTurn (samples)
    words: list[tuple[int, int, int]]  # (k, start, end)
    next_update: int
    eager_armed: bool
    eager_fired: bool = False


class MarkerTurns:
    """The marker kind's Flux turns (module docstring for the exact rules). Linear16 mono."""

    def __init__(self, sample_rate: int, thresholds: FluxThresholds | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self._min_word = ms_to_samples(20, sample_rate)
        self._update = ms_to_samples(UPDATE_MS, sample_rate)
        self._pos = 0
        self._leftover = b""
        self._rv: int | None = None  # value of the open run; None = the next sample starts one
        self._rs = 0
        self._turn: _Turn | None = None
        self._turn_index = 0
        self._window_start = 0
        self._out: list[TurnEvent] = []
        self.thresholds = FluxThresholds()
        self._n_model = self._n_timeout = 0
        self._n_eager: int | None = None
        self._set(thresholds or FluxThresholds())

    # ------------------------------------------------------------------ public API

    @property
    def position(self) -> int:
        """Samples received."""
        return self._pos

    @property
    def position_s(self) -> float:
        return self._pos / self.sample_rate

    @property
    def turn_open(self) -> bool:
        return self._turn is not None

    def feed(self, pcm: bytes) -> list[TurnEvent]:
        """Consume linear16 audio of any length (an odd byte waits for the next call)."""
        data = self._leftover + pcm if self._leftover else pcm
        n = len(data) // 2
        self._leftover = bytes(data[2 * n :]) if len(data) & 1 else b""
        out: list[TurnEvent] = []
        self._out = out
        if n:
            self._process(np.frombuffer(data, dtype="<i2", count=n))
        return out

    def force_end(self) -> list[TurnEvent]:
        """``ForceEndTurn``: end the open turn now (trigger ``manual``); nothing if none is open."""
        out: list[TurnEvent] = []
        self._out = out
        p = self._pos
        rv = self._rv
        if rv is not None and rv != 0:
            if p - self._rs >= self._min_word:
                self._word(rv, self._rs, p)
            self._rv = None  # the run is cut: the next sample starts a new one
        if self._turn is not None:
            self._end(p, "manual")
        return out

    def configure(self, thresholds: FluxThresholds) -> list[TurnEvent]:
        """Apply new thresholds (already range-checked); a threshold already passed fires now."""
        self._set(thresholds)
        out: list[TurnEvent] = []
        self._out = out
        self._advance(self._pos, floor=self._pos)
        return out

    # ------------------------------------------------------------------ internals

    def _set(self, th: FluxThresholds) -> None:
        sr = self.sample_rate
        self.thresholds = th
        self._n_model = fraction_samples(th.eot_threshold, sr)
        self._n_timeout = max(1, ms_to_samples(th.eot_timeout_ms, sr))
        eager = th.eager_eot_threshold
        self._n_eager = None if eager is None else fraction_samples(eager, sr)
        t = self._turn
        if t is not None and not t.eager_fired:  # an open turn follows the new setting at once
            t.eager_armed = eager is not None

    def _process(self, a: np.ndarray) -> None:
        n = int(a.shape[0])
        p0 = self._pos
        bounds = np.flatnonzero(a[1:] != a[:-1]) + 1
        starts = np.concatenate(([0], bounds)).astype(np.int64)
        ends = np.concatenate((bounds, [n])).astype(np.int64)
        vals = a[starts].astype(np.int64)
        # Interior nonzero runs shorter than a word are noise: no word ends there and no zero run
        # is in progress, so a stretch of them is one step (only the Update grid can fire).
        noise = (vals != 0) & ((ends - starts) < self._min_word)
        noise[0] = False
        noise[-1] = False
        gs_l = (starts + p0).tolist()
        ge_l = (ends + p0).tolist()
        v_l = vals.tolist()
        nz_l = noise.tolist()
        i = 0
        nseg = len(v_l)
        while i < nseg:
            if nz_l[i]:
                j = i
                while nz_l[j]:
                    j += 1
                self._advance(gs_l[i])
                self._transition(gs_l[i], v_l[i])
                self._advance(gs_l[j])
                self._rv, self._rs = v_l[j - 1], gs_l[j - 1]  # the last noise run (complete, no word)
                i = j
                continue
            if not (i == 0 and self._rv is not None and self._rv == v_l[i]):
                self._advance(gs_l[i])
                self._transition(gs_l[i], v_l[i])
            self._advance(ge_l[i])
            i += 1
        self._pos = p0 + n

    def _transition(self, s: int, v: int) -> None:
        """A run of ``v`` starts at ``s``: the open run ends there (a word if long enough)."""
        rv = self._rv
        if rv is not None and rv > 0 and s - self._rs >= self._min_word:
            self._word(rv, self._rs, s)
        self._rv, self._rs = v, s

    def _word(self, k: int, s: int, e: int) -> None:
        t = self._turn
        if t is None:
            self._turn = _Turn(e, [(k, s, e)], e + self._update, self._n_eager is not None)
            self._emit("StartOfTurn", e, 0.0)
            return
        t.words.append((k, s, e))
        if t.eager_fired:
            t.eager_fired = False
            t.eager_armed = self._n_eager is not None
            self._emit("TurnResumed", e, 0.0)

    def _advance(self, t_end: int, floor: int = 0) -> None:
        """Fire every timer at an instant <= ``t_end`` (instants before ``floor`` fire at ``floor``)."""
        while (t := self._turn) is not None:
            zero = self._rv == 0
            zs = self._rs
            eager = max(zs + self._n_eager, floor) if zero and t.eager_armed and self._n_eager is not None else None
            model = max(zs + self._n_model, floor) if zero else None
            timeout = max(zs + self._n_timeout, floor) if zero else None
            upd = max(t.next_update, floor)
            cands = [c for c in (eager, model, timeout, upd) if c is not None]
            at = min(cands)
            if at > t_end:
                return
            fired = False
            conf = min(1.0, (at - zs) / self.sample_rate) if zero else 0.0
            if eager == at:
                t.eager_armed = False
                t.eager_fired = True
                self._emit("EagerEndOfTurn", at, conf)
                fired = True
            end_at = min(c for c in (model, timeout) if c is not None) if zero else None
            if end_at == at:
                self._end(at, "model" if model == at else "timeout", conf)
                return
            if upd == at:
                while t.next_update <= at:
                    t.next_update += self._update
                if not fired:
                    self._emit("Update", at, conf)

    def _end(self, at: int, trigger: Trigger, conf: float | None = None) -> None:
        if conf is None:
            conf = min(1.0, (at - self._rs) / self.sample_rate) if self._rv == 0 else 0.0
        self._emit("EndOfTurn", at, conf, trigger)
        self._turn = None
        self._turn_index += 1
        self._window_start = at

    def _emit(self, event: TurnEventName, at: int, conf: float, trigger: Trigger | None = None) -> None:
        t = self._turn
        assert t is not None
        sr = self.sample_rate
        words = tuple(FluxWord(f"w{k}", 1.0, s / sr, e / sr) for k, s, e in t.words)
        self._out.append(TurnEvent(event, self._turn_index, self._window_start / sr, at / sr, words, conf, trigger))


class EndpointTurns:
    """Turns from a streaming recognizer's endpointing (the whisper and pocketsphinx kinds).

    The recognizer runs with ``interim_results`` and ``vad_events`` and with its endpointing set
    to the silence the thresholds ask for (:meth:`endpointing_ms`); this class maps its v1 events:

    * the first Result (interim or final) with words while no turn is open → ``StartOfTurn``
      carrying them; later Results with new words → ``Update`` (at most every 240 ms of audio);
    * a final's words are the turn's committed words; an interim's words are shown after them
      until the next final replaces them;
    * a ``speech_final`` final (the recognizer's endpoint: ``endpointing`` ms of non-speech after
      the last voiced audio) → ``EndOfTurn``. Its trigger is ``model`` when the endpoint silence is
      ``eot_threshold`` s, or ``timeout`` when ``eot_timeout_ms`` is shorter (then that is the
      endpoint silence) — so both are honoured as a minimum silence measured by the recognizer's
      VAD, not as a confidence the model computes;
    * ``eager_eot_threshold``: the recognizer's endpoint is set to the eager silence instead; its
      ``speech_final`` gives ``EagerEndOfTurn`` (with the words decoded so far), and ``EndOfTurn``
      follows once ``eot_threshold - eager_eot_threshold`` more seconds of audio pass without a VAD
      onset; an onset (``SpeechStarted``) before then holds the turn, and the next words give
      ``TurnResumed``;
    * ``end_of_turn_confidence`` is ``min(1, silence after the last word / 1 s)`` from word times;
    * ``ForceEndTurn`` finalises the recognizer (the open utterance is decoded) and ends the turn
      (trigger ``manual``); ``CloseStream`` ends the stream without an ``EndOfTurn``.

    Word times are the recognizer's, so turns are not sample-exact or chunking-independent the way
    :class:`MarkerTurns` is.
    """

    def __init__(self, thresholds: FluxThresholds | None = None) -> None:
        self.thresholds = thresholds or FluxThresholds()
        self._final: list[FluxWord] = []
        self._interim: list[FluxWord] = []
        self._open = False
        self._turn_index = 0
        self._window_start = 0.0
        self._last_update = 0.0
        self._eager_at: float | None = None  # audio position of the EagerEndOfTurn, while pending
        self._onset_after_eager = False
        self._out: list[TurnEvent] = []

    def endpointing_ms(self) -> int:
        """The silence the recognizer's endpoint should wait for (ms)."""
        th = self.thresholds
        ms = min(round(th.eot_threshold * 1000), th.eot_timeout_ms)
        if th.eager_eot_threshold is not None:
            ms = min(ms, round(th.eager_eot_threshold * 1000))
        return ms

    @property
    def turn_open(self) -> bool:
        return self._open

    def on_events(self, events: Iterable[Event], position_s: float) -> list[TurnEvent]:
        """Map the events of one recognizer call; ``position_s`` = audio received after it."""
        out: list[TurnEvent] = []
        self._out = out
        for ev in events:
            if isinstance(ev, SpeechStarted):
                if self._eager_at is not None:
                    self._onset_after_eager = True
            elif isinstance(ev, Result):
                self._result(ev)
        self._check_eager(position_s)
        return out

    def force_end(self, events: Iterable[Event], position_s: float) -> list[TurnEvent]:
        """``ForceEndTurn``: ``events`` are the recognizer's ``finalize()`` output."""
        out = self.on_events(events, position_s)
        self._out = out
        if self._open:
            self._end(position_s, "manual")
        return out

    def _words(self, r: Result) -> list[FluxWord]:
        return [FluxWord(w.punctuated_word or w.word, w.confidence, w.start, w.end) for w in r.words]

    def _result(self, r: Result) -> None:
        words = self._words(r)
        if r.is_final:
            self._final.extend(words)
            self._interim = []
        elif words:
            self._interim = words
        else:
            return
        now = r.end
        if words and not self._open:
            self._open = True
            self._last_update = now
            self._emit("StartOfTurn", now)
        elif words and self._eager_at is not None:
            self._eager_at = None
            self._onset_after_eager = False
            self._last_update = now
            self._emit("TurnResumed", now)
        elif words and now - self._last_update >= UPDATE_MS / 1000:
            self._last_update = now
            self._emit("Update", now)
        if r.is_final and r.speech_final and self._open:
            th = self.thresholds
            if th.eager_eot_threshold is not None and self._eager_at is None:
                self._eager_at = now
                self._onset_after_eager = False
                self._emit("EagerEndOfTurn", now)
            else:
                self._end(now, self._trigger())

    def _trigger(self) -> Trigger:
        th = self.thresholds
        return "timeout" if th.eot_timeout_ms < round(th.eot_threshold * 1000) else "model"

    def _check_eager(self, position_s: float) -> None:
        if self._eager_at is None or not self._open or self._onset_after_eager:
            return
        th = self.thresholds
        assert th.eager_eot_threshold is not None
        wait = min(th.eot_threshold, th.eot_timeout_ms / 1000) - th.eager_eot_threshold
        if position_s - self._eager_at >= wait:
            self._end(self._eager_at + wait, self._trigger())

    def _end(self, at: float, trigger: Trigger) -> None:
        self._interim_to_final()
        self._emit("EndOfTurn", at, trigger)
        self._open = False
        self._final = []
        self._eager_at = None
        self._turn_index += 1
        self._window_start = at

    def _interim_to_final(self) -> None:
        if self._interim:
            self._final.extend(self._interim)
            self._interim = []

    def _emit(self, event: TurnEventName, at: float, trigger: Trigger | None = None) -> None:
        words = tuple(self._final + self._interim)
        last = words[-1].end if words else at
        conf = min(1.0, max(0.0, at - last))
        self._out.append(TurnEvent(event, self._turn_index, self._window_start, at, words, conf, trigger))
