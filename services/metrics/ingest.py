"""Telemetry ingest: validate a batch of reports, COPY its samples in PostgreSQL's binary format, then apply them.

Lean on purpose: one pydantic call validates the whole batch; samples become one numpy
array; the COPY payload is built by numpy as a packed big-endian record array (no
per-sample Python tuple is encoded); the in-memory state and the rollups are updated
with vectorised operations after the commit, so memory never holds what PostgreSQL
does not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter, ValidationError

from libs.config import Settings
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.hostevents import TelemetryReport
from libs.schemas.metrics import IngestStats
from services.metrics import models, pgcopy
from services.metrics.partitions import Coverage
from services.metrics.rollups import Rollups
from services.metrics.state import Fleet

log = logging.getLogger(__name__)
HANDLER = "on_telemetry"

SAMPLES = Counter("xpumesh_metrics_samples_total", "Device samples written to PostgreSQL.")
SAMPLES_REJECTED = Counter("xpumesh_metrics_samples_rejected_total", "Device samples dropped, by reason.", ["reason"])
REPORTS = Counter("xpumesh_metrics_reports_total", "Telemetry reports written.")
LAG = Gauge("xpumesh_metrics_ingest_lag_seconds", "Sample time to commit over the recent window.", ["quantile"])

_REPORTS = TypeAdapter(list[TelemetryReport])
_US = timedelta(microseconds=1)
_CHUNK = 512
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
COPY_COLUMNS = ("ts", "device_id", "util", "mem_mib", "temp", "power", "healthy", "batch")


def encode_copy(ts_us: np.ndarray, ids: np.ndarray, vals: np.ndarray, batch: int) -> bytes:
    """PostgreSQL binary COPY of samples; ``vals`` columns: util, mem, temp, power, healthy."""
    return pgcopy.encode([("ts", pgcopy.pg_timestamps(ts_us), ">i8"), ("device_id", ids, ">i4"), ("util", vals[:, 0], ">f4"),
                          ("mem_mib", vals[:, 1], ">i4"), ("temp", vals[:, 2], ">f4"), ("power", vals[:, 3], ">f4"),
                          ("healthy", vals[:, 4] != 0, "u1"), ("batch", batch, ">i8")])


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


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

    def validate(self, events: list[CloudEvent]) -> list[TelemetryReport]:
        """Valid reports of a batch; the rest are counted and dropped (one bad report never costs the batch)."""
        datas = []
        for e in events:
            if e.type != EventTypes.HOST_TELEMETRY:
                self.counts.rejected_reports += 1
                _reject("wrong_type")
            else:
                datas.append(e.data)
        try:
            return _REPORTS.validate_python(datas)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors() if e["loc"] and isinstance(e["loc"][0], int)}
            self.counts.rejected_reports += len(bad)
            _reject("invalid_data", len(bad))
            first = exc.errors()[0]
            log.warning("%s: dropped %d invalid telemetry reports (first: %s: %s)", HANDLER, len(bad),
                        ".".join(str(p) for p in first["loc"][1:]), first["msg"])
        out = []
        for i, d in enumerate(datas):
            if i not in bad:
                try:
                    out.append(TelemetryReport.model_validate(d))
                except ValidationError:
                    self.counts.rejected_reports += 1
                    _reject("invalid_data")
        return out

    async def handle(self, events: list[CloudEvent]) -> None:
        """Write a batch, then hold the consumer for the rest of ``ingest_linger_s``: under load the next
        fetch then takes everything that arrived meanwhile, so commits stay few and batches grow."""
        started = time.monotonic()
        await self._handle(events)
        rest = self.settings.metrics.ingest_linger_s - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)

    async def _handle(self, events: list[CloudEvent]) -> None:
        reports: list[TelemetryReport] = []
        for k in range(0, len(events), _CHUNK):  # let requests in between chunks of a big batch
            reports += self.validate(events[k:k + _CHUNK])
            await asyncio.sleep(0)
        if not reports:
            return
        fleet = self.fleet
        flat: list[tuple[int, float, int, float, float, int]] = []
        ids: list[int] = []
        counts, stamps = [], []
        for r in reports:
            h = fleet.hosts.get(r.host_id)
            slots = h.slots if h is not None else {}
            flat.extend(r.devices)
            ids.extend([slots.get(s[0], -1) for s in r.devices])
            counts.append(len(r.devices))
            stamps.append((_aware(r.ts) - _UNIX) // _US)
        batch = self.next_batch()
        if not flat:
            self._apply_hosts(reports)
            return
        vals = np.array(flat, dtype=np.float64)[:, 1:]
        id_arr = np.array(ids, dtype=np.int64)
        ts_us = np.repeat(np.array(stamps, dtype=np.int64), counts)
        keep = self._sane(vals, ts_us)
        missing = self._missing(reports, id_arr, keep, counts)
        async with self.pool.acquire() as conn, conn.transaction():
            created = await models.create_devices(conn, missing) if missing else []
            if created:
                lookup = {(m.host_id, m.slot): m.id for m in created}
                self._fill(reports, counts, id_arr, lookup)
            sel = keep & (id_arr >= 0)
            payload = encode_copy(ts_us[sel], id_arr[sel], vals[sel], batch)
            await conn.copy_to_table("samples", schema_name="metrics", source=memoryview(payload), columns=COPY_COLUMNS,
                                     format="binary")
        committed = time.time()
        for m in created:
            fleet.put_device(m)
        ids_ok, ts_ok, vals_ok = id_arr[sel], ts_us[sel] / 1e6, vals[sel]
        fleet.apply_samples(ids_ok, ts_ok, vals_ok)
        self.rollups.add(batch, ids_ok, ts_ok, vals_ok, fleet.cap)
        self._apply_hosts(reports)
        report_ts = np.array(stamps, dtype=np.float64) / 1e6
        self.lag.add((committed - report_ts).astype(np.float32), np.array(counts, dtype=np.float32))
        n = int(sel.sum())
        self.counts.samples += n
        self.counts.reports += len(reports)
        self.counts.batches += 1
        SAMPLES.inc(n)
        REPORTS.inc(len(reports))

    def _sane(self, vals: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
        """Samples worth keeping: finite, in range, and inside the time range partitions exist for."""
        now = time.time()
        m = self.settings.metrics
        ok = np.isfinite(vals).all(axis=1)
        ok &= (vals[:, 0] >= 0) & (vals[:, 0] <= 100) & (vals[:, 1] >= 0) & (vals[:, 1] < 2**31)
        ok &= (vals[:, 2] > -100) & (vals[:, 2] < 300) & (vals[:, 3] >= 0) & (vals[:, 3] < 1e5)
        bad_values = int((~ok).sum())
        lo = max(now - m.max_sample_age_s, self.coverage.start.timestamp()) * 1e6
        hi = min(now + m.max_clock_skew_s, self.coverage.end.timestamp()) * 1e6
        in_time = (ts_us >= lo) & (ts_us < hi)
        bad_time = int((ok & ~in_time).sum())
        if bad_values:
            SAMPLES_REJECTED.labels("out_of_range").inc(bad_values)
            _reject("invalid_sample", bad_values)
        if bad_time:
            SAMPLES_REJECTED.labels("outside_time_window").inc(bad_time)
            _reject("sample_time", bad_time)
        self.counts.rejected_samples += bad_values + bad_time
        result: np.ndarray = ok & in_time
        return result

    def _missing(self, reports: list[TelemetryReport], ids: np.ndarray, keep: np.ndarray,
                 counts: list[int]) -> list[tuple[str, int, str]]:
        need = np.flatnonzero((ids < 0) & keep)
        if need.size == 0:
            return []
        owner = np.repeat(np.arange(len(reports)), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        out = set()
        for i in need.tolist():
            r = reports[int(owner[i])]
            out.add((r.host_id, int(r.devices[i - int(starts[owner[i]])][0]), r.site))
        return sorted(out)

    @staticmethod
    def _fill(reports: list[TelemetryReport], counts: list[int], ids: np.ndarray,
              lookup: dict[tuple[str, int], int]) -> None:
        pos = 0
        for r, c in zip(reports, counts, strict=True):
            for j, s in enumerate(r.devices):
                if ids[pos + j] < 0:
                    ids[pos + j] = lookup.get((r.host_id, s[0]), -1)
            pos += c

    def _apply_hosts(self, reports: list[TelemetryReport]) -> None:
        mono = time.monotonic()
        for r in reports:
            h = self.fleet.hosts.get(r.host_id)
            if h is None or h.site != r.site:
                h = self.fleet.host(r.host_id, r.site)
            h.cpu_pct, h.mem_used_mib, h.mem_total_mib = r.cpu_pct, r.mem_used_mib, r.mem_total_mib
            h.telemetry_at = max(h.telemetry_at, _aware(r.ts).timestamp())
            h.seen_mono = mono

    def stats(self) -> IngestStats:
        (p50, p99), window = self.lag.quantiles(0.5, 0.99)
        c = self.counts
        return IngestStats(samples_total=c.samples, reports_total=c.reports, rejected_reports_total=c.rejected_reports,
                           rejected_samples_total=c.rejected_samples, batches_total=c.batches, lag_p50_s=p50,
                           lag_p99_s=p99, window_samples=window, devices=int(self.fleet.present.sum()),
                           hosts=len(self.fleet.hosts))
