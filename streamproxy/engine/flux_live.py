"""``GET /v2/listen`` on the engine: one Deepgram Flux session per WebSocket.

Same handshake as ``/v1/listen`` (credentials, 400 with ``dg-error`` for a query outside
``FLUX_PARAMS`` or Deepgram's threshold ranges, 429 past ``max_streams``). Then ``Connected``,
``TurnInfo`` from the kind's turn machine (:mod:`streamproxy.engine.flux`), ``ConfigureSuccess`` /
``ConfigureFailure``, ``Warning`` for a text message it cannot use, ``Error`` before a close it
causes; one ``sequence_id`` counter over all of them. ``CloseStream`` closes with 1000 and,
as Deepgram does, no ``EndOfTurn`` for a turn still open. Flux has no KeepAlive: a WebSocket ping
counts as activity for the idle timeout (pings are answered here, not by aiohttp, to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from aiohttp import WSMsgType, web

from streamproxy.deepgram import flux as fm
from streamproxy.deepgram.flux import FluxThresholds, TurnEvent
from streamproxy.engine.flux import EndpointTurns, MarkerTurns, ThresholdError, check_thresholds
from streamproxy.engine.handshake import serve_admitted
from streamproxy.engine.kinds import open_recognizer, release
from streamproxy.engine.options import FluxOptions, LiveOptions, parse_flux_params
from streamproxy.engine.recognizer import Recognizer
from streamproxy.engine.state import EngineState
from streamproxy.engine.whisper.pool import EngineOverloaded

__all__ = ["FluxStream", "flux_handler", "parse_configure"]

log = logging.getLogger("streamproxy.engine")

T = TypeVar("T")

_THRESHOLD_KEYS = {"eot_threshold", "eager_eot_threshold", "eot_timeout_ms"}


class ConfigureRejected(Exception):
    """A ``Configure`` that is not applied: ``code`` and ``str(exc)`` go into ``ConfigureFailure``."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigureRejected("INVALID_THRESHOLDS", f"{name} must be a number, got {v!r}")
    return float(v)


def parse_configure(msg: dict[str, Any], current: FluxThresholds, model: str) -> FluxThresholds:
    """The settings a Flux ``Configure`` asks for (unsupplied values keep the current ones)."""
    th = current
    raw = msg.get("thresholds")
    if raw is not None:
        if not isinstance(raw, dict):
            raise ConfigureRejected("INVALID_THRESHOLDS", "thresholds must be an object")
        unknown = sorted(set(raw) - _THRESHOLD_KEYS)
        if unknown:
            raise ConfigureRejected("INVALID_THRESHOLDS", f"unknown threshold(s): {', '.join(unknown)}")
        if raw.get("eot_threshold") is not None:
            th = replace(th, eot_threshold=_number("eot_threshold", raw["eot_threshold"]))
        if raw.get("eager_eot_threshold") is not None:
            th = replace(th, eager_eot_threshold=_number("eager_eot_threshold", raw["eager_eot_threshold"]))
        if raw.get("eot_timeout_ms") is not None:
            ms = raw["eot_timeout_ms"]
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or int(ms) != ms:
                raise ConfigureRejected("INVALID_THRESHOLDS", f"eot_timeout_ms must be an integer, got {ms!r}")
            th = replace(th, eot_timeout_ms=int(ms))
        try:
            check_thresholds(th)
        except ThresholdError as exc:
            raise ConfigureRejected("INVALID_THRESHOLDS", str(exc)) from None
    kt = msg.get("keyterms")
    if kt is not None:
        terms = [kt] if isinstance(kt, str) else kt
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise ConfigureRejected("INVALID_KEYTERMS", "keyterms must be a string or a list of strings")
        th = replace(th, keyterms=tuple(terms))
    hints = msg.get("language_hints")
    if hints is not None and model != "flux-general-multi":
        raise ConfigureRejected("INVALID_LANGUAGE_HINTS", "language_hints are only valid with flux-general-multi")
    return th


class FluxStream:
    """One Flux session over an accepted WebSocket."""

    def __init__(
        self,
        st: EngineState,
        ws: web.WebSocketResponse,
        opts: FluxOptions,
        request_id: str,
        rec: Recognizer | None,
    ) -> None:
        self.st = st
        self.ws = ws
        self.opts = opts
        self.request_id = request_id
        self.rec = rec
        self.thresholds = opts.thresholds
        self.marker = MarkerTurns(opts.sample_rate, opts.thresholds) if rec is None else None
        self.endpoint = EndpointTurns(opts.thresholds) if rec is not None else None
        self.seq = 0
        self.loop = asyncio.get_running_loop()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A recognizer call in the executor (inline for the marker), awaited: calls never overlap."""
        if self.st.executor is None:
            return fn(*args)
        return await self.loop.run_in_executor(self.st.executor, fn, *args)

    async def send(self, build: Callable[..., dict[str, Any]], *args: Any, **kw: Any) -> None:
        msg = build(*args, sequence_id=self.seq, **kw)
        self.seq += 1
        await self.ws.send_str(orjson.dumps(msg).decode())

    async def send_turns(self, events: list[TurnEvent]) -> None:
        for ev in events:
            await self.send(fm.turn_info_message, ev, request_id=self.request_id)

    async def feed(self, pcm: bytes) -> None:
        if self.marker is not None:
            await self.send_turns(self.marker.feed(pcm))
            return
        assert self.rec is not None and self.endpoint is not None
        events = await self.call(self.rec.feed, pcm)
        await self.send_turns(self.endpoint.on_events(events, self.rec.position_s))

    async def force_end(self) -> None:
        if self.marker is not None:
            await self.send_turns(self.marker.force_end())
            return
        assert self.rec is not None and self.endpoint is not None
        events = await self.call(self.rec.finalize)
        await self.send_turns(self.endpoint.force_end(events, self.rec.position_s))

    async def configure(self, msg: dict[str, Any]) -> None:
        try:
            th = parse_configure(msg, self.thresholds, self.opts.model)
        except ConfigureRejected as exc:
            await self.send(
                fm.configure_failure_message, request_id=self.request_id, code=exc.code, description=str(exc)
            )
            return
        self.thresholds = th
        await self.send(fm.configure_success_message, th, request_id=self.request_id)
        if self.marker is not None:
            await self.send_turns(self.marker.configure(th))
        else:
            assert self.endpoint is not None
            self.endpoint.thresholds = th
            setter: Callable[[int], None] | None = getattr(self.rec, "set_endpointing_ms", None)
            if setter is not None:
                setter(self.endpoint.endpointing_ms())

    async def on_text(self, data: str) -> bool | None:
        """A client message: True = used, None = not understood (Warning sent), False = stream over."""
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "CloseStream":
            await self.ws.close(code=1000)
            return False
        if kind == "ForceEndTurn":
            await self.force_end()
            return True
        if kind == "Configure":
            assert isinstance(msg, dict)
            await self.configure(msg)
            return True
        await self.send(
            fm.warning_message,
            request_id=self.request_id,
            code="UNSUPPORTED_MESSAGE",
            description="expected a JSON text message with type Configure, ForceEndTurn or CloseStream",
        )
        return None

    async def run(self) -> None:
        ws = self.ws
        idle = self.st.idle_timeout_s
        await self.send(fm.connected_message, request_id=self.request_id)
        deadline = self.loop.time() + idle
        while True:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                await self.send(
                    fm.error_message,
                    code="NET-0001",
                    description="no audio, message or ping received within the timeout window",
                )
                await ws.close(code=1011, message=b"NET-0001: no audio, message or ping within the timeout window")
                return
            try:
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            if msg.type == WSMsgType.BINARY:
                deadline = self.loop.time() + idle
                if msg.data:
                    await self.feed(msg.data)
            elif msg.type == WSMsgType.TEXT:
                handled = await self.on_text(msg.data)
                if handled is False:
                    return
                if handled:
                    deadline = self.loop.time() + idle
            elif msg.type == WSMsgType.PING:
                deadline = self.loop.time() + idle
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                continue
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the client is gone
                return


def _recognizer_options(opts: FluxOptions) -> LiveOptions:
    """A v1 recognizer set up for turns: interim words, VAD onsets, endpoint at the turn silence."""
    return LiveOptions(
        sample_rate=opts.sample_rate,
        interim_results=True,
        endpointing_ms=EndpointTurns(opts.thresholds).endpointing_ms(),
        vad_events=True,
        punctuate=True,
        numerals=opts.numerals,
    )


async def flux_handler(request: web.Request) -> web.StreamResponse:
    # autoping off: the stream answers pings itself, so that they count as client activity.
    return await serve_admitted(request, parse_flux_params, _serve, path="/v2/listen", autoping=False)


async def _serve(
    st: EngineState, request: web.Request, ws: web.WebSocketResponse, opts: FluxOptions, request_id: str
) -> web.WebSocketResponse:
    # The marker kind has its own turn machine; the others turn their v1 events into turns.
    rec = None if st.kind == "marker" else await open_recognizer(st, _recognizer_options(opts))
    stream = FluxStream(st, ws, opts, request_id, rec)
    try:
        ws.headers["dg-request-id"] = request_id
        await ws.prepare(request)
        st.sockets.add(ws)
        await stream.run()
    except ConnectionResetError:
        pass  # the peer vanished mid-send (a gateway failing over)
    except asyncio.CancelledError:
        raise
    except EngineOverloaded as exc:
        log.warning(str(exc), extra={"event": "engine_overloaded", "request_id": request_id})
        with contextlib.suppress(Exception):
            await stream.send(fm.error_message, code="TOO_MANY_REQUESTS", description=str(exc))
            await ws.close(code=1013, message=b"engine over capacity")
    except Exception as exc:
        log.exception("engine stream failed", extra={"event": "engine_stream_error", "request_id": request_id})
        with contextlib.suppress(Exception):
            await stream.send(fm.error_message, code="INTERNAL_SERVER_ERROR", description=f"engine error: {exc}")
            await ws.close(code=1011, message=b"engine error")
    finally:
        st.sockets.discard(ws)
        if rec is not None:
            with contextlib.suppress(Exception):
                await stream.call(release, rec)
        log.debug("engine flux stream ended", extra={"event": "engine_stream_end", "request_id": request_id})
    return ws
