"""Rollups kept incrementally: 1-minute buckets per device in memory, written when they close.

Every committed ingest batch is added to the open minute's per-device sums (vectorised).
When a minute closes (its end plus ``rollup_grace_s`` has passed) its device rows go to
PostgreSQL in one binary COPY; SQL groups them into host, site, hardware-type and
site-by-hardware-type rows and merges everything into ``rollup_1m`` and, summed per hour,
into ``rollup_1h`` — one transaction that also moves the checkpoint. Raw samples are never rescanned, except after a crash: then
the samples written after the checkpoint rebuild the open minutes.

Rows hold sums (not averages) so that a late sample merges exactly with ``ON CONFLICT``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from services.metrics import pgcopy

SCOPE_DEVICE, SCOPE_HOST, SCOPE_SITE, SCOPE_HW, SCOPE_SITE_HW = 0, 1, 2, 3, 4
BUCKET_S = 60
# column order of Acc.sums / Acc.maxs
SUM_COLS = ("util", "mem", "temp", "power")
MAX_COLS = ("util", "temp")


@dataclass
class Acc:
    """One minute's per-device sums, indexed by device id."""

    bucket: int  # epoch seconds of the minute's start
    first_batch: int
    cap: int
    n: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)
    maxs: np.ndarray = field(init=False)
    unhealthy: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.n = np.zeros(self.cap, np.int64)
        self.sums = np.zeros((self.cap, len(SUM_COLS)), np.float64)
        self.maxs = np.full((self.cap, len(MAX_COLS)), -np.inf, np.float32)
        self.unhealthy = np.zeros(self.cap, np.int64)

    def grow(self, cap: int) -> None:
        if cap <= self.cap:
            return
        n, sums, maxs, unhealthy, old = self.n, self.sums, self.maxs, self.unhealthy, self.cap
        self.cap = cap
        self.__post_init__()
        self.n[:old], self.sums[:old], self.maxs[:old], self.unhealthy[:old] = n, sums, maxs, unhealthy

    def add(self, ids: np.ndarray, vals: np.ndarray) -> None:
        """``vals`` columns: util, mem, temp, power, healthy."""
        np.add.at(self.n, ids, 1)
        np.add.at(self.sums, ids, vals[:, :4])
        np.maximum.at(self.maxs, ids, vals[:, [0, 2]].astype(np.float32))
        np.add.at(self.unhealthy, ids, (vals[:, 4] == 0).astype(np.int64))

    def merge(self, other: Acc) -> None:
        self.grow(other.cap)
        k = other.cap
        self.n[:k] += other.n
        self.sums[:k] += other.sums
        np.maximum(self.maxs[:k], other.maxs, out=self.maxs[:k])
        self.unhealthy[:k] += other.unhealthy
        self.first_batch = min(self.first_batch, other.first_batch)


@dataclass
class Agg:
    """Sums over some devices and some time, as a rollup row holds them."""

    n: int = 0
    util_sum: float = 0.0
    util_max: float = -math.inf
    mem_sum: float = 0.0
    temp_sum: float = 0.0
    temp_max: float = -math.inf
    power_sum: float = 0.0
    unhealthy: int = 0

    def merge(self, o: Agg) -> None:
        self.n += o.n
        self.util_sum += o.util_sum
        self.util_max = max(self.util_max, o.util_max)
        self.mem_sum += o.mem_sum
        self.temp_sum += o.temp_sum
        self.temp_max = max(self.temp_max, o.temp_max)
        self.power_sum += o.power_sum
        self.unhealthy += o.unhealthy


def encode_device_rows(accs: list[Acc], max_id: int) -> tuple[bytes, int]:
    """Binary COPY of every device row of closed minutes (``DEVICE_STAGE_COLUMNS``); returns (payload, rows).

    Only device rows leave Python: PostgreSQL groups them into host, site and hardware-type
    rows by joining ``metrics.devices``.
    """
    parts: list[tuple[np.ndarray, ...]] = []
    for acc in accs:
        ids = np.flatnonzero(acc.n[: min(acc.cap, max_id + 1)] > 0)
        if ids.size:
            parts.append((ids, np.full(ids.size, acc.bucket * 1_000_000, np.int64), acc.n[ids], acc.sums[ids],
                          acc.maxs[ids], acc.unhealthy[ids]))
    if not parts:
        return b"", 0
    ids, buckets, n, sums, maxs, unhealthy = (np.concatenate(c) for c in zip(*parts, strict=True))
    payload = pgcopy.encode([
        ("device_id", ids, ">i4"), ("bucket", pgcopy.pg_timestamps(buckets), ">i8"), ("n", n, ">i4"),
        ("util_sum", sums[:, 0], ">f8"), ("util_max", maxs[:, 0], ">f4"), ("mem_sum", sums[:, 1], ">f8"),
        ("temp_sum", sums[:, 2], ">f8"), ("temp_max", maxs[:, 1], ">f4"), ("power_sum", sums[:, 3], ">f8"),
        ("unhealthy", unhealthy, ">i4")])
    return payload, int(ids.size)


DEVICE_STAGE_COLUMNS = ("device_id", "bucket", "n", "util_sum", "util_max", "mem_sum", "temp_sum", "temp_max",
                        "power_sum", "unhealthy")


class Rollups:
    """The open minutes, and the ones being written."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.open: dict[int, Acc] = {}
        self.flushing: list[Acc] = []
        self.last_batch = 0
        self.inflight: dict[int, int] = {}  # batches being written (writes may overlap) → their earliest minute

    def begin(self, batch: int, first_ts: float) -> None:
        """A batch whose earliest sample is at ``first_ts`` is about to be written; until ``end``, the checkpoint
        stays below it and the minutes to rebuild after a crash start no later than that sample's."""
        self.inflight[batch] = int(first_ts // BUCKET_S) * BUCKET_S

    def end(self, batch: int) -> None:
        """The batch was added (or its write failed and its samples were not kept)."""
        self.inflight.pop(batch, None)

    def add(self, batch: int, ids: np.ndarray, ts: np.ndarray, vals: np.ndarray, cap: int) -> None:
        buckets = (ts // BUCKET_S).astype(np.int64) * BUCKET_S
        first = int(buckets[0]) if buckets.size else 0
        if buckets.size and (buckets == first).all():
            self._acc(first, batch, cap).add(ids, vals)
        else:
            for b in np.unique(buckets).tolist():
                sel = buckets == b
                self._acc(int(b), batch, cap).add(ids[sel], vals[sel])
        self.last_batch = max(self.last_batch, batch)

    def _acc(self, bucket: int, batch: int, cap: int) -> Acc:
        """The open minute ``bucket``; its ``first_batch`` is the lowest batch added to it, whatever the order in
        which batches committed (writes may overlap)."""
        acc = self.open.get(bucket)
        if acc is None:
            acc = self.open[bucket] = Acc(bucket, batch, cap)
        else:
            acc.first_batch = min(acc.first_batch, batch)
            if acc.cap < cap:
                acc.grow(cap)
        return acc

    def take_closed(self, now: float) -> tuple[list[Acc], int, datetime | None]:
        """Detach the minutes that have closed; return them with the checkpoint that holds once they are written."""
        closed = [self.open.pop(b) for b in sorted(self.open) if b + BUCKET_S + self.grace_s <= now]
        self.flushing = closed
        ckpt = min([a.first_batch - 1 for a in self.open.values()] or [self.last_batch])
        starts = list(self.open)
        if self.inflight:  # a batch still being written may commit after this checkpoint: replay it after a crash
            ckpt = min(ckpt, min(self.inflight) - 1)
            starts += self.inflight.values()
        open_from = datetime.fromtimestamp(min(starts), UTC) if starts else None
        return closed, ckpt, open_from

    def written(self) -> None:
        self.flushing = []

    def give_back(self, closed: list[Acc]) -> None:
        """A write failed: put the minutes back (merging with anything that arrived for them meanwhile)."""
        for acc in closed:
            cur = self.open.get(acc.bucket)
            if cur is None:
                self.open[acc.bucket] = acc
            else:
                cur.merge(acc)
        self.flushing = []

    def pending(self) -> list[Acc]:
        return list(self.open.values()) + self.flushing

    def agg(self, dev_ids: np.ndarray, start: float, end: float) -> dict[int, Agg]:
        """Sums over ``dev_ids`` for every unwritten minute in [start, end), by minute."""
        out: dict[int, Agg] = {}
        for acc in self.pending():
            if not (start <= acc.bucket < end):
                continue
            ids = dev_ids[dev_ids < acc.cap]
            n = int(acc.n[ids].sum())
            if n == 0:
                continue
            s = acc.sums[ids].sum(0)
            m = acc.maxs[ids].max(0)
            a = Agg(n, float(s[0]), float(m[0]), float(s[1]), float(s[2]), float(m[1]), float(s[3]),
                    int(acc.unhealthy[ids].sum()))
            if acc.bucket in out:
                out[acc.bucket].merge(a)
            else:
                out[acc.bucket] = a
        return out
