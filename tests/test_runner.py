"""``SessionRunner``, the asyncio shell around the core: how a session ends, and that it ends once.

The upstream is a real marker engine on a loopback socket; the client is a stand-in with the
three methods the runner uses of aiohttp's ``WebSocketResponse`` (``send_str``, ``send_bytes``,
``close``), so each test can see exactly what reached the client and in which order, and can end
the client's side at a chosen moment without a network race.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from streamproxy.deepgram.encodings import AudioFormat
from streamproxy.gateway.runner import SessionRunner, clock
from streamproxy.metrics import Metrics
from streamproxy.session.core import Session, SessionSettings
from streamproxy.upstream.pool import Upstream, UpstreamPool
from tests.helpers.gateway import engine
from tests.helpers.marker import final_words, marker_audio

pytestmark = pytest.mark.timeout(10)

SR = 16000
QUERY = f"encoding=linear16&sample_rate={SR}"
#: w5 ends its utterance (400 ms of silence: a final at once); w7 is still open when the audio
#: stops, so only a CloseStream (or Finalize) can bring its final.
AUDIO = marker_audio([("sil", 0, 100), ("word", 5, 200), ("sil", 0, 400), ("word", 7, 200), ("sil", 0, 100)], SR)
W5 = ("w5", 0.1, 0.3)
W7 = ("w7", 0.7, 0.9)


@dataclass
class StandInClient:
    """Records what the runner sends, in order, and how (and how often) it closes the socket."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # "text:<type>" / "close:<code>", in order
    close_codes: list[int] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send_str(self, data: str) -> None:
        if self.close_codes:
            raise ConnectionResetError("sent after close")  # what aiohttp does; the test sees it below
        msg = orjson.loads(data)
        self.messages.append(msg)
        self.log.append(f"text:{msg.get('type')}")
        self._changed.set()

    async def send_bytes(self, data: bytes) -> None:
        raise AssertionError("the gateway never sends binary frames to a Deepgram client")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.close_codes.append(code)
        self.log.append(f"close:{code}")
        self.closed.set()
        return True

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> None:
        """Wait (on each message, not by polling) until ``predicate(messages)`` holds."""
        async with asyncio.timeout(timeout):
            while not predicate(self.messages):
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Harness:
    runner: SessionRunner
    client: StandInClient
    pool: UpstreamPool
    done: list[SessionRunner]


@pytest.fixture
async def engine_port() -> AsyncIterator[int]:
    async with engine("marker") as port:
        yield port


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_runner(port: int, http: aiohttp.ClientSession, **settings: Any) -> Harness:
    max_duration_s = settings.pop("max_duration_s", 0.0)
    core = Session(AudioFormat("linear16", SR, 1), SessionSettings(**settings), now=clock(), session_id="runner-test")
    client = StandInClient()
    pool = UpstreamPool([Upstream("marker", f"ws://127.0.0.1:{port}")])
    done: list[SessionRunner] = []
    runner = SessionRunner(
        core, client, pool, QUERY, Metrics(), on_done=done.append, max_duration_s=max_duration_s, http=http
    )
    return Harness(runner, client, pool, done)


async def finished(h: Harness, timeout: float = 5.0) -> None:
    await asyncio.wait_for(h.runner.finished.wait(), timeout)


def has_word(word: tuple[str, float, float]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda msgs: word in final_words(msgs)


async def test_shutdown_delivers_trailing_results_and_metadata_then_closes_with_its_code(
    engine_port: int, http: aiohttp.ClientSession
) -> None:
    """A drain (shutdown(1012)) mid-utterance: the open word's final and the Metadata reach the
    client before the close frame, which carries 1012, not the 1000 of an ordinary close."""
    h = make_runner(engine_port, http)
    h.runner.start()
    await h.runner.feed_audio(AUDIO)
    await h.client.wait_for(has_word(W5))  # the session is live: one final delivered
    assert W7 not in final_words(h.client.messages)
    h.runner.shutdown(1012)
    await finished(h)
    assert final_words(h.client.messages) == [W5, W7]
    assert h.client.messages[-1]["type"] == "Metadata"
    assert h.client.messages[-1]["duration"] == pytest.approx(len(AUDIO) / 2 / SR)
    assert h.client.log[-2:] == ["text:Metadata", "close:1012"]  # results first, then the close
    assert h.client.close_codes == [1012] and h.runner.close_code == 1012
    assert h.done == [h.runner]
    assert h.runner.up is None and h.pool.upstreams[0].active == 0


async def test_forced_shutdown_ends_at_once_and_reports_done_exactly_once(
    engine_port: int, http: aiohttp.ClientSession
) -> None:
    """shutdown(force=True) is for a client that does not take the close: the session is over when
    the call returns (nothing awaited), its upstream released, on_done called once, and every later
    way of ending it (another shutdown, a drain, the client's reader exiting) is a no-op."""
    h = make_runner(engine_port, http)
    h.runner.start()
    await h.runner.feed_audio(AUDIO)
    await h.client.wait_for(has_word(W5))
    h.runner.shutdown(1011, force=True)
    assert h.runner.finished.is_set()
    assert h.done == [h.runner]
    assert h.runner.up is None and h.pool.upstreams[0].active == 0
    h.runner.shutdown(1012)
    h.runner.shutdown(1011, force=True)
    await h.runner.client_ended(h.client)
    await asyncio.wait_for(h.client.closed.wait(), 5)
    assert h.client.close_codes == [1011]
    assert h.done == [h.runner]
    assert W7 not in final_words(h.client.messages)  # nothing owed was waited for


async def test_client_ended_finishes_a_session_that_cannot_be_resumed(
    engine_port: int, http: aiohttp.ClientSession
) -> None:
    """The client's reader exits (socket closed or errored) without CloseStream: a session that is
    not resumable finishes its upstream side cleanly and ends; client_ended returns only then."""
    h = make_runner(engine_port, http)
    h.runner.start()
    await h.runner.feed_audio(AUDIO)
    await h.client.wait_for(has_word(W5))
    await asyncio.wait_for(h.runner.client_ended(h.client), 5)
    assert h.runner.finished.is_set()
    assert h.done == [h.runner]
    assert h.runner.outcome == "client_gone" and h.runner.close_code == 1000
    assert h.runner.core.delivered_end[0] == len(AUDIO) // 2  # CloseStream's final covered all the audio
    assert h.runner.up is None and h.pool.upstreams[0].active == 0


async def test_client_ended_holds_a_resumable_session_for_the_next_connection(
    engine_port: int, http: aiohttp.ClientSession
) -> None:
    """A resumable session outlives its client's reader: client_ended returns at once, leaving it
    detached; the resumed connection gets what it missed, and the old reader exiting late does not
    end the session that moved on."""
    h = make_runner(engine_port, http, proxy_events=True, resume_grace_s=30.0)
    h.runner.start()
    await h.runner.feed_audio(AUDIO)
    await h.client.wait_for(has_word(W5))
    old = h.client
    await asyncio.wait_for(h.runner.client_ended(old), 1)
    assert h.runner.core.detached and not h.runner.finished.is_set()
    new = StandInClient()
    h.runner.resume(new, 0, None)  # it got nothing: everything numbered is sent again
    await new.wait_for(has_word(W5))
    await h.runner.client_ended(old)  # the old socket's reader, late: not the session's client any more
    assert not h.runner.finished.is_set()
    h.runner.client_text('{"type":"CloseStream"}')
    await finished(h)
    assert final_words(new.messages) == [W5, W7]
    assert new.close_codes == [1000] and old.close_codes == []
    assert h.done == [h.runner]


async def test_max_duration_finalises_and_closes_1000(engine_port: int, http: aiohttp.ClientSession) -> None:
    """limits.max_session_s: at that age the session is finalised like a CloseStream (the open word
    delivered, then Metadata) and closed with 1000, though the client never asked."""
    h = make_runner(engine_port, http, max_duration_s=0.5)
    t0 = time.monotonic()
    h.runner.start()
    await h.runner.feed_audio(AUDIO)
    await finished(h)
    assert time.monotonic() - t0 >= 0.5
    assert final_words(h.client.messages) == [W5, W7]
    assert h.client.log[-2:] == ["text:Metadata", "close:1000"]
    assert h.client.close_codes == [1000]
    assert h.done == [h.runner]
