"""SSRF guard for webhook targets: no loopback, link-local, private or reserved addresses.

The host is resolved and every address it resolves to is checked, at creation and again
before each delivery (a name may be re-pointed later). Operators may allow host patterns
(``gateway.webhook_allow_hosts``, fnmatch) that then skip the address check.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeTarget(ValueError):
    """The URL may not be used as a webhook target; the message is safe to show the caller."""


def _forbidden(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (addr.is_loopback or addr.is_link_local or addr.is_private or addr.is_reserved or addr.is_multicast
            or addr.is_unspecified or not addr.is_global)


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
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addrs = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM),
                timeout=resolve_timeout_s)
        except (OSError, TimeoutError):
            raise UnsafeTarget(f"the host {host[:100]!r} does not resolve") from None
        addrs = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addrs:
            raise UnsafeTarget(f"the host {host[:100]!r} does not resolve") from None
    for addr in addrs:
        if _forbidden(addr):
            raise UnsafeTarget(f"the host {host[:100]!r} resolves to a loopback, link-local, private or reserved "
                               "address; an operator can allow it with XPUMESH_GATEWAY__WEBHOOK_ALLOW_HOSTS")
