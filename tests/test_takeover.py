"""Any instance resumes any session: two ``streamproxy serve`` processes share the Redis on
127.0.0.1:6379 (a unique key prefix per test), each with its own marker engine.

- the instance holding a session is SIGKILLed with its engine mid-stream: the client resumes on the
  other one, whose finals continue exactly where the dead one's stopped;
- the holder is alive (the client reconnects elsewhere while its old socket still looks open): the
  session moves, the old holder stops its upstream first (one upstream at a time);
- the same through a real load balancer (nginx, round robin, WebSocket upgrade);
- and the sans-I/O part (checkpoints -> a session on another instance) on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import websockets
from websockets.asyncio.client import ClientConnection

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.session.checkpoint import Checkpoint
from streamproxy.session.core import ResumeError, SaveCheckpoint, SendClient, Session, SessionSettings
from tests.helpers.marker import final_words, marker_audio, spaced_words
from tests.helpers.serve_proc import ServeProc, serve_proc

SR = 16000
AUDIO = marker_audio(spaced_words(range(31, 43), word_ms=200, gap_ms=350, lead_ms=100), SR)
EXPECTED = [(f"w{k}", round(0.1 + i * 0.55, 6), round(0.3 + i * 0.55, 6)) for i, k in enumerate(range(31, 43))]
CHUNK = SR * 2 // 10  # 100 ms
REDIS_URL = "redis://127.0.0.1:6379/0"
NGINX = "/usr/sbin/nginx"


def _rounded(words: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    return [(w, round(s, 6), round(e, 6)) for w, s, e in words]


# ----------------------------------------------------------------------------- two instances
@contextlib.contextmanager
def _pair(tmp_path: Path) -> Iterator[tuple[ServeProc, ServeProc, str]]:
    prefix = "{tk" + uuid.uuid4().hex[:10] + "}"
    env = {
        "STREAMPROXY_QUEUE_REDIS_URL": REDIS_URL,
        "STREAMPROXY_QUEUE_PREFIX": prefix,
        "STREAMPROXY_QUEUE_SERVE_WORKER": "false",
        "STREAMPROXY_SESSION_RESUME_GRACE_S": "20",
    }
    with (
        serve_proc(tmp_path / "a", env=env, own_group=True) as a,
        serve_proc(tmp_path / "b", env=env, own_group=True) as b,
    ):
        try:
            yield a, b, prefix
        finally:
            r = redis.Redis.from_url(REDIS_URL)
            keys = list(r.scan_iter(match=prefix + "*", count=1000))  # the queue's
            keys += list(r.scan_iter(match="{" + prefix.strip("{}") + ":*", count=1000))  # sessions, instances
            if keys:
                r.delete(*set(keys))
            r.close()


def _kill(sp: ServeProc) -> None:
    """SIGKILL the gateway and its engine (its process group): no drain, no last word."""
    os.killpg(sp.proc.pid, signal.SIGKILL)
    sp.proc.wait(10)


async def _active_sessions(http: aiohttp.ClientSession, port: int) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("streamproxy_sessions_active{")
    )


# ----------------------------------------------------------------------------- the client
class ResumingClient:
    """What a resume-capable client keeps: every message, the highest ``seq``, and the end (in
    bytes) of the last final it has; it holds its audio from there on."""

    def __init__(self) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.last_seq = 0
        self.final_end = 0
        self.finals = 0
        self.sid = ""

    def url(self, port: int, extra: str = "") -> str:
        return f"ws://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate={SR}&proxy_events=true{extra}"

    def resume_url(self, port: int) -> str:
        return self.url(port, f"&resume={self.sid}&last_seq={self.last_seq}&audio_offset={self.final_end}")

    async def read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                msg = orjson.loads(raw)
                self.msgs.append(msg)
                seq = (msg.get("proxy") or {}).get("seq")
                if seq is not None:
                    assert seq > self.last_seq, f"seq {seq} after {self.last_seq}: repeated or back"
                    self.last_seq = seq
                if msg.get("type") == "Results" and msg.get("is_final"):
                    self.final_end = round((msg["start"] + msg["duration"]) * SR) * 2
                    if msg["channel"]["alternatives"][0]["words"]:
                        self.finals += 1

    async def stream_until(self, ws: ClientConnection, finals: int, reader: asyncio.Task[None]) -> int:
        """Send audio (5x real time) until ``finals`` finals arrived, then 300 ms more; returns the
        bytes sent."""
        sent = 0
        while self.finals < finals and sent < len(AUDIO) and not reader.done():
            await ws.send(AUDIO[sent : sent + CHUNK])
            sent += CHUNK
            await asyncio.sleep(0.02)
        assert self.finals >= finals, "no finals from the first instance"
        for _ in range(3):
            await ws.send(AUDIO[sent : sent + CHUNK])
            sent += CHUNK
        await asyncio.sleep(0.05)
        return sent

    async def resume_and_finish(self, port: int) -> dict[str, Any]:
        """Resume on ``port``, resend from where it says, close; returns the ``resumed`` status."""
        async with websockets.connect(self.resume_url(port), open_timeout=15) as ws:
            status = orjson.loads(await ws.recv())
            assert status["type"] == "ProxyStatus" and status["state"] == "resumed", status
            reader = asyncio.create_task(self.read(ws))
            pos = status["audio_bytes_received"]
            while pos < len(AUDIO):
                await ws.send(AUDIO[pos : pos + CHUNK])
                pos += CHUNK
                await asyncio.sleep(0.01)
            await ws.send('{"type":"CloseStream"}')
            await asyncio.wait_for(reader, 20)
            assert ws.close_code == 1000
        return dict(status)

    def check_uninterrupted(self) -> None:
        results = [m for m in self.msgs if m.get("type") != "ProxyStatus"]
        assert _rounded(final_words(results)) == EXPECTED
        assert results[-1]["type"] == "Metadata"


async def _dead_holder_run(client: ResumingClient, first: int, second: int, kill: Any) -> dict[str, Any]:
    ws = await websockets.connect(client.url(first))
    assert ws.response is not None
    client.sid = ws.response.headers["dg-request-id"]
    reader = asyncio.create_task(client.read(ws))
    await client.stream_until(ws, 3, reader)
    kill()
    await asyncio.wait_for(reader, 10)  # the dead instance's socket closes (kernel RST/FIN)
    held_end, held_seq = client.final_end, client.last_seq
    status = await client.resume_and_finish(second)
    # Never beyond the end of the last final the client has; it resends from exactly there.
    assert status["audio_bytes_received"] == held_end
    assert status["last_seq"] >= held_seq
    return status


async def test_holder_killed_mid_stream_another_instance_takes_over(tmp_path: Path) -> None:
    with _pair(tmp_path) as (a, b, _):
        client = ResumingClient()
        await _dead_holder_run(client, a.port, b.port, lambda: _kill(a))
        client.check_uninterrupted()
        end = await asyncio.to_thread(b.wait_event, "session_end", 10)
        assert end["outcome"] == "ok" and end["close_code"] == 1000


async def test_live_holder_lets_the_session_move(tmp_path: Path) -> None:
    """The client reconnects to B while A still has its old socket: A closes that socket (4000),
    stops its upstream and writes its last checkpoint before B starts one; B carries on."""
    with _pair(tmp_path) as (a, b, _):
        client = ResumingClient()
        old = await websockets.connect(client.url(a.port))
        assert old.response is not None
        client.sid = old.response.headers["dg-request-id"]
        reader = asyncio.create_task(client.read(old))
        await client.stream_until(old, 3, reader)
        reader.cancel()  # the client moves on: what A still sends on the old socket, it never reads
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        async with aiohttp.ClientSession() as http:
            assert await _active_sessions(http, a.port) == 1
            done = asyncio.create_task(client.resume_and_finish(b.port))
            moved = await asyncio.to_thread(a.wait_event, "session_end", 15)
            assert moved["outcome"] == "moved"
            status = await done
            assert await _active_sessions(http, a.port) == 0
        assert status["audio_bytes_received"] <= client.final_end
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(1000):
                await asyncio.wait_for(old.recv(), 5)  # drain what A sent before it let go
        assert old.close_code == 4000
        client.check_uninterrupted()
        assert any(r.get("event") == "session_release" for r in a.records())


# ----------------------------------------------------------------------------- Flux (/v2/listen)
#: Eight one-word turns (an EndOfTurn 700 ms into each 900 ms gap), the last ended at CloseStream.
FLUX_AUDIO = marker_audio(spaced_words(range(51, 59), word_ms=250, gap_ms=900, lead_ms=100), SR)


class FluxResumingClient(ResumingClient):
    """The same client on ``/v2/listen``: it holds its audio from the ``audio_window_end`` of the
    last ``EndOfTurn`` it has (a turn in progress is completed by whoever carries on)."""

    audio = FLUX_AUDIO
    cut = 0

    def url(self, port: int, extra: str = "") -> str:
        return (
            f"ws://127.0.0.1:{port}/v2/listen?model=flux-general-en&encoding=linear16&sample_rate={SR}"
            f"&proxy_events=true{extra}"
        )

    async def read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                msg = orjson.loads(raw)
                self.msgs.append(msg)
                seq = (msg.get("proxy") or {}).get("seq")
                if seq is not None:
                    assert seq > self.last_seq, f"seq {seq} after {self.last_seq}: repeated or back"
                    self.last_seq = seq
                if msg.get("type") == "TurnInfo" and msg["event"] == "EndOfTurn":
                    self.final_end = round(msg["audio_window_end"] * SR) * 2
                    self.finals += bool(msg["words"])

    async def stream_until(self, ws: ClientConnection, finals: int, reader: asyncio.Task[None]) -> int:
        """Audio (5x real time) until ``finals`` turns ended, then 500 ms more: into the next turn
        (its StartOfTurn and an Update or two sent, not yet ended)."""
        sent = 0
        audio = self.audio
        while self.finals < finals and sent < len(audio) and not reader.done():
            await ws.send(audio[sent : sent + CHUNK])
            sent += CHUNK
            await asyncio.sleep(0.02)
        assert self.finals >= finals, "no turns from the first instance"
        for _ in range(5):
            await ws.send(audio[sent : sent + CHUNK])
            sent += CHUNK
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        return sent

    async def resume_and_finish(self, port: int) -> dict[str, Any]:
        self.cut = len(self.msgs)  # what the client had before it resumed
        async with websockets.connect(self.resume_url(port), open_timeout=15) as ws:
            status = orjson.loads(await ws.recv())
            assert status["type"] == "ProxyStatus" and status["state"] == "resumed", status
            reader = asyncio.create_task(self.read(ws))
            pos = status["audio_bytes_received"]
            while pos < len(self.audio):
                await ws.send(self.audio[pos : pos + CHUNK])
                pos += CHUNK
                await asyncio.sleep(0.01)
            await ws.send('{"type":"CloseStream"}')
            await asyncio.wait_for(reader, 20)
            assert ws.close_code == 1000
        return dict(status)

    def check_uninterrupted(self) -> None:
        """The turns of an uninterrupted run (words, times, triggers, turn_index 0, 1, 2 …), one
        timeline: ``sequence_id`` 0, 1, 2 … without holes or repeats, one ``Connected``, exactly one
        StartOfTurn and one EndOfTurn per turn, in order."""
        from tests.test_flux_core import reference, turns
        from tests.test_flux_gateway import check_timeline

        msgs = [m for m in self.msgs if m.get("type") != "ProxyStatus"]
        check_timeline(msgs)
        want = turns(reference(self.audio, SR))
        assert [t[3] for t in want] == [f"w{k}" for k in range(51, 59)]
        assert turns(msgs) == want
        assert [m["proxy"]["seq"] for m in msgs] == [m["sequence_id"] + 1 for m in msgs]


async def test_flux_session_survives_sigkill_of_its_gateway(tmp_path: Path) -> None:
    """As the Live test, on /v2/listen: the holder and its engine SIGKILLed inside a turn; the
    client resumes on the other instance from the last EndOfTurn it has; its turns, turn_index and
    sequence numbers are those of an uninterrupted run."""
    with _pair(tmp_path) as (a, b, _):
        client = FluxResumingClient()
        status = await _dead_holder_run(client, a.port, b.port, lambda: _kill(a))
        assert 0 < status["audio_bytes_received"] < len(FLUX_AUDIO)
        assert client.msgs[client.cut - 1]["event"] in ("StartOfTurn", "Update")  # killed inside a turn
        client.check_uninterrupted()
        end = await asyncio.to_thread(b.wait_event, "session_end", 10)
        assert end["outcome"] == "ok" and end["close_code"] == 1000 and end.get("protocol", "v2") == "v2"


async def test_flux_live_holder_lets_the_session_move(tmp_path: Path) -> None:
    """The Flux client reconnects to B while A still has its old socket: A closes it (4000), stops
    its upstream and stores its last checkpoint before B opens one; the turns go on as one run."""
    with _pair(tmp_path) as (a, b, _):
        client = FluxResumingClient()
        old = await websockets.connect(client.url(a.port))
        assert old.response is not None
        client.sid = old.response.headers["dg-request-id"]
        reader = asyncio.create_task(client.read(old))
        await client.stream_until(old, 3, reader)
        reader.cancel()  # the client moves on: what A still sends on the old socket, it never reads
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        done = asyncio.create_task(client.resume_and_finish(b.port))
        moved = await asyncio.to_thread(a.wait_event, "session_end", 15)
        assert moved["outcome"] == "moved"
        status = await done
        assert status["audio_bytes_received"] <= client.final_end
        with pytest.raises(websockets.ConnectionClosed):
            for _ in range(1000):
                await asyncio.wait_for(old.recv(), 5)
        assert old.close_code == 4000
        client.check_uninterrupted()


# ----------------------------------------------------------------------------- a real load balancer
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nginx_conf(tmp_path: Path, ports: tuple[int, int]) -> tuple[Path, int]:
    if not os.path.exists(NGINX):
        pytest.fail("nginx is required (Debian package nginx-light; .ci/run installs it)")
    d = tmp_path / "nginx"
    d.mkdir()
    port = _free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=0;" for p in ports)
    temps = " ".join(f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(
        f"""{user}
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  {temps}
  upstream gateways {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""
    )
    return d, port


@contextlib.asynccontextmanager
async def _nginx(tmp_path: Path, ports: tuple[int, int]) -> AsyncIterator[int]:
    """nginx round robin in front of both gateways, WebSocket upgrade passed through."""
    d, port = _nginx_conf(tmp_path, ports)
    proc = await asyncio.create_subprocess_exec(NGINX, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;")
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_through_a_round_robin_load_balancer(tmp_path: Path) -> None:
    """The client only knows the balancer: its session lands on one instance, that instance is
    killed, the resume lands on the other (round robin, or nginx's retry past the dead one)."""
    with _pair(tmp_path) as (a, b, _):
        async with _nginx(tmp_path, (a.port, b.port)) as lb, aiohttp.ClientSession() as http:
            client = ResumingClient()
            ws = await websockets.connect(client.url(lb))
            assert ws.response is not None
            client.sid = ws.response.headers["dg-request-id"]
            reader = asyncio.create_task(client.read(ws))
            await client.stream_until(ws, 3, reader)
            counts = {sp.port: await _active_sessions(http, sp.port) for sp in (a, b)}
            holder = [sp for sp in (a, b) if counts[sp.port] == 1]
            assert len(holder) == 1, counts
            _kill(holder[0])
            await asyncio.wait_for(reader, 10)
            held_end = client.final_end
            status = await client.resume_and_finish(lb)
            assert status["audio_bytes_received"] == held_end
            client.check_uninterrupted()
            survivor = b if holder[0] is a else a
            assert any(r.get("event") == "session_end" and r["outcome"] == "ok" for r in survivor.records())


# ----------------------------------------------------------------------------- sans-I/O
def _core(**kw: Any) -> Session:
    s = SessionSettings(proxy_events=True, resume_grace_s=10.0, checkpoints=True, **kw)
    return Session(AudioFormat("linear16", SR, 1), s, now=0.0, session_id="s1")


def _final(start: float, end: float, word: str) -> str:
    w = {"word": word, "start": start, "end": end, "confidence": 1.0, "punctuated_word": word}
    alt = {"transcript": word, "confidence": 1.0, "words": [w]}
    return orjson.dumps(
        {
            "type": "Results", "channel_index": [0, 1], "duration": end - start, "start": start,
            "is_final": True, "speech_final": True, "channel": {"alternatives": [alt]},
        }
    ).decode()  # fmt: skip


def test_checkpoints_carry_a_session_to_another_core() -> None:
    """Three finals delivered on one core; a client that has only the first resumes on a fresh
    core: it resends from the first final's end, gets the other two again (same seq), and the
    next final is numbered after them."""
    a = _core()
    a.start(0.0)
    a.upstream_connected(1, "u", 0.0)
    a.client_audio(b"\x01\x00" * SR * 3, 0.1)
    records: list[Checkpoint] = []
    sent: list[str] = []
    for i, (s, e) in enumerate([(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)]):
        acts = a.upstream_message(1, _final(s, e, f"w{i}"), 1.0 + i)
        kinds = [type(x) for x in acts if type(x) in (SaveCheckpoint, SendClient)]
        assert kinds == [SaveCheckpoint, SendClient]  # the record is stored before the final goes out
        records += [x.record for x in acts if isinstance(x, SaveCheckpoint)]
        sent += [x.data for x in acts if isinstance(x, SendClient)]  # type: ignore[misc]
    assert [r.ack for r in records] == [SR, 2 * SR, 3 * SR] and [r.prev for r in records] == [0, 1, 2]

    b = _core()
    acts = b.take_over(records, last_seq=1, audio_offset=0, now=5.0)
    out = [x.data for x in acts if isinstance(x, SendClient)]
    status = orjson.loads(out[0])
    assert status["state"] == "resumed" and status["audio_bytes_received"] == SR  # bytes: 0.5 s
    assert out[1:] == sent[1:]
    b.start(5.0)
    b.upstream_connected(1, "u", 5.0)
    assert b.base == SR
    b.client_audio(b"\x01\x00" * SR * 3, 5.1)  # resent from 0: the first 0.5 s are skipped
    assert b.client_pos == SR * 2 * 3
    # The replacement recognises from 0.5 s again: its finals up to 1.5 s are duplicates.
    assert not [x for x in b.upstream_message(1, _final(0.5, 1.0, "w1"), 6.0) if isinstance(x, SendClient)]
    nxt = [x for x in b.upstream_message(1, _final(1.0, 1.6, "w3"), 6.1) if isinstance(x, SendClient)]
    msg = orjson.loads(nxt[0].data)
    assert msg["proxy"]["seq"] == 4 and msg["start"] == 1.0 + 0.5  # rebased by the restart point


def test_takeover_refuses_what_it_cannot_serve() -> None:
    """Bad resumes: an audio_offset past the restart point (audio would be lost), a last_seq older
    than the held records, a negative last_seq."""
    a = _core()
    a.start(0.0)
    a.upstream_connected(1, "u", 0.0)
    a.client_audio(b"\x01\x00" * SR * 2, 0.1)
    records = [
        x.record
        for i in range(3)
        for x in a.upstream_message(1, _final(i * 0.5, i * 0.5 + 0.5, f"w{i}"), 1.0)
        if isinstance(x, SaveCheckpoint)
    ]
    with pytest.raises(ResumeError, match="beyond the audio received"):
        _core().take_over(records, last_seq=3, audio_offset=3 * SR + 2, now=1.0)
    with pytest.raises(ResumeError, match="no longer held"):
        _core().take_over(records[1:], last_seq=0, audio_offset=0, now=1.0)
    with pytest.raises(ResumeError, match="last_seq must be"):
        _core().take_over(records, last_seq=-1, audio_offset=0, now=1.0)


def _flux_drive(core: Any, actions: list[Any], state: dict[str, Any], now: float) -> None:
    """Carry out a Flux core's actions against the real marker turn machine (one connection)."""
    from streamproxy.session.core import Connect, SendUpstream
    from tests.test_flux_core import Upstream

    for x in actions:
        if isinstance(x, SendClient):
            state["client"].append(orjson.loads(x.data))
        elif isinstance(x, SaveCheckpoint):
            state["records"].append(Checkpoint.loads(x.record.dumps()))  # as the store gives it back
        elif isinstance(x, Connect):
            up = state["up"] = Upstream(SR)
            gen = core.gen
            for m in up.connected():
                _flux_drive(core, core.upstream_message(gen, m, now), state, now)
            _flux_drive(core, core.upstream_connected(gen, "u", now), state, now)
        elif isinstance(x, SendUpstream) and state.get("up") is not None:
            msgs, closes = state["up"].answer(x.data)
            gen = core.gen
            for m in msgs:
                _flux_drive(core, core.upstream_message(gen, m, now), state, now)
            if closes:
                state["up"] = None
                _flux_drive(core, core.upstream_closed(gen, 1000, "", now), state, now)


@pytest.mark.parametrize(("cut_ms", "lacks_end"), [(700, 0), (1200, 0), (1600, 0), (2000, 0), (2400, 1), (2400, 2)])
def test_flux_checkpoints_carry_a_turn_in_progress_to_another_core(cut_ms: int, lacks_end: int) -> None:
    """A Flux core loses its instance at ``cut_ms`` (inside the first turn: StartOfTurn and an
    Update delivered, none ended; between turns; just after a StartOfTurn; after two Updates); a
    fresh core takes over from the checkpoints with the client's last_seq: the client's messages,
    both cores together, are one uninterrupted run: sequence_id/seq without repeats or holes, one
    Connected, the reference's EndOfTurns, one StartOfTurn per turn. ``lacks_end``: the client never
    got the last (or last two) stored EndOfTurns (the instance died between store and send)."""
    from streamproxy.session.flux import FluxSession
    from tests.test_flux_core import reference, turns

    audio = marker_audio(spaced_words(range(61, 65), word_ms=250, gap_ms=900, lead_ms=100), SR)
    settings = SessionSettings(proxy_events=True, resume_grace_s=10.0, checkpoints=True, stall_timeout_s=1000)
    fmt = AudioFormat("linear16", SR, 1)
    a = FluxSession(fmt, settings, now=0.0, session_id="s1")
    sa: dict[str, Any] = {"client": [], "records": []}
    _flux_drive(a, a.start(0.0), sa, 0.0)
    cut = SR * 2 * cut_ms // 1000
    for i in range(0, cut, CHUNK):
        _flux_drive(a, a.client_audio(audio[i : min(i + CHUNK, cut)], 0.1), sa, 0.1)
    have = [m for m in sa["client"] if m.get("type") != "ProxyStatus"]
    if lacks_end:
        eots = [i for i, m in enumerate(have) if m.get("event") == "EndOfTurn"]
        have = have[: eots[-lacks_end]]
    last_seq = max(m["proxy"]["seq"] for m in have)
    ends = [m for m in have if m.get("event") == "EndOfTurn"]
    offset = round(ends[-1]["audio_window_end"] * SR) * 2 if ends else 0

    b = FluxSession(fmt, settings, now=1.0, session_id="s1")
    sb: dict[str, Any] = {"client": [], "records": []}
    _flux_drive(b, b.take_over(sa["records"], last_seq=last_seq, audio_offset=offset, now=1.0), sb, 1.0)
    status = sb["client"].pop(0)
    assert status["state"] == "resumed" and status["audio_bytes_received"] == offset
    _flux_drive(b, b.start(1.0), sb, 1.0)
    for i in range(offset, len(audio), CHUNK):
        _flux_drive(b, b.client_audio(audio[i : i + CHUNK], 1.1), sb, 1.1)
    _flux_drive(b, b.client_text('{"type":"CloseStream"}', 1.2), sb, 1.2)
    msgs = have + [m for m in sb["client"] if m.get("type") != "ProxyStatus"]
    assert [m["sequence_id"] for m in msgs] == list(range(len(msgs)))
    assert [m["proxy"]["seq"] for m in msgs] == [m["sequence_id"] + 1 for m in msgs]
    assert [m["type"] for m in msgs].count("Connected") == 1
    assert turns(msgs) == turns(reference(audio, SR))
    starts = [m["turn_index"] for m in msgs if m.get("event") == "StartOfTurn"]
    assert starts == list(range(4))  # one StartOfTurn per turn, the open one's not repeated


# ----------------------------------------------------------------------------- the built-in page
async def test_page_in_chromium_resumes_on_the_other_instance(tmp_path: Path) -> None:
    """The built-in page, through the balancer, with Chromium's fake microphone playing marker
    audio: the instance holding its session is SIGKILLed mid-stream; the page resumes the same
    session on the other one (resending from the end of its last final, which may be earlier than
    what it had sent) and its final words follow the audio file exactly, across the takeover
    (the fake microphone's known 10-20 ms capture glitches allowed, as in the page's own test)."""
    from tests.test_page_browser import (
        _require_browser,
        browser_page,
        check_timeline,
        context_rate,
        marker_wav,
        page_words,
        until,
    )

    _require_browser()
    wav = marker_wav(tmp_path, await context_rate())
    words_with_text = "window.streamproxyPage.finals.filter(f => f.channel.alternatives[0].words.length).length"
    with _pair(tmp_path) as (a, b, _):
        async with (
            _nginx(tmp_path, (a.port, b.port)) as lb,
            aiohttp.ClientSession() as http,
            browser_page(wav) as page,
        ):
            await page.goto(f"http://127.0.0.1:{lb}/")
            await page.click("#start")
            await until(page, f"{words_with_text} >= 3", 30)
            sid = await page.evaluate("window.streamproxyPage.sessionId")
            counts = {sp.port: await _active_sessions(http, sp.port) for sp in (a, b)}
            holder = [sp for sp in (a, b) if counts[sp.port] == 1]
            assert sid and len(holder) == 1, counts
            n_words = len(await page_words(page))
            await asyncio.sleep(0.15)  # into the next word: audio and results in flight
            _kill(holder[0])
            await until(page, "window.streamproxyPage.reconnects >= 1", 30)
            assert await page.evaluate("window.streamproxyPage.sessionId") == sid  # resumed, not new
            await until(page, f"{words_with_text} >= {n_words + 4}", 30)
            words = await page_words(page)
            log = await page.inner_text("#log")
            seqs = await page.evaluate(
                "[...document.querySelectorAll('#finals .final')].map(e => Number(e.dataset.seq))"
            )
            assert not [e for e in page.errors if "WebSocket" not in e], page.errors
            await page.click("#stop")
            await until(page, "document.getElementById('state').dataset.state === 'idle'", 20)
    assert "resumed: gateway has" in log, log
    assert seqs == sorted(set(seqs)), seqs  # each final shown once, in order
    check_timeline(words)
