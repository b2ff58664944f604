"""Telemetry ingest: COPY a batch of reports' samples in PostgreSQL's binary format, then apply them.

Lean on purpose: the consumer (``services.metrics.telemetry``) hands over a batch already
parsed into columns (``services.metrics.wire``); samples become one numpy array; the COPY payload is built by numpy as a packed big-endian record array (no
per-sample Python tuple is encoded); the in-memory state and the rollups are updated
with vectorised operations after the commit, so memory never holds what PostgreSQL
does not.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import asyncpg
import numpy as np
from prometheus_client import Counter, Gauge

from libs.config import Settings
from libs.metrics import BUS_REJECTED
from libs.schemas.metrics import IngestStats
from services.metrics import pgcopy, store
from services.metrics.fleet import DeviceMeta, Fleet, HostMeta
from services.metrics.partitions import Coverage
from services.metrics.rollups import Rollups
from services.metrics.wire import Columns

log = logging.getLogger(__name__)
HANDLER = "on_telemetry"

SAMPLES = Counter("xpumesh_metrics_samples_total", "Device samples written to PostgreSQL.")
SAMPLES_REJECTED = Counter("xpumesh_metrics_samples_rejected_total", "Device samples dropped, by reason.", ["reason"])
REPORTS = Counter("xpumesh_metrics_reports_total", "Telemetry reports written.")
LAG = Gauge("xpumesh_metrics_ingest_lag_seconds", "Sample time to commit over the recent window.", ["quantile"])

MAX_SLOTS = 1024  # a report carries at most this many devices, numbered by their position
COPY_COLUMNS = ("ts", "device_id", "util", "mem_mib", "temp", "power", "healthy", "batch")


def encode_copy(ts_us: np.ndarray, ids: np.ndarray, vals: np.ndarray, batch: int) -> bytes:
    """PostgreSQL binary COPY of samples; ``vals`` columns: util, mem, temp, power, healthy."""
    return pgcopy.encode([("ts", pgcopy.pg_timestamps(ts_us), ">i8"), ("device_id", ids, ">i4"), ("util", vals[:, 0], ">f4"),
                          ("mem_mib", vals[:, 1], ">i4"), ("temp", vals[:, 2], ">f4"), ("power", vals[:, 3], ">f4"),
                          ("healthy", vals[:, 4] != 0, "u1"), ("batch", batch, ">i8")])


def _reject(reason: str, n: int = 1) -> None:
    BUS_REJECTED.labels("metrics", HANDLER, reason).inc(n)


@dataclass
class LagWindow:
    """Sample-to-commit lag of the most recent batches (bounded)."""

    batches: deque[tuple[np.ndarray, np.ndarray]] = field(default_factory=lambda: deque(maxlen=512))

    def add(self, lags: np.ndarray, weights: np.ndarray) -> None:
        self.batches.append((lags, weights))

    def quantiles(self, *qs: float) -> tuple[list[float | None], int]:
        if not self.batches:
            return [None for _ in qs], 0
        lags = np.concatenate([b[0] for b in self.batches])
        weights = np.concatenate([b[1] for b in self.batches])
        order = np.argsort(lags)
        cum = np.cumsum(weights[order])
        total = float(cum[-1]) if cum.size else 0.0
        if total <= 0:
            return [None for _ in qs], 0
        ranked = lags[order]
        out: list[float | None] = [float(ranked[min(int(np.searchsorted(cum, q * total)), len(cum) - 1)]) for q in qs]
        return out, int(total)


@dataclass
class Counts:
    samples: int = 0
    reports: int = 0
    rejected_reports: int = 0
    rejected_samples: int = 0
    batches: int = 0


class Ingest:
    def __init__(self, fleet: Fleet, rollups: Rollups, settings: Settings, pool: asyncpg.Pool) -> None:
        self.fleet, self.rollups, self.settings, self.pool = fleet, rollups, settings, pool
        self.coverage = Coverage()
        self.lag = LagWindow()
        self.counts = Counts()
        self.last_batch = 0
        LAG.labels("0.5").set_function(lambda: self.lag.quantiles(0.5)[0][0] or 0.0)
        LAG.labels("0.99").set_function(lambda: self.lag.quantiles(0.99)[0][0] or 0.0)

    def next_batch(self) -> int:
        self.last_batch = max(self.last_batch + 1, time.time_ns() // 1000)
        return self.last_batch

    def reject_report(self, reason: str) -> None:
        """A report the consumer dropped (wrong type, invalid data): counted as the service's own."""
        self.counts.rejected_reports += 1
        _reject(reason)

    async def write(self, cols: Columns) -> None:
        """COPY a batch's samples, then apply them to the fleet, the rollups and the hosts."""
        if not len(cols):
            return
        fleet = self.fleet
        hosts = [fleet.hosts.get(h) for h in cols.host_ids]
        batch = self.next_batch()
        if not cols.samples:
            self._apply_hosts(cols, hosts)
            return
        raw = np.array(cols.samples, dtype=np.float64)
        slots, vals = raw[:, 0], raw[:, 1:]
        id_arr = self._device_ids(cols, hosts)
        ts_us = np.repeat(np.array(cols.ts_us, dtype=np.int64), cols.counts)
        keep, bad_values, bad_time = self._sane(vals, ts_us, slots)
        missing = self._missing(cols, id_arr, keep, slots)
        self.rollups.begin(batch, float(ts_us[keep].min()) / 1e6 if keep.any() else time.time())
        try:
            created, ids_ok, ts_ok_us, vals_ok = await self._copy(cols, batch, missing, id_arr, slots, keep, ts_us, vals)
            committed = time.time()
            for m in created:
                fleet.put_device(m)
            if created:
                hosts = [fleet.hosts.get(h) for h in cols.host_ids]
            ts_ok = ts_ok_us / 1e6
            fleet.apply_samples(ids_ok, ts_ok, vals_ok)
            self.rollups.add(batch, ids_ok, ts_ok, vals_ok, fleet.cap)
        finally:
            self.rollups.end(batch)
        self._apply_hosts(cols, hosts)
        report_ts = np.array(cols.ts_us, dtype=np.float64) / 1e6
        self.lag.add((committed - report_ts).astype(np.float32), np.array(cols.counts, dtype=np.float32))
        n = len(ids_ok)
        self._count_rejected(bad_values, bad_time)  # with the samples, so stats never show half a batch
        self.counts.samples += n
        self.counts.reports += len(cols)
        self.counts.batches += 1
        SAMPLES.inc(n)
        REPORTS.inc(len(cols))

    async def _copy(self, cols: Columns, batch: int, missing: list[tuple[str, int, str]], id_arr: np.ndarray,
                    slots: np.ndarray, keep: np.ndarray, ts_us: np.ndarray,
                    vals: np.ndarray) -> tuple[list[DeviceMeta], np.ndarray, np.ndarray, np.ndarray]:
        """One transaction: ids for devices not known yet, then the COPY of the kept samples ordered by (device,
        time). Returns the created devices and what was written, in that order: device ids, times (us), values.
        ``id_arr`` gets the new ids."""
        async with self.pool.acquire() as conn, conn.transaction():
            created = await store.create_devices(conn, missing) if missing else []
            if created:
                lookup = {(m.host_id, m.slot): m.id for m in created}
                owner = np.repeat(np.arange(len(cols)), cols.counts)
                for i in np.flatnonzero(id_arr < 0).tolist():
                    id_arr[i] = lookup.get((cols.host_ids[int(owner[i])], int(slots[i])), -1)
            sel = keep & (id_arr >= 0)
            ids, ts = id_arr[sel], ts_us[sel]
            order = np.lexsort((ts, ids))  # one device's samples side by side: cheaper index upkeep, tighter BRIN ranges
            ids, ts, vs = ids[order], ts[order], vals[sel][order]
            payload = encode_copy(ts, ids, vs, batch)
            await conn.copy_to_table("samples", schema_name="metrics", source=memoryview(payload), columns=COPY_COLUMNS,
                                     format="binary")
        return created, ids, ts, vs

    @staticmethod
    def _device_ids(cols: Columns, hosts: list[HostMeta | None]) -> np.ndarray:
        """Each sample's device id from its host's slots (-1: not known yet)."""
        ids: list[int] = []
        pos = 0
        samples = cols.samples
        for h, c in zip(hosts, cols.counts, strict=True):
            if h is None:
                ids += [-1] * c
            else:
                get = h.slots.get
                ids += [get(s[0], -1) for s in samples[pos:pos + c]]
            pos += c
        return np.array(ids, dtype=np.int64)

    def _sane(self, vals: np.ndarray, ts_us: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Samples worth keeping (finite, in range, inside the time range partitions exist for), and how many
        were out of range and out of time."""
        now = time.time()
        m = self.settings.metrics
        ok = np.isfinite(vals).all(axis=1) & (slots >= 0) & (slots < MAX_SLOTS)
        ok &= (vals[:, 0] >= 0) & (vals[:, 0] <= 100) & (vals[:, 1] >= 0) & (vals[:, 1] < 2**31)
        ok &= (vals[:, 2] > -100) & (vals[:, 2] < 300) & (vals[:, 3] >= 0) & (vals[:, 3] < 1e5)
        bad_values = int((~ok).sum())
        lo = max(now - m.max_sample_age_s, self.coverage.start.timestamp()) * 1e6
        hi = min(now + m.max_clock_skew_s, self.coverage.end.timestamp()) * 1e6
        in_time = (ts_us >= lo) & (ts_us < hi)
        bad_time = int((ok & ~in_time).sum())
        result: np.ndarray = ok & in_time
        return result, bad_values, bad_time

    def _count_rejected(self, bad_values: int, bad_time: int) -> None:
        if bad_values:
            SAMPLES_REJECTED.labels("out_of_range").inc(bad_values)
            _reject("invalid_sample", bad_values)
        if bad_time:
            SAMPLES_REJECTED.labels("outside_time_window").inc(bad_time)
            _reject("sample_time", bad_time)
        self.counts.rejected_samples += bad_values + bad_time

    @staticmethod
    def _missing(cols: Columns, ids: np.ndarray, keep: np.ndarray, slots: np.ndarray) -> list[tuple[str, int, str]]:
        """(host, slot, site) of kept samples from devices the service does not know yet."""
        need = np.flatnonzero((ids < 0) & keep)
        if need.size == 0:
            return []
        owner = np.repeat(np.arange(len(cols)), cols.counts)
        return sorted({(cols.host_ids[r], int(slots[i]), cols.sites[r])
                       for i, r in zip(need.tolist(), owner[need].tolist(), strict=True)})

    def _apply_hosts(self, cols: Columns, hosts: list[HostMeta | None]) -> None:
        mono = time.monotonic()
        fleet = self.fleet
        for h, host_id, site, cpu, used, total, ts in zip(hosts, cols.host_ids, cols.sites, cols.cpu_pct, cols.mem_used,
                                                          cols.mem_total, cols.ts_us, strict=True):
            if h is None or h.site != site:
                h = fleet.host(host_id, site)
            if ts / 1e6 >= h.telemetry_at:  # two writes may commit out of order: the newer figures stay
                h.cpu_pct, h.mem_used_mib, h.mem_total_mib = cpu, used, total
                h.telemetry_at = ts / 1e6
            h.seen_mono = mono

    def stats(self) -> IngestStats:
        (p50, p99), window = self.lag.quantiles(0.5, 0.99)
        c = self.counts
        return IngestStats(samples_total=c.samples, reports_total=c.reports, rejected_reports_total=c.rejected_reports,
                           rejected_samples_total=c.rejected_samples, batches_total=c.batches, lag_p50_s=p50,
                           lag_p99_s=p99, window_samples=window, devices=int(self.fleet.present.sum()),
                           hosts=len(self.fleet.hosts))
