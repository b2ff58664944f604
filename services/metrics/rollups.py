"""Rollups kept incrementally: 1-minute buckets per device in memory, written when they close.

Every committed ingest batch is added to the open minute's per-device sums (vectorised).
When a minute closes (its end plus ``rollup_grace_s`` has passed) the writer groups its
device rows into host, site, hardware-type and site-by-hardware-type rows and merges them
all into ``rollup_1m`` and, summed per hour, into ``rollup_1h`` — one transaction that
also moves the checkpoint. Raw samples are never rescanned, except after a crash: then
the samples written after the checkpoint rebuild the open minutes.

Rows hold sums (not averages) so that a late sample merges exactly with ``ON CONFLICT``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from services.metrics.state import Fleet

SCOPE_DEVICE, SCOPE_HOST, SCOPE_SITE, SCOPE_HW, SCOPE_SITE_HW = 0, 1, 2, 3, 4
BUCKET_S = 60
# column order of Acc.sums / Acc.maxs
SUM_COLS = ("util", "mem", "temp", "power")
MAX_COLS = ("util", "temp")
RollupRow = tuple[int, str, datetime, int, float, float, float, float, float, float, int]


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


def _group(acc: Acc, ids: np.ndarray, groups: np.ndarray, ngroups: int) -> tuple[np.ndarray, ...]:
    """Sum device rows ``ids`` into ``groups`` (one group index per id)."""
    n = np.bincount(groups, weights=acc.n[ids], minlength=ngroups)
    sums = np.stack([np.bincount(groups, weights=acc.sums[ids, c], minlength=ngroups) for c in range(len(SUM_COLS))], 1)
    maxs = np.full((ngroups, len(MAX_COLS)), -np.inf, np.float32)
    np.maximum.at(maxs, groups, acc.maxs[ids])
    unhealthy = np.bincount(groups, weights=acc.unhealthy[ids], minlength=ngroups)
    return n, sums, maxs, unhealthy


def _rows(scope: int, keys: list[str], bucket: datetime, n: np.ndarray, sums: np.ndarray, maxs: np.ndarray,
          unhealthy: np.ndarray) -> list[RollupRow]:
    out: list[RollupRow] = []
    for i in np.flatnonzero(n > 0).tolist():
        out.append((scope, keys[i], bucket, int(n[i]), float(sums[i, 0]), float(maxs[i, 0]), float(sums[i, 1]),
                    float(sums[i, 2]), float(maxs[i, 1]), float(sums[i, 3]), int(unhealthy[i])))
    return out


def acc_rows(acc: Acc, fleet: Fleet) -> list[RollupRow]:
    """Every rollup row of one closed minute: per device, host, site, hardware type, site by hardware type."""
    bucket = datetime.fromtimestamp(acc.bucket, UTC)
    k = min(acc.cap, fleet.cap)
    ids = np.flatnonzero(acc.n[:k] > 0)
    ids = ids[fleet.host_idx[ids] >= 0]
    if ids.size == 0:
        return []
    rows = _rows(SCOPE_DEVICE, [str(i) for i in ids.tolist()], bucket, acc.n[ids], acc.sums[ids], acc.maxs[ids],
                 acc.unhealthy[ids])
    nh, ns, nw = len(fleet.host_list), len(fleet.sites), len(fleet.hw)
    site_idx, hw_idx = fleet.site_idx[ids], fleet.hw_idx[ids]
    host_keys = [h.host_id for h in fleet.host_list]
    rows += _rows(SCOPE_HOST, host_keys, bucket, *_group(acc, ids, fleet.host_idx[ids], nh))
    rows += _rows(SCOPE_SITE, fleet.sites.names, bucket, *_group(acc, ids, site_idx, ns))
    rows += _rows(SCOPE_HW, fleet.hw.names, bucket, *_group(acc, ids, hw_idx, nw))
    combo_keys = [f"{s}/{h}" for s in fleet.sites.names for h in fleet.hw.names]
    rows += _rows(SCOPE_SITE_HW, combo_keys, bucket, *_group(acc, ids, site_idx * nw + hw_idx, ns * nw))
    return rows


class Rollups:
    """The open minutes, and the ones being written."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.open: dict[int, Acc] = {}
        self.flushing: list[Acc] = []
        self.last_batch = 0

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
        acc = self.open.get(bucket)
        if acc is None:
            acc = self.open[bucket] = Acc(bucket, batch, cap)
        elif acc.cap < cap:
            acc.grow(cap)
        return acc

    def take_closed(self, now: float) -> tuple[list[Acc], int, datetime | None]:
        """Detach the minutes that have closed; return them with the checkpoint that holds once they are written."""
        closed = [self.open.pop(b) for b in sorted(self.open) if b + BUCKET_S + self.grace_s <= now]
        self.flushing = closed
        if self.open:
            ckpt = min(a.first_batch for a in self.open.values()) - 1
            open_from: datetime | None = datetime.fromtimestamp(min(self.open), UTC)
        else:
            ckpt, open_from = self.last_batch, None
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
