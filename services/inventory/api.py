"""The inventory service: what every host has, kept from agents' reports, answered over the bus."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, STREAM_HOSTS, STREAM_TELEMETRY
from libs.bus.errors import InvalidRequest, NotFound
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_MESSAGES, BUS_REJECTED
from libs.schemas.catalog import DeviceModel
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.inventory import (
    CatalogEntry,
    CatalogPage,
    CatalogQuery,
    CatalogRef,
    DevicePage,
    DeviceQuery,
    Empty,
    HostDetail,
    HostLabels,
    HostPage,
    HostQuery,
    HostRef,
    HostStatus,
    RuleQuery,
    RuleSet,
    RuleUpsert,
    Site,
    SiteLinkList,
    SiteList,
    SiteSummaryList,
    Upserted,
)
from libs.service import Context, ServiceApp
from services.inventory import catalog, sites, store, telemetry
from services.inventory.capability import Applied, Capability, apply_capabilities
from services.inventory.checks import check_capability, check_specifiers
from services.inventory.state import SERVICE, InventoryState, load_state, read_catalog

log = logging.getLogger(__name__)
app: ServiceApp[InventoryState] = ServiceApp(SERVICE, state=load_state)
Ctx = Context[InventoryState]
T = TypeVar("T")


def _reject(handler: str, reason: str, n: int = 1) -> None:
    BUS_REJECTED.labels(SERVICE, handler, reason).inc(n)
    BUS_MESSAGES.labels(SERVICE, handler, "rejected").inc(n)


@app.task
async def relay(ctx: Ctx) -> None:
    await ctx.state.relay.run()


@app.every(lambda s: s.inventory.catalog_refresh_s, first_run="after")
async def refresh_catalog(ctx: Ctx) -> None:
    """Pick up catalog edits made through other instances (a failed read keeps the previous catalog)."""
    async with session_scope(ctx.db) as session:
        ctx.state.catalog = await read_catalog(session)


async def _one_by_one(ctx: Ctx, handler: str, items: Sequence[T],
                      apply: Callable[[Any, Sequence[T]], Awaitable[Any]]) -> list[Any]:
    """After a batch failed on bad data, apply each item alone so that one bad item loses only itself."""
    results = []
    for item in items:
        try:
            async with session_scope(ctx.db) as session:
                results.append(await apply(session, [item]))
        except (DataError, IntegrityError):
            _reject(handler, "database_rejected")
            log.warning("%s: the database rejected one report", handler)
    return results


# --------------------------------------------------------------------- consumers


@app.consumer(STREAM_HOSTS, durable="inventory-capability", subject=subjects.HOST_CAPABILITY_ALL, batch=True,
              batch_size=256)
async def on_capability(events: list[CloudEvent], ctx: Ctx) -> None:
    caps = []
    for event in events:
        if event.type != EventTypes.HOST_CAPABILITY:
            _reject("on_capability", "wrong_type")
            continue
        try:
            report = CapabilityReport.model_validate(event.data)
            check_capability(report, event.subject)
        except (ValidationError, ValueError) as exc:
            _reject("on_capability", "invalid_data")
            log.warning("on_capability: rejected a report: %s",
                        f"{exc.error_count()} validation errors" if isinstance(exc, ValidationError) else exc)
            continue
        caps.append(Capability(report, event.time))
    if not caps:
        return
    cat = ctx.state.catalog

    async def apply(session: Any, batch: Sequence[Capability]) -> Applied:
        return await apply_capabilities(session, batch, cat)

    started = time.perf_counter()
    try:
        async with session_scope(ctx.db) as session:
            results = [await apply(session, caps)]
    except (DataError, IntegrityError):
        results = await _one_by_one(ctx, "on_capability", caps, apply)
    cache = ctx.state.health
    events_out = 0
    for applied in results:
        for host_id, health in applied.health.items():
            cache.put(host_id, applied.sites[host_id], health)
        if applied.stale:
            BUS_MESSAGES.labels(SERVICE, "on_capability", "stale").inc(applied.stale)
        events_out += applied.events
    if events_out:
        ctx.state.relay.poke()
    log.debug("capability batch: %d reports, %d events, %.1f ms", len(caps), events_out,
              (time.perf_counter() - started) * 1000)




@app.consumer(STREAM_TELEMETRY, durable="inventory-telemetry", subject=subjects.HOST_TELEMETRY_ALL, batch=True,
              batch_size=1000, deliver_new=True)
async def on_telemetry(events: list[CloudEvent], ctx: Ctx) -> None:
    reports = []
    skew = timedelta(seconds=ctx.settings.inventory.telemetry_max_age_s)
    latest_ok = datetime.now(UTC) + skew
    for event in events:
        if event.type != EventTypes.HOST_TELEMETRY:
            _reject("on_telemetry", "wrong_type")
            continue
        try:
            report = TelemetryReport.model_validate(event.data)
        except ValidationError:
            _reject("on_telemetry", "invalid_data")
            continue
        # Non-finite readings are refused where the samples are serialized (telemetry.apply_telemetry).
        if report.ts > latest_ok or any(s[0] < 0 for s in report.devices):
            _reject("on_telemetry", "invalid_data")
            continue
        reports.append(report)
    if not reports:
        return
    cache = ctx.state.health
    max_age = ctx.settings.inventory.telemetry_max_age_s

    async def apply(session: Any, batch: Sequence[TelemetryReport]) -> telemetry.TelemetryOutcome:
        return await telemetry.apply_telemetry(session, batch, cache, max_age_s=max_age)

    try:
        async with session_scope(ctx.db) as session:
            outcomes = [await apply(session, reports)]
    except (DataError, IntegrityError):
        outcomes = await _one_by_one(ctx, "on_telemetry", reports, apply)
    flips = 0
    for out in outcomes:
        cache.apply(out.cache_updates)
        flips += out.flips
        if out.unknown_host:
            BUS_MESSAGES.labels(SERVICE, "on_telemetry", "unknown_host").inc(out.unknown_host)
        if out.too_old:
            BUS_MESSAGES.labels(SERVICE, "on_telemetry", "too_old").inc(out.too_old)
        if out.invalid:
            _reject("on_telemetry", "invalid_data", out.invalid)
    if flips:
        ctx.state.relay.poke()


@app.consumer(STREAM_EVENTS, durable="inventory-host-status", subject=subjects.HOST_EVENTS_ALL)
async def on_host_event(event: CloudEvent, ctx: Ctx) -> None:
    """The registry's host.up/host.down keep each host's status."""
    if event.type not in (EventTypes.HOST_UP, EventTypes.HOST_DOWN):
        return
    if event.data.get("kind") != "host":
        return
    host_id = event.data.get("id")
    if not isinstance(host_id, str):
        raise InvalidRequest("host event without a host id")
    try:
        subjects.check_token(host_id, "host id")
    except ValueError:
        raise InvalidRequest("host event with an invalid host id") from None
    status = HostStatus.UP if event.type == EventTypes.HOST_UP else HostStatus.DOWN
    async with session_scope(ctx.db) as session:
        await store.update_host_status(session, host_id, status, event.time)


# --------------------------------------------------------------------- endpoints


@app.endpoint("sites.list", concurrency=8)
async def list_sites(req: Empty, ctx: Ctx) -> SiteList:
    async with session_scope(ctx.db) as session:
        return SiteList(items=await sites.list_sites(session))


@app.endpoint("sites.upsert")
async def upsert_site(req: Site, ctx: Ctx) -> Upserted:
    async with session_scope(ctx.db) as session:
        return Upserted(created=await sites.update_site(session, req))


@app.endpoint("sites.links")
async def list_links(req: Empty, ctx: Ctx) -> SiteLinkList:
    async with session_scope(ctx.db) as session:
        return SiteLinkList(items=await sites.list_links(session))


@app.endpoint("sites.summary")
async def site_summary(req: Empty, ctx: Ctx) -> SiteSummaryList:
    async with session_scope(ctx.db) as session:
        return SiteSummaryList(items=await sites.list_site_summaries(session))


@app.endpoint("hosts.list", concurrency=8)
async def list_hosts(req: HostQuery, ctx: Ctx) -> HostPage:
    async with session_scope(ctx.db) as session:
        return await store.list_hosts(session, req)


@app.endpoint("hosts.get", concurrency=8)
async def get_host(req: HostRef, ctx: Ctx) -> HostDetail:
    async with session_scope(ctx.db) as session:
        host = await store.read_host(session, req.id)
    if host is None:
        raise NotFound(f"no host {req.id!r}")
    return host


@app.endpoint("hosts.labels")
async def set_host_labels(req: HostLabels, ctx: Ctx) -> HostDetail:
    try:
        async with session_scope(ctx.db) as session:
            labels = await store.update_host_labels(session, req)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if labels is None:
        raise NotFound(f"no host {req.id!r}")
    return await get_host(HostRef(id=req.id), ctx)


@app.endpoint("devices.list", concurrency=8)
async def list_devices(req: DeviceQuery, ctx: Ctx) -> DevicePage:
    async with session_scope(ctx.db) as session:
        return await store.list_devices(session, req)


@app.endpoint("catalog.list", concurrency=8)
async def list_catalog(req: CatalogQuery, ctx: Ctx) -> CatalogPage:
    async with session_scope(ctx.db) as session:
        return await catalog.list_entries(session, req)


@app.endpoint("catalog.get", concurrency=8)
async def get_catalog(req: CatalogRef, ctx: Ctx) -> CatalogEntry:
    async with session_scope(ctx.db) as session:
        entry = await catalog.read_entry(session, req.vendor, req.model)
    if entry is None:
        raise NotFound(f"no catalog entry {req.vendor}/{req.model}")
    return entry


@app.endpoint("catalog.upsert")
async def upsert_catalog(req: DeviceModel, ctx: Ctx) -> Upserted:
    if req.vendor != req.vendor.strip().lower() or not req.vendor:
        raise InvalidRequest("vendor must be a lower-case key such as 'nvidia'",
                             errors=[{"loc": "vendor", "msg": "must be lower case"}])
    async with session_scope(ctx.db) as session:
        created = await catalog.update_entry(session, req)
        cat = await read_catalog(session)
        await catalog.update_device_matches(session, req.vendor, cat.match)
    ctx.state.catalog = cat
    return Upserted(created=created)


@app.endpoint("rules.list", concurrency=8)
async def list_rules(req: RuleQuery, ctx: Ctx) -> RuleSet:
    async with session_scope(ctx.db) as session:
        return await catalog.list_rules(session, req)


@app.endpoint("rules.upsert")
async def upsert_rule(req: RuleUpsert, ctx: Ctx) -> Upserted:
    rule = req.compat or req.driver
    assert rule is not None  # the model guarantees exactly one
    field, specs = ("compat", [req.compat.framework_versions, req.compat.runtime_versions]) if req.compat else \
        ("driver", [rule.runtime_versions])
    try:
        check_specifiers(*specs)
    except ValueError as exc:
        raise InvalidRequest(str(exc)[:200], errors=[{"loc": field, "msg": "invalid version specifier"}]) from None
    async with session_scope(ctx.db) as session:
        return Upserted(created=await catalog.update_rule(session, rule))
