"""Metrics service: ingest, city summaries, rollups and series, garbage, workloads, restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.metrics import (
    DeviceDetail,
    DeviceRef,
    FleetSummary,
    HostPage,
    HostsQuery,
    IngestStats,
    Scope,
    Series,
    SeriesQuery,
    SummaryQuery,
    WorkloadPage,
    WorkloadQuery,
)
from services.inventory.api import app as inventory_app
from services.metrics.api import app as metrics_app
from services.registry.api import app as registry_app
from tests.integration.test_metrics_kit import (
    announce,
    capability,
    devices,
    eventually,
    fast_settings,
    health_in_both,
    registered,
    rpc,
    telemetry,
)


async def _summary(bus: Bus, sites: list[str] | None = None) -> FleetSummary:
    result: FleetSummary = await rpc(bus, "summary", SummaryQuery(sites=sites), FleetSummary)
    return result


async def _samples(bus: Bus) -> int:
    stats: IngestStats = await rpc(bus, "ingest.stats", SummaryQuery(), IngestStats)
    return stats.samples_total


async def test_metrics_city_summary_matches_known_input(settings, running_service, bus: Bus) -> None:
    await running_service(inventory_app)  # health: the inventory decides, metrics counts
    await running_service(metrics_app, fast_settings(settings))
    hz1 = await announce(bus, "hz-1", "hangzhou", devices("gpu", 4))
    hz2 = await announce(bus, "hz-2", "hangzhou", devices("npu", 2, unhealthy=(1,)))
    nb1 = await announce(bus, "nb-1", "ningbo", devices("gpu", 2))
    await eventually(lambda: _device_count(bus, 8), message="capability applied")
    await hz1.telemetry(telemetry("hz-1", "hangzhou", [(0, 10, 1000, 50, 100, 1), (1, 20, 2000, 51, 110, 1),
                                                        (2, 30, 3000, 52, 120, 1), (3, 40, 4000, 53, 130, 1)]))
    await hz2.telemetry(telemetry("hz-2", "hangzhou", [(0, 90, 500, 60, 200, 1), (1, 0, 0, 40, 50, 0)]))
    await nb1.telemetry(telemetry("nb-1", "ningbo", [(0, 100, 8000, 70, 300, 1)]))  # device 1 silent
    await eventually(lambda: _samples_at_least(bus, 7), message="samples ingested")

    async def health_known() -> FleetSummary | None:
        s = await _summary(bus)
        return s if s.totals.healthy + s.totals.unhealthy == 8 else None

    s = await eventually(health_known, message="every device's health known")
    by_site = {x.site: x for x in s.sites}
    assert set(by_site) == {"hangzhou", "ningbo"}
    hz = by_site["hangzhou"]
    assert (hz.hosts, hz.devices, hz.healthy, hz.unhealthy) == (2, 6, 5, 1)
    assert hz.utilization_pct == round((10 + 20 + 30 + 40 + 90 + 0) / 6, 1)
    assert hz.memory_used_mib == 1000 + 2000 + 3000 + 4000 + 500
    assert hz.memory_total_mib == 4 * 81920 + 2 * 65536
    assert hz.power_w == 100 + 110 + 120 + 130 + 200 + 50
    types = {h.hardware_type: h for h in hz.by_type}
    assert (types["gpu"].total, types["gpu"].healthy, types["gpu"].utilization_pct) == (4, 4, 25.0)
    assert (types["npu"].total, types["npu"].unhealthy, types["npu"].utilization_pct) == (2, 1, 45.0)
    nb = by_site["ningbo"]
    assert (nb.devices, nb.utilization_pct, nb.by_type[0].reporting) == (2, 100.0, 1)
    assert s.totals.devices == 8 and s.totals.unhealthy == 1
    assert {h.hardware_type: h.total for h in s.totals.by_type} == {"gpu": 6, "npu": 2}
    only = await _summary(bus, ["ningbo"])
    assert [x.site for x in only.sites] == ["ningbo"] and only.totals.devices == 2

    page: HostPage = await rpc(bus, "hosts.list", HostsQuery(site="hangzhou"), HostPage)
    assert [h.host_id for h in page.items] == ["hz-1", "hz-2"]
    assert [d.util for d in page.items[0].devices] == [10, 20, 30, 40]
    detail: DeviceDetail = await rpc(bus, "device.get", DeviceRef(host_id="hz-1", slot=2), DeviceDetail)
    assert detail.device.temp_c == 52 and detail.driver_version == "550.54.14" and detail.runtimes == {"cuda": "12.4"}


async def test_metrics_device_health_follows_the_inventory_whichever_report_came_last(
        settings, running_service, bus: Bus) -> None:
    await running_service(inventory_app)
    await running_service(metrics_app, fast_settings(settings))
    pub = await announce(bus, "h-1", "taizhou", devices("gpu", 2))
    await registered(bus, "h-1")
    await eventually(lambda: _health_is(bus, "h-1", 1, ("healthy", True)), message="healthy by capability in both")
    await pub.telemetry(telemetry("h-1", "taizhou", [(0, 10, 10, 40, 100, 1), (1, 10, 10, 40, 100, 0)]))
    await eventually(lambda: _health_is(bus, "h-1", 1, ("unhealthy", False)), message="unhealthy by telemetry in both")
    await pub.capability(capability("h-1", "taizhou", devices("gpu", 2), generation=2))
    await eventually(lambda: _health_is(bus, "h-1", 1, ("healthy", True)), message="healthy again by capability")
    assert await health_in_both(bus, "h-1", 0) == ("healthy", True)


async def _health_is(bus: Bus, host: str, slot: int, expected: tuple[str, bool]) -> bool:
    return await health_in_both(bus, host, slot) == expected


async def _device_count(bus: Bus, n: int) -> bool:
    return (await _summary(bus)).totals.devices == n


async def _samples_at_least(bus: Bus, n: int) -> bool:
    return await _samples(bus) >= n


async def test_metrics_rollups_and_series_return_known_numbers(settings, running_service, bus: Bus) -> None:
    await running_service(metrics_app, fast_settings(settings))
    pub = await announce(bus, "h-1", "wenzhou", devices("gpu", 2))
    await announce(bus, "h-2", "wenzhou", devices("dcu", 1))
    await eventually(lambda: _device_count(bus, 3))
    base = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    for k in range(6):  # two closed minutes, three samples each, 20 s apart
        ts = base + timedelta(seconds=20 * k)
        await pub.telemetry(telemetry("h-1", "wenzhou", [(0, 10.0 * (k + 1), 100 * (k + 1), 40 + k, 100, 1),
                                                         (1, 50, 1000, 45, 200, 0 if k == 5 else 1)], ts=ts))
    await eventually(lambda: _samples_at_least(bus, 12))
    end = base + timedelta(minutes=2)

    async def device_series() -> Series | None:
        q = SeriesQuery(scope=Scope.DEVICE, key="h-1/0", start=base, end=end, step_s=60)
        series: Series = await rpc(bus, "series", q, Series)
        return series if sum(p.samples for p in series.points) == 6 else None

    s = await eventually(device_series, message="device series complete")
    assert s.resolution == "1m"
    assert [p.t for p in s.points] == [base, base + timedelta(minutes=1)]
    assert [p.util_avg for p in s.points] == [20.0, 50.0]
    assert [p.util_max for p in s.points] == [30.0, 60.0]
    assert [p.mem_used_avg_mib for p in s.points] == [200.0, 500.0]
    assert [p.temp_max_c for p in s.points] == [42.0, 45.0]

    host: Series = await rpc(bus, "series", SeriesQuery(scope=Scope.HOST, key="h-1", start=base, end=end, step_s=120), Series)
    assert len(host.points) == 1
    p = host.points[0]
    assert (p.samples, p.util_avg, p.util_max, p.power_avg_w, p.unhealthy_samples) == (12, (210 + 300) / 12, 60.0, 150.0, 1)
    site: Series = await rpc(bus, "series", SeriesQuery(scope=Scope.SITE, key="wenzhou", start=base, end=end, step_s=60), Series)
    assert [q.samples for q in site.points] == [6, 6]
    hw: Series = await rpc(bus, "series", SeriesQuery(scope=Scope.HARDWARE_TYPE, key="gpu", site="wenzhou", start=base,
                                                      end=end, step_s=60), Series)
    assert [q.util_avg for q in hw.points] == [(60 + 150) / 6, (150 + 150) / 6]
    raw: Series = await rpc(bus, "series", SeriesQuery(scope=Scope.DEVICE, key="h-1/0", start=base, end=end, step_s=20),
                            Series)
    assert raw.resolution == "raw" and [q.util_avg for q in raw.points] == [10, 20, 30, 40, 50, 60]
    hourly: Series = await rpc(bus, "series", SeriesQuery(scope=Scope.DEVICE, key="h-1/0", start=base - timedelta(hours=1),
                                                          end=end + timedelta(hours=1), step_s=3600), Series)
    assert hourly.resolution == "1h" and sum(q.samples for q in hourly.points) == 6
    assert sum(q.util_avg * q.samples for q in hourly.points) == 210


async def test_metrics_malformed_telemetry_counted_and_dropped(settings, running_service, bus: Bus) -> None:
    await running_service(metrics_app, fast_settings(settings))
    pub = await announce(bus, "h-1", "lishui", devices("gpu", 2))
    await eventually(lambda: _device_count(bus, 2))

    def rejected(reason: str) -> float:
        return BUS_REJECTED.labels("metrics", "on_telemetry", reason)._value.get()

    before = {r: rejected(r) for r in ("malformed_envelope", "invalid_data", "invalid_sample", "sample_time")}
    subject = subjects.host_subject("lishui", "h-1", "telemetry")
    for junk in (b"", b"not json", b"{}", b"\xff\xfe", b"[1,2]"):
        await bus.js.publish(subject, junk)
    bad_data = CloudEvent.new(EventTypes.HOST_TELEMETRY, "/agent/lishui/h-1", {"host_id": "h-1", "site": "lishui"})
    await bus.publish(subject, bad_data.to_bytes(), msg_id=bad_data.id)
    bad_tuple = CloudEvent.new(EventTypes.HOST_TELEMETRY, "/agent/lishui/h-1", {
        **telemetry("h-1", "lishui", []).model_dump(mode="json"), "devices": [[0, "hot", 1, 2, 3, 1]]})
    await bus.publish(subject, bad_tuple.to_bytes(), msg_id=bad_tuple.id)
    # one good sample, one out of range, one from the far past: only the good one is stored
    await pub.telemetry(telemetry("h-1", "lishui", [(0, 55, 100, 40, 100, 1), (1, 250, 100, 40, 100, 1)]))
    await pub.telemetry(telemetry("h-1", "lishui", [(0, 20, 100, 40, 100, 1)], ts=datetime.now(UTC) - timedelta(days=3)))
    await eventually(lambda: rejected("malformed_envelope") >= before["malformed_envelope"] + 5)
    await eventually(lambda: rejected("invalid_data") >= before["invalid_data"] + 2)
    await eventually(lambda: rejected("invalid_sample") >= before["invalid_sample"] + 1)
    await eventually(lambda: rejected("sample_time") >= before["sample_time"] + 1)
    stats: IngestStats = await rpc(bus, "ingest.stats", SummaryQuery(), IngestStats)
    assert stats.samples_total == 1 and stats.rejected_reports_total == 2 and stats.rejected_samples_total == 2
    page: HostPage = await rpc(bus, "hosts.list", HostsQuery(site="lishui"), HostPage)
    assert page.items[0].devices[0].util == 55 and page.items[0].devices[1].util is None


async def test_metrics_workload_events_count_allocated_and_running(settings, running_service, bus: Bus) -> None:
    await running_service(metrics_app, fast_settings(settings))
    pub = await announce(bus, "h-1", "jiaxing", devices("npu", 4))
    await eventually(lambda: _device_count(bus, 4))
    await pub.telemetry(telemetry("h-1", "jiaxing", [(i, 10, 10, 40, 100, 1) for i in range(4)]))
    placed = CloudEvent.new(EventTypes.workload("placed"), "/scheduler", {  # the scheduler's event_data shape
        "workload_id": "w-1", "name": "train", "tenant": "acme", "state": "placed", "hardware_type": "npu",
        "priority": 100, "restarts": 0,
        "placements": [{"replica": 0, "attempt": 1, "host_id": "h-1", "site": "jiaxing",
                        "devices": ["h-1:huawei:0", "h-1:huawei:1"], "shares": [1.0, 1.0], "state": "placed",
                        "exit_code": None}]}, subject="w-1")
    await bus.publish_event(placed, site="jiaxing")
    shared = CloudEvent.new(EventTypes.workload("running"), "/scheduler", {
        "id": "w-2", "assignments": [{"host": "h-1", "device_ids": ["h-1:huawei:3"], "shares": [0.5]}]}, subject="w-2")
    await bus.publish_event(shared, site="jiaxing")
    await bus.publish_event(CloudEvent.new(EventTypes.workload("running"), "/scheduler", {"nothing": 1}), site="jiaxing")

    async def counted() -> FleetSummary | None:
        s = await _summary(bus)
        return s if s.sites and s.sites[0].allocated == 2.5 else None

    s = await eventually(counted, message="allocations counted")
    assert s.sites[0].running_workloads == 1 and s.sites[0].by_type[0].allocated == 2.5
    detail: DeviceDetail = await rpc(bus, "device.get", DeviceRef(host_id="h-1", slot=3), DeviceDetail)
    assert [w.id for w in detail.workloads] == ["w-2"] and detail.device.allocated == 0.5
    page: WorkloadPage = await rpc(bus, "workloads.list", WorkloadQuery(tenant="acme"), WorkloadPage)
    assert [(w.id, w.state) for w in page.items] == [("w-1", "placed")]
    done = CloudEvent.new(EventTypes.workload("succeeded"), "/scheduler", {"workload_id": "w-1"}, subject="w-1")
    await bus.publish_event(done, site="jiaxing")

    async def released() -> bool:
        return (await _summary(bus)).sites[0].allocated == 0.5

    await eventually(released, message="allocation released")


async def test_metrics_restart_keeps_open_minutes_and_samples(settings, running_service, bus: Bus) -> None:
    s = fast_settings(settings)
    svc = await running_service(metrics_app, s)
    pub = await announce(bus, "h-1", "huzhou", devices("gpu", 1))
    await eventually(lambda: _device_count(bus, 1))
    now = datetime.now(UTC)
    for k in range(3):
        await pub.telemetry(telemetry("h-1", "huzhou", [(0, 30.0 + k, 100, 40, 100, 1)], ts=now - timedelta(seconds=k)))
    await eventually(lambda: _samples_at_least(bus, 3))
    await svc.stop()
    conn = await asyncpg.connect(s.database_dsn())
    try:
        assert await conn.fetchval("SELECT count(*) FROM metrics.samples") == 3
    finally:
        await conn.close()
    await running_service(metrics_app, s)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    q = SeriesQuery(scope=Scope.DEVICE, key="h-1/0", start=start, end=now + timedelta(minutes=1), step_s=300)
    series: Series = await rpc(bus, "series", q, Series)
    assert sum(p.samples for p in series.points) == 3 and series.points[0].util_max == 32
    summary = await _summary(bus)
    assert summary.totals.utilization_pct == 30.0  # the newest sample, not the last to arrive


async def test_metrics_prometheus_endpoint_parses_with_device_labels_and_service_metrics(
        settings, running_service, bus: Bus) -> None:
    s = fast_settings(settings)
    await running_service(registry_app)
    await running_service(inventory_app)
    await running_service(metrics_app, s)
    pub = await announce(bus, "h-1", "hangzhou", devices("gpu", 2))
    await registered(bus, "h-1")
    await pub.telemetry(telemetry("h-1", "hangzhou", [(0, 42.5, 1024, 61, 250, 1), (1, 7, 0, 35, 90, 0)]))
    await eventually(lambda: _samples_at_least(bus, 2))

    async def scrape() -> str | None:
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5)
        except httpx.TransportError:
            return None
        # the inventory's decision has reached metrics (only the health gauge is written as an int)
        unhealthy = 'model="A100-SXM4-80GB",device="1"} 0\n'
        return r.text if r.status_code == 200 and "xpumesh_service_up" in r.text and unhealthy in r.text else None

    text = await eventually(scrape, message="/metrics answers")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    util = {x.labels["device"]: x for x in families["xpumesh_device_utilization_percent"].samples}
    assert util["0"].value == 42.5
    assert {k: util["0"].labels[k] for k in ("site", "host", "hardware_type", "vendor", "model")} == {
        "site": "hangzhou", "host": "h-1", "hardware_type": "gpu", "vendor": "nvidia", "model": "A100-SXM4-80GB"}
    assert {x.labels["device"]: x.value for x in families["xpumesh_device_healthy"].samples} == {"0": 1, "1": 0}
    assert [x.value for x in families["xpumesh_device_memory_used_bytes"].samples if x.labels["device"] == "0"] == [
        1024 * 1024 * 1024]
    up = {x.labels["service"] for x in families["xpumesh_service_up"].samples if x.value == 1}
    assert {"metrics", "registry"} <= up
    assert all("instance" in x.labels for x in families["xpumesh_bus_messages"].samples)
    ingested = sum(x.value for x in families["xpumesh_metrics_samples"].samples if x.name.endswith("_total"))
    assert ingested >= 2
    assert families["xpumesh_alerts_firing"].type == "gauge"


async def test_metrics_partitions_created_ahead_and_dropped_past_retention(settings) -> None:
    import asyncpg

    from libs.config import MetricsSettings
    from services.metrics import partitions

    m = MetricsSettings(raw_partition_hours=1, raw_retention_hours=3, partitions_ahead=2, max_sample_age_s=1800)
    conn = await asyncpg.connect(settings.database_dsn())
    now = datetime(2030, 5, 1, 12, 30, tzinfo=UTC)
    try:
        async with conn.transaction():
            cov = await partitions.maintain(conn, m, now=now)
            names = await _partitions(conn, "samples")
        assert names == ["samples_p2030050112", "samples_p2030050113", "samples_p2030050114"]
        assert (cov.start, cov.end) == (datetime(2030, 5, 1, 12, tzinfo=UTC), datetime(2030, 5, 1, 15, tzinfo=UTC))
        async with conn.transaction():
            await conn.execute("INSERT INTO metrics.samples VALUES ('2030-05-01 12:40+00', 1, 50, 1, 40, 100, true, 1)")
            later = await partitions.maintain(conn, m, now=now + timedelta(hours=5))
            names = await _partitions(conn, "samples")
        assert names[:2] == ["samples_p2030050114", "samples_p2030050117"]  # 12 and 13 ended over 3 h ago: dropped
        assert later.contains(now + timedelta(hours=5)) and not later.contains(now)
        assert await _partitions(conn, "rollup_1m") and await _partitions(conn, "rollup_1h")
    finally:
        await conn.close()


async def _partitions(conn, table: str) -> list[str]:
    rows = await conn.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                            "WHERE i.inhparent = CAST($1::text AS regclass) ORDER BY 1", f"metrics.{table}")
    return [r[0] for r in rows]
