"""SSRF guard for webhook targets: no loopback, link-local, private or reserved addresses.

The host is resolved and every address it resolves to is checked at creation (for a clear
error) and again when each connection is opened: ``GuardedTransport`` resolves the name
itself, checks the addresses and connects to the checked address (TLS still verifies the
name), so a name re-pointed at an internal address between the check and the connect
(DNS rebinding) is refused too. Operators may allow host patterns
(``gateway.webhook_allow_hosts``, fnmatch) that then skip the address check.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class UnsafeTarget(ValueError):
    """The URL may not be used as a webhook target; the message is safe to show the caller."""


_6TO4 = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_V4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and leads to: IPv4-mapped, -compatible and -translated,
    6to4 (``2002::/16``), Teredo (``2001::/32``: its server and client) and NAT64 (``64:ff9b::/96``)."""
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr in _6TO4:
        return [addr.sixtofour] if addr.sixtofour is not None else []
    if addr in _TEREDO:
        return list(addr.teredo) if addr.teredo is not None else []
    if addr in _NAT64 or addr in _V4_COMPATIBLE or addr in _V4_TRANSLATED:
        return [low32]
    return []


def _forbidden_one(addr: Address) -> bool:
    return (addr.is_loopback or addr.is_link_local or addr.is_private or addr.is_reserved or addr.is_multicast
            or addr.is_unspecified or not addr.is_global)


def _forbidden(addr: Address) -> bool:
    """Loopback, link-local, private, reserved, multicast, not global — or an IPv6 address that leads to such
    an IPv4 address (whatever this Python's tables say about the IPv6 prefix itself)."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _NAT64_LOCAL:
            return True  # local-use NAT64 (RFC 8215): translated inside the operator's network
        inner = embedded_ipv4(addr)
        if addr.ipv4_mapped is not None:
            return _forbidden_one(inner[0])
        if any(_forbidden_one(v4) for v4 in inner):
            return True
    return _forbidden_one(addr)


def allowed_by_pattern(host: str, patterns: list[str]) -> bool:
    host = host.lower()
    return any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns)


async def check_target(url: str, allow: list[str], *, resolve_timeout_s: float = 5.0) -> None:
    """Raise UnsafeTarget unless the URL is http(s) with a host that resolves only to public addresses."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeTarget("the URL cannot be parsed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("the URL must be http(s) with a host")
    if parts.username or parts.password:
        raise UnsafeTarget("the URL must not carry credentials")
    host = parts.hostname
    if allowed_by_pattern(host, allow):
        return
    await resolve_public(host, port or (443 if parts.scheme == "https" else 80),
                         resolve_timeout_s=resolve_timeout_s)


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_public(host: str, port: int, *, resolve_timeout_s: float = 5.0,
                         resolve: Resolver = system_resolve) -> list[Address]:
    """Every address ``host`` stands for, all of them public; else UnsafeTarget."""
    try:
        addrs: list[Address] = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            async with asyncio.timeout(resolve_timeout_s):
                found = await resolve(host, port)
        except (OSError, TimeoutError):
            raise UnsafeTarget(f"the host {host[:100]!r} does not resolve") from None
        addrs = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
        if not addrs:
            raise UnsafeTarget(f"the host {host[:100]!r} does not resolve") from None
    for addr in addrs:
        if _forbidden(addr):
            raise UnsafeTarget(f"the host {host[:100]!r} resolves to a loopback, link-local, private or reserved "
                               "address; an operator can allow it with XPUMESH_GATEWAY__WEBHOOK_ALLOW_HOSTS")
    return addrs


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to checked public addresses (or hosts an operator allowed)."""

    def __init__(self, allow: list[str], *, resolve_timeout_s: float = 5.0, resolve: Resolver = system_resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow, self.resolve_timeout_s, self.resolve = allow, resolve_timeout_s, resolve
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        if allowed_by_pattern(host, self.allow):
            return await self.inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                socket_options=socket_options)
        addrs = await resolve_public(host, port, resolve_timeout_s=self.resolve_timeout_s, resolve=self.resolve)
        failure: Exception | None = None
        for addr in addrs:  # connect to what was checked, not to a second lookup's answer; each in turn
            try:
                return await self.inner.connect_tcp(str(addr), port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                failure = exc
        assert failure is not None  # resolve_public never returns an empty list
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise UnsafeTarget("webhook targets are TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on a ``GuardedBackend``."""

    def __init__(self, allow: list[str], *, limits: httpx.Limits, resolve_timeout_s: float = 5.0,
                 resolve: Resolver = system_resolve) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow, resolve_timeout_s=resolve_timeout_s, resolve=resolve))
