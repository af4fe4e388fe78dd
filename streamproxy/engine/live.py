"""``GET /v1/listen`` on the engine: one Deepgram Live session per WebSocket.

Mirrors Deepgram's observable behaviour so the gateway needs no engine-specific path: 400 with
``dg-error`` before the upgrade for bad parameters, 429 past ``max_streams``, ``Results`` /
``Metadata`` / ``Error`` frames, ``KeepAlive`` / ``Finalize`` / ``CloseStream`` / ``Configure``,
NET-0001 idle close with 1011. Blocking recognizers run in the executor, one call at a time per
stream so results stay in order; a whisper decode that cannot start in time ends the stream with
``Error`` and 1013, so the gateway fails over instead of waiting on a silent stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import WSMsgType, web

from streamproxy.deepgram.messages import (
    configure_failure_message,
    configure_success_message,
    error_message,
    event_message,
    metadata_message,
)
from streamproxy.deepgram.types import Event
from streamproxy.engine.handshake import serve_admitted
from streamproxy.engine.kinds import open_recognizer, release
from streamproxy.engine.options import LiveOptions, parse_live_params
from streamproxy.engine.recognizer import Recognizer
from streamproxy.engine.state import EngineState
from streamproxy.engine.whisper.pool import EngineOverloaded

__all__ = ["LiveStream", "configure_reply", "live_handler"]

log = logging.getLogger("streamproxy.engine")

_NET0001 = (
    "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001"
)

T = TypeVar("T")


def configure_reply(msg: dict[str, Any], kind: str, request_id: str) -> dict[str, Any]:
    """The one answer to a v1 ``Configure``: ``features`` (an object of booleans) are accepted, as
    the recognizers have no feature they could switch; ``keyterms`` (a list of strings) are refused
    with ``CONFIGURE_KEYTERMS_NOT_SUPPORTED``, since no kind can bias its vocabulary; any other
    shape gets ``CONFIGURE_INVALID`` and nothing changes."""
    features = msg.get("features")
    keyterms = msg.get("keyterms")
    bad = None
    if features is not None and (
        not isinstance(features, dict) or not all(isinstance(v, bool) for v in features.values())
    ):
        bad = "features must be an object of booleans"
    elif keyterms is not None and (not isinstance(keyterms, list) or not all(isinstance(t, str) for t in keyterms)):
        bad = "keyterms must be a list of strings"
    if bad is not None:
        return configure_failure_message(request_id=request_id, code="CONFIGURE_INVALID", description=bad)
    if keyterms is not None:
        return configure_failure_message(
            request_id=request_id,
            code="CONFIGURE_KEYTERMS_NOT_SUPPORTED",
            description=f"the {kind} engine does not support keyterms",
        )
    return configure_success_message(request_id=request_id)


class LiveStream:
    """One Deepgram Live session over an accepted WebSocket."""

    def __init__(self, st: EngineState, ws: web.WebSocketResponse, rec: Recognizer, request_id: str) -> None:
        self.st = st
        self.ws = ws
        self.rec = rec
        self.request_id = request_id
        self.loop = asyncio.get_running_loop()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a recognizer call in the executor (inline for the marker), awaited: calls never overlap."""
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
            await self.send(configure_reply(msg, self.st.kind, self.request_id))
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


async def live_handler(request: web.Request) -> web.StreamResponse:
    return await serve_admitted(request, parse_live_params, _serve_stream, path="/v1/listen", autoping=True)


async def _serve_stream(
    st: EngineState, request: web.Request, ws: web.WebSocketResponse, opts: LiveOptions, request_id: str
) -> web.WebSocketResponse:
    rec = await open_recognizer(st, opts)
    stream = LiveStream(st, ws, rec, request_id)
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
            await stream.call(release, rec)
        log.debug(
            "engine stream ended",
            extra={"event": "engine_stream_end", "request_id": request_id, "audio_s": rec.position_s},
        )
    return ws
