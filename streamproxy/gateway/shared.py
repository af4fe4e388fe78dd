"""Resumable sessions in the shared Redis, so that any instance can resume any session.

Per session (hash-tagged, so every multi-key operation stays in one Redis Cluster slot):

- ``{P:s:<id>}`` a hash: ``meta`` (owner hash, protocol, the original query) and ``holder`` (the
  instance id holding it, "" once it let go);
- ``{P:s:<id>}:ck`` a list of checkpoints (``session.checkpoint``), one per delivered final, the
  latest ``KEEP_CHECKPOINTS``.

Per instance: ``{P:i:<instance>}:alive`` (a heartbeat key that expires ``HOLDER_TTL_S`` after the
instance stops refreshing it) and ``{P:i:<instance>}:inbox`` (where another instance asks it to
let a session go). Both session keys expire ``resume_grace_s`` + ``TTL_MARGIN_S`` after their last
refresh.

Every session write is one Lua script, and nothing here is awaited on the audio path: on a single
Redis it is written to a dedicated connection at once, from the caller, and its reply (in order,
parsed in that connection's data callback) settles it (:class:`_Pipe`); on a cluster, or while that
connection is down, one writer task batches what is due into one pipeline. A failed write is
logged and counted, never raised into a session. A checkpoint's write also gives the runner a
future, so a final reaches the client after its checkpoint is stored (bounded by ``GATE_S``;
while Redis fails, finals are not held at all).

Wake-ups are what an idle-heavy gateway pays for most (on a VM, one costs tens of microseconds
of CPU whatever it does), so the background costs one per ``HEARTBEAT_S`` (the heartbeat, sent
on the same connection as the writes, refreshing only sessions no final has refreshed lately) and
none for the inbox, which blocks on a connection of its own until someone asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
from redis.asyncio.connection import Connection as TCPConnection

from ..config import Config
from ..redisconn import connect
from ..session.checkpoint import Checkpoint

log = logging.getLogger("streamproxy.shared")

#: A dead instance's heartbeat key is gone this long after its last refresh.
HOLDER_TTL_S = 3.0
HEARTBEAT_S = 1.0
#: Session keys outlive the grace window by this much (a refresh may be late).
TTL_MARGIN_S = 10.0
#: Checkpoints kept per session: a client further behind than this many finals cannot be taken over.
KEEP_CHECKPOINTS = 128
#: Longest a final waits for its checkpoint to be stored before it goes to the client anyway.
GATE_S = 0.25
#: Bound on writes waiting for Redis; past it they are dropped (counted), the sessions unaffected.
MAX_PENDING = 100_000
#: On a cluster the inbox is polled this often (its client's socket timeout must outlast it).
INBOX_POLL_S = 4
#: The inbox's own connection finds a dead peer by TCP keepalive (it never times out a read).
KEEPALIVE = {socket.TCP_KEEPIDLE: 5, socket.TCP_KEEPINTVL: 2, socket.TCP_KEEPCNT: 3}

# KEYS: hash, list. ARGV: me, entry, keep, ttl_ms. Only the holder appends: a holder that was
# presumed dead and taken over must not write into its successor's log (0 tells it so).
_SAVE_LUA = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
# KEYS: hash, list. ARGV: me, meta, ttl_ms. A new session (or one resumed here): no checkpoints yet.
_OPEN_LUA = """
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'holder', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS: hash, list. ARGV: me, what holder becomes ("" = let go; absent = delete the session).
_LETGO_LUA = """
if redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then return 0 end
if ARGV[2] then
  redis.call('HSET', KEYS[1], 'holder', ARGV[2])
else
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"""
# KEYS: hash, list. ARGV: expected holder, me, ttl_ms. -> {1, checkpoints} | {0, holder} | false.
_CLAIM_LUA = """
local h = redis.call('HGET', KEYS[1], 'holder')
if not h then return false end
if h ~= ARGV[1] then return {0, h} end
redis.call('HSET', KEYS[1], 'holder', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, redis.call('LRANGE', KEYS[2], 0, -1)}
"""


def from_config(cfg: Config) -> SharedSessions | None:
    """The shared session state, when this gateway has a shared Redis (``queue.redis_url``) and
    sessions can be resumed at all; None: resumption stays within this instance."""
    q, s = cfg.queue, cfg.session
    if not q.redis_url or not s.shared_state or s.resume_grace_s <= 0:
        return None
    # The socket timeout outlasts the inbox's 1 s blocking pop. No retries: a failed write is
    # counted and the next checkpoint supersedes it; a final never waits on a reconnecting client.
    client = connect(cfg, socket_timeout=5.0, connect_timeout=2.0, retries=0)
    return SharedSessions(
        client, prefix=q.prefix, resume_grace_s=s.resume_grace_s, release_timeout_s=s.release_timeout_s
    )


def owner_hash(owner: str) -> str:
    """What is stored instead of the owner (a key id): enough to compare, nothing to reuse."""
    return hashlib.sha256(b"streamproxy-owner:" + owner.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RemoteSession:
    """A session as the shared store has it: who may resume it, how it was opened, who holds it."""

    session_id: str
    owner_hash: str
    protocol: str  # "v1" | "v2"
    query: str  # the original request's query string
    holder: str


class TakeoverBusy(Exception):
    """Another instance took the session over meanwhile."""


@dataclass(slots=True)
class _Write:
    """One write: a Lua ``script`` with its keys and arguments (``script`` None: ``args`` is a
    plain command); ``then`` gets its reply, ``fut`` (a gated final) whether it was stored.
    ``counted`` False (the heartbeat's): its outcome is not a session write's (not counted, and
    it does not decide whether finals are gated)."""

    script: str | None
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    then: Callable[[Any], None] | None = None
    fut: asyncio.Future[bool] | None = None
    counted: bool = True

    def command(self) -> tuple[Any, ...]:
        if self.script is None:
            return self.args
        return ("EVAL", self.script, len(self.keys), *self.keys, *self.args)

    def settle(self, ok: bool, result: Any) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(ok)
        if ok and self.then is not None:
            self.then(result)


class _Pipe(asyncio.Protocol):
    """Writes on one dedicated connection, sent from the caller the moment they are made and
    settled in order straight from the socket's data callback (hiredis parses the replies): no
    task hop, no per-command timeout, no stream reader between a session and Redis. Through
    redis-py's client those were most of a write's CPU. redis-py still opens the connection (TLS,
    AUTH, SELECT); the pipe then takes its transport over. A write unanswered after ``stuck_s``
    breaks the connection; a broken one fails what is in flight and is reopened by :meth:`ensure`."""

    def __init__(self, conn: Any, stuck_s: float) -> None:
        self.conn = conn
        self.stuck_s = stuck_s
        self.inflight: deque[tuple[_Write, float]] = deque()
        self.on_reply: Callable[[_Write, bool], None] = lambda w, ok: None
        self.on_error: Callable[[BaseException], None] = lambda e: None
        self._transport: asyncio.Transport | None = None
        self._parser = hiredis.Reader()
        self._opening: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._transport is not None

    def send(self, w: _Write) -> None:
        assert self._transport is not None
        self._transport.write(hiredis.pack_command(w.command()))
        self.inflight.append((w, time.monotonic()))

    def send_many(self, ws: list[_Write]) -> None:
        """Several writes in one socket write (their replies then come in one read, too)."""
        assert self._transport is not None
        self._transport.write(b"".join(hiredis.pack_command(w.command()) for w in ws))
        now = time.monotonic()
        self.inflight.extend((w, now) for w in ws)

    def ensure(self) -> None:
        """Reopen a broken connection in the background; break a stuck one."""
        if self._transport is not None and self.inflight and time.monotonic() - self.inflight[0][1] > self.stuck_s:
            self.on_error(TimeoutError(f"no reply from Redis within {self.stuck_s:g} s"))
            self._transport.abort()  # connection_lost fails what is in flight
        if self._transport is None and (self._opening is None or self._opening.done()):
            self._opening = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            await self.conn.disconnect(nowait=True)  # forget a transport taken over earlier
            await self.conn.connect()
            transport = self.conn._writer.transport
        except Exception as e:
            self.on_error(e)
            return
        self._parser = hiredis.Reader()
        transport.set_protocol(self)
        self._transport = transport

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        while (reply := self._parser.gets()) is not False:
            if not self.inflight:  # a reply nobody asked for: the stream cannot be trusted
                self.on_error(RuntimeError("unexpected reply from Redis"))
                if self._transport is not None:
                    self._transport.abort()
                return
            w, _ = self.inflight.popleft()
            ok = not isinstance(reply, Exception)
            w.settle(ok, reply)
            self.on_reply(w, ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        failed = list(self.inflight)
        self.inflight.clear()
        if exc is not None:
            self.on_error(exc)
        for w, _ in failed:
            w.settle(False, None)
            self.on_reply(w, False)

    async def close(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        if self._transport is not None:
            self._transport.close()


class SharedSessions:
    """This instance's side of the shared session state (one per gateway)."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        resume_grace_s: float,
        release_timeout_s: float,
        instance: str | None = None,
        write_timeout_s: float = 5.0,
    ) -> None:
        self.redis = redis
        self.p = prefix.strip("{}") or "streamproxy"
        self.instance = instance or uuid.uuid4().hex[:12]
        self.ttl_ms = int((resume_grace_s + TTL_MARGIN_S) * 1000)
        self.release_timeout_s = release_timeout_s
        self.write_timeout_s = write_timeout_s
        self.healthy = True  # the last write batch succeeded: finals wait for their checkpoints
        self.writes_failed = 0
        self.writes_dropped = 0
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._writer_busy = False
        self._tasks: list[asyncio.Task[None]] = []
        self._last_error_log = 0.0
        # Set by the gateway: let a local session go (asked by another instance), and end a local
        # session another instance has taken over.
        self.on_release: Callable[[str], None] = lambda sid: None
        self.on_lost: Callable[[str], None] = lambda sid: None
        self.held: Callable[[], Iterable[str]] = lambda: ()
        # When each held session's keys were last given a new expiry (a write did it, or the
        # heartbeat): the heartbeat refreshes only those no final has refreshed for a while.
        self._touched: dict[str, float] = {}
        pool = getattr(redis, "connection_pool", None)  # None: a RedisCluster (slots: the pipeline path)
        self._pipe: _Pipe | None = None
        self._inbox_conn: Any = None
        if pool is not None:
            # The pipe's own deadline replaces redis-py's per-command socket timeout; the inbox
            # blocks for as long as nobody asks.
            kw = {**pool.connection_kwargs, "socket_timeout": None}
            self._pipe = _Pipe(pool.connection_class(**kw), stuck_s=write_timeout_s)
            self._pipe.on_reply = self._replied
            self._pipe.on_error = lambda e: self._failed("write", e)
            if issubclass(pool.connection_class, TCPConnection):
                kw.update(socket_keepalive=True, socket_keepalive_options=KEEPALIVE)
            self._inbox_conn = pool.connection_class(**kw)
        self._claim = redis.register_script(_CLAIM_LUA)

    # ------------------------------------------------------------------ keys
    def skey(self, sid: str) -> str:
        return "{" + self.p + ":s:" + sid + "}"

    def ckey(self, sid: str) -> str:
        return self.skey(sid) + ":ck"

    def alive_key(self, instance: str) -> str:
        return "{" + self.p + ":i:" + instance + "}:alive"

    def inbox_key(self, instance: str) -> str:
        return "{" + self.p + ":i:" + instance + "}:inbox"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(t) for t in (self._writer(), self._heartbeat(), self._inbox())]
        if self._pipe is not None:
            self._pipe.ensure()

    async def close(self) -> None:
        # A cancel can be swallowed (Python 3.11's wait_for when the inner call completes at the
        # same moment, or a client library catching it): cancel again until the tasks are gone.
        pending = set(self._tasks)
        for _ in range(20):
            if not pending:
                break
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for t in self._tasks:
            if t.done() and not t.cancelled():
                t.exception()  # retrieved: a task that died of an error was already logged
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.redis.delete(self.alive_key(self.instance))
        if self._pipe is not None:
            await self._pipe.close()
        if self._inbox_conn is not None:
            with contextlib.suppress(Exception):
                await self._inbox_conn.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def _failed(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.warning(
                "shared session store unreachable: sessions go on, resuming elsewhere may not work",
                extra={"event": "shared_state_error", "op": what, "error": f"{type(e).__name__}: {e}"},
            )

    # ------------------------------------------------------------------ writes (never awaited by sessions)
    def _direct(self) -> _Pipe | None:
        """The pipe, if writes may go to it now: only while the pipeline path is idle, since one
        session's writes must stay in order."""
        pipe = self._pipe
        return pipe if pipe is not None and pipe.up and not self._writer_busy and self._queue.empty() else None

    def _submit(self, w: _Write, *, gate: bool = False) -> asyncio.Future[bool] | None:
        direct = self._direct()
        if (len(direct.inflight) if direct is not None else self._queue.qsize()) >= MAX_PENDING:
            self.writes_dropped += 1
            return None
        if gate:
            w.fut = asyncio.get_running_loop().create_future()
        if direct is not None:
            direct.send(w)
        else:
            self._queue.put_nowait(w)
        return w.fut if self.healthy else None

    def _submit_many(self, ws: list[_Write]) -> None:
        """Writes nobody waits for, in one socket write where the pipe takes them."""
        direct = self._direct()
        if (len(direct.inflight) if direct is not None else self._queue.qsize()) + len(ws) > MAX_PENDING:
            return  # the heartbeat's: the next beat is as good
        if direct is not None:
            direct.send_many(ws)
        else:
            for w in ws:
                self._queue.put_nowait(w)

    def _replied(self, w: _Write, ok: bool) -> None:
        """One write settled, by either path: count a failure; finals are gated while writes work."""
        if not w.counted:
            return
        if not ok:
            self.writes_failed += 1
        self.healthy = ok

    def opened(self, sid: str, *, owner: str, protocol: str, query: str) -> None:
        meta = orjson.dumps({"owner": owner_hash(owner), "protocol": protocol, "query": query})
        s, c, ttl = self.skey(sid), self.ckey(sid), self.ttl_ms
        self._touched[sid] = time.monotonic()
        self._submit(_Write(_OPEN_LUA, (s, c), (self.instance, meta, ttl)))

    def save(self, sid: str, record: Checkpoint) -> asyncio.Future[bool] | None:
        """Append a checkpoint; the future (None: do not wait) resolves once it is stored."""
        entry = record.dumps()
        s, c = self.skey(sid), self.ckey(sid)

        def then(result: Any) -> None:
            if result == 0:
                self.on_lost(sid)  # presumed dead and taken over meanwhile: let the copy here go

        w = _Write(_SAVE_LUA, (s, c), (self.instance, entry, KEEP_CHECKPOINTS, self.ttl_ms), then=then)
        self._touched[sid] = time.monotonic()  # the script renews both keys' expiry
        return self._submit(w, gate=record.text is not None)

    def let_go(self, sid: str) -> None:
        """This instance stops holding the session; another may claim it at once."""
        s, c = self.skey(sid), self.ckey(sid)
        self._touched.pop(sid, None)
        self._submit(_Write(_LETGO_LUA, (s, c), (self.instance, "")))

    def ended(self, sid: str) -> None:
        """The session is over: nobody can resume it any more."""
        s, c = self.skey(sid), self.ckey(sid)
        self._touched.pop(sid, None)
        self._submit(_Write(_LETGO_LUA, (s, c), (self.instance,)))

    async def _writer(self) -> None:
        """The pipeline path: a cluster's writes, and a single Redis's while its pipe is down."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 1000:
                batch.append(self._queue.get_nowait())
            self._writer_busy = True
            ok = False
            results: list[Any] = []
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    results, ok = await self._pipelined(batch)
            except (Exception, TimeoutError) as e:
                self._failed("write", e)
            finally:
                self._writer_busy = False
            for k, w in enumerate(batch):
                w.settle(ok, results[k] if ok else None)
                self._replied(w, ok)
            if self._pipe is not None:
                self._pipe.ensure()

    async def _pipelined(self, batch: list[_Write]) -> tuple[list[Any], bool]:
        """Several writes in one round trip, as EVAL (Redis caches the scripts compiled, so a
        restarted Redis needs no reload). Returns each write's reply, and whether all worked."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in batch:
                pipe.execute_command(*w.command())
            raw = await pipe.execute(raise_on_error=False)
        return raw, not any(isinstance(r, Exception) for r in raw)

    async def _heartbeat(self) -> None:
        """This instance is alive; and a held session no final has refreshed within a third of its
        expiry gets it renewed (a session that keeps giving finals costs nothing here)."""
        refresh_after = self.ttl_ms / 1000 / 3
        alive = ("SET", self.alive_key(self.instance), b"1", "PX", int(HOLDER_TTL_S * 1000))
        while True:
            try:  # a beat that fails must not end the heartbeat: others would think this instance dead
                self._beat(alive, refresh_after)
            except Exception as e:
                self._failed("heartbeat", e)
            await asyncio.sleep(HEARTBEAT_S)

    def _beat(self, alive: tuple[Any, ...], refresh_after: float) -> None:
        now = time.monotonic()
        writes = [_Write(None, (), alive, counted=False)]
        held = set(self.held())
        for sid in held:
            if now - self._touched.get(sid, -refresh_after) >= refresh_after:
                self._touched[sid] = now
                writes.append(_Write(None, (), ("PEXPIRE", self.skey(sid), self.ttl_ms), counted=False))
                writes.append(_Write(None, (), ("PEXPIRE", self.ckey(sid), self.ttl_ms), counted=False))
        if len(self._touched) > len(held):  # every held id is in it now: the rest were let go
            for sid in [sid for sid in self._touched if sid not in held]:
                del self._touched[sid]
        if self._pipe is not None:
            self._pipe.ensure()
        self._submit_many(writes)

    async def _inbox(self) -> None:
        """Requests from other instances to let a session go."""
        key = self.inbox_key(self.instance)
        while True:
            try:
                got = await self._pop(key)
            except (Exception, TimeoutError) as e:
                self._failed("inbox", e)
                if self._inbox_conn is not None:
                    with contextlib.suppress(Exception):
                        await self._inbox_conn.disconnect(nowait=True)
                await asyncio.sleep(1.0)
                continue
            if got:
                sid = got[1].decode() if isinstance(got[1], bytes) else str(got[1])
                log.info("asked to let a session go", extra={"event": "session_release", "session_id": sid})
                self.on_release(sid)

    async def _pop(self, key: str) -> Any:
        """The next request: on a single Redis a BLPOP without timeout on the inbox's own connection
        (nothing wakes this instance until someone asks); a cluster's client polls."""
        conn = self._inbox_conn
        if conn is None:
            return await self.redis.blpop([key], timeout=INBOX_POLL_S)
        await conn.connect()  # no-op while connected
        await conn.send_command("BLPOP", key, 0)
        return await conn.read_response()

    # ------------------------------------------------------------------ takeover (another instance's session)
    async def lookup(self, sid: str) -> RemoteSession | None:
        d = await self.redis.hgetall(self.skey(sid))
        if not d or b"meta" not in d:
            return None
        meta = orjson.loads(d[b"meta"])
        holder = d.get(b"holder", b"").decode()
        return RemoteSession(sid, str(meta["owner"]), str(meta["protocol"]), str(meta["query"]), holder)

    async def take(self, remote: RemoteSession) -> list[Checkpoint]:
        """Become the session's holder: ask a live holder to let go (and wait up to
        ``release_timeout_s`` for it), or take it from a dead one; returns its checkpoints."""
        sid, holder = remote.session_id, remote.holder
        if holder and holder != self.instance and await self.redis.exists(self.alive_key(holder)):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(self.inbox_key(holder), sid)
                pipe.pexpire(self.inbox_key(holder), int(HOLDER_TTL_S * 1000) * 10)
                await pipe.execute()
            deadline = time.monotonic() + self.release_timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                now_holder = await self.redis.hget(self.skey(sid), "holder")
                if now_holder is None:
                    raise KeyError(sid)  # it ended meanwhile
                if now_holder.decode() != holder:
                    holder = now_holder.decode()
                    break
            else:
                log.info(
                    "holder did not let go in time: taking the session over",
                    extra={"event": "session_takeover_forced", "session_id": sid, "holder": holder},
                )
        got = await self._claim(keys=[self.skey(sid), self.ckey(sid)], args=[holder, self.instance, self.ttl_ms])
        if not got:
            raise KeyError(sid)
        if int(got[0]) != 1:
            raise TakeoverBusy(sid)
        self._touched[sid] = time.monotonic()  # the claim renewed both keys' expiry
        return [Checkpoint.loads(raw) for raw in got[1]]
