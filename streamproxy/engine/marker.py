"""The ``marker`` recognizer: deterministic, nearly free, for exact no-loss tests and benchmarks.

Audio is linear16 mono. A maximal run of >= 20 ms of equal samples ``k`` (1..32767) is the word
``w<k>``; zeros are silence; anything else is noise. All state is kept in integer sample indices
and only divided by the sample rate when an event is built, so times are identical however the
audio is chunked, and a fresh recognizer started at any final's end reproduces the remaining
finals exactly (shifted in samples). That is what lets the proxy assert "no word lost, none
duplicated" across reconnects and replays.

Finals (``L`` = end of the last final, in samples):

* endpoint: a zero run after a not-yet-final word reaching ``endpointing`` samples emits a final
  ``[L, zero_start + endpointing)`` with ``speech_final: true``;
* three-second rule: at the first *cut point* ``c >= L + 3 s`` a final ``[L, c)`` with
  ``speech_final: false`` is emitted, even without words. A cut point never splits a nonzero run:
  ``sample[c-1] == 0`` or a new run starts at ``c``;
* ``Finalize``/``CloseStream``: the open run becomes a word if it qualifies, and a final
  ``[L, position)`` with ``from_finalize: true`` is emitted, even if empty.
"""

from __future__ import annotations

import numpy as np

from streamproxy.deepgram.types import Event, Result, SpeechStarted, UtteranceEnd, Word, span_result

__all__ = ["MarkerRecognizer", "ms_to_samples"]


def ms_to_samples(ms: int, sample_rate: int) -> int:
    """``ceil(ms * sr / 1000)`` in integers, so thresholds never depend on float rounding."""
    return (ms * sample_rate + 999) // 1000


class MarkerRecognizer:
    """Sans-I/O marker recognizer (see module docstring for the exact contract)."""

    def __init__(
        self,
        sample_rate: int,
        *,
        interim_results: bool = False,
        endpointing_ms: int | None = 300,
        vad_events: bool = False,
        utterance_end_ms: int | None = None,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        self.sample_rate = sample_rate
        self._min_word = ms_to_samples(20, sample_rate)
        self._endpoint = None if endpointing_ms is None else max(1, ms_to_samples(endpointing_ms, sample_rate))
        self._utt_end = None if utterance_end_ms is None else max(1, ms_to_samples(utterance_end_ms, sample_rate))
        self._three = 3 * sample_rate
        self._interim_step = ms_to_samples(100, sample_rate) if interim_results else None
        self._vad = vad_events

        self._pos = 0  # samples received
        self._leftover = b""  # odd trailing byte of the last chunk
        self._rv: int | None = None  # value of the open run; None = next sample starts a run
        self._rs = 0  # start of the open run
        self._final_end = 0  # L
        self._pending: list[tuple[int, int, int]] = []  # completed, not final words: (k, start, end)
        self._last_word_end = 0
        self._ue_armed = False
        self._last_interim = 0
        self._closed = False
        self._out: list[Event] = []

    # ------------------------------------------------------------------ public API

    @property
    def position(self) -> int:
        """Samples received so far."""
        return self._pos

    @property
    def position_s(self) -> float:
        return self._pos / self.sample_rate

    @property
    def final_end(self) -> int:
        """End (in samples) of the last final emitted."""
        return self._final_end

    def feed(self, pcm: bytes) -> list[Event]:
        """Consume linear16 audio of any length (an odd byte is kept for the next call)."""
        if self._closed:
            raise RuntimeError("recognizer is closed")
        data = self._leftover + pcm if self._leftover else pcm
        n = len(data) // 2
        self._leftover = bytes(data[2 * n :]) if len(data) & 1 else b""
        if n == 0:
            return []
        a = np.frombuffer(data, dtype="<i2", count=n)
        out: list[Event] = []
        self._out = out
        self._process(a)
        step = self._interim_step
        if step is not None and self._pending and self._pos - self._last_interim >= step:
            self._last_interim = self._pos
            out.append(self._result(self._pos, is_final=False, speech_final=False, from_finalize=False))
        return out

    def finalize(self) -> list[Event]:
        """Finalise everything received (Deepgram ``Finalize``)."""
        if self._closed:
            return []
        out: list[Event] = []
        self._out = out
        p = self._pos
        rv = self._rv
        if rv is not None and rv > 0 and p - self._rs >= self._min_word:
            self._complete_word(rv, self._rs, p)
        self._emit_final(p, speech_final=False, from_finalize=True)
        if rv != 0:
            # A zero run may continue: restarting it would change nothing for finals but would
            # delay UtteranceEnd. A nonzero run is cut: the next sample starts a new run.
            self._rv = None
        return out

    def close(self) -> list[Event]:
        """Finalise and refuse further input (Deepgram ``CloseStream``)."""
        if self._closed:
            return []
        out = self.finalize()
        self._closed = True
        self._leftover = b""
        return out

    # ------------------------------------------------------------------ internals

    def _process(self, a: np.ndarray) -> None:
        n = int(a.shape[0])
        p0 = self._pos
        bounds = np.flatnonzero(a[1:] != a[:-1]) + 1
        if bounds.size == 0:
            self._segment(0, p0, p0 + n, int(a[0]))
            self._pos = p0 + n
            return
        starts = np.empty(bounds.size + 1, dtype=np.int64)
        starts[0] = 0
        starts[1:] = bounds
        vals = a[starts].astype(np.int64)
        ends = np.empty_like(starts)
        ends[:-1] = bounds
        ends[-1] = n
        gstarts = starts + p0
        nseg = int(starts.size)
        # Interior nonzero runs shorter than a word are noise: they only matter as cut points,
        # so long noisy stretches are handled vectorised instead of one Python step per run.
        noise = (vals != 0) & ((ends - starts) < self._min_word)
        noise[0] = False
        noise[-1] = False
        if not noise.any():
            gs_l = gstarts.tolist()
            ge_l = (ends + p0).tolist()
            v_l = vals.tolist()
            for i in range(nseg):
                self._segment(i, gs_l[i], ge_l[i], v_l[i])
        else:
            interesting = np.flatnonzero(~noise).tolist()
            prev = -1
            for i in interesting:
                if i > prev + 1:
                    self._noise_stretch(gstarts, vals, prev + 1, i)
                self._segment(i, int(gstarts[i]), int(ends[i]) + p0, int(vals[i]))
                prev = i
        self._pos = p0 + n

    def _segment(self, i: int, gs: int, ge: int, v: int) -> None:
        """Samples ``[gs, ge)`` of value ``v`` arrived; ``i == 0`` may continue the open run."""
        if i != 0 or self._rv is None or self._rv != v:
            self._start_run(gs, v)
        if v == 0:
            self._zero_body(gs, ge)
        elif self._vad:
            onset = self._rs + self._min_word
            if gs < onset <= ge:
                self._out.append(SpeechStarted(self._rs / self.sample_rate))

    def _noise_stretch(self, gstarts: np.ndarray, vals: np.ndarray, j0: int, j1: int) -> None:
        """Runs ``j0..j1-1`` are complete noise runs: only their starts (cut points) matter."""
        self._start_run(int(gstarts[j0]), int(vals[j0]))
        k = j0 + 1
        while k < j1:
            t = self._final_end + self._three
            m = k + int(np.searchsorted(gstarts[k:j1], t))
            if m >= j1:
                break
            self._emit_final(int(gstarts[m]), speech_final=False, from_finalize=False)
            k = m + 1
        self._rv = int(vals[j1 - 1])
        self._rs = int(gstarts[j1 - 1])

    def _start_run(self, s: int, v: int) -> None:
        """A new run starts at ``s``: the previous one ends (maybe a word), and ``s`` is a cut point."""
        rv = self._rv
        if rv is not None and rv > 0 and s - self._rs >= self._min_word:
            self._complete_word(rv, self._rs, s)
        self._rv = v
        self._rs = s
        if s >= self._final_end + self._three:
            self._emit_final(s, speech_final=False, from_finalize=False)

    def _zero_body(self, a: int, e: int) -> None:
        """Zeros ``[a, e)`` of the open zero run arrived: cut points ``a+1 .. e`` are now known."""
        zs = self._rs
        while True:
            best = e + 1
            kind = 0  # 1 endpoint, 2 three-second, 3 utterance end
            if self._endpoint is not None and self._pending:
                c = zs + self._endpoint
                if a < c <= e:
                    best, kind = c, 1
            c = self._final_end + self._three
            if a < c < best:
                best, kind = c, 2
            if self._utt_end is not None and self._ue_armed:
                c = zs + self._utt_end
                if a < c < best:
                    best, kind = c, 3
            if kind == 0:
                return
            if kind == 3:
                self._ue_armed = False
                self._out.append(UtteranceEnd(self._last_word_end / self.sample_rate))
            else:
                self._emit_final(best, speech_final=kind == 1, from_finalize=False)

    def _complete_word(self, k: int, s: int, e: int) -> None:
        self._pending.append((k, s, e))
        self._last_word_end = e
        self._ue_armed = True

    def _result(self, c: int, *, is_final: bool, speech_final: bool, from_finalize: bool) -> Result:
        sr = self.sample_rate
        words = [Word(f"w{k}", s / sr, e / sr, 1.0) for k, s, e in self._pending]
        return span_result(
            self._final_end, c, sr, words, is_final=is_final, speech_final=speech_final, from_finalize=from_finalize
        )

    def _emit_final(self, c: int, *, speech_final: bool, from_finalize: bool) -> None:
        self._out.append(self._result(c, is_final=True, speech_final=speech_final, from_finalize=from_finalize))
        self._final_end = c
        self._pending = []
