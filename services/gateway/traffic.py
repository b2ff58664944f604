"""What one gateway instance saw of each endpoint's traffic, for ``GET /v1/endpoint-stats`` (the dashboard).

``proxy.forward`` counts every request through ``/v1/endpoints/`` twice, at the same points: in
Prometheus (``xpumesh_endpoint_*``, cumulative, for scraping) and here, in a window the gateway
can answer from without parsing its own exposition. Per endpoint (tenant, name) this keeps the
totals since the instance started and, for the last ``gateway.endpoint_stats_window_s`` seconds,
one slot per second: requests, errors and a latency histogram over log-spaced buckets (each
``2 ** (1/4)`` wider than the one before, 0.1 ms to ~2 min), from which quantiles are read to
within a bucket's width (about ±9 %). Memory is bounded: slots per endpoint by the window,
buckets per slot by ``LATENCY_BUCKETS``, endpoints by ``MAX_ENDPOINTS`` (the least recently
used are forgotten first).

An error here is a request that failed: answered with a 5xx (the gateway's own 502/503/504 or the
replica's) or whose stream broke after its status line was sent. Latency is the time to the
replica's response headers, as ``xpumesh_endpoint_request_seconds`` measures it.

Several gateway instances each keep their own window: each reports what it forwarded.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_ENDPOINTS = 10_000
_LOWEST_S = 1e-4
_GROWTH = 2 ** 0.25
LATENCY_BUCKETS = 84  # 0.1 ms · 2^(84/4) ≈ 210 s; slower answers share the last bucket
_LOG_GROWTH = math.log(_GROWTH)

Key = tuple[str | None, str]


def bucket_of(seconds: float) -> int:
    """The latency bucket of an answer: 0 holds everything below 0.1 ms."""
    if seconds <= _LOWEST_S:
        return 0
    return min(LATENCY_BUCKETS - 1, 1 + int(math.log(seconds / _LOWEST_S) / _LOG_GROWTH))


def bucket_value(index: int) -> float:
    """The value a bucket stands for: its geometric midpoint (bucket 0: its upper bound)."""
    if index <= 0:
        return _LOWEST_S
    return _LOWEST_S * _GROWTH ** (index - 0.5)


@dataclass
class _Slot:
    second: int = -1
    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)


@dataclass
class Figures:
    """One endpoint's traffic as this instance saw it."""

    requests_total: int
    errors_total: int
    window_s: float  # the span the windowed figures cover (shorter while the instance is young)
    requests: int
    errors: int
    latency_p50_s: float | None
    latency_p99_s: float | None

    @property
    def rate_per_s(self) -> float:
        return self.requests / self.window_s

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None


class _Endpoint:
    def __init__(self, slots: int) -> None:
        self.slots = [_Slot() for _ in range(slots)]
        self.requests_total = 0
        self.errors_total = 0

    def slot(self, second: int) -> _Slot:
        s = self.slots[second % len(self.slots)]
        if s.second != second:
            s.second, s.requests, s.errors = second, 0, 0
            s.latency.clear()
        return s


class Traffic:
    """Per endpoint: totals since start and a window of the last ``window_s`` seconds (see the module)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = max(1, math.ceil(window_s))
        self.clock = clock
        self.started = clock()
        self.endpoints: OrderedDict[Key, _Endpoint] = OrderedDict()

    def _entry(self, key: Key) -> _Endpoint:
        entry = self.endpoints.get(key)
        if entry is None:
            entry = self.endpoints[key] = _Endpoint(self.slots)
            while len(self.endpoints) > MAX_ENDPOINTS:
                self.endpoints.popitem(last=False)
        else:
            self.endpoints.move_to_end(key)
        return entry

    def answered(self, key: Key, status: int, seconds: float | None = None) -> None:
        """A request got its status: ``seconds`` to the replica's headers when a replica answered."""
        entry = self._entry(key)
        slot = entry.slot(int(self.clock()))
        entry.requests_total += 1
        slot.requests += 1
        if status >= 500:
            entry.errors_total += 1
            slot.errors += 1
        if seconds is not None:
            b = bucket_of(seconds)
            slot.latency[b] = slot.latency.get(b, 0) + 1

    def broken(self, key: Key, status: int) -> None:
        """The stream of an answered request broke: an error, unless its status already made it one."""
        if status >= 500:
            return
        entry = self._entry(key)
        entry.errors_total += 1
        entry.slot(int(self.clock())).errors += 1

    def figures(self, key: Key) -> Figures:
        """The endpoint's figures now (zeros for one that saw no request)."""
        now = self.clock()
        window_s = max(1.0, min(float(self.slots), now - self.started))
        entry = self.endpoints.get(key)
        if entry is None:
            return Figures(0, 0, window_s, 0, 0, None, None)
        oldest = int(now) - self.slots + 1
        live = [s for s in entry.slots if oldest <= s.second <= int(now)]
        merged: dict[int, int] = {}
        for s in live:
            for b, n in s.latency.items():
                merged[b] = merged.get(b, 0) + n
        return Figures(entry.requests_total, entry.errors_total, window_s, sum(s.requests for s in live),
                       sum(s.errors for s in live), quantile(merged, 0.5), quantile(merged, 0.99))


def quantile(histogram: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile of a bucket histogram (the value of the bucket holding it), None when empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for b in sorted(histogram):
        seen += histogram[b]
        if seen >= rank:
            return bucket_value(b)
    return bucket_value(max(histogram))
