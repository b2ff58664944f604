"""The scheduler service: workloads in, placements and agent commands out, agents' reports reconciled.

Bus endpoints (``xpumesh.rpc.scheduler.<name>``): ``workloads.submit``, ``workloads.get``,
``workloads.list``, ``workloads.stop``, ``workloads.logs``, ``workloads.usage``, and the tenant
quotas ``quotas.list``, ``quotas.get``, ``quotas.set`` (checked at submit, see ``quotas``).
Consumers: agents' capability and state reports (``XPUMESH_HOSTS``), the registry's
``host.up``/``host.down`` and the inventory's ``device.unhealthy``/``device.healthy``.
Tasks: batch placement, the outbox relay, reference-data refresh, decision pruning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, STREAM_HOSTS
from libs.bus.errors import BusError, InvalidRequest, NotFound, Unavailable
from libs.db import session_scope
from libs.db.outbox import OutboxRelay
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.commands import (
    ActualStateReport,
    LogsReply,
    LogsRequest,
    ReplicaReport,
    StopCommand,
    command_id,
)
from libs.schemas.devices import Health
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.inventory import DeviceEvent
from libs.schemas.scheduler import (
    LogsQuery,
    LogsView,
    WorkloadPage,
    WorkloadQuery,
    WorkloadRef,
    WorkloadSubmit,
    WorkloadView,
)
from libs.schemas.tenancy import Quota, QuotaQuery, TenantQuota, TenantQuotas, TenantRef, TenantUsage
from libs.service import Context, ServiceApp
from services.scheduler import lifecycle, models, quotas, reference
from services.scheduler.fleet import Fleet, HostView
from services.scheduler.orm import outbox
from services.scheduler.placer import Placer
from services.scheduler.reconcile import Actual, reconcile_hosts
from services.scheduler.validate import check_spec

log = logging.getLogger(__name__)
app = ServiceApp("scheduler")
M = TypeVar("M", bound=BaseModel)


def _fleet(ctx: Context) -> Fleet:
    fleet: Fleet = ctx.state["fleet"]
    return fleet


def _placer(ctx: Context) -> Placer:
    placer: Placer = ctx.state["placer"]
    return placer


def _quotas(ctx: Context) -> quotas.QuotaBook:
    book: quotas.QuotaBook = ctx.state["quotas"]
    return book


def _committed(ctx: Context) -> None:
    ctx.state["relay"].poke()


@app.on_startup
async def load_state(ctx: Context) -> None:
    fleet = ctx.state["fleet"] = Fleet()
    async with session_scope(ctx.db) as session:
        for view in await models.load_hosts(session):
            fleet.hosts[view.id] = view
    catalog, compat, driver = reference.seed_reference()
    fleet.set_reference(catalog, compat, driver, [], "seed")
    ctx.state["actual"] = Actual()
    book = ctx.state["quotas"] = quotas.QuotaBook()
    async with session_scope(ctx.db) as session:
        book.replace(await quotas.list_quotas(session))
    ctx.state["relay"] = OutboxRelay("scheduler", ctx.db, outbox, ctx.bus)
    ctx.state["placer"] = Placer(fleet, ctx.state["actual"], ctx.db, ctx.settings.scheduler,
                                 on_commit=lambda: _committed(ctx), quotas=book.placement_limits)
    ctx.state["placer"].poke()


# -- tasks ---------------------------------------------------------------------------------------------
@app.task
async def relay(ctx: Context) -> None:
    await ctx.state["relay"].run()


@app.task
async def placement(ctx: Context) -> None:
    await _placer(ctx).run()


@app.task
async def reference_data(ctx: Context) -> None:
    """Ask the inventory at start and then periodically; reread the quotas (set on other instances too)."""
    s = ctx.settings.scheduler
    while True:
        answered = await reference.refresh(_fleet(ctx), ctx.bus, s.inventory_timeout_s)
        try:
            async with session_scope(ctx.db) as session:
                _quotas(ctx).replace(await quotas.list_quotas(session))
        except Exception:
            log.exception("reading the tenant quotas failed; keeping the ones read last")
        if answered:
            _placer(ctx).poke()
        await asyncio.sleep(s.reference_refresh_s if answered else min(5.0, s.reference_refresh_s))


@app.task
async def maintenance(ctx: Context) -> None:
    while True:
        try:
            async with session_scope(ctx.db) as session:
                await models.prune_decisions(
                    session, models.utcnow() - timedelta(days=ctx.settings.scheduler.decision_keep_days))
        except Exception:
            log.exception("pruning decisions failed")
        await asyncio.sleep(3600)


# -- helpers -------------------------------------------------------------------------------------------
def _each(events: Sequence[CloudEvent], model: type[M], handler: str) -> list[tuple[CloudEvent, M]]:
    """Validate each event of a batch on its own: one bad event is counted and dropped, not the batch."""
    out = []
    for e in events:
        try:
            out.append((e, model.model_validate(e.data)))
        except ValidationError:
            BUS_REJECTED.labels(app.name, handler, "invalid_data").inc()
            log.warning("%s: dropped an event whose data does not validate", handler)
    return out


async def _lose_where(ctx: Context, host_id: str, reason: str, device: str | None = None) -> None:
    """Replicas on a lost host (or on one lost device of it): lost → rescheduled per restart policy."""
    s = ctx.settings.scheduler
    now = models.utcnow()
    async with session_scope(ctx.db) as session:
        rows = await models.active_replicas(session, [host_id])
        if device is not None:
            rows = [r for r in rows if any(d["id"] == device for d in r.devices)]
        wls = await models.load(session, {r.workload_id for r in rows})
        for wl in wls.values():
            lost = [r for r in wl.replicas if r.active and r.host_id == host_id
                    and (device is None or any(d["id"] == device for d in r.devices))]
            lifecycle.lose(wl, lost, reason, now, s.command_ttl_s)
        added = await models.save_many(session, wls.values(), now)
    if added:
        _committed(ctx)
        log.info("%s: %d workloads lost replicas", reason, len(wls))
    _placer(ctx).poke()


async def _save_hosts(ctx: Context, views: Sequence[HostView]) -> None:
    if views:
        async with session_scope(ctx.db) as session:
            await models.save_hosts(session, views)


async def _stop_unwanted(ctx: Context, unwanted: list[tuple[str, ReplicaReport]]) -> None:
    s = ctx.settings.scheduler
    actual: Actual = ctx.state["actual"]
    now = models.utcnow()
    for host_id, rep in unwanted:
        if not actual.stop_due(host_id, rep, s.orphan_stop_interval_s):
            continue
        site = actual.reports[host_id].site
        cmd = StopCommand(command_id=command_id("stop", rep.workload_id, rep.replica, rep.attempt,
                                                int(now.timestamp() * 1000)),
                          host_id=host_id, site=site, workload_id=rep.workload_id, replica=rep.replica,
                          attempt=rep.attempt, reason="not wanted by the scheduler", issued_at=now,
                          expires_at=now + timedelta(seconds=s.command_ttl_s))
        event = CloudEvent.new(EventTypes.AGENT_STOP, models.SOURCE, cmd, subject=f"{rep.workload_id}/{rep.replica}",
                               id=cmd.command_id)
        try:
            await ctx.bus.publish_event(event, subject=subjects.agent_command_subject(site, host_id))
            log.info("stopping unwanted %s/%d attempt %d on %s", rep.workload_id, rep.replica, rep.attempt, host_id)
        except Exception as exc:  # the next report repeats it
            log.warning("stop for unwanted work on %s not sent: %s", host_id, type(exc).__name__)


# -- consumers -----------------------------------------------------------------------------------------
@app.consumer(STREAM_HOSTS, durable="scheduler-capability", subject=subjects.HOST_CAPABILITY_ALL, batch=True)
async def on_capability(events: list[CloudEvent], ctx: Context) -> None:
    fleet = _fleet(ctx)
    changed: list[HostView] = []
    gone: list[tuple[str, str]] = []  # (host, device) that were usable and no longer are
    for e, rep in _each(events, CapabilityReport, "on_capability"):
        cur = fleet.hosts.get(rep.host_id)
        before = cur.usable_devices() if cur is not None else set()
        view = fleet.apply_capability(rep, e.time)
        if view is not None:
            changed.append(view)
            gone += [(view.id, d) for d in sorted(before - view.usable_devices())]
    await _save_hosts(ctx, changed)
    for host_id, dev in gone:  # the agent itself says a device failed or left: move work off it
        await _lose_where(ctx, host_id, f"device {dev} unhealthy or gone", device=dev)
    if changed:
        _placer(ctx).poke()


@app.consumer(STREAM_HOSTS, durable="scheduler-state", subject=subjects.HOST_STATE_ALL, batch=True)
async def on_state(events: list[CloudEvent], ctx: Context) -> None:
    s = ctx.settings.scheduler
    actual: Actual = ctx.state["actual"]
    look = {rep.host_id for _, rep in _each(events, ActualStateReport, "on_state") if actual.accept(rep)}
    if not look:
        return
    async with session_scope(ctx.db) as session:
        added, unwanted = await reconcile_hosts(session, actual, look, resend_after_s=s.resend_after_s,
                                                ttl_s=s.command_ttl_s)
    if added:
        _committed(ctx)
        _placer(ctx).poke()
    await _stop_unwanted(ctx, unwanted)


@app.consumer(STREAM_EVENTS, durable="scheduler-hosts", subject=subjects.HOST_EVENTS_ALL)
async def on_host_event(event: CloudEvent, ctx: Context) -> None:
    if event.type not in (EventTypes.HOST_UP, EventTypes.HOST_DOWN):
        return
    host_id, kind = event.data.get("id"), event.data.get("kind", "host")
    if not isinstance(host_id, str) or kind != "host":
        raise InvalidRequest("host event names no host")
    up = event.type == EventTypes.HOST_UP
    view = _fleet(ctx).set_liveness(host_id, up, event.time)
    if view is not None:
        await _save_hosts(ctx, [view])
    if up:
        _placer(ctx).poke()
    else:
        await _lose_where(ctx, host_id, f"host {host_id} down")


@app.consumer(STREAM_EVENTS, durable="scheduler-devices", subject=subjects.DEVICE_EVENTS_ALL)
async def on_device_event(event: CloudEvent, ctx: Context) -> None:
    if event.type not in (EventTypes.DEVICE_UNHEALTHY, EventTypes.DEVICE_HEALTHY):
        return
    dev = DeviceEvent.model_validate(event.data)
    health = Health.UNHEALTHY if event.type == EventTypes.DEVICE_UNHEALTHY else Health.HEALTHY
    view = _fleet(ctx).set_device_health(dev.host_id, dev.id, health, event.time)
    if view is not None:
        await _save_hosts(ctx, [view])
    if health == Health.UNHEALTHY:
        await _lose_where(ctx, dev.host_id, f"device {dev.id} unhealthy", device=dev.id)
    else:
        _placer(ctx).poke()


# -- endpoints -----------------------------------------------------------------------------------------
@app.endpoint("workloads.submit", concurrency=8)
async def submit(req: WorkloadSubmit, ctx: Context) -> WorkloadView:
    spec = req.spec.model_copy(update={"tenant": req.tenant})
    check_spec(spec, _fleet(ctx))
    tenant = req.tenant
    if tenant is not None:
        await quotas.check(spec, tenant, _quotas(ctx).get(tenant), lambda: _usage(ctx, tenant))
    async with session_scope(ctx.db) as session:
        wl, created = await models.create(session, spec, req.tenant, req.idempotency_key, models.utcnow())
    if created:
        _committed(ctx)
        _placer(ctx).poke()
    view = wl.view()
    view.created = created
    return view


@app.endpoint("workloads.get", concurrency=8)
async def get_workload(req: WorkloadRef, ctx: Context) -> WorkloadView:
    async with session_scope(ctx.db) as session:
        view = await models.get_view(session, req.id, req.tenant, ctx.settings.scheduler.history_limit)
    if view is None:
        raise NotFound(f"no workload {req.id!r}", title="Workload not found")
    return view


@app.endpoint("workloads.list", concurrency=8)
async def list_workloads(req: WorkloadQuery, ctx: Context) -> WorkloadPage:
    async with session_scope(ctx.db) as session:
        return await models.list_page(session, req)


@app.endpoint("workloads.stop")
async def stop_workload(req: WorkloadRef, ctx: Context) -> WorkloadView:
    s = ctx.settings.scheduler
    now = models.utcnow()
    async with session_scope(ctx.db) as session:
        wl = (await models.load(session, [req.id])).get(req.id)
        if wl is None or (req.tenant is not None and wl.tenant != req.tenant):
            raise NotFound(f"no workload {req.id!r}", title="Workload not found")
        lifecycle.stop(wl, "stopped by request", now, s.command_ttl_s)
        added = await models.save(session, wl, now)
    if added:
        _committed(ctx)
        _placer(ctx).poke()
    return await get_workload(req, ctx)


@app.endpoint("workloads.logs", concurrency=8)
async def workload_logs(req: LogsQuery, ctx: Context) -> LogsView:
    async with session_scope(ctx.db) as session:
        loc = await models.replica_location(session, req.id, req.tenant, req.replica)
    if loc is None:
        raise NotFound(f"no workload {req.id!r} with replica {req.replica}", title="Workload not found")
    if loc.host_id is None or loc.site is None:
        raise NotFound(f"replica {req.replica} of {req.id} has not run anywhere yet", title="No logs yet")
    try:
        reply = await ctx.bus.request(subjects.agent_logs_subject(loc.site, loc.host_id),
                                      LogsRequest(workload_id=req.id, replica=req.replica, tail_bytes=req.tail_bytes),
                                      LogsReply, timeout=ctx.settings.scheduler.logs_timeout_s)
    except NotFound:
        raise NotFound(f"host {loc.host_id} has no output of replica {req.replica}", title="No logs") from None
    except BusError:
        raise Unavailable(f"the agent on host {loc.host_id} does not answer", title="Agent unavailable") from None
    return LogsView(workload_id=req.id, replica=req.replica, attempt=reply.attempt, host_id=loc.host_id,
                    state=reply.state, exit_code=reply.exit_code, text=reply.text, truncated=reply.truncated)


async def _usage(ctx: Context, tenant: str) -> TenantUsage:
    async with session_scope(ctx.db) as session:
        return await quotas.tenant_usage(session, _fleet(ctx), tenant)


@app.endpoint("workloads.usage", concurrency=8)
async def tenant_usage(req: TenantRef, ctx: Context) -> TenantUsage:
    return await _usage(ctx, req.tenant)


@app.endpoint("quotas.list", concurrency=8)
async def list_quotas(req: QuotaQuery, ctx: Context) -> TenantQuotas:
    """Every tenant's quota, or one tenant's."""
    book = _quotas(ctx).by_tenant
    items = [TenantQuota(tenant=t, **q.model_dump()) for t, q in sorted(book.items())
             if req.tenant is None or t == req.tenant]
    return TenantQuotas(items=items)


@app.endpoint("quotas.get", concurrency=8)
async def get_quota(req: TenantRef, ctx: Context) -> Quota:
    """A tenant's quota; an empty one (no limit) when none is set."""
    return _quotas(ctx).get(req.tenant)


@app.endpoint("quotas.set")
async def set_quota(req: TenantQuota, ctx: Context) -> Quota:
    """Set a tenant's quota; hardware types it omits are unlimited."""
    quota = Quota.model_validate(req.model_dump(exclude={"tenant"}))
    async with session_scope(ctx.db) as session:
        await quotas.update_quota(session, req.tenant, quota)
    _quotas(ctx).set(req.tenant, quota)
    _placer(ctx).poke()
    return quota
