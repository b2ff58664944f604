"""Token buckets by name, and the name of a caller's address, for the gateway's rate limits (``auth.py``)."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per key (refilled at ``rate`` per second up to ``burst``), at most ``bound`` of them:
    past it the least recently used is forgotten (a busy key is never the one dropped)."""

    def __init__(self, rate: float, burst: int, bound: int) -> None:
        self.rate, self.burst, self.bound = rate, float(burst), bound
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
            while len(self._buckets) > self.bound:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate

    def give(self, key: str) -> None:
        """Return a token taken for an attempt that turned out not to count."""
        b = self._buckets.get(key)
        if b is not None:
            b.tokens = min(self.burst, b.tokens + 1.0)


def client_address(scope: Scope, trusted_proxies: tuple[Network, ...]) -> str:
    """The bucket name of the caller: the TCP peer's address, IPv6 by /64 (which one subscriber usually holds
    whole, so hopping addresses inside it gains nothing), an IPv4-mapped address as its IPv4.

    ``X-Forwarded-For`` counts only when the peer is one of ``trusted_proxies``: then the caller is the nearest
    hop, from the right, that is not itself a trusted proxy.
    """
    client = scope.get("client")
    addr = str(client[0]) if client else ""
    if trusted_proxies and _within(addr, trusted_proxies):
        hops = [h.strip() for k, v in scope.get("headers") or () if k == b"x-forwarded-for"
                for h in v.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):  # the nearest hop no trusted proxy vouches for
            addr = hop
            if not _within(hop, trusted_proxies):
                break
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _within(addr: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in n for n in networks)
