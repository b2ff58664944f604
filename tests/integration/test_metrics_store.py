"""Metrics storage: raw samples' BRIN upkeep and reads, overlapping ingest writes, the rollup checkpoint, and the
store's round trips (fleet metadata, alerts with their outbox rows, workloads)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from libs.bus.subjects import event_subject
from libs.config import Settings
from libs.db.outbox import outbox_row
from libs.schemas.metrics import Alert, AlertSeverity, AlertState, Placement, WorkloadNow
from services.metrics import partitions, store
from services.metrics.fleet import STATUS_DOWN, STATUS_UP, DeviceMeta, Fleet
from services.metrics.ingest import COPY_COLUMNS, Ingest, encode_copy
from services.metrics.rollups import BUCKET_S, Rollups
from services.metrics.wire import Columns
from tests.integration.test_metrics_kit import capability, devices

VALS = np.array([[50.0, 1000, 40.0, 100.0, 1.0]])


def test_metrics_rollups_minute_keeps_its_lowest_batch_whatever_the_commit_order() -> None:
    r = Rollups(grace_s=0)
    minute = 1_800_000_000 // BUCKET_S * BUCKET_S
    for batch in (12, 11):  # 12 committed first
        r.begin(batch, minute + 1)
        r.add(batch, np.array([3]), np.array([minute + 1.0]), VALS, 8)
        r.end(batch)
    assert r.open[minute].first_batch == 11 and int(r.open[minute].n[3]) == 2
    _, ckpt, open_from = r.take_closed(minute)  # the minute is still open
    assert ckpt == 10 and open_from == datetime.fromtimestamp(minute, UTC)


def test_metrics_rollups_checkpoint_stays_below_batches_in_flight() -> None:
    r = Rollups(grace_s=0)
    minute = 1_800_000_000 // BUCKET_S * BUCKET_S
    r.begin(20, minute - 30)  # still being written, with a sample of the minute before
    r.begin(21, minute + 5)
    r.add(21, np.array([1]), np.array([minute + 5.0]), VALS, 8)
    r.end(21)
    closed, ckpt, open_from = r.take_closed(minute + 1)
    assert closed == [] and ckpt == 19
    assert open_from == datetime.fromtimestamp(minute - BUCKET_S, UTC)  # a restart rebuilds batch 20's minute too
    r.end(20)  # its write failed: nothing of it to replay
    assert r.take_closed(minute + 1)[1] == 20
    r.written()
    closed, ckpt, open_from = r.take_closed(minute + 2 * BUCKET_S)
    assert [a.bucket for a in closed] == [minute] and ckpt == 21 and open_from is None


async def _copy(conn: asyncpg.Connection, ids: np.ndarray, ts_us: np.ndarray, batch: int) -> None:
    order = np.lexsort((ts_us, ids))
    payload = encode_copy(ts_us[order], ids[order], np.repeat(VALS, len(ids), axis=0), batch)
    await conn.copy_to_table("samples", schema_name="metrics", source=memoryview(payload), columns=COPY_COLUMNS,
                             format="binary")


async def test_metrics_samples_brin_summarized_and_read_by_a_device_series(settings: Settings) -> None:
    m = settings.metrics
    conn = await asyncpg.connect(settings.database_dsn())
    try:
        async with conn.transaction():
            await partitions.maintain(conn, m)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=40)
        t0 = int(start.timestamp()) * 1_000_000
        for k in range(20):  # 20 batches, one sample of each of 2,000 devices, 1 s apart
            await _copy(conn, np.arange(2000), np.full(2000, t0 + k * 1_000_000), k + 1)
        assert await partitions.summarize_recent(conn, m) > 0
        assert await partitions.summarize_recent(conn, m) == 0  # only new ranges, once
        indexes = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE schemaname = 'metrics' "
                                   "AND tablename = 'samples'")
        assert not any("btree" in r["indexdef"] for r in indexes)
        await conn.execute("ANALYZE metrics.samples")
        end = start + timedelta(minutes=1)
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT count(*) FROM metrics.samples WHERE device_id = $1 AND ts >= $2 AND ts < $3",
            1234, start, end))
        assert "Bitmap Index Scan" in plan and "device_id_ts_idx" in plan
        rows = await store.list_raw_series_rows(conn, 1234, start, end, 10)
        assert sum(int(r["n"]) for r in rows) == 20 and len(rows) == 2
    finally:
        await conn.close()


async def test_metrics_ingest_overlapping_writes_keep_every_sample(settings: Settings) -> None:
    m = settings.metrics
    pool = await asyncpg.create_pool(settings.database_dsn(), min_size=2, max_size=2,
                                     server_settings={"synchronous_commit": "off"})
    assert pool is not None
    try:
        async with pool.acquire() as conn, conn.transaction():
            coverage = await partitions.maintain(conn, m)
        fleet, rollups = Fleet(), Rollups(grace_s=0)
        for host in range(50):
            for slot in range(4):
                fleet.put_device(DeviceMeta(id=host * 4 + slot + 1, host_id=f"h-{host}", slot=slot, site="huzhou"))
        ingest = Ingest(fleet, rollups, settings, pool)
        ingest.coverage = coverage

        def cols(first: int, count: int, k: int) -> Columns:
            c = Columns()
            ts = datetime.now(UTC) - timedelta(seconds=k)
            for host in range(first, first + count):
                c.add(f"h-{host}", "huzhou", ts, 1.0, 1, 2, [(slot, 10.0 * k, 100, 40.0, 200.0, 1) for slot in range(4)])
            return c

        await asyncio.gather(*(ingest.write(cols(25 * (k % 2), 25, k)) for k in range(6)))
        assert ingest.counts.samples == 600 and not rollups.inflight
        assert sum(int(a.n.sum()) for a in rollups.open.values()) == 600
        assert min(a.first_batch for a in rollups.open.values()) == await pool.fetchval(
            "SELECT min(batch) FROM metrics.samples")
        assert await pool.fetchval("SELECT count(*) FROM metrics.samples") == 600
        assert float(fleet.util[1]) == 0.0  # the newest sample (k = 0) wins, whatever order the writes committed in
    finally:
        await pool.close()


async def test_metrics_store_fleet_reads_back_capabilities_and_host_status(settings: Settings) -> None:
    report = capability("h-1", "hangzhou", devices("gpu", 2)).model_copy(update={"labels": {"rack": "r7"}})
    conn = await asyncpg.connect(settings.database_dsn())
    try:
        async with conn.transaction():
            metas, gone = await store.update_capabilities(conn, [report])
            await store.update_host_status(conn, "h-1", "hangzhou", "down")
            await store.update_host_status(conn, "h-2", "huzhou", "up")  # known only from the registry so far
        assert [m.slot for m in metas] == [0, 1] and gone == [] and metas[0].runtimes == {"cuda": "12.4"}
        async with conn.transaction():
            fewer = report.model_copy(update={"generation": 2, "devices": report.devices[:1]})
            _, gone = await store.update_capabilities(conn, [fewer])
        assert gone == [metas[1].id]
        fleet = await store.read_fleet(conn)
    finally:
        await conn.close()
    h1, h2 = fleet.hosts["h-1"], fleet.hosts["h-2"]
    assert (h1.generation, h1.labels, h1.status, h1.hostname) == (2, {"rack": "r7"}, STATUS_DOWN, "h-1")
    assert (h2.site, h2.status) == ("huzhou", STATUS_UP)
    assert set(fleet.devices) == {metas[0].id} and fleet.devices[metas[0].id].runtimes == {"cuda": "12.4"}


async def test_metrics_store_device_health_is_the_inventorys_and_survives_capability_reports(
        settings: Settings) -> None:
    report = capability("h-1", "hangzhou", devices("gpu", 2, unhealthy=(1,)))
    conn = await asyncpg.connect(settings.database_dsn())
    try:
        async with conn.transaction():
            metas, _ = await store.update_capabilities(conn, [report])
            stored = await store.update_device_health(conn, [("h-1", 0, "hangzhou", "unhealthy"),
                                                             ("h-9", 3, "ningbo", "healthy")])  # not known yet
        by_key = {m.key: (m, present) for m, present in stored}
        assert by_key["h-1/0"][0].id == metas[0].id and by_key["h-1/0"][0].model == "A100-SXM4-80GB"
        assert by_key["h-9/3"][1] and by_key["h-9/3"][0].hardware_type == "unknown"
        async with conn.transaction():  # a later report neither sets nor resets what the inventory decided
            await store.update_capabilities(conn, [report.model_copy(update={"generation": 2})])
        fleet = await store.read_fleet(conn)
    finally:
        await conn.close()
    h1_0, h1_1, h9_3 = (fleet.by_key[k] for k in ("h-1/0", "h-1/1", "h-9/3"))
    assert [int(fleet.effective_health()[d]) for d in (h1_0, h1_1, h9_3)] == [0, -1, 1]
    assert fleet.hosts["h-9"].site == "ningbo"


async def test_metrics_store_alerts_upserted_listed_counted_and_queued_in_the_outbox(settings: Settings) -> None:
    t0 = datetime(2030, 5, 1, 12, tzinfo=UTC)

    def alert(k: int, site: str, severity: AlertSeverity) -> Alert:
        return Alert(id=f"device_hot/h-{k}/0", rule="device_hot", severity=severity, state=AlertState.FIRING,
                     site=site, host_id=f"h-{k}", device=f"h-{k}/0", summary="hot", value=91.5,
                     started_at=t0 + timedelta(minutes=k))

    firing = [alert(1, "hangzhou", AlertSeverity.CRITICAL), alert(2, "huzhou", AlertSeverity.WARNING),
              alert(3, "hangzhou", AlertSeverity.WARNING)]
    resolved = [a.model_copy(update={"state": AlertState.RESOLVED, "resolved_at": t0 + timedelta(hours=k)})
                for k, a in enumerate(firing[:2], 1)]
    conn = await asyncpg.connect(settings.database_dsn())
    try:
        async with conn.transaction():
            await store.update_alerts(conn, firing)
        async with conn.transaction():
            await store.update_alerts(conn, resolved)
        assert await store.list_firing_alerts(conn) == [firing[2]]
        assert await store.list_alerts(conn, AlertState.RESOLVED, None, None, 10) == resolved[::-1]
        assert await store.list_alerts(conn, AlertState.RESOLVED, None, None, 1) == [resolved[1]]
        assert await store.count_alerts(conn, AlertState.RESOLVED, None, None) == 2
        assert await store.list_alerts(conn, AlertState.RESOLVED, ["hangzhou"], "critical", 10) == [resolved[0]]
        assert await store.count_alerts(conn, AlertState.RESOLVED, [], None) == 0
        queued = await conn.fetch("SELECT event_id, subject, payload FROM metrics.outbox ORDER BY seq")
    finally:
        await conn.close()
    expected = [outbox_row(e, event_subject(e.type, a.site))
                for a, e in ((a, store.alert_event(a)) for a in firing + resolved)]

    def untimed(row: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        return row["event_id"], row["subject"], {k: v for k, v in json.loads(row["payload"]).items() if k != "time"}

    assert [untimed(r) for r in queued] == [untimed(e) for e in expected]


async def test_metrics_store_workloads_upserted_listed_and_deleted(settings: Settings) -> None:
    t0 = datetime(2030, 5, 1, 12, tzinfo=UTC)
    place = [Placement(replica=0, host_id="h-1", site="hangzhou", devices=["h-1/0"], shares=[0.5])]
    works = [WorkloadNow(id=f"w-{k}", name=f"job-{k}", tenant="acme", state="running",
                         updated_at=t0 + timedelta(seconds=k), placements=place) for k in range(3)]
    conn = await asyncpg.connect(settings.database_dsn())
    try:
        async with conn.transaction():
            for w in works:
                await store.update_workload(conn, w)
            await store.update_workload(conn, works[0].model_copy(update={"state": "stopped",
                                                                          "updated_at": t0 + timedelta(minutes=1)}))
            await store.delete_workloads(conn, ["w-1"])
            await store.delete_workloads(conn, [])
        listed = await store.list_workloads(conn, 10)
        assert [w.id for w in await store.list_workloads(conn, 1)] == ["w-0"]
    finally:
        await conn.close()
    assert [(w.id, w.state) for w in listed] == [("w-0", "stopped"), ("w-2", "running")]
    assert listed[1] == works[2]
