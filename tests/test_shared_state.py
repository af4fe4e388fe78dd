"""The shared session store's writer against a real, private redis-server: what it writes per
final, and that it recovers on its own from what a production Redis does to it (scripts flushed,
the server restarted). Bad input tried: a Redis that forgot its scripts (SCRIPT FLUSH), a Redis
that is down, then back on the same port; a Redis that stops answering (SIGSTOP) with writes in
flight."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import redis.asyncio as aioredis

from streamproxy.gateway.shared import SharedSessions
from streamproxy.session.checkpoint import Checkpoint
from tests.helpers.jobs import redis_server, wait_for


def _record(seq: int) -> Checkpoint:
    return Checkpoint(seq, (seq - 1) * 3200, seq * 3200, {0: seq * 1600}, seq - 1, f'{{"seq": {seq}}}')


async def _stored(client: aioredis.Redis, shared: SharedSessions, sid: str) -> list[int]:
    return [Checkpoint.loads(raw).seq for raw in await client.lrange(shared.ckey(sid), 0, -1)]


async def test_checkpoints_survive_a_script_flush_and_a_redis_restart(tmp_path: Path) -> None:
    async with redis_server(tmp_path / "redis") as rs:
        client = aioredis.from_url(rs.url)
        shared = SharedSessions(
            aioredis.from_url(rs.url, socket_timeout=2.0), prefix="{t}", resume_grace_s=30, release_timeout_s=1
        )
        shared.start()
        try:
            shared.opened("s1", owner="key-1", protocol="v1", query="encoding=linear16")
            for seq in (1, 2):
                gate = shared.save("s1", _record(seq))
                assert gate is not None and await gate is True  # a final waits for its checkpoint
            assert await _stored(client, shared, "s1") == [1, 2]

            await client.script_flush()  # Redis forgot the scripts: the next write loads them again
            gate = shared.save("s1", _record(3))
            assert gate is not None and await gate is True
            assert await _stored(client, shared, "s1") == [1, 2, 3]

            rs.stop()  # down: the write fails, is counted, and later finals are not held back
            gate = shared.save("s1", _record(4))
            assert gate is not None and await gate is False
            assert shared.writes_failed == 1 and not shared.healthy
            assert shared.save("s1", _record(5)) is None  # unhealthy: not gated
            await asyncio.sleep(0.2)

            await rs.start()  # back (append-only: the records are still there); the writer reconnects
            for seq in (6, 7):
                gate = shared.save("s1", _record(seq))
                if gate is not None:
                    assert await gate is True
                await asyncio.sleep(0.05)
            assert shared.healthy
            await client.aclose()
            client = aioredis.from_url(rs.url)  # this test's own connection died with the server
            assert (await _stored(client, shared, "s1"))[-1] == 7
            assert 4 not in await _stored(client, shared, "s1")
        finally:
            await shared.close()
            await client.aclose()


async def test_a_redis_that_stops_answering_fails_the_writes_in_flight_then_recovers(tmp_path: Path) -> None:
    """Writes go out on the store's own connection the moment they are made; a Redis that stops
    answering (frozen with SIGSTOP, its socket still open) must not hold them forever: after the
    write timeout they are failed and counted, finals are no longer gated, and once Redis answers
    again the connection is reopened and writes are stored."""
    async with redis_server(tmp_path / "redis") as rs:
        client = aioredis.from_url(rs.url)
        shared = SharedSessions(
            aioredis.from_url(rs.url, socket_timeout=2.0),
            prefix="{t}",
            resume_grace_s=30,
            release_timeout_s=1,
            write_timeout_s=1.0,
        )
        shared.start()
        assert rs.proc is not None
        try:
            shared.opened("s1", owner="key-1", protocol="v1", query="")
            gate = shared.save("s1", _record(1))
            assert gate is not None and await gate is True

            os.kill(rs.proc.pid, signal.SIGSTOP)
            gates = [shared.save("s1", _record(seq)) for seq in (2, 3, 4)]
            assert all(g is not None for g in gates)
            assert [await asyncio.wait_for(g, 5) for g in gates if g is not None] == [False] * 3
            assert shared.writes_failed == 3 and not shared.healthy
            assert shared.save("s1", _record(5)) is None  # unhealthy: the final is not held back

            os.kill(rs.proc.pid, signal.SIGCONT)
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                gate = shared.save("s1", _record(99))
                if gate is not None and await gate:
                    break
                assert asyncio.get_running_loop().time() < deadline, "writes never recovered"
                await asyncio.sleep(0.2)
            stored = await _stored(client, shared, "s1")
            assert stored[0] == 1 and stored[-1] == 99
        finally:
            if rs.proc is not None:
                os.kill(rs.proc.pid, signal.SIGCONT)
            await shared.close()
            await client.aclose()


async def _calls(client: aioredis.Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_background_work_wakes_the_gateway_only_for_the_heartbeat(tmp_path: Path) -> None:
    """The inbox blocks without a timeout (no command while nobody asks) and still hears a request
    at once, also after Redis restarted under it; the heartbeat renews the keys only of a held
    session that no checkpoint renewed lately. A regression here is CPU on every idle gateway."""
    async with redis_server(tmp_path / "redis") as rs:
        client = aioredis.from_url(rs.url)
        shared = SharedSessions(
            aioredis.from_url(rs.url, socket_timeout=2.0), prefix="{t}", resume_grace_s=0.5, release_timeout_s=1
        )
        released: list[str] = []
        shared.on_release = released.append
        shared.held = lambda: ["quiet", "busy"]
        shared.start()
        try:
            shared.opened("quiet", owner="k", protocol="v1", query="")
            shared.opened("busy", owner="k", protocol="v1", query="")
            await asyncio.sleep(0.3)
            blpops = await _calls(client, "blpop")
            assert blpops == 1  # one blocking pop, waiting
            for seq in range(1, 40):  # ~4 s: "busy" gives a final every 0.1 s, "quiet" none
                gate = shared.save("busy", _record(seq))
                assert gate is not None and await gate is True
                await asyncio.sleep(0.1)
            assert await _calls(client, "blpop") == blpops  # no polling while nobody asked
            # ttl = 0.5 + 10 s, renewed after a third of it: only "quiet" needed the heartbeat.
            # PEXPIREs (scripts' included): 1 per open, 2 per checkpoint, 2 for "quiet" (4 if the
            # heartbeat had renewed "busy" too).
            assert await _calls(client, "pexpire") == 2 * 1 + 39 * 2 + 2
            assert await client.pttl(shared.skey("quiet")) > 8000

            await client.rpush(shared.inbox_key(shared.instance), "busy")
            await wait_for(lambda: _is(released, ["busy"]), 5, "the first release request")

            rs.stop()
            await asyncio.sleep(0.3)
            await rs.start()  # the inbox's connection died with the server: it reconnects
            await client.aclose()
            client = aioredis.from_url(rs.url)
            await asyncio.sleep(1.5)
            await client.rpush(shared.inbox_key(shared.instance), "quiet")
            await wait_for(lambda: _is(released, ["busy", "quiet"]), 5, "the release request after the restart")
        finally:
            await shared.close()
            await client.aclose()


async def _is(got: list[str], want: list[str]) -> bool:
    return got == want
