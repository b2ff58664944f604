"""The gateway's per-endpoint traffic window: totals, a rate and errors over the last window only, latency
quantiles within a bucket's width, broken streams, and its bounds."""

from __future__ import annotations

import random

import pytest

from services.gateway import traffic
from services.gateway.traffic import Traffic, bucket_of, bucket_value, quantile

KEY = ("acme", "echo")


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_traffic_window_counts_the_last_window_and_totals_everything() -> None:
    clock = Clock()
    t = Traffic(60, clock=clock)
    clock.t += 120  # an instance running for two minutes: the window is full length
    for _ in range(30):
        t.answered(KEY, 200, 0.002)
    t.answered(KEY, 503)
    clock.t += 30
    for _ in range(29):
        t.answered(KEY, 200, 0.004)
    t.answered(KEY, 500, 0.004)  # the replica's own 5xx is an error too
    f = t.figures(KEY)
    assert (f.requests_total, f.errors_total, f.requests, f.errors) == (61, 2, 61, 2)
    assert f.window_s == 60 and f.rate_per_s == pytest.approx(61 / 60)
    assert f.error_ratio == pytest.approx(2 / 61)
    clock.t += 45  # the first 31 requests left the window; the totals keep them
    f = t.figures(KEY)
    assert (f.requests_total, f.errors_total, f.requests, f.errors) == (61, 2, 30, 1)
    assert f.latency_p50_s == pytest.approx(0.004, rel=0.1)
    clock.t += 61
    f = t.figures(KEY)
    assert (f.requests, f.errors, f.latency_p50_s, f.error_ratio) == (0, 0, None, None)
    assert f.requests_total == 61


def test_traffic_rate_of_a_young_instance_is_over_the_time_it_has_run() -> None:
    clock = Clock()
    t = Traffic(60, clock=clock)
    clock.t += 10
    for _ in range(50):
        t.answered(KEY, 200, 0.001)
    f = t.figures(KEY)
    assert f.window_s == pytest.approx(10) and f.rate_per_s == pytest.approx(5)
    assert t.figures(("acme", "other")).requests_total == 0  # an endpoint without traffic: zeros


def test_traffic_latency_quantiles_are_within_a_bucket_of_the_exact_ones() -> None:
    rng = random.Random(3)
    clock = Clock()
    t = Traffic(60, clock=clock)
    samples = [rng.lognormvariate(-6, 1.2) for _ in range(5000)]  # ~2.5 ms median, a long tail
    for i, s in enumerate(samples):
        clock.t = 1000 + i / 100  # 50 s of traffic
        t.answered(KEY, 200, s)
    exact = sorted(samples)
    f = t.figures(KEY)
    assert f.latency_p50_s == pytest.approx(exact[2499], rel=0.1)
    assert f.latency_p99_s == pytest.approx(exact[4949], rel=0.1)


def test_traffic_buckets_cover_the_range_and_quantile_of_nothing_is_none() -> None:
    assert bucket_of(0) == 0 and bucket_of(1e-5) == 0
    assert bucket_of(1e6) == traffic.LATENCY_BUCKETS - 1
    for s in (0.0003, 0.001, 0.05, 2.0, 90.0):
        assert bucket_value(bucket_of(s)) == pytest.approx(s, rel=0.1)
    assert quantile({}, 0.5) is None


def test_traffic_broken_stream_is_an_error_once() -> None:
    t = Traffic(60, clock=Clock())
    t.answered(KEY, 200, 0.01)
    t.broken(KEY, 200)
    t.answered(KEY, 502, 0.01)
    t.broken(KEY, 502)  # already an error by its status
    f = t.figures(KEY)
    assert (f.requests, f.errors, f.errors_total) == (2, 2, 2)


def test_traffic_forgets_the_least_recently_used_endpoint_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traffic, "MAX_ENDPOINTS", 3)
    t = Traffic(60, clock=Clock())
    for name in ("a", "b", "c"):
        t.answered(("acme", name), 200, 0.001)
    t.answered(("acme", "a"), 200, 0.001)  # a is used again: b is now the oldest
    t.answered(("acme", "d"), 200, 0.001)
    assert sorted(n for _, n in t.endpoints) == ["a", "c", "d"]
    assert all(len(e.slots) == 60 for e in t.endpoints.values())
