"""The inventory service: what every host has, kept from agents' reports, answered over the bus."""

from __future__ import annotations

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, STREAM_HOSTS, STREAM_TELEMETRY
from libs.bus.errors import InvalidRequest, NotFound
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.schemas.catalog import DeviceModel
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
from libs.service import LOSSY_MAX_DELIVER, Context, ServiceApp
from services.inventory import capability, store, telemetry
from services.inventory.checks import check_specifiers
from services.inventory.state import SERVICE, InventoryState, load_state, read_catalog
from services.inventory.store import catalog, sites

app: ServiceApp[InventoryState] = ServiceApp(SERVICE, state=load_state)
Ctx = Context[InventoryState]


@app.task
async def relay(ctx: Ctx) -> None:
    await ctx.state.relay.run()


@app.every(lambda s: s.inventory.catalog_refresh_s, first_run="after")
async def refresh_catalog(ctx: Ctx) -> None:
    """Pick up catalog edits made through other instances (a failed read keeps the previous catalog)."""
    async with session_scope(ctx.db) as session:
        ctx.state.catalog = await read_catalog(session)


# --------------------------------------------------------------------- consumers


@app.consumer(STREAM_HOSTS, durable="inventory-capability", subject=subjects.HOST_CAPABILITY_ALL, batch=True,
              batch_size=256)
async def on_capability(events: list[CloudEvent], ctx: Ctx) -> None:
    await capability.ingest(ctx.db, ctx.state, events, max_skew_s=ctx.settings.bus.max_report_skew_s)


@app.consumer(STREAM_TELEMETRY, durable="inventory-telemetry", subject=subjects.HOST_TELEMETRY_ALL, batch=True,
              batch_size=1000, deliver_new=True, max_deliver=LOSSY_MAX_DELIVER)
async def on_telemetry(events: list[CloudEvent], ctx: Ctx) -> None:
    await telemetry.ingest(ctx.db, ctx.state, events, max_age_s=ctx.settings.inventory.telemetry_max_age_s,
                           max_skew_s=ctx.settings.bus.max_report_skew_s)


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
