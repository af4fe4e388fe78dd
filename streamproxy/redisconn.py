"""Every Redis client streamproxy makes: a single server or a Redis Cluster, as ``[queue]`` says.

``connect`` is the one factory (the gateway's limits, the job queue, workers, readiness and any
state kept in Redis use it), so ``queue.redis_cluster`` switches all of them at once. On a cluster
every key lives under ``queue.prefix``, whose hash tag (``{streamproxy}``) puts them in one slot:
BullMQ's Lua scripts, the limits' scripts and any MULTI touch several keys at once, which a cluster
only allows within one slot.

``check_server`` compares the setting with what the server says it is, so a mismatch fails at
start naming the key instead of as MOVED / "unknown command" errors later.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import Config, ConfigError, QueueConfig

__all__ = [
    "CLIENT_ERRORS",
    "REDIS_ERRORS",
    "RedisClient",
    "answers",
    "bullmq_client",
    "bullmq_connection",
    "check_server",
    "connect",
    "ping",
]

RedisClient: TypeAlias = aioredis.Redis | RedisCluster

#: What redis-py raises for a failing server or cluster (topology discovery included) ...
CLIENT_ERRORS = (RedisError, RedisClusterException)
#: ... and with the socket-level errors around it.
REDIS_ERRORS = (OSError, TimeoutError, RedisError, RedisClusterException)


class _Cluster(RedisCluster):
    """``RedisCluster`` that finishes discovering the topology before any command is sent.

    redis-py 8.1's async cluster client, first used by many tasks at once, sends some of them on
    connections it is resetting (``AttributeError: 'NoneType' object has no attribute
    'writelines'``: 40 of 1,000 SETs by 50 concurrent tasks on fresh clients); awaiting
    ``initialize()`` (public, idempotent, under the client's lock) first avoids it (0 of 2,000).
    Commands issued while the client re-reads the topology (after a connection error) wait too.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.initialize()  # returns at once when the topology is known
        return await super().execute_command(*args, **kwargs)


def _queue(cfg: Config | QueueConfig) -> QueueConfig:
    return cfg.queue if isinstance(cfg, Config) else cfg


def connect(
    cfg: Config | QueueConfig,
    *,
    url: str | None = None,
    decode_responses: bool = False,
    socket_timeout: float | None = 10.0,
    connect_timeout: float = 10.0,
    retries: int = 6,
) -> RedisClient:
    """A client for ``url`` (default ``queue.redis_url``): a ``RedisCluster`` when
    ``queue.redis_cluster``, else a pooled ``Redis``. Nothing connects until the first command.

    ``retries`` re-runs a command after a connection error or timeout (a restarted server, a stale
    pooled connection, a cluster failover: the cluster client re-reads the topology first); 0 for
    callers that must fail fast (the limits fail open). ``socket_timeout`` None for blocking reads.
    """
    q = _queue(cfg)
    target = url if url is not None else q.redis_url
    if not target:
        raise ValueError("no Redis URL: queue.redis_url is empty and no url was given")
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries)
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": retry,
    }
    if q.redis_cluster:
        return _Cluster.from_url(target, **common)
    return aioredis.from_url(target, retry_on_error=[RedisConnectionError, RedisTimeoutError], **common)


def bullmq_connection(url: str, cfg: Config | QueueConfig | None = None) -> dict[str, Any] | RedisCluster:
    """What bullmq's ``connection`` option gets: a fresh ``RedisCluster`` client on a cluster (one
    per Queue/Worker: bullmq closes it with its owner), else redis-py options from the URL, from
    which bullmq builds its own single-connection client with its reconnect policy.

    ``socket_timeout=None`` is required with redis-py >= 8, whose default 5 s socket timeout is
    shorter than the worker's blocking BZPOPMIN wait: without it jobs stall. bullmq reads replies
    as text, hence ``decode_responses``.
    """
    if cfg is not None and _queue(cfg).redis_cluster:
        client = connect(cfg, url=url, decode_responses=True, socket_timeout=None, retries=20)
        assert isinstance(client, RedisCluster)
        return client
    kw: dict[str, Any] = dict(parse_url(url))
    cls = kw.pop("connection_class", None)
    if "path" in kw:
        kw["unix_socket_path"] = kw.pop("path")
    if cls is not None and cls.__name__ == "SSLConnection":
        kw["ssl"] = True
    kw["socket_timeout"] = None
    kw.setdefault("socket_connect_timeout", 10)
    return kw


def bullmq_client(url: str, cfg: Config | QueueConfig | None = None) -> RedisClient:
    """A pooled text client for a bullmq ``Queue`` (its ``connection`` option takes a ready client).

    Given a URL or options, bullmq builds a single-connection client whose lock lets one command of
    the whole process be in flight at a time: every submit and status read of the gateway queued
    behind the others. Pooled, concurrent requests run their round trips side by side.
    """
    if cfg is not None and _queue(cfg).redis_cluster:
        return connect(cfg, url=url, decode_responses=True, socket_timeout=None, retries=20)
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), 6)
    return aioredis.Redis(
        decode_responses=True,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **bullmq_connection(url),  # type: ignore[arg-type]
    )


async def answers(client: RedisClient, timeout: float = 1.0) -> bool:
    """Whether ``client``'s Redis (every primary, on a cluster) answers PING within ``timeout``."""
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except REDIS_ERRORS:
        return False


async def ping(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server (or one cluster node) answers at ``url`` within ``timeout``."""
    client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return await answers(client, timeout)
    finally:
        await client.aclose()


async def check_server(cfg: Config, timeout: float = 2.0) -> None:
    """Fail (``ConfigError`` on ``queue.redis_cluster``) when the server at ``queue.redis_url`` is
    not what the setting says: a cluster node without it, or a plain server with it. An unreachable
    or unset Redis passes: reachability is the queue's concern (it waits or falls back)."""
    q = cfg.queue
    if not q.redis_url:
        return
    client = aioredis.from_url(q.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        info = await asyncio.wait_for(client.info("cluster"), timeout)
    except REDIS_ERRORS:
        return
    finally:
        await client.aclose()
    enabled = str(info.get("cluster_enabled", 0)) == "1"
    if q.redis_cluster and not enabled:
        raise ConfigError(
            "queue.redis_cluster",
            f"is true but the Redis at {_where(q.redis_url)} is not a cluster node (cluster_enabled:0); "
            "set queue.redis_cluster = false or point queue.redis_url at a node of the cluster",
        )
    if enabled and not q.redis_cluster:
        raise ConfigError(
            "queue.redis_cluster",
            f"is false but the Redis at {_where(q.redis_url)} is a Redis Cluster node; set queue.redis_cluster = true",
        )


def _where(url: str) -> str:
    kw = parse_url(url)
    return str(kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', 6379)}")
