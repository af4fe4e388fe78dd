"""Twilio Media Streams input (``GET /v1/twilio``) and transcript delivery to subscribers.

Each Twilio stream becomes an ordinary streaming session (the same ``Session`` + ``SessionRunner``
as ``/v1/listen``); its client is a :class:`HubClient` that publishes what the session would send
to a socket into an :class:`EventHub` instead. Subscribers read the hub as Server-Sent Events at
``GET /v1/sessions/{id}/events`` (id = ``streamSid`` or ``callSid``) and/or receive finals at a
webhook (``callback``).

Audio: Twilio sends 20 ms frames of base64 μ-law at 8 kHz. They are decoded to linear16 and
upsampled to 16 kHz by sample repetition (zero-order hold) before the session sees them, so any
engine works (the pocketsphinx engine accepts only 16 kHz). Zero-order hold keeps a constant run
constant and maps 8 kHz sample ``i`` to 16 kHz samples ``2i, 2i+1``: every timestamp is exactly
the 8 kHz one. (Measured on espeak speech through pocketsphinx: hold and linear interpolation give
the same WER, ~0.8; a band-limited resampler was worse, ~0.96, because the wideband model expects
energy above 4 kHz.) Positions follow the media ``timestamp`` (ms from the stream start): a gap is
filled with silence, re-sent audio that overlaps what was already placed is trimmed.

Twilio strips query strings from ``<Stream url>``; options come from ``<Parameter>`` elements
(``customParameters`` in the ``start`` event): ``token`` (client key, when keys are configured),
``callback`` (webhook URL), ``proxy_events``, and any Deepgram Live option (``model``,
``language``, ``interim_results`` ...). The same names in the query string work for other senders.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import WSMsgType, web
from multidict import MultiDict

from ..deepgram.params import LIVE_PARAMS
from ..jobs.fetch import FetchError, UrlPolicy, check_peer, check_url, safe_session
from ..jobs.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from .app import GATEWAY, Gateway, client_credential, deepgram_error
from .auth import PUBLIC_PATHS, Principal, get_auth, principal_of, request_authorized
from .limits import get_limiter
from .params import ParamError, parse_params

log = logging.getLogger("streamproxy.twilio")

TWILIO_RATE = 8000
UPSTREAM_RATE = 16000
#: Fixed by Twilio's format: a client may not set them.
FIXED_PARAMS = frozenset({"encoding", "sample_rate", "channels", "multichannel"})
#: Events kept per session for subscribers that connect late (plus the ``start`` event, always kept).
BACKLOG_EVENTS = 500
#: How long a finished session's events stay readable.
RETAIN_S = 60.0
#: A timestamp jump larger than this is not a lost packet: the stream is refused rather than padded.
MAX_GAP_S = 60.0
#: A subscriber this far behind is disconnected (it may reconnect with Last-Event-ID).
SUBSCRIBER_QUEUE_MAX = 1000
SSE_HEARTBEAT_S = 15.0
SSE_WAIT_MAX_S = 60.0
WEBHOOK_QUEUE_MAX = 1000


# ----------------------------------------------------------------------------- audio
def _mulaw_table() -> np.ndarray:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    mag = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)
    mag -= 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


#: G.711 μ-law byte -> linear16 sample (0xFF and 0x7F are silence).
MULAW_DECODE = _mulaw_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes to int16 samples."""
    return MULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples to G.711 μ-law bytes (for tests and tools; Twilio does the encoding in production)."""
    x = samples.astype(np.int32)
    sign = (x < 0).astype(np.int32)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    return (~((sign << 7) | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def upsample2(samples: np.ndarray) -> bytes:
    """8 kHz -> 16 kHz little-endian linear16 by zero-order hold (exact positions, constant runs kept)."""
    return np.repeat(samples, 2).astype("<i2").tobytes()


@dataclass(slots=True)
class MediaPlacer:
    """Places Twilio media frames on the stream timeline by their ``timestamp``.

    ``pos`` counts 8 kHz samples placed so far; a frame claiming to start later is preceded by
    silence, one claiming to start earlier has its overlap trimmed.
    """

    pos: int = 0
    filled: int = 0  # samples of silence inserted
    trimmed: int = 0  # samples dropped as already placed

    def place(self, payload: bytes, timestamp_ms: int | None) -> tuple[int, bytes]:
        """(silence samples to insert first, μ-law bytes to append)."""
        gap = 0
        if timestamp_ms is not None:
            at = timestamp_ms * TWILIO_RATE // 1000
            if at > self.pos:
                gap = at - self.pos
                if gap > MAX_GAP_S * TWILIO_RATE:
                    raise ValueError(
                        f"media timestamp {timestamp_ms} ms jumps {gap / TWILIO_RATE:.1f} s ahead of the audio "
                        f"received (more than {MAX_GAP_S:.0f} s)"
                    )
            elif at < self.pos:
                skip = min(len(payload), self.pos - at)
                self.trimmed += skip
                payload = payload[skip:]
        self.filled += gap
        self.pos += gap + len(payload)
        return gap, payload


# ----------------------------------------------------------------------------- fan-out
@dataclass(slots=True)
class Event:
    id: int
    name: str  # SSE event name; "message" carries the session's Deepgram JSON
    data: str


@dataclass
class EventHub:
    """One session's events: a bounded backlog plus live fan-out to SSE subscribers and a webhook."""

    session_id: str
    owner: str = ""
    backlog: deque[Event] = field(default_factory=lambda: deque(maxlen=BACKLOG_EVENTS))
    start_event: Event | None = None
    subscribers: set[asyncio.Queue[Event | None]] = field(default_factory=set)
    closed: bool = False
    webhook: Webhook | None = None
    _next_id: int = 1

    def publish(self, name: str, data: str | dict[str, Any]) -> Event | None:
        if self.closed:
            return None
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        ev = Event(self._next_id, name, text)
        self._next_id += 1
        if name == "start":
            self.start_event = ev
        else:
            self.backlog.append(ev)
        for q in list(self.subscribers):
            if q.qsize() >= SUBSCRIBER_QUEUE_MAX:
                self.subscribers.discard(q)  # too slow: cut it off; it can resume with Last-Event-ID
                q.put_nowait(None)
            else:
                q.put_nowait(ev)
        if self.webhook is not None:
            self.webhook.offer(ev)
        return ev

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for q in self.subscribers:
            q.put_nowait(None)
        self.subscribers.clear()
        if self.webhook is not None:
            self.webhook.close()

    async def events(self, after: int = 0) -> AsyncIterator[Event | None]:
        """Backlog after ``after`` then live events; None is a heartbeat tick; ends with the session."""
        q: asyncio.Queue[Event | None] = asyncio.Queue()
        held = ([self.start_event] if self.start_event else []) + list(self.backlog)
        if not self.closed:
            self.subscribers.add(q)
        try:
            for ev in held:
                if ev.id > after:
                    yield ev
            if self.closed:
                return
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), SSE_HEARTBEAT_S)
                except TimeoutError:
                    yield None
                    continue
                if item is None:
                    return
                yield item
        finally:
            self.subscribers.discard(q)


class HubRegistry:
    """Hubs by ``streamSid`` and ``callSid``; a subscriber may wait briefly for a call to start."""

    def __init__(self) -> None:
        self.hubs: dict[str, EventHub] = {}
        self._changed = asyncio.Event()

    def add(self, hub: EventHub, *ids: str) -> None:
        for i in ids:
            if i:
                self.hubs[i] = hub  # a callSid names its latest stream
        self._changed.set()
        self._changed = asyncio.Event()

    def retire(self, hub: EventHub, after_s: float = RETAIN_S) -> None:
        """Keep a finished session's events readable for a while, then forget them."""
        hub.close()

        def drop() -> None:
            for k in [k for k, v in self.hubs.items() if v is hub]:
                del self.hubs[k]

        asyncio.get_running_loop().call_later(after_s, drop)

    async def wait_for(self, sid: str, timeout: float) -> EventHub | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (hub := self.hubs.get(sid)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return hub


HUBS = web.AppKey("twilio_hubs", HubRegistry)


class Webhook:
    """POSTs final results (and the start/end events) to ``callback`` in order, off the audio path.

    Same safety and signing as job callbacks: the URL must pass ``queue.url_allow`` (public
    addresses only by default, checked again on the connected peer), redirects are not followed, and
    with ``queue.webhook_secret`` set each POST carries ``X-Streamproxy-Timestamp`` and
    ``X-Streamproxy-Signature: sha256=HMAC(secret, "<timestamp>." + body)``.
    """

    def __init__(self, url: str, session_id: str, policy: UrlPolicy, secret: str, timeout_s: float) -> None:
        self.url = url
        self.session_id = session_id
        self.policy = policy
        self.secret = secret
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=WEBHOOK_QUEUE_MAX)
        self.delivered = 0
        self.failed = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, ev: Event) -> None:
        if ev.name == "message" and not _is_final_or_metadata(ev.data):
            return  # interim results are not worth an HTTP request each
        if ev.name in ("mark", "dtmf"):
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.failed += 1

    def close(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def _post(self, http: aiohttp.ClientSession, ev: Event) -> bool:
        host = check_url(self.url, self.policy)
        body = ev.data.encode()
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "streamproxy-webhooks/1",
            TIMESTAMP_HEADER: str(ts),
            DELIVERY_HEADER: f"{self.session_id}:{ev.id}",
            EVENT_HEADER: ev.name,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, ts, body)
        async with http.post(self.url, data=body, headers=headers, allow_redirects=False) as r:
            check_peer(r, self.policy, host)
            await r.read()
            return 200 <= r.status < 300

    async def _run(self) -> None:
        async with safe_session(self.policy, self.timeout_s) as http:
            while (ev := await self.queue.get()) is not None:
                for attempt in range(2):  # one retry: a live transcript is not worth holding up for long
                    try:
                        if await self._post(http, ev):
                            self.delivered += 1
                            break
                    except (aiohttp.ClientError, TimeoutError, FetchError):
                        pass
                    if attempt == 1:
                        self.failed += 1
                        log.warning(
                            "webhook delivery failed",
                            extra={"event": "webhook_failed", "session_id": self.session_id, "event_id": ev.id},
                        )
                    else:
                        await asyncio.sleep(0.5)


def _is_final_or_metadata(data: str) -> bool:
    with contextlib.suppress(orjson.JSONDecodeError):
        msg = orjson.loads(data)
        if isinstance(msg, dict):
            return bool(msg.get("is_final")) or msg.get("type") in ("Metadata", "Error")
    return False


class HubClient:
    """The session runner's client: publishes what a socket would carry; binary frames are dropped."""

    def __init__(self, hub: EventHub, on_close: Callable[[int], None] | None = None) -> None:
        self.hub = hub
        self.on_close = on_close
        self.close_code: int | None = None

    async def send_str(self, data: str) -> None:
        self.hub.publish("message", data)

    async def send_bytes(self, data: bytes) -> None:
        return None

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """The session ended (after its trailing results): end the Twilio socket too (drain, fatal error)."""
        self.close_code = code
        if self.on_close is not None:
            self.on_close(code)
        return True


# ----------------------------------------------------------------------------- the Twilio socket
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
    auth = get_auth(gw)
    return await auth.check_key_async(token) or auth.check_token(token)


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
        self.leased = False
        self.policy = UrlPolicy.from_allow(gw.cfg.queue.url_allow)
        self.runner: Any = None
        self.hub: EventHub | None = None
        self.placer = MediaPlacer()
        self.stream_sid = ""
        self.call_sid = ""
        self.ignored_tracks = 0
        self.marks = 0
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
        if self.stream_sid in self.hubs.hubs and not self.hubs.hubs[self.stream_sid].closed:
            await self.fail(1008, f"stream {self.stream_sid} is already active")
            return False
        if len(self.gw.runners) >= self.gw.cfg.limits.max_sessions:
            await self.fail(1013, "Too many concurrent sessions.")
            return False
        refusal = await get_limiter(self.gw).open_session(self.principal.id, self.stream_sid)
        if refusal is not None:
            await self.fail(1013, refusal.message)
            return False
        self.leased = True
        owner = owner_id(self.principal)
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
        self.runner = self.gw.open_session(self.stream_sid, params, client, owner)
        # Twilio never resumes a stream; keep it out of /v1/listen's resumable sessions.
        self.gw.sessions.pop(self.stream_sid, None)
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
        while gap > 0:  # silence in pieces of at most a second
            n = min(gap, TWILIO_RATE)
            self.runner.client_audio(bytes(4 * n))
            gap -= n
        if payload:
            self.runner.client_audio(upsample2(mulaw_decode(payload)))
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "filled_s": self.placer.filled / TWILIO_RATE,
            "trimmed_s": self.placer.trimmed / TWILIO_RATE,
            "audio_s": self.placer.pos / TWILIO_RATE,
            "ignored_frames": self.ignored_tracks,
            "marks": self.marks,
        }

    async def run(self) -> None:
        """Read Twilio events until ``stop`` or the socket ends; then let the session finish."""
        stopped = False
        async for m in self.ws:
            if m.type == WSMsgType.ERROR:
                self.outcome = "client_error"
                break
            if m.type != WSMsgType.TEXT:
                continue  # Twilio sends text only
            try:
                msg = orjson.loads(m.data)
            except orjson.JSONDecodeError:
                await self.fail(1007, "event is not JSON")
                break
            event = msg.get("event") if isinstance(msg, dict) else None
            if event == "connected":
                continue
            if event == "start":
                if self.runner is not None:
                    continue  # a repeated start is ignored
                if not await self.on_start(msg):
                    break
            elif self.runner is None:
                if event in ("media", "mark", "dtmf", "stop"):
                    await self.fail(1008, f"{event} event before start")
                    break
            elif event == "media":
                if not await self.on_media(msg):
                    break
            elif event in ("mark", "dtmf"):
                self.marks += event == "mark"
                assert self.hub is not None
                body = msg.get(event)
                self.hub.publish(event, {"type": event, **(body if isinstance(body, dict) else {})})
            elif event == "stop":
                stopped = True
                self.runner.client_text('{"type":"CloseStream"}')
                break
        if self.runner is None:
            return
        if not stopped and not self.runner.core.closing:
            self.outcome = "client_gone" if self.outcome == "ok" else self.outcome
            self.runner.client_closed()  # no resume for Twilio: finish the transcript now
        try:
            await asyncio.wait_for(self.runner.finished.wait(), self.gw.cfg.session.close_timeout_s + 5.0)
        except TimeoutError:
            self.outcome = "timeout"
            self.runner._finish()


async def twilio_ws(request: web.Request) -> web.StreamResponse:
    """``GET /v1/twilio``: a Twilio Media Streams WebSocket."""
    gw = request.app[GATEWAY]
    hubs = request.app[HUBS]
    if gw.draining:
        return deepgram_error(503, "Server is draining; reconnect to another instance.")
    if len(gw.runners) >= gw.cfg.limits.max_sessions:
        resp = deepgram_error(429, "Too many concurrent sessions.")
        resp.headers["Retry-After"] = "1"
        return resp
    # Twilio sends no credential in the handshake (the route is public; the key comes in `start`),
    # but a wrong one from another sender is refused here.
    if client_credential(request) is not None and not request_authorized(gw, request):
        return deepgram_error(401, "Invalid credentials.")
    ws = web.WebSocketResponse(max_msg_size=1 << 20, autoping=True, heartbeat=None, compress=False)
    await ws.prepare(request)
    stream = TwilioStream(gw, hubs, request, ws)
    t0 = time.monotonic()
    try:
        await stream.run()
    finally:
        if stream.leased and stream.principal is not None:
            await get_limiter(gw).close_session(stream.principal.id, stream.stream_sid)
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
    hub = hubs.hubs.get(sid) or await hubs.wait_for(sid, wait)
    if hub is None:
        return deepgram_error(404, f"no session {sid!r} (not started within {wait:g} s, or expired)")
    if hub.owner and not hmac.compare_digest(hub.owner, owner_id(principal_of(request))):
        return deepgram_error(403, "session belongs to another client credential")
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
    PUBLIC_PATHS.add("/v1/twilio")  # Twilio cannot send credentials in the handshake
    app[HUBS] = HubRegistry()
    app.router.add_get("/v1/twilio", twilio_ws)
    app.router.add_get("/v1/sessions/{id}/events", session_events)
