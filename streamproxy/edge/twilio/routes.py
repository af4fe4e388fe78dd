"""``GET /v1/twilio`` (a Twilio Media Streams socket becomes an ordinary session) and
``GET /v1/sessions/{id}/events`` (its transcript as Server-Sent Events)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from multidict import MultiDict

from ...auth.authenticator import Principal
from ...deepgram.credentials import credentials
from ...deepgram.messages import CLOSE_STREAM
from ...deepgram.params import LIVE_PARAMS
from ...gateway.admission import Refused, admit
from ...gateway.limits import Lease
from ...gateway.runner import SessionRunner
from ...gateway.state import GATEWAY, Gateway
from ...outbound.fetch import FetchError, UrlPolicy, check_url
from ..errors import deepgram_error, refusal_response
from ..middleware import principal_of, request_authorized
from ..params import ParamError, parse_params
from .codec import TWILIO_RATE, UPSTREAM_RATE, mulaw_decode, upsample2
from .hub import EventHub, HubClient, HubRegistry
from .media import MediaPlacer
from .webhook import Event, Webhook

log = logging.getLogger("streamproxy.twilio")

#: Fixed by Twilio's format: a client may not set them.
FIXED_PARAMS = frozenset({"encoding", "sample_rate", "channels", "multichannel"})
#: A ``mark``/``dtmf`` body larger than this (JSON bytes) is dropped: Twilio's are a few dozen bytes.
MAX_EVENT_BODY_BYTES = 4096
SSE_WAIT_MAX_S = 60.0
HUBS = web.AppKey("twilio_hubs", HubRegistry)


@dataclass(slots=True)
class StreamOptions:
    deepgram: MultiDict[str]
    token: str | None
    callback: str | None
    proxy_events: bool


def stream_options(query: Mapping[str, str], custom: Mapping[str, Any]) -> StreamOptions:
    """Options from the query string and ``customParameters`` (the latter win); raises ParamError."""
    merged: dict[str, str] = {k: v for k, v in query.items()}
    merged.update({str(k): str(v) for k, v in custom.items() if isinstance(v, str | int | float | bool)})
    fixed = sorted(FIXED_PARAMS & merged.keys())
    if fixed:
        raise ParamError(f"{', '.join(fixed)} cannot be set: Twilio audio is μ-law 8 kHz mono")
    dg = MultiDict((k, v) for k, v in merged.items() if k in LIVE_PARAMS and k != "callback")
    callback = merged.get("callback") or None
    pe = merged.get("proxy_events", "false").lower()
    if pe not in ("true", "false"):
        raise ParamError(f"proxy_events must be true or false, got {pe!r}")
    return StreamOptions(dg, merged.get("token") or None, callback, pe == "true")


async def _token_principal(gw: Gateway, token: str | None) -> Principal | None:
    """The client for a key (or grant token) given as the ``token`` parameter; None if not valid."""
    if not token:
        return None
    return await gw.auth.check_key_async(token) or gw.auth.check_token(token)


def owner_id(principal: Principal | None) -> str:
    """Who may read a session's events: its key id; "" (anyone allowed in) for anonymous clients."""
    return "" if principal is None or principal.kind == "anonymous" else principal.id


class TwilioStream:
    """State of one ``/v1/twilio`` socket: the Twilio protocol on one side, a session on the other."""

    def __init__(self, gw: Gateway, hubs: HubRegistry, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.gw = gw
        self.hubs = hubs
        self.request = request
        self.ws = ws
        # A credential in the handshake (non-Twilio senders) or anonymous access; else the token parameter.
        self.principal: Principal | None = principal_of(request) if request_authorized(gw, request) else None
        self.lease: Lease | None = None
        self.policy = UrlPolicy.from_allow(gw.cfg.queue.url_allow)
        self.runner: SessionRunner | None = None
        self.client: HubClient | None = None
        self.hub: EventHub | None = None
        self.placer = MediaPlacer()
        self.stream_sid = ""
        self.call_sid = ""
        self.ignored_tracks = 0
        self.marks = 0
        self.dropped_events = 0
        self.outcome = "ok"

    async def fail(self, code: int, message: str) -> None:
        log.info("twilio stream refused", extra={"event": "twilio_refused", "reason": message})
        if self.hub is not None:
            self.hub.publish("error", {"type": "Error", "err_code": "TWILIO_STREAM", "description": message})
        self.outcome = "refused"
        await self.ws.close(code=code, message=message.encode()[:120])

    def _session_closed(self, code: int) -> None:
        if not self.ws.closed:
            asyncio.get_running_loop().create_task(self.ws.close(code=code))

    async def on_start(self, msg: dict[str, Any]) -> bool:
        start = msg.get("start") or {}
        if not isinstance(start, dict):
            await self.fail(1008, "start event without a start object")
            return False
        self.stream_sid = str(msg.get("streamSid") or start.get("streamSid") or "")
        self.call_sid = str(start.get("callSid") or "")
        if not self.stream_sid:
            await self.fail(1008, "start event without streamSid")
            return False
        fmt = start.get("mediaFormat") or {}
        try:
            enc = str(fmt.get("encoding", "audio/x-mulaw")).lower()
            rate, channels = int(fmt.get("sampleRate", TWILIO_RATE)), int(fmt.get("channels", 1))
        except (AttributeError, TypeError, ValueError):
            enc, rate, channels = "?", 0, 0
        if enc != "audio/x-mulaw" or rate != TWILIO_RATE or channels != 1:
            await self.fail(1003, f"unsupported mediaFormat {fmt}; expected audio/x-mulaw 8000 Hz mono")
            return False
        custom = start.get("customParameters") or {}
        if not isinstance(custom, dict):
            custom = {}
        try:
            opts = stream_options(self.request.query, custom)
            dg = MultiDict(opts.deepgram)
            dg.update({"encoding": "linear16", "sample_rate": str(UPSTREAM_RATE)})
            if opts.proxy_events:
                dg["proxy_events"] = "true"
            params = parse_params(dg)
            if opts.callback:
                check_url(opts.callback, self.policy)
        except (ParamError, FetchError) as e:
            await self.fail(1008, str(e))
            return False
        if self.principal is None or (opts.token and self.principal.kind == "anonymous"):
            self.principal = await _token_principal(self.gw, opts.token) or self.principal
        if self.principal is None:
            await self.fail(1008, 'Invalid credentials: pass a client key as <Parameter name="token" value="...">')
            return False
        owner = owner_id(self.principal)
        active = self.hubs.hubs.get((owner, self.stream_sid))
        if active is not None and not active.closed:
            await self.fail(1008, f"stream {self.stream_sid} is already active")
            return False
        try:
            self.lease = await admit(self.gw, principal=self.principal, session_id=self.stream_sid)
        except Refused as e:
            await self.fail(e.refusal.close_code, e.refusal.message)
            return False
        hub = self.hub = EventHub(self.stream_sid, owner)
        if opts.callback:
            q = self.gw.cfg.queue
            hub.webhook = Webhook(
                opts.callback, self.stream_sid, self.policy, q.webhook_secret, min(q.callback_timeout_s, 10.0)
            )
        self.hubs.add(hub, self.stream_sid, self.call_sid)
        hub.publish(
            "start",
            {
                "type": "TwilioStart",
                "session_id": self.stream_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "accountSid": start.get("accountSid", ""),
                "tracks": start.get("tracks", []),
                "customParameters": {k: v for k, v in custom.items() if k != "token"},
            },
        )
        client = HubClient(hub, self._session_closed)
        self.client = client
        # Twilio never resumes a stream: not resumable, so a drop finishes the transcript at once.
        self.runner = self.gw.open_session(
            self.stream_sid, params.fmt, params.upstream_query, client, owner=owner, lease=self.lease,
            proxy_events=params.proxy_events, resumable=False, protocol="twilio",
        )  # fmt: skip
        log.info(
            "twilio stream start",
            extra={"event": "twilio_start", "session_id": self.stream_sid, "call_sid": self.call_sid},
        )
        return True

    async def on_media(self, msg: dict[str, Any]) -> bool:
        media = msg.get("media") or {}
        if not isinstance(media, dict):
            return True
        if media.get("track", "inbound") not in ("inbound", "inbound_track"):
            self.ignored_tracks += 1  # outbound audio (both_tracks): not transcribed
            return True
        try:
            payload = base64.b64decode(media.get("payload", ""), validate=True)
            ts = media.get("timestamp")
            timestamp = None if ts is None else int(ts)
            gap, payload = self.placer.place(payload, timestamp)
        except (binascii.Error, ValueError, TypeError) as e:
            await self.fail(1007, f"bad media event: {e}")
            return False
        assert self.runner is not None
        while gap > 0:  # silence in pieces of at most a second
            n = min(gap, TWILIO_RATE)
            self.runner.client_audio(bytes(4 * n))
            gap -= n
        if payload:
            self.runner.client_audio(upsample2(mulaw_decode(payload)))
        return True

    def on_mark_or_dtmf(self, event: str, body: Any) -> None:
        """Mirror the event to subscribers, unless its body is larger than any Twilio sends."""
        assert self.hub is not None
        data = orjson.dumps({"type": event, **(body if isinstance(body, dict) else {})}).decode()
        if len(data) > MAX_EVENT_BODY_BYTES:
            self.dropped_events += 1
            if self.dropped_events == 1:
                log.info(
                    "twilio event too large, dropped",
                    extra={"event": "twilio_event_dropped", "session_id": self.stream_sid, "bytes": len(data)},
                )
            return
        self.hub.publish(event, data)

    def summary(self) -> dict[str, Any]:
        return {
            "filled_s": self.placer.filled / TWILIO_RATE,
            "trimmed_s": self.placer.trimmed / TWILIO_RATE,
            "unfilled_s": self.placer.unfilled / TWILIO_RATE,
            "audio_s": self.placer.pos / TWILIO_RATE,
            "ignored_frames": self.ignored_tracks,
            "marks": self.marks,
            "dropped_events": self.dropped_events,
        }

    async def run(self) -> None:
        """Read Twilio events until ``stop`` or the socket ends; then let the session finish."""
        try:
            await self._read()
        except (ConnectionError, RuntimeError):
            self.outcome = "client_error"
        finally:
            if self.runner is not None and self.client is not None:
                if not self.runner.core.closing and self.outcome == "ok":
                    self.outcome = "client_gone"
                await self.runner.client_ended(self.client)

    async def _read(self) -> None:
        async for m in self.ws:
            if m.type == WSMsgType.ERROR:
                self.outcome = "client_error"
                return
            if m.type != WSMsgType.TEXT:
                continue  # Twilio sends text only
            try:
                msg = orjson.loads(m.data)
            except orjson.JSONDecodeError:
                await self.fail(1007, "event is not JSON")
                return
            event = msg.get("event") if isinstance(msg, dict) else None
            if event == "connected":
                continue
            if event == "start":
                if self.runner is not None:
                    continue  # a repeated start is ignored
                if not await self.on_start(msg):
                    return
            elif self.runner is None:
                if event in ("media", "mark", "dtmf", "stop"):
                    await self.fail(1008, f"{event} event before start")
                    return
            elif event == "media":
                if not await self.on_media(msg):
                    return
            elif event in ("mark", "dtmf"):
                self.marks += event == "mark"
                self.on_mark_or_dtmf(event, msg.get(event))
            elif event == "stop":
                self.runner.client_text(CLOSE_STREAM)
                return


async def twilio_ws(request: web.Request) -> web.StreamResponse:
    """``GET /v1/twilio``: a Twilio Media Streams WebSocket."""
    gw = request.app[GATEWAY]
    hubs = request.app[HUBS]
    try:  # the caller is known only at `start`: what does not depend on it is checked now
        await admit(gw, principal=None, session_id="")
    except Refused as e:
        return refusal_response(e.refusal)
    # Twilio sends no credential in the handshake (the route is public; the key comes in `start`),
    # but a wrong one from another sender is refused here.
    if credentials(request.headers) and not request_authorized(gw, request):
        return deepgram_error(401, "Invalid credentials.")
    ws = web.WebSocketResponse(max_msg_size=1 << 20, autoping=True, heartbeat=10.0, compress=False)
    await ws.prepare(request)
    stream = TwilioStream(gw, hubs, request, ws)
    t0 = time.monotonic()
    try:
        await stream.run()
    finally:
        if stream.runner is None and stream.lease is not None:
            await stream.lease.release()  # never reached a session: the slot is not its to release
        if stream.hub is not None:
            summary = stream.summary()
            code = stream.runner.close_code if stream.runner is not None else None
            stream.hub.publish("end", {"type": "End", "session_id": stream.stream_sid, "close_code": code, **summary})
            hubs.retire(stream.hub)
            log.info(
                "twilio stream end",
                extra={
                    "event": "twilio_end",
                    "session_id": stream.stream_sid,
                    "outcome": stream.outcome,
                    "duration_s": round(time.monotonic() - t0, 3),
                    **summary,
                },
            )
        if not ws.closed:
            await ws.close()
    return ws


# ----------------------------------------------------------------------------- SSE
def _sse(ev: Event) -> bytes:
    lines = [f"id: {ev.id}", f"event: {ev.name}"] + [f"data: {line}" for line in ev.data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


async def session_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/sessions/{id}/events``: a Twilio session's transcript as Server-Sent Events.

    Replays the backlog after ``Last-Event-ID`` (header or ``last_event_id``), then streams live;
    ``wait`` (seconds, default 10) waits for a call that has not started yet.
    """
    gw = request.app[GATEWAY]
    hubs = request.app[HUBS]
    sid = request.match_info["id"]
    if not request_authorized(gw, request):  # the edge middleware has normally refused it already
        return deepgram_error(401, "Invalid credentials.")
    try:
        wait = min(SSE_WAIT_MAX_S, max(0.0, float(request.query.get("wait", "10"))))
        after = int(request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or 0)
    except ValueError:
        return deepgram_error(400, "wait must be a number of seconds and Last-Event-ID an integer")
    owner = owner_id(principal_of(request))
    hub = hubs.get(owner, sid) or await hubs.wait_for(owner, sid, wait)
    if hub is None:  # another key's session of that id is not this caller's to know of either
        return deepgram_error(404, f"no session {sid!r} (not started within {wait:g} s, or expired)")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    try:
        await resp.write(b"retry: 2000\n\n")
        async for ev in hub.events(after):
            await resp.write(b": keepalive\n\n" if ev is None else _sse(ev))
    except (ConnectionResetError, ConnectionError):
        pass
    return resp


def add_twilio_routes(app: web.Application) -> None:
    app[HUBS] = HubRegistry()
    app.router.add_get("/v1/twilio", twilio_ws)
    app.router.add_get("/v1/sessions/{id}/events", session_events)
