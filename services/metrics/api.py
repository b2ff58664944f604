"""The metrics service: telemetry in, rollups, city summaries, alerts, and the Prometheus endpoint.

Consumes ``XPUMESH_TELEMETRY`` (big batches, COPY; the hot path is ``telemetry.py``), capability reports (device metadata),
the inventory's device events (device health: the inventory decides it, ``health.py``), registry host up/down events
and workload events; answers ``xpumesh.rpc.metrics.*``;
serves ``/metrics`` on ``metrics_port``; fires and resolves alerts through the outbox.
"""

from __future__ import annotations

import logging
from typing import Any

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, STREAM_HOSTS, STREAM_TELEMETRY
from libs.bus.errors import InvalidRequest, NotFound
from libs.bus.outcomes import each_valid
from libs.events import CloudEvent, EventTypes
from libs.schemas.hostevents import CapabilityReport, ReportBounds
from libs.schemas.metrics import (
    AlertList,
    AlertQuery,
    AlertSeverity,
    AlertState,
    DeviceDetail,
    DeviceRef,
    FleetSummary,
    HostPage,
    HostsQuery,
    IngestStats,
    Series,
    SeriesQuery,
    SummaryQuery,
    WorkloadPage,
    WorkloadQuery,
)
from libs.service import LOSSY_MAX_DELIVER, Context, ServiceApp
from services.metrics import health, series, state, store, telemetry
from services.metrics.exposition import DeviceText, asgi_app, render_all
from services.metrics.fleet import STATUS_DOWN, STATUS_UP, DeviceMeta
from services.metrics.state import MetricsState
from services.metrics.views import device_now, host_now
from services.metrics.workloads import parse_event

log = logging.getLogger(__name__)
app: ServiceApp[MetricsState] = ServiceApp("metrics", state=state.load_state, singleton=True)
Ctx = Context[MetricsState]


@app.on_shutdown
async def stop(ctx: Ctx) -> None:
    await state.close(ctx.state)  # the consumers have stopped: no telemetry write starts or runs now


# --- consumers ------------------------------------------------------------------------
@app.consumer(STREAM_TELEMETRY, durable="metrics-telemetry", subject=subjects.HOST_TELEMETRY_ALL, batch=True,
              batch_size=telemetry.BATCH, decode=telemetry.decode, in_flight=telemetry.INGEST_WRITES,
              linger=lambda s: s.metrics.ingest_linger_s, max_deliver=LOSSY_MAX_DELIVER)
async def on_telemetry(items: list[telemetry.Item], ctx: Ctx) -> None:
    """The hot path (``telemetry.py``): canonical events as columns, one COPY a batch."""
    await telemetry.write_batch(ctx.state.ingest, items)


@app.consumer(STREAM_HOSTS, durable="metrics-capability", subject=subjects.HOST_CAPABILITY_ALL, batch=True,
              batch_size=1024)
async def on_capability(events: list[CloudEvent], ctx: Ctx) -> None:
    r = ctx.state
    newest: dict[str, CapabilityReport] = {}
    bounds = ReportBounds(ctx.settings.bus.max_report_skew_s).context()  # and each report about its subject's host
    for _, report in each_valid(events, CapabilityReport, service=app.name, handler="on_capability", context=bounds):
        known = r.fleet.hosts.get(report.host_id)
        if known is not None and report.generation <= known.generation:
            continue  # already applied, or an older report arriving late
        if report.host_id not in newest or newest[report.host_id].generation < report.generation:
            newest[report.host_id] = report
    if not newest:
        return
    reports = list(newest.values())
    async with r.pool.acquire() as conn, conn.transaction():
        metas, gone = await store.update_capabilities(conn, reports)
    for report in reports:
        h = r.fleet.host(report.host_id, report.site)
        h.hostname, h.generation, h.labels = report.facts.hostname, report.generation, dict(report.labels)
    for dev_id in gone:
        r.fleet.remove_device(dev_id)
    for m in metas:
        r.fleet.put_device(m)
    r.summaries.clear()
    if len(metas) >= 1000:
        state.settle_heap()  # many new long-lived objects: out of the collector's way too


@app.consumer(STREAM_EVENTS, durable="metrics-device-events", subject=subjects.DEVICE_EVENTS_ALL, batch=True,
              batch_size=1024)
async def on_device_event(events: list[CloudEvent], ctx: Ctx) -> None:
    """The inventory's health decisions (device.added / healthy / unhealthy): stored and followed."""
    await health.apply_device_events(ctx.state, events, app.name)


@app.consumer(STREAM_EVENTS, durable="metrics-host-events", subject=subjects.HOST_EVENTS_ALL)
async def on_host_event(event: CloudEvent, ctx: Ctx) -> None:
    if event.type not in (EventTypes.HOST_UP, EventTypes.HOST_DOWN):
        return
    host_id, site = event.data.get("id"), event.data.get("site")
    if not isinstance(host_id, str) or not isinstance(site, str):
        raise InvalidRequest("host event without id or site")
    subjects.check_token(host_id, "host id")
    subjects.check_token(site, "site")
    up = event.type == EventTypes.HOST_UP
    async with ctx.state.pool.acquire() as conn, conn.transaction():
        await store.update_host_status(conn, host_id, site, "up" if up else "down")
    ctx.state.fleet.set_status(host_id, site, STATUS_UP if up else STATUS_DOWN)
    ctx.state.summaries.clear()


@app.consumer(STREAM_EVENTS, durable="metrics-workload-events", subject=subjects.WORKLOAD_EVENTS_ALL)
async def on_workload_event(event: CloudEvent, ctx: Ctx) -> None:
    view = parse_event(event)
    r = ctx.state
    stored, evicted = r.workloads.apply(view)
    if stored is None:
        return
    async with r.pool.acquire() as conn, conn.transaction():
        await store.update_workload(conn, stored)
        await store.delete_workloads(conn, evicted)
    r.summaries.clear()


# --- periodic work and the Prometheus endpoint ---------------------------------------
@app.every(lambda s: s.metrics.rollup_flush_interval_s, first_run="after")
async def rollup_writer(ctx: Ctx) -> None:
    await state.flush(ctx.state)


@app.every(lambda s: s.metrics.maintenance_interval_s, first_run="after")
async def partition_maintenance(ctx: Ctx) -> None:
    await state.maintain_partitions(ctx.state)


@app.every(lambda s: s.metrics.alerts.eval_interval_s, first_run="after")
async def alert_rules(ctx: Ctx) -> None:
    await state.evaluate_alerts(ctx.state)


@app.task
async def relay(ctx: Ctx) -> None:
    await ctx.state.relay.run()


def prometheus(ctx: Ctx) -> Any:
    """``/metrics``: the fleet's device gauges, firing alerts and every service's own metrics in one scrape."""
    r, m = ctx.state, ctx.settings.metrics

    def firing_text() -> str:
        lines = ["# HELP xpumesh_alerts_firing Firing alerts by site and severity.", "# TYPE xpumesh_alerts_firing gauge"]
        for site, counts in sorted(r.alerts.counts_by_site().items()):
            lines += [f'xpumesh_alerts_firing{{site="{site}",severity="{sev}"}} {n}' for sev, n in counts.items()]
        return "\n".join(lines) + "\n"

    devices = DeviceText(r.fleet, r.fresh, firing_text, m.scrape_cache_s)
    return asgi_app(lambda: render_all(ctx.bus, devices, m.scrape_window_s))


app.http(prometheus, host=lambda s: s.gateway_host, port=lambda s: s.metrics_port)


# --- endpoints ------------------------------------------------------------------------
@app.endpoint("summary")
async def summary(req: SummaryQuery, ctx: Ctx) -> FleetSummary:
    return ctx.state.summary(req.sites)


@app.endpoint("series")
async def get_series(req: SeriesQuery, ctx: Ctx) -> Series:
    r = ctx.state
    return await series.query(req, r.fleet, r.rollups, r.pool, ctx.settings.metrics, r.lock)


@app.endpoint("alerts.list")
async def list_alerts(req: AlertQuery, ctx: Ctx) -> AlertList:
    if req.state == AlertState.FIRING:
        items = sorted((a for a in ctx.state.alerts.firing.values()
                        if (req.sites is None or a.site in req.sites)
                        and (req.severity is None or a.severity == req.severity)),
                       key=lambda a: (a.severity != AlertSeverity.CRITICAL, -a.started_at.timestamp()))
        return AlertList(items=items[: req.limit], total=len(items))
    severity = req.severity.value if req.severity else None
    async with ctx.state.pool.acquire() as conn, conn.transaction():
        found = await store.list_alerts(conn, req.state, req.sites, severity, req.limit)
        total = await store.count_alerts(conn, req.state, req.sites, severity)
    return AlertList(items=found, total=total)


@app.endpoint("hosts.list")
async def list_hosts(req: HostsQuery, ctx: Ctx) -> HostPage:
    r = ctx.state
    fresh, allocated = r.fresh(), r.workloads.allocated(r.fleet)
    ids = sorted(h.host_id for h in r.fleet.host_list if h.site == req.site and (req.after is None or h.host_id > req.after))
    page = ids[: req.limit]
    items = [host_now(r.fleet, r.fleet.hosts[h], fresh, allocated) for h in page]
    return HostPage(items=items, next_cursor=page[-1] if len(ids) > req.limit else None)


@app.endpoint("device.get")
async def get_device(req: DeviceRef, ctx: Ctx) -> DeviceDetail:
    r = ctx.state
    m: DeviceMeta | None = r.fleet.device_by_key(f"{req.host_id}/{req.slot}")
    if m is None or not r.fleet.present[m.id]:
        raise NotFound(f"no device {req.host_id}/{req.slot}")
    h = r.fleet.hosts[m.host_id]
    alerts = [a for a in r.alerts.firing.values() if a.device == m.key or (a.device is None and a.host_id == m.host_id)]
    return DeviceDetail(site=m.site, host_id=m.host_id, hostname=h.hostname,
                        device=device_now(r.fleet, m, r.fresh(), r.workloads.allocated(r.fleet)),
                        driver_version=m.driver_version, runtimes=m.runtimes, firmware_version=m.firmware_version,
                        uuid=m.uuid, workloads=r.workloads.on_device(m.key, r.fleet), alerts=alerts)


@app.endpoint("workloads.list")
async def list_workloads(req: WorkloadQuery, ctx: Ctx) -> WorkloadPage:
    r = ctx.state
    items, cursor = r.workloads.page(sites=set(req.sites) if req.sites is not None else None, tenant=req.tenant,
                                     state=req.state, after=req.after, limit=req.limit, fleet=r.fleet)
    return WorkloadPage(items=items, next_cursor=cursor)


@app.endpoint("ingest.stats")
async def ingest_stats(req: SummaryQuery, ctx: Ctx) -> IngestStats:
    return ctx.state.ingest.stats()
