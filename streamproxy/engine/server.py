"""The embedded engine's HTTP/WebSocket server, speaking Deepgram's Live and prerecorded APIs.

The gateway reaches this process through exactly the code path it uses for Deepgram, so the
server mirrors Deepgram's observable behaviour: 400 with ``dg-error`` before the upgrade for bad
parameters, ``Results``/``Metadata``/``Error`` frames, ``KeepAlive``/``Finalize``/``CloseStream``,
NET-0001 idle close with 1011, and ``dg-request-id`` on every response.

The marker recognizer is cheap and runs inline on the event loop; pocketsphinx and whisper run in
a thread pool, one call at a time per stream so results stay in order. Whisper decodes are bounded
per process (``max_concurrent_decodes``); ``max_streams`` refuses streams past capacity with 429
at the handshake, and a stream whose decode cannot start in time gets an ``Error`` and close 1013,
so the gateway fails over instead of waiting on a silent stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import logging
import os
import signal
import sys
import uuid
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from aiohttp import WSMsgType, web
from multidict import MultiMapping

from streamproxy.deepgram.credentials import credentials
from streamproxy.deepgram.messages import (
    configure_failure_message,
    configure_success_message,
    error_message,
    event_message,
    metadata_message,
    prerecorded_response,
)
from streamproxy.deepgram.params import LIVE_PARAMS, PRERECORDED_PARAMS, bounded_int, check_query
from streamproxy.deepgram.types import Event, Result
from streamproxy.engine.marker import MarkerRecognizer
from streamproxy.engine.recognizer import Recognizer
from streamproxy.engine.whisper import EngineOverloaded, WhisperOptions
from streamproxy.loop import run

__all__ = [
    "KINDS",
    "LIVE_PARAMS",
    "PRERECORDED_PARAMS",
    "BadRequest",
    "LiveOptions",
    "make_engine_app",
    "parse_live_params",
    "run_engine",
    "start_engine",
]

log = logging.getLogger("streamproxy.engine")

KINDS = ("marker", "pocketsphinx", "whisper")

_DEFAULT_MODELS = {"marker": "marker", "pocketsphinx": "pocketsphinx-en-us", "whisper": "whisper"}
_NET0001 = (
    "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"
)
_MAX_BODY = 512 * 1024 * 1024
_SPHINX_RATE = 16000

T = TypeVar("T")


class BadRequest(Exception):
    """A request the client must fix; ``str(exc)`` is shown to it verbatim."""


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """The parameters the recognizers act on (everything else is accepted and ignored)."""

    sample_rate: int = 16000
    interim_results: bool = False
    endpointing_ms: int | None = 300
    vad_events: bool = False
    utterance_end_ms: int | None = None
    model: str | None = None
    punctuate: bool = False  # punctuate=true or smart_format=true (honoured by the whisper kind)

    def recognizer_kwargs(self) -> dict[str, Any]:
        return {
            "interim_results": self.interim_results,
            "endpointing_ms": self.endpointing_ms,
            "vad_events": self.vad_events,
            "utterance_end_ms": self.utterance_end_ms,
        }


# --------------------------------------------------------------------------- parameters


def _int(name: str, value: str, lo: int, hi: int) -> int:
    return bounded_int(name, value, lo, hi, error=BadRequest)


def _bool(query: MultiMapping[str], name: str) -> bool:
    return query.get(name, "false").lower() == "true"


def _check_names(query: MultiMapping[str], allowed: frozenset[str]) -> None:
    check_query(query, allowed, error=BadRequest)


def _endpointing(query: MultiMapping[str]) -> int | None:
    if "endpointing" not in query:
        return 300
    raw = query["endpointing"].lower()
    if raw == "false":
        return None
    if raw == "true":
        return 300
    return _int("endpointing", raw, 0, 60_000)


def parse_live_params(query: MultiMapping[str], kind: str) -> LiveOptions:
    """Validate Deepgram Live query parameters for ``kind``; raises :class:`BadRequest`."""
    _check_names(query, LIVE_PARAMS)
    encoding = query.get("encoding", "linear16").lower()
    if encoding != "linear16":
        raise BadRequest(f"unsupported encoding {encoding!r}: the embedded engine accepts only linear16")
    sr = _int("sample_rate", query["sample_rate"], 8000, 48000) if "sample_rate" in query else 16000
    if kind == "pocketsphinx" and sr != _SPHINX_RATE:
        raise BadRequest(f"the pocketsphinx engine accepts only sample_rate=16000 (got {sr}); resample the audio")
    channels = _int("channels", query.get("channels", "1"), 1, 16)
    if channels != 1:
        raise BadRequest(f"the embedded engine accepts only mono audio (channels=1), got channels={channels}")
    if _bool(query, "multichannel"):
        raise BadRequest("multichannel=true is not supported by the embedded engine")
    endpointing = _endpointing(query)
    ue = _int("utterance_end_ms", query["utterance_end_ms"], 1, 60_000) if "utterance_end_ms" in query else None
    return LiveOptions(
        sample_rate=sr,
        interim_results=_bool(query, "interim_results"),
        endpointing_ms=endpointing,
        vad_events=_bool(query, "vad_events"),
        utterance_end_ms=ue,
        model=query.get("model"),
        punctuate=_bool(query, "punctuate") or _bool(query, "smart_format"),
    )


# --------------------------------------------------------------------------- app state


@dataclass
class _EngineState:
    kind: str
    api_key: str | None
    idle_timeout_s: float
    model_name: str
    model_version: str
    executor: ThreadPoolExecutor | None  # recognizer calls; None = inline on the loop
    files: ThreadPoolExecutor  # prerecorded runs
    sockets: set[web.WebSocketResponse]
    max_streams: int = 0  # 0 = unlimited; past it the handshake gets 429
    admitted: int = 0  # streams past the admission check (counted before the upgrade)
    refused: int = 0
    whisper_opts: WhisperOptions | None = None
    whisper: Any = None  # the loaded whisper.DecodePool


STATE = web.AppKey("streamproxy_engine_state", _EngineState)


def _state(request: web.Request) -> _EngineState:
    return request.app[STATE]


def _json_error(status: int, err_code: str, message: str, request_id: str) -> web.Response:
    body = orjson.dumps({"err_code": err_code, "err_msg": message, "request_id": request_id})
    headers = {"dg-request-id": request_id, "dg-error": message.replace("\r", " ").replace("\n", " ")}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _authorized(request: web.Request, api_key: str | None) -> bool:
    """``Authorization: Token|Bearer <key>`` or subprotocols ``token, <key>`` / ``bearer, <key>``."""
    if api_key is None:
        return True
    expected = api_key.encode()
    ok = False
    for scheme, secret in credentials(request.headers):
        if scheme in ("token", "bearer"):
            ok |= hmac.compare_digest(secret.encode(), expected)
    return ok


def _make_recognizer(
    kind: str, opts: LiveOptions, whisper_pool: Any = None, interim_every_s: float = 0.0
) -> Recognizer:
    """Blocking for pocketsphinx and whisper (may load a model): call it in the executor."""
    if kind == "marker":
        return MarkerRecognizer(opts.sample_rate, **opts.recognizer_kwargs())
    if kind == "whisper":
        from streamproxy.engine.whisper import WhisperRecognizer

        return WhisperRecognizer(
            opts.sample_rate,
            pool=whisper_pool,
            punctuate=opts.punctuate,
            interim_every_s=interim_every_s,
            **opts.recognizer_kwargs(),
        )
    from streamproxy.engine.sphinx import SphinxRecognizer

    return SphinxRecognizer(opts.sample_rate, **opts.recognizer_kwargs())


def _release(rec: Recognizer) -> None:
    release: Callable[[], None] | None = getattr(rec, "release", None)
    if release is not None:
        release()


# --------------------------------------------------------------------------- live


class _LiveStream:
    """One Deepgram Live session over an accepted WebSocket."""

    def __init__(self, st: _EngineState, ws: web.WebSocketResponse, rec: Recognizer, request_id: str) -> None:
        self.st = st
        self.ws = ws
        self.rec = rec
        self.request_id = request_id
        self.loop = asyncio.get_running_loop()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self.st.executor is None:
            return fn(*args)
        return await self.loop.run_in_executor(self.st.executor, fn, *args)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def send_events(self, events: list[Event]) -> None:
        for ev in events:
            await self.send(
                event_message(
                    ev,
                    request_id=self.request_id,
                    model_name=self.st.model_name,
                    model_version=self.st.model_version,
                    model_arch=self.st.kind,
                )
            )

    async def close_stream(self) -> None:
        """Flush, trailing results, Metadata, close 1000."""
        events = await self.call(self.rec.close)
        await self.send_events(events)
        await self.send(
            metadata_message(
                request_id=self.request_id,
                duration=self.rec.position_s,
                channels=1,
                model_name=self.st.model_name,
                model_version=self.st.model_version,
                model_arch=self.st.kind,
            )
        )
        await self.ws.close(code=1000)

    async def on_text(self, data: str) -> bool | None:
        """Handle a control message: True = valid, None = invalid (Error sent), False = stream over."""
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "KeepAlive":
            return True
        if kind == "Finalize":
            await self.send_events(await self.call(self.rec.finalize))
            return True
        if kind == "CloseStream":
            await self.close_stream()
            return False
        if kind == "Configure":
            assert isinstance(msg, dict)
            if msg.get("keyterms") is not None:
                await self.send(
                    configure_failure_message(
                        request_id=self.request_id,
                        code="CONFIGURE_KEYTERMS_NOT_SUPPORTED",
                        description=f"the {self.st.kind} engine does not support keyterms",
                    )
                )
            else:
                await self.send(configure_success_message(request_id=self.request_id))
            return True
        await self.send(
            error_message(
                "INVALID_MESSAGE",
                "could not parse the text message: expected JSON with type KeepAlive, Finalize, "
                "CloseStream or Configure",
                "SchemaError",
                message=data[:1024],
                request_id=self.request_id,
            )
        )
        return None

    async def run(self) -> None:
        ws = self.ws
        idle = self.st.idle_timeout_s
        deadline = self.loop.time() + idle
        while True:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                await self.send(error_message("NET-0001", _NET0001, "error", request_id=self.request_id))
                await ws.close(code=1011, message=b"NET-0001: no audio or text message within the timeout window")
                return
            try:
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            if msg.type == WSMsgType.BINARY:
                if not msg.data:  # legacy close-stream signal
                    await self.close_stream()
                    return
                deadline = self.loop.time() + idle
                await self.send_events(await self.call(self.rec.feed, msg.data))
            elif msg.type == WSMsgType.TEXT:
                handled = await self.on_text(msg.data)
                if handled is False:
                    return
                if handled:  # any valid control message counts as activity, like Deepgram
                    deadline = self.loop.time() + idle
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the client is gone
                return


async def _live_handler(request: web.Request) -> web.StreamResponse:
    st = _state(request)
    request_id = str(uuid.uuid4())
    if not _authorized(request, st.api_key):
        return _json_error(401, "INVALID_AUTH", "Invalid credentials.", request_id)
    try:
        opts = parse_live_params(request.query, st.kind)
    except BadRequest as exc:
        return _json_error(400, "Bad Request", str(exc), request_id)
    ws = web.WebSocketResponse(
        protocols=("token", "bearer"), max_msg_size=16 * 1024 * 1024, autoping=True, heartbeat=None
    )
    if not ws.can_prepare(request).ok:
        return _json_error(400, "Bad Request", "expected a WebSocket upgrade for GET /v1/listen", request_id)
    if st.max_streams and st.admitted >= st.max_streams:
        st.refused += 1
        log.warning(
            "engine at capacity: stream refused",
            extra={"event": "engine_overloaded", "request_id": request_id, "max_streams": st.max_streams},
        )
        return _json_error(
            429,
            "TOO_MANY_REQUESTS",
            f"this {st.kind} engine process is at capacity ({st.max_streams} streams); retry on another engine",
            request_id,
        )
    st.admitted += 1
    try:
        return await _live_stream(st, request, ws, opts, request_id)
    finally:
        st.admitted -= 1


async def _live_stream(
    st: _EngineState, request: web.Request, ws: web.WebSocketResponse, opts: LiveOptions, request_id: str
) -> web.WebSocketResponse:
    loop = asyncio.get_running_loop()
    if st.executor is not None:
        every = st.whisper_opts.interim_every_s if st.whisper_opts is not None else 0.0
        rec = await loop.run_in_executor(st.executor, _make_recognizer, st.kind, opts, st.whisper, every)
    else:
        rec = _make_recognizer(st.kind, opts)
    stream = _LiveStream(st, ws, rec, request_id)
    try:
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        st.sockets.add(ws)
        await stream.run()
    except ConnectionResetError:
        pass  # the peer vanished mid-send (a gateway failing over): nothing to report to it
    except asyncio.CancelledError:
        raise
    except EngineOverloaded as exc:
        # Deepgram-shaped, then 1013 (try again later): the gateway replays elsewhere, not a hang.
        log.warning(str(exc), extra={"event": "engine_overloaded", "request_id": request_id})
        with contextlib.suppress(Exception):
            await stream.send(error_message("TOO_MANY_REQUESTS", str(exc), "error", request_id=request_id))
            await ws.close(code=1013, message=b"engine over capacity")
    except Exception as exc:
        log.exception("engine stream failed", extra={"event": "engine_stream_error", "request_id": request_id})
        with contextlib.suppress(Exception):
            await stream.send(error_message("INTERNAL", f"engine error: {exc}", "error", request_id=request_id))
            await ws.close(code=1011, message=b"engine error")
    finally:
        st.sockets.discard(ws)
        with contextlib.suppress(Exception):
            await stream.call(_release, rec)
        log.debug(
            "engine stream ended",
            extra={"event": "engine_stream_end", "request_id": request_id, "audio_s": rec.position_s},
        )
    return ws


# --------------------------------------------------------------------------- prerecorded


def _wav_to_pcm16(body: bytes) -> tuple[np.ndarray, int]:
    """Decode a PCM WAV (8/16/24/32-bit, any channels) to mono int16."""
    try:
        with wave.open(io.BytesIO(body), "rb") as w:
            sr, width, nch = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise BadRequest(f"could not read the WAV file (PCM only): {exc}") from None
    if width == 1:
        a = (np.frombuffer(frames, dtype=np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        a = np.frombuffer(frames, dtype="<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        a = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8) >> 16
    elif width == 4:
        a = np.frombuffer(frames, dtype="<i4") >> 16
    else:
        raise BadRequest(f"unsupported WAV sample width {width * 8} bits")
    if nch > 1:
        a = a[: len(a) // nch * nch].reshape(-1, nch).mean(axis=1).round().astype(np.int32)
    return a.astype("<i2"), sr


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Windowed-sinc low-pass plus linear interpolation: good enough to feed pocketsphinx."""
    if sr_in == sr_out or x.size == 0:
        return x
    xf = x.astype(np.float32)
    if sr_out < sr_in:
        fc = 0.45 * sr_out / sr_in
        n = np.arange(-64, 65)
        h = (2 * fc * np.sinc(2 * fc * n) * np.hamming(n.size)).astype(np.float32)
        xf = np.convolve(xf, h / h.sum(), mode="same")
    n_out = int(x.size * sr_out // sr_in)
    t = np.arange(n_out, dtype=np.float64) * (sr_in / sr_out)
    y = np.interp(t, np.arange(x.size, dtype=np.float64), xf)
    return np.clip(np.round(y), -32768, 32767).astype("<i2")


def _transcribe(
    kind: str,
    opts: LiveOptions,
    pcm: bytes,
    whisper_pool: Any = None,
    progress: Callable[[float, float], None] | None = None,
) -> tuple[list[Result], float]:
    """Run a whole file through a recognizer (blocking); ``progress(done_s, total_s)`` for jobs."""
    if kind == "whisper":
        from streamproxy.engine.whisper import transcribe_file

        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        return transcribe_file(whisper_pool, samples, opts.sample_rate, punctuate=opts.punctuate, progress=progress)
    rec = _make_recognizer(kind, opts)
    try:
        events: list[Event] = []
        step = len(pcm) if kind == "marker" else 32000 * 2
        for i in range(0, len(pcm), max(step, 2)):
            events += rec.feed(pcm[i : i + step])
            if progress is not None:
                progress(min(i + step, len(pcm)) / 2 / opts.sample_rate, len(pcm) / 2 / opts.sample_rate)
        events += rec.close()
        return [e for e in events if isinstance(e, Result) and e.is_final], rec.position_s
    finally:
        _release(rec)


async def _prerecorded_handler(request: web.Request) -> web.Response:
    st = _state(request)
    request_id = str(uuid.uuid4())
    if not _authorized(request, st.api_key):
        return _json_error(401, "INVALID_AUTH", "Invalid credentials.", request_id)
    q = request.query
    try:
        _check_names(q, PRERECORDED_PARAMS)
        endpointing = _endpointing(q)
        if _bool(q, "multichannel"):
            raise BadRequest("multichannel=true is not supported by the embedded engine")
        if "callback" in q:
            raise BadRequest("callback is not supported by the embedded engine (the gateway queues callbacks)")
        body = await request.read()
        if request.content_type == "application/json":
            raise BadRequest("the embedded engine does not fetch URLs; send the audio bytes")
        if not body:
            raise BadRequest("empty request body: send a WAV file or raw linear16 audio")
        if body[:4] == b"RIFF" and "encoding" not in q:
            samples, sr = _wav_to_pcm16(body)
        else:
            if "encoding" not in q:
                raise BadRequest("unrecognised audio: send a PCM WAV file, or raw audio with encoding=linear16")
            if q["encoding"].lower() != "linear16":
                raise BadRequest(f"unsupported encoding {q['encoding']!r}: the embedded engine accepts only linear16")
            if "sample_rate" not in q:
                raise BadRequest("sample_rate is required with encoding=linear16")
            sr = _int("sample_rate", q["sample_rate"], 8000, 48000)
            samples = np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
            nch = _int("channels", q.get("channels", "1"), 1, 16)
            if nch > 1:
                samples = samples[: len(samples) // nch * nch].reshape(-1, nch).mean(axis=1).round().astype("<i2")
        if not 8000 <= sr <= 48000:
            raise BadRequest(f"sample rate must be between 8000 and 48000 Hz, got {sr}")
    except BadRequest as exc:
        return _json_error(400, "Bad Request", str(exc), request_id)
    if st.kind == "pocketsphinx":
        samples = _resample(samples, sr, _SPHINX_RATE)
        sr = _SPHINX_RATE
    opts = LiveOptions(
        sample_rate=sr,
        endpointing_ms=endpointing,
        model=q.get("model"),
        punctuate=_bool(q, "punctuate") or _bool(q, "smart_format"),
    )
    loop = asyncio.get_running_loop()
    pcm = samples.astype("<i2").tobytes()
    # Off the loop for every kind: a long file is seconds of CPU even for the marker.
    finals, duration = await loop.run_in_executor(st.files, _transcribe, st.kind, opts, pcm, st.whisper)
    resp = prerecorded_response(
        finals,
        request_id=request_id,
        duration=duration,
        channels=1,
        model_name=st.model_name,
        model_version=st.model_version,
        model_arch=st.kind,
        sha256=hashlib.sha256(body).hexdigest(),
        utterances=_bool(q, "utterances"),
    )
    return web.Response(body=orjson.dumps(resp), content_type="application/json", headers={"dg-request-id": request_id})


# --------------------------------------------------------------------------- app


async def _healthz(request: web.Request) -> web.Response:
    st = _state(request)
    body: dict[str, Any] = {"status": "ok", "kind": st.kind, "model": st.model_name, "streams": len(st.sockets)}
    if st.max_streams:
        body["max_streams"] = st.max_streams
        body["refused"] = st.refused
    if st.whisper is not None:
        body["decoder"] = st.whisper.stats_dict()
    return web.json_response(body)


def make_engine_app(
    kind: str,
    *,
    api_key: str | None = None,
    idle_timeout_s: float = 10.0,
    model_name: str | None = None,
    max_streams: int = 0,
    whisper: WhisperOptions | None = None,
) -> web.Application:
    """aiohttp app serving ``GET/POST /v1/listen`` and ``GET /healthz`` for one recognizer kind.

    ``max_streams`` > 0 refuses further streams with 429; ``whisper`` configures the whisper kind
    (its model is loaded before the app accepts connections; a missing model fails the start).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; expected one of {', '.join(KINDS)}")
    version = "1.0"
    wopts: WhisperOptions | None = None
    source: Any = None
    if kind == "pocketsphinx":
        import pocketsphinx

        version = getattr(pocketsphinx, "__version__", "5")
        executor = ThreadPoolExecutor(max_workers=max(4, 2 * (os.cpu_count() or 1)), thread_name_prefix="sphinx")
    elif kind == "whisper":
        from streamproxy.engine.whisper import resolve_model

        wopts = whisper or WhisperOptions()
        source = resolve_model(wopts.model_dir, wopts.model_package)  # ModelNotFound says how to fix it
        version = source.version
        model_name = model_name or source.name
        # Threads mostly wait (for audio or for a decode slot); decoding itself is bounded by the pool.
        workers = (max_streams or 32) + 4
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")
    else:
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="engine-files")
    app = web.Application(client_max_size=_MAX_BODY)
    st = _EngineState(
        kind=kind,
        api_key=api_key or None,
        idle_timeout_s=idle_timeout_s,
        model_name=model_name or _DEFAULT_MODELS[kind],
        model_version=version,
        executor=executor if kind in ("pocketsphinx", "whisper") else None,
        files=executor,
        sockets=set(),
        max_streams=max(0, max_streams),
        whisper_opts=wopts,
    )
    app[STATE] = st
    app.router.add_get("/v1/listen", _live_handler)
    app.router.add_post("/v1/listen", _prerecorded_handler)
    app.router.add_get("/healthz", _healthz)

    async def on_startup(app: web.Application) -> None:
        if kind == "pocketsphinx":
            # Load the model before accepting connections: the supervisor's readiness check is a
            # TCP connect, and the first stream should not pay the load.
            from streamproxy.engine.sphinx import default_pool

            await asyncio.get_running_loop().run_in_executor(executor, default_pool.prewarm, 1)
        elif kind == "whisper":
            from streamproxy.engine.whisper import load_pool

            assert wopts is not None
            st.whisper = await asyncio.get_running_loop().run_in_executor(executor, load_pool, wopts, source)

    async def on_shutdown(app: web.Application) -> None:
        for ws in list(st.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"engine shutting down")

    async def on_cleanup(app: web.Application) -> None:
        executor.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


async def start_engine(host: str, port: int, kind: str, **kw: Any) -> tuple[web.AppRunner, int]:
    """Start the engine on ``host:port`` (0 = ephemeral); returns the runner and the bound port."""
    app = make_engine_app(kind, **kw)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    return runner, bound


def run_engine(host: str, port: int, kind: str, **kw: Any) -> None:
    """Blocking entry point for ``streamproxy engine``: serve until SIGTERM/SIGINT."""

    async def main() -> None:
        runner, bound = await start_engine(host, port, kind, **kw)
        line = f"streamproxy engine ({kind}) listening on http://{host}:{bound}"
        if logging.getLogger().handlers:
            log.info(line, extra={"event": "engine_listening", "kind": kind, "host": host, "port": bound})
        else:
            print(line, file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    run(main())
