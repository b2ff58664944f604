"""The consumers' first line of dedupe: a bounded set of recent event ids."""

from __future__ import annotations

import time

from libs.bus.consumer import SeenIds


def test_seen_ids_remembers_up_to_capacity_and_forgets_the_oldest() -> None:
    s = SeenIds(3)
    assert [s.seen(i) for i in ("a", "b", "c")] == [False, False, False]
    assert s.seen("a")
    assert not s.seen("d")  # a fourth id: the oldest ("a") goes
    assert not s.seen("a") and s.seen("d")


def _per_id_s(s: SeenIds, start: int, n: int) -> float:
    t = time.perf_counter()
    for i in range(start, start + n):
        s.seen(f"event-{i}")
    return (time.perf_counter() - t) / n


def test_seen_ids_full_set_costs_no_more_per_id_than_a_filling_one() -> None:
    """Dropping the oldest id must not grow with what was dropped before (every consumer at 10,000 messages
    a second runs past its capacity within seconds)."""
    s = SeenIds(50_000)
    filling = _per_id_s(s, 0, 50_000)
    full = _per_id_s(s, 50_000, 100_000)
    assert full < 5 * filling, f"{full * 1e6:.1f} µs per id when full vs {filling * 1e6:.1f} µs while filling"
