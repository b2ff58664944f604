"""The metrics service's state: what it loads at start, and the work its periodic loops do.

One active instance: the fleet, open rollup minutes and alert state live in this process
(as the registry's liveness table does in the registry). A restart loses nothing it
acknowledged: samples are in PostgreSQL before their messages are acked, and the open
minutes are rebuilt from the samples written after the last rollup checkpoint.

Telemetry is written on connections of its own with ``synchronous_commit = off``: a commit
returns before its WAL reaches the disk, so a write does not wait for a flush. Samples are
loss-tolerant (the next report, seconds later, says the same about the device), and the
trade is bounded: a crash of PostgreSQL itself (or of its machine) may lose the samples of
roughly the last three ``wal_writer_delay`` (0.6 s by default) even though their messages were
acknowledged; it never corrupts anything, and WAL keeps the order, so whatever survives is a
prefix — never a rollup or checkpoint without the samples before it. A crash of the metrics
service alone loses nothing. Capability reports, rollups, the checkpoint and alerts keep the
durable default on the other connections.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from libs.db.outbox import OutboxRelay
from libs.schemas.metrics import FleetSummary
from libs.service import Context
from services.metrics import partitions, store
from services.metrics.alerts import AlertEngine
from services.metrics.fleet import Fleet
from services.metrics.ingest import Ingest
from services.metrics.orm import outbox
from services.metrics.rollups import Rollups, encode_device_rows
from services.metrics.telemetry import INGEST_WRITES
from services.metrics.views import summarize
from services.metrics.workloads import Workloads

log = logging.getLogger(__name__)


@dataclass
class MetricsState:
    ctx: Context[MetricsState]
    pool: asyncpg.Pool
    ingest_pool: asyncpg.Pool
    fleet: Fleet
    rollups: Rollups
    ingest: Ingest
    alerts: AlertEngine
    workloads: Workloads
    relay: OutboxRelay
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # rollup writes vs. series reads
    summaries: dict[frozenset[str] | None, tuple[float, FleetSummary]] = field(default_factory=dict)
    last_ckpt: int | None = None

    @property
    def stale_s(self) -> float:
        return self.alerts.stale_s

    def fresh(self) -> np.ndarray:
        return self.fleet.fresh_mask(self.stale_s)

    def summary(self, sites: list[str] | None) -> FleetSummary:
        key = frozenset(sites) if sites is not None else None
        now = time.monotonic()
        hit = self.summaries.get(key)
        if hit and now - hit[0] < self.ctx.settings.metrics.summary_cache_s:
            return hit[1]
        result = summarize(self.fleet, self.fresh(), self.workloads.allocated(self.fleet),
                           self.workloads.running_by_site(self.fleet), self.alerts.counts_by_site(),
                           set(sites) if sites is not None else None)
        if len(self.summaries) >= 64:
            self.summaries.clear()
        self.summaries[key] = (now, result)
        return result


async def load_state(ctx: Context[MetricsState]) -> MetricsState:
    settings = ctx.settings
    pool = await asyncpg.create_pool(settings.database_dsn(), min_size=2, max_size=4,
                                     server_settings={"application_name": "xpumesh-metrics"})
    ingest_pool = await asyncpg.create_pool(settings.database_dsn(), min_size=INGEST_WRITES, max_size=INGEST_WRITES,
                                            server_settings={"application_name": "xpumesh-metrics-ingest",
                                                             "synchronous_commit": "off"})
    assert pool is not None and ingest_pool is not None
    async with pool.acquire() as conn, conn.transaction():
        coverage = await partitions.maintain(conn, settings.metrics)
    async with pool.acquire() as conn, conn.transaction():
        fleet = await store.read_fleet(conn)
        firing = await store.list_firing_alerts(conn)
        loaded = await store.list_workloads(conn, settings.metrics.max_workloads)
    rollups = Rollups(settings.metrics.rollup_grace_s)
    ingest = Ingest(fleet, rollups, settings, ingest_pool)
    ingest.coverage = coverage
    engine = AlertEngine(settings, time.monotonic())
    engine.load(firing)
    workloads = Workloads(settings.metrics.max_workloads)
    workloads.load(loaded)
    rt = MetricsState(ctx, pool, ingest_pool, fleet, rollups, ingest, engine, workloads, OutboxRelay("metrics", ctx.db, outbox, ctx.bus))
    await recover(rt)
    settle_heap()
    return rt


def settle_heap() -> None:
    """Keep the cyclic GC off the long-lived fleet: the device and host objects (tens of thousands) are moved
    to the permanent generation, and young collections run less often. Parsing telemetry allocates many
    short-lived objects; with the defaults every few hundred messages triggered a collection that walked the
    whole fleet, which cost more than the parsing itself (measured: ~60 → ~15 µs per message)."""
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 50_000), max(gen1, 20), max(gen2, 20))
    gc.freeze()


async def recover(rt: MetricsState) -> None:
    """Rebuild the open minutes and each device's latest values from the samples PostgreSQL already has."""
    settings = rt.ctx.settings.metrics
    now = datetime.now(UTC)
    async with rt.pool.acquire() as conn:
        ckpt = await store.read_checkpoint(conn)
        after, open_from = ckpt if ckpt else (0, None)
        since = open_from or (now - timedelta(seconds=settings.rollup_grace_s + 120))
        rows = await store.list_open_minutes(conn, after, since)
        latest = await store.list_latest_samples(conn, now - timedelta(seconds=rt.stale_s))
        ahead = await store.read_max_batch(conn, now - timedelta(seconds=settings.max_sample_age_s),
                                           time.time_ns() // 1000 - 60_000_000)
        rt.ingest.last_batch = max(after, ahead)
    fleet, rollups = rt.fleet, rt.rollups
    for r in rows:
        dev = int(r["device_id"])
        if dev not in fleet.devices:
            continue
        fleet.ensure(dev)
        acc = rollups._acc(int(r["bucket"]), int(r["first_batch"]), fleet.cap)
        acc.first_batch = min(acc.first_batch, int(r["first_batch"]))
        acc.n[dev] += int(r["n"])
        acc.sums[dev] += (float(r["util_sum"]), float(r["mem_sum"]), float(r["temp_sum"]), float(r["power_sum"]))
        acc.maxs[dev] = np.maximum(acc.maxs[dev], (float(r["util_max"]), float(r["temp_max"])))
        acc.unhealthy[dev] += int(r["unhealthy"])
    rollups.last_batch = rt.ingest.last_batch
    if latest:
        ids = np.array([int(r["device_id"]) for r in latest if int(r["device_id"]) in fleet.devices], dtype=np.int64)
        recs = [r for r in latest if int(r["device_id"]) in fleet.devices]
        if recs:
            ts = np.array([float(r["ts"]) for r in recs])
            vals = np.array([(r["util"], r["mem_mib"], r["temp"], r["power"], 1 if r["healthy"] else 0) for r in recs],
                            dtype=np.float64)
            fleet.apply_samples(ids, ts, vals)
    if rows:
        log.info("rebuilt %d open rollup rows from samples after batch %d", len(rows), after)


async def flush_rollups(rt: MetricsState, now: float | None = None) -> int:
    """Write the minutes that have closed; returns the device rows written. On failure the minutes go back."""
    closed, ckpt, open_from = rt.rollups.take_closed(time.time() if now is None else now)
    if not closed and ckpt == rt.last_ckpt:
        rt.rollups.written()
        return 0
    payload, rows = encode_device_rows(closed, max(rt.fleet.devices, default=0))
    try:
        async with rt.lock, rt.pool.acquire() as conn, conn.transaction():
            await store.update_rollups(conn, payload, ckpt, open_from)
    except BaseException:
        rt.rollups.give_back(closed)
        raise
    rt.rollups.written()
    rt.last_ckpt = ckpt
    return rows


async def flush(rt: MetricsState) -> None:
    """Write closed minutes, then summarize new BRIN ranges (each failure logged; both retried next time)."""
    try:
        await flush_rollups(rt)
    except Exception:
        log.exception("rollup write failed; will retry")
    async with rt.pool.acquire() as conn:
        await partitions.summarize_recent(conn, rt.ctx.settings.metrics)


async def maintain_partitions(rt: MetricsState) -> None:
    async with rt.pool.acquire() as conn, conn.transaction():
        rt.ingest.coverage = await partitions.maintain(conn, rt.ctx.settings.metrics)


async def evaluate_alerts(rt: MetricsState) -> None:
    if not rt.ctx.settings.metrics.alerts.enabled:
        return
    changes = rt.alerts.evaluate(rt.fleet, datetime.now(UTC), time.monotonic())
    if changes:
        async with rt.pool.acquire() as conn, conn.transaction():
            await store.update_alerts(conn, changes)
        rt.alerts.apply(changes)
        rt.summaries.clear()
        rt.relay.poke()


async def close(rt: MetricsState) -> None:
    """Write every open minute (the checkpoint then covers all), then close the pools."""
    try:
        await flush_rollups(rt, now=float("inf"))
    except Exception:
        log.warning("final rollup write failed; the next start rebuilds the open minutes")
    await rt.pool.close()
    await rt.ingest_pool.close()
