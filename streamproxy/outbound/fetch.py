"""Outbound HTTP for URL inputs and callbacks, safe against SSRF.

A user-supplied URL must not reach the gateway's own network (cloud metadata at 169.254.169.254,
Redis on loopback, internal services). Three checks, because each alone has a hole:

- every hop's URL (the first and each redirect) is checked: scheme http(s), and an IP-literal host
  must be public or allow-listed (aiohttp never asks the resolver about literals);
- host names are resolved by :class:`PolicyResolver`, which drops non-public addresses, so the
  address aiohttp connects to is one that was checked (no DNS-rebinding window between a check
  and the connect);
- after connecting, the socket's peer address is checked once more.

Redirects are followed by hand (at most ``max_redirects``), bodies are read in chunks up to
``max_bytes`` and the whole fetch is bounded by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "FetchError",
    "PolicyResolver",
    "UrlPolicy",
    "UrlRefused",
    "check_url",
    "fetch",
    "safe_session",
    "validate_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """A URL could not be fetched; the message is safe to show the client."""

    status = 400


class UrlRefused(FetchError):
    """The URL points somewhere the policy forbids (private address, bad scheme ...)."""


class TooLarge(FetchError):
    status = 413


def _public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Public addresses always; others only when their network or host name is allow-listed."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: tuple[str, ...] = ()  # lower case; "*.example.com" also matches sub-domains

    @classmethod
    def from_allow(cls, entries: Iterable[str]) -> UrlPolicy:
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        hosts: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.append(entry)
        return cls(tuple(nets), tuple(hosts))

    def host_allowed(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        for pat in self.hosts:
            if pat.startswith("*.") and (h == pat[2:] or h.endswith(pat[1:])):
                return True
            if h == pat:
                return True
        return False

    def ip_allowed(self, ip: IPAddress | str) -> bool:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            addr = ipaddress.ip_address(str(addr).split("%")[0])
        if any(addr in n for n in self.networks):
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            if any(addr.ipv4_mapped in n for n in self.networks):
                return True
        return _public(addr)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: str, policy: UrlPolicy) -> str:
    """Syntax, scheme and IP-literal checks for one hop; returns the host name. Raises UrlRefused."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise UrlRefused(f"invalid URL {url[:200]!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"unsupported URL scheme {parts.scheme!r}: only http and https URLs are fetched")
    if not host:
        raise UrlRefused(f"URL without a host: {url[:200]!r}")
    if any(not c.isprintable() or c.isspace() for c in url):
        raise UrlRefused(f"invalid URL {url[:200]!r}: control or space characters")
    try:
        host.encode("idna")
    except UnicodeError:
        raise UrlRefused(f"invalid URL {url[:200]!r}: the host is not a valid domain name") from None
    if parts.username or parts.password:
        raise UrlRefused("URLs with credentials are not fetched")
    ip = _literal(host)
    if ip is not None and not policy.ip_allowed(ip):
        raise UrlRefused(f"refused to fetch {host}: not a public address (allow it with queue.url_allow)")
    return host


class PolicyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then keeps only addresses the policy allows."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            infos = await self.inner.resolve(host, port, family)
        except OSError as exc:
            raise UrlRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        if self.policy.host_allowed(host):
            return infos
        kept = [i for i in infos if self.policy.ip_allowed(i["host"])]
        if not kept:  # the addresses stay unsaid: they would map the gateway's network for the client
            raise UrlRefused(
                f"refused to fetch {host}: it resolves to non-public addresses (allow them with queue.url_allow)"
            )
        return kept

    async def close(self) -> None:
        await self.inner.close()


def safe_session(policy: UrlPolicy, timeout_s: float, **kw: Any) -> aiohttp.ClientSession:
    """A client session whose every connection goes through the policy resolver; no env proxies."""
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy), use_dns_cache=False, limit=100)
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=timeout_s), **kw
    )


def check_peer(resp: aiohttp.ClientResponse, policy: UrlPolicy, host: str) -> None:
    """The address actually connected to must be allowed too (last line of defence)."""
    if policy.host_allowed(host) or resp.connection is None or resp.connection.transport is None:
        return
    peer = resp.connection.transport.get_extra_info("peername")
    if peer and not policy.ip_allowed(str(peer[0])):
        resp.close()
        raise UrlRefused(f"refused to fetch {host}: it connected to a non-public address")


async def validate_url(url: str, policy: UrlPolicy) -> None:
    """Up-front check for URLs that are fetched later (queued jobs, callbacks): resolve now."""
    host = check_url(url, policy)
    if _literal(host) is not None or policy.host_allowed(host):
        return
    resolver = PolicyResolver(policy)
    try:
        await resolver.resolve(host, 0, socket.AF_UNSPEC)
    finally:
        await resolver.close()


def _unwrap(exc: BaseException) -> UrlRefused | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UrlRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def fetch(
    url: str,
    policy: UrlPolicy,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int,
    session: aiohttp.ClientSession | None = None,
) -> tuple[bytes, str]:
    """GET ``url`` within the limits; returns (body, content type). Raises FetchError."""
    own = session is None
    sess = session or safe_session(policy, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            current = url
            for _hop in range(max_redirects + 1):
                host = check_url(current, policy)
                try:
                    async with sess.get(current, allow_redirects=False) as resp:
                        check_peer(resp, policy, host)
                        if resp.status in _REDIRECTS and "Location" in resp.headers:
                            current = urljoin(current, resp.headers["Location"])
                            continue
                        if resp.status != 200:
                            raise FetchError(f"fetching {_short(current)} failed: HTTP {resp.status}")
                        declared = resp.content_length
                        if declared is not None and declared > max_bytes:
                            raise TooLarge(f"remote file is {declared} bytes, more than the {max_bytes} allowed")
                        buf = bytearray()
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            buf += chunk
                            if len(buf) > max_bytes:
                                raise TooLarge(f"remote file exceeds the {max_bytes} bytes allowed")
                        return bytes(buf), resp.headers.get("Content-Type", "")
                except FetchError:
                    raise
                except aiohttp.ClientError as exc:
                    refused = _unwrap(exc)
                    if refused is not None:
                        raise refused from None
                    raise FetchError(f"fetching {_short(current)} failed: {exc}") from None
            raise FetchError(f"too many redirects (more than {max_redirects}) fetching {_short(url)}")
    except TimeoutError:
        raise FetchError(f"fetching {_short(url)} took longer than {timeout_s:g} s") from None
    finally:
        if own:
            await sess.close()


def _short(url: str) -> str:
    return url if len(url) <= 200 else url[:197] + "..."
