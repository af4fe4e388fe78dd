"""The ``pocketsphinx`` recognizer: real offline recognition with the en-US model in the wheel.

Same sans-I/O interface as the marker recognizer, but CPU-heavy: the server must call ``feed``,
``finalize``, ``close`` and the constructor (which may load a model) off the event loop.

Segmentation uses pocketsphinx's ``Endpointer`` (a VAD with a decision window); each detected
utterance is decoded and emitted as one final with ``speech_final: true``. Over non-speech an
empty final is emitted every ~3 s so a proxy sees regular acknowledgements, but never past the
endpointer's look-back window, so audio that may still become the start of speech is not
acknowledged early. Decoders are pooled and reused: pocketsphinx adapts its cepstral mean across
utterances, and a fresh decoder per stream is markedly less accurate.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from streamproxy.deepgram.types import Event, Result, SpeechStarted, UtteranceEnd, Word, span_result
from streamproxy.engine.formatting import Formatting, Token, format_words

__all__ = ["SAMPLE_RATE", "DecoderPool", "PooledDecoder", "SphinxRecognizer", "default_pool", "narrowband_pool"]

SAMPLE_RATE = 16000
_FRAME_RATE = 100  # pocketsphinx feature frames per second (config "frate")
_ALT = re.compile(r"\(\d+\)$")
# Force a final in endless speech: keeps the proxy's replay buffer bounded, and keeps messages coming
# within the gateway's stall timeout (10 s by default) when interim results are off.
_MAX_UTT_S = 8
_SILENCE_FINAL_S = 3
_INTERIM_S = 0.25
_WARM_S = 1.0  # seconds of speech after which a fresh decoder's cepstral mean is usable


def _new_decoder() -> Any:
    from pocketsphinx import Decoder

    return Decoder(loglevel="FATAL", samprate=SAMPLE_RATE)


@dataclass(slots=True)
class PooledDecoder:
    """A pocketsphinx ``Decoder`` and whether its cepstral mean has adapted to real audio yet."""

    decoder: Any
    warm: bool = False


class DecoderPool:
    """Thread-safe pool of pocketsphinx ``Decoder`` objects (each ~80-100 MB, ~0.3 s to load)."""

    def __init__(self, max_idle: int = 64) -> None:
        self._idle: list[PooledDecoder] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._cmn: str | None = None
        self.created = 0

    def acquire(self) -> PooledDecoder:
        """Take an idle decoder or load a new one (blocking: call from a worker thread)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            cmn = self._cmn
        pd = PooledDecoder(_new_decoder())
        if cmn is not None:
            # Start from a mean adapted by an earlier stream rather than the model's generic one.
            try:
                pd.decoder.set_cmn(cmn)
                pd.warm = True
            except Exception:
                pass
        with self._lock:
            self.created += 1
        return pd

    def release(self, pd: PooledDecoder) -> None:
        """Return a decoder that is not in an utterance."""
        cmn = None
        if pd.warm:
            try:
                cmn = pd.decoder.get_cmn()
            except Exception:
                cmn = None
        with self._lock:
            if cmn:
                self._cmn = cmn
            if len(self._idle) < self._max_idle:
                self._idle.append(pd)

    def prewarm(self, n: int = 1) -> None:
        """Load ``n`` decoders now so the first stream does not pay the model load."""
        decs = [self.acquire() for _ in range(n)]
        for d in decs:
            self.release(d)

    @property
    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


default_pool = DecoderPool()
#: Decoders for resampled telephone audio: their cepstral mean adapts to a narrow band, which would
#: spoil a wide-band stream that took one over (and the reverse), so they are pooled apart.
narrowband_pool = DecoderPool()


def _clean_word(word: str) -> str | None:
    """Drop fillers (``<s>``, ``</s>``, ``<sil>``, ``[NOISE]``, ``++NOISE++``) and ``(2)`` alternates."""
    if not word or word[0] in "<[+":
        return None
    return _ALT.sub("", word)


class SphinxRecognizer:
    """Streaming pocketsphinx recognizer (16 kHz linear16 mono only)."""

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        *,
        interim_results: bool = False,
        endpointing_ms: int | None = 300,
        vad_events: bool = False,
        utterance_end_ms: int | None = None,
        pool: DecoderPool | None = None,
        vad_mode: int = 1,
        formatting: Formatting | None = None,
    ) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(
                f"the pocketsphinx engine only accepts linear16 at {SAMPLE_RATE} Hz (got sample_rate={sample_rate})"
            )
        self.sample_rate = sample_rate
        self._interim = interim_results
        self._speech_final = endpointing_ms is not None
        # The endpointer's decision window plays the role of Deepgram's endpointing delay.
        window_ms = 300 if endpointing_ms is None else min(max(endpointing_ms, 100), 2000)
        self._window = window_ms / 1000
        self._vad_mode = vad_mode
        self._fmt = formatting or Formatting()
        self._vad = vad_events
        self._utt_end = None if utterance_end_ms is None else utterance_end_ms * sample_rate // 1000
        self._pool = pool if pool is not None else default_pool
        self._pd = self._pool.acquire()
        self._dec: Any = self._pd.decoder
        self._utt_audio: list[bytes] | None = None  # kept only while the decoder is cold
        self._ep: Any = None
        self._frame_bytes = 0
        self._frame_samples = 0
        self._ep_offset = 0  # sample index where the current endpointer started
        self._ep_pos = 0  # samples consumed by the endpointer (absolute)
        self._new_endpointer(0)
        self._lookback = math.ceil(self._window * sample_rate) + 2 * self._frame_samples

        self._bytes = 0  # bytes received
        self._buf = bytearray()
        self._final_end = 0  # L, samples
        self._in_utt = False
        self._utt_start = 0
        self._utt_samples = 0
        self._last_interim = 0
        self._last_hyp = ""
        self._last_word_end = 0
        self._ue_armed = False
        self._closed = False
        self._released = False

    # ------------------------------------------------------------------ public API

    @property
    def position(self) -> int:
        return self._bytes // 2

    @property
    def position_s(self) -> float:
        return self.position / self.sample_rate

    def feed(self, pcm: bytes) -> list[Event]:
        if self._closed:
            raise RuntimeError("recognizer is closed")
        out: list[Event] = []
        self._bytes += len(pcm)
        buf = self._buf
        buf += pcm
        fb = self._frame_bytes
        if len(buf) < fb:
            return out
        n = len(buf) // fb * fb
        mv = memoryview(buf)
        try:
            for i in range(0, n, fb):
                self._frame(bytes(mv[i : i + fb]), out)
        finally:
            mv.release()
        del buf[:n]
        return out

    def finalize(self) -> list[Event]:
        """Decode everything received, including the endpointer's look-back and a partial frame."""
        if self._closed:
            return []
        out: list[Event] = []
        pos = self.position
        tail_len = len(self._buf) & ~1
        if self._ep.in_speech:
            if not self._in_utt:
                self._start_utt(self._ep_offset + round(self._ep.speech_start * self.sample_rate), out)
            sp = self._ep.end_stream(bytes(self._buf[:tail_len]))
            if sp:
                self._process(sp)
        words = self._end_utt() if self._in_utt else []
        out.append(self._result(pos, words, is_final=True, speech_final=False, from_finalize=True))
        self._final_end = pos
        del self._buf[:tail_len]
        self._new_endpointer(pos)
        return out

    def close(self) -> list[Event]:
        if self._closed:
            return []
        out = self.finalize()
        self._closed = True
        self.release()
        return out

    def release(self) -> None:
        """Give the decoder back to the pool (idempotent; safe after an aborted stream)."""
        if self._released:
            return
        self._released = True
        self._closed = True
        if self._in_utt:
            try:
                self._dec.end_utt()
            except Exception:
                pass
            self._in_utt = False
        self._pool.release(self._pd)

    # ------------------------------------------------------------------ internals

    def _new_endpointer(self, offset: int) -> None:
        from pocketsphinx import Endpointer

        self._ep = Endpointer(window=self._window, vad_mode=self._vad_mode, sample_rate=self.sample_rate)
        self._frame_bytes = int(self._ep.frame_bytes)
        self._frame_samples = self._frame_bytes // 2
        self._ep_offset = offset
        self._ep_pos = offset

    def _frame(self, frame: bytes, out: list[Event]) -> None:
        ep = self._ep
        sp = ep.process(frame)
        self._ep_pos += self._frame_samples
        if ep.in_speech and not self._in_utt:
            self._start_utt(self._ep_offset + round(ep.speech_start * self.sample_rate), out)
        if sp is not None and self._in_utt:
            self._process(sp)
        if self._in_utt and not ep.in_speech:
            words = self._end_utt()
            end = self._ep_offset + round(ep.speech_end * self.sample_rate)
            c = min(max(end, self._utt_start + self._utt_samples, self._final_end), self._ep_pos)
            self._emit_final(c, words, speech_final=self._speech_final, out=out)
        elif self._in_utt:
            if self._utt_samples >= _MAX_UTT_S * self.sample_rate:
                c = self._utt_start + self._utt_samples
                self._emit_final(c, self._end_utt(), speech_final=False, out=out)
                self._start_utt(c, out, onset=False)
            elif self._interim and self._ep_pos - self._last_interim >= _INTERIM_S * self.sample_rate:
                self._last_interim = self._ep_pos
                self._maybe_interim(out)
        else:
            safe = self._ep_pos - self._lookback
            if safe - self._final_end >= _SILENCE_FINAL_S * self.sample_rate:
                self._emit_final(safe, [], speech_final=False, out=out)
        if (
            self._utt_end is not None
            and self._ue_armed
            and not self._in_utt
            and self._ep_pos - self._last_word_end >= self._utt_end
        ):
            self._ue_armed = False
            out.append(UtteranceEnd(self._last_word_end / self.sample_rate))

    def _start_utt(self, start: int, out: list[Event], *, onset: bool = True) -> None:
        self._dec.start_utt()
        self._utt_audio = None if self._pd.warm else []
        self._in_utt = True
        self._utt_start = max(start, self._final_end)
        self._utt_samples = 0
        self._last_hyp = ""
        if self._vad and onset:
            out.append(SpeechStarted(self._utt_start / self.sample_rate))

    def _process(self, sp: bytes) -> None:
        if len(sp) >= 2:  # process_raw(b"") raises
            self._dec.process_raw(sp, False, False)
            self._utt_samples += len(sp) // 2
            if self._utt_audio is not None:
                self._utt_audio.append(sp)

    def _words(self) -> list[Word]:
        base = self._utt_start / self.sample_rate
        tokens: list[Token] = []
        for seg in self._dec.seg() or ():
            w = _clean_word(seg.word)
            if w is None:
                continue
            start = base + seg.start_frame / _FRAME_RATE
            tokens.append(Token(w, start, base + (seg.end_frame + 1) / _FRAME_RATE, float(seg.prob)))
        return format_words(tokens, self._fmt)

    def _end_utt(self) -> list[Word]:
        self._dec.end_utt()
        self._in_utt = False
        audio, self._utt_audio = self._utt_audio, None
        if audio is not None and self._utt_samples >= _WARM_S * self.sample_rate:
            # A fresh decoder decodes its first utterance with the model's generic cepstral mean
            # (much worse); end_utt has now adapted it, so decode that audio again.
            self._dec.start_utt()
            self._dec.process_raw(b"".join(audio), False, False)
            self._dec.end_utt()
            self._pd.warm = True
        words = self._words()
        if words:
            self._last_word_end = round(words[-1].end * self.sample_rate)
            self._ue_armed = True
        return words

    def _maybe_interim(self, out: list[Event]) -> None:
        hyp = self._dec.hyp()
        text = hyp.hypstr if hyp is not None else ""
        if not text or text == self._last_hyp:
            return
        self._last_hyp = text
        words = self._words()
        if words:
            end = self._utt_start + self._utt_samples
            out.append(self._result(end, words, is_final=False, speech_final=False, from_finalize=False))

    def _result(self, c: int, words: list[Word], *, is_final: bool, speech_final: bool, from_finalize: bool) -> Result:
        return span_result(
            self._final_end, c, self.sample_rate, words,
            is_final=is_final, speech_final=speech_final, from_finalize=from_finalize,
        )  # fmt: skip

    def _emit_final(self, c: int, words: list[Word], *, speech_final: bool, out: list[Event]) -> None:
        c = max(c, self._final_end)
        out.append(self._result(c, words, is_final=True, speech_final=speech_final, from_finalize=False))
        self._final_end = c
