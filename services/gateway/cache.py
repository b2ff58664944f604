"""A short-TTL cache for hot fleet reads (``GET /v1/devices``, hosts, sites, catalog).

Fleet views change by the second at most and are asked for by every dashboard and
script, so the gateway answers a repeated read from memory for ``gateway.read_cache_s``.
The key is (tenant, role, path, query): a cached answer is never shared with a principal
that might see something else. Concurrent misses for one key make one backend call
(single flight), and while one request refreshes an expired entry the others are answered
from it for up to one more TTL (stale while revalidate), so an expiry is no latency spike.
Only 200 answers are kept; at most ``gateway.read_cache_entries``.
Authentication and the rate limit still apply to every hit (the middleware checks them
before asking the cache).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

CACHEABLE_PATHS = frozenset({"/v1/devices", "/v1/hosts", "/v1/sites", "/v1/sites/links", "/v1/catalog",
                             "/v1/compat-rules"})
CacheKey = tuple[str, str, str, bytes]


@dataclass(frozen=True)
class Cached:
    expires: float
    content_type: bytes
    body: bytes


class ReadCache:
    def __init__(self, ttl_s: float, entries: int) -> None:
        self.ttl_s = ttl_s
        self.entries = entries
        self._items: OrderedDict[CacheKey, Cached] = OrderedDict()
        self._flights: dict[CacheKey, asyncio.Future[Cached | None]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, key: CacheKey) -> Cached | None:
        """A fresh entry; or a stale one (up to a TTL past expiry) while another request is refreshing it."""
        item = self._items.get(key)
        if item is None:
            return None
        now = time.monotonic()
        if item.expires < now:
            if item.expires + self.ttl_s < now:
                del self._items[key]
                return None
            if key not in self._flights:
                return None  # the caller refreshes it
        self.hits += 1
        return item

    def put(self, key: CacheKey, content_type: bytes, body: bytes) -> Cached:
        item = Cached(time.monotonic() + self.ttl_s, content_type, body)
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)
        return item

    def flight(self, key: CacheKey) -> asyncio.Future[Cached | None] | None:
        """The in-flight fetch of this key to wait on, or None after registering the caller as the fetcher."""
        fut = self._flights.get(key)
        if fut is not None:
            return fut
        self.misses += 1
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def land(self, key: CacheKey, item: Cached | None) -> None:
        fut = self._flights.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(item)
