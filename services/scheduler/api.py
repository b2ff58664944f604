"""The scheduler service: workloads in, placements and agent commands out, agents' reports reconciled.

Bus endpoints (``xpumesh.rpc.scheduler.<name>``): ``workloads.submit``, ``workloads.get``,
``workloads.list``, ``workloads.stop``, ``workloads.scale`` (a service's replicas), ``workloads.logs``,
``workloads.usage``, ``endpoints.list`` (every service's ready replicas, ``endpoints``), and the tenant
quotas ``quotas.list``, ``quotas.get``, ``quotas.set``, ``quotas.usage`` (limits checked at submit,
guarantees honoured by the placer; see ``quotas``).
Consumers: agents' capability and state reports (``XPUMESH_HOSTS``), the registry's
``host.up``/``host.down`` and the inventory's ``device.unhealthy``/``device.healthy``.
Periodic: reference-data refresh, quota reread, decision pruning, the lost-work sweep (``hosts``). Tasks: batch placement
(its own wake and debounce, see ``placer``) and the outbox relay. State: ``state.SchedulerState``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, STREAM_HOSTS
from libs.bus.errors import BusError, InvalidRequest, NotFound, Unavailable
from libs.bus.outcomes import each_valid
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.schemas.commands import ActualStateReport, LogsReply, LogsRequest
from libs.schemas.devices import Health
from libs.schemas.endpoints import EndpointList, EndpointLoad, EndpointsQuery
from libs.schemas.hostevents import CapabilityReport, ReportBounds
from libs.schemas.inventory import DeviceEvent
from libs.schemas.scheduler import (
    LogsQuery,
    LogsView,
    WorkloadBatchResult,
    WorkloadBatchSubmit,
    WorkloadPage,
    WorkloadQuery,
    WorkloadRef,
    WorkloadScale,
    WorkloadSubmit,
    WorkloadUpdate,
    WorkloadView,
)
from libs.schemas.tenancy import (
    Quota,
    QuotaQuery,
    TenantQuota,
    TenantQuotas,
    TenantRef,
    TenantUsage,
    TenantUsages,
)
from libs.service import Context, ServiceApp
from services.scheduler import (
    autoscale,
    endpoints,
    hosts,
    lifecycle,
    quotas,
    reconcile,
    reference,
    rollouts,
    store,
)
from services.scheduler.state import SchedulerState, load_state
from services.scheduler.validate import check_spec

log = logging.getLogger(__name__)
app: ServiceApp[SchedulerState] = ServiceApp("scheduler", state=load_state, singleton=True)
Ctx = Context[SchedulerState]


# -- tasks and periodic work ---------------------------------------------------------------------------
@app.task
async def relay(ctx: Ctx) -> None:
    await ctx.state.relay.run()


@app.task
async def placement(ctx: Ctx) -> None:
    await ctx.state.placer.run()


@app.every(lambda s: s.scheduler.reference_refresh_s)
async def reference_data(ctx: Ctx) -> float | None:
    """Ask the inventory at start and then periodically; again within 5 s while it does not answer."""
    s = ctx.settings.scheduler
    if not await reference.refresh(ctx.state.fleet, ctx.bus, s.inventory_timeout_s):
        return min(5.0, s.reference_refresh_s)
    ctx.state.placer.poke()
    return None


@app.every(lambda s: s.scheduler.reference_refresh_s, first_run="after")
async def reread_quotas(ctx: Ctx) -> None:
    """Reread the tenant quotas (another instance may have set one); the ones read last stay on failure."""
    async with session_scope(ctx.db) as session:
        ctx.state.quotas.replace(await quotas.list_quotas(session))


@app.every(3600)
async def prune_decisions(ctx: Ctx) -> None:
    keep = timedelta(days=ctx.settings.scheduler.decision_keep_days)
    async with session_scope(ctx.db) as session:
        await store.delete_decisions(session, lifecycle.utcnow() - keep)


@app.every(lambda s: s.scheduler.lost_sweep_interval_s, first_run="after")
async def lost_work_sweep(ctx: Ctx) -> None:
    """Work left on hosts the registry or the fleet view holds down, or on unusable devices: moved off."""
    await hosts.sweep(ctx)


@app.every(lambda s: s.scheduler.rollout_interval_s, first_run="after")
async def rollout(ctx: Ctx) -> None:
    """Rolling updates: a ready new version takes over, the old one drains and stops (``rollouts``)."""
    async with session_scope(ctx.db) as session:
        added = await rollouts.advance(session, ctx.settings.scheduler)
    if added:
        ctx.state.workloads_changed()


@app.every(lambda s: s.scheduler.autoscale_interval_s, first_run="after")
async def autoscale_services(ctx: Ctx) -> None:
    """Services with min_replicas/max_replicas sized to the gateways' requests in flight (``autoscale``)."""
    if await autoscale.autoscale(ctx):
        ctx.state.workloads_changed()


@app.subscribe(subjects.GATEWAY_ENDPOINT_LOAD_ALL)
async def on_endpoint_load(event: CloudEvent, ctx: Ctx) -> None:
    """A gateway instance's requests in flight per service; the instance is the subject's last token."""
    subject = event.received_on or ""
    instance = subject.rsplit(".", 1)[-1]
    if event.type != EventTypes.ENDPOINT_LOAD or not subject.startswith(subjects.GATEWAY_ENDPOINT_LOAD_ALL[:-1]):
        raise InvalidRequest("not an endpoint load report")
    ctx.state.load.record(instance, EndpointLoad.model_validate(event.data))


# -- consumers -----------------------------------------------------------------------------------------
@app.consumer(STREAM_HOSTS, durable="scheduler-capability", subject=subjects.HOST_CAPABILITY_ALL, batch=True)
async def on_capability(events: list[CloudEvent], ctx: Ctx) -> None:
    bounds = ReportBounds(ctx.settings.bus.max_report_skew_s).context()  # and each report about its subject's host
    await hosts.capability(ctx, each_valid(events, CapabilityReport, service=app.name, handler="on_capability",
                                           context=bounds))


@app.consumer(STREAM_HOSTS, durable="scheduler-state", subject=subjects.HOST_STATE_ALL, batch=True)
async def on_state(events: list[CloudEvent], ctx: Ctx) -> None:
    s = ctx.settings.scheduler
    actual = ctx.state.actual
    bounds = ReportBounds(ctx.settings.bus.max_report_skew_s).context()  # and each report about its subject's host
    fresh = actual.fresh(rep for _, rep in each_valid(events, ActualStateReport, service=app.name,
                                                     handler="on_state", context=bounds))
    if not fresh:
        return
    async with session_scope(ctx.db) as session:
        added, unwanted = await reconcile.reconcile_hosts(session, fresh, resend_after_s=s.resend_after_s,
                                                          ttl_s=s.command_ttl_s)
    actual.keep(fresh)  # after the commit: a failed write leaves the reports to be reconciled again
    if added:
        ctx.state.workloads_changed()
    await reconcile.stop_unwanted(ctx.bus, actual, unwanted, s)


@app.consumer(STREAM_EVENTS, durable="scheduler-hosts", subject=subjects.HOST_EVENTS_ALL)
async def on_host_event(event: CloudEvent, ctx: Ctx) -> None:
    if event.type not in (EventTypes.HOST_UP, EventTypes.HOST_DOWN):
        return
    host_id, kind = event.data.get("id"), event.data.get("kind", "host")
    if not isinstance(host_id, str) or kind != "host":
        raise InvalidRequest("host event names no host")
    await hosts.liveness(ctx, host_id, event.type == EventTypes.HOST_UP, event.time)


@app.consumer(STREAM_EVENTS, durable="scheduler-devices", subject=subjects.DEVICE_EVENTS_ALL)
async def on_device_event(event: CloudEvent, ctx: Ctx) -> None:
    if event.type not in (EventTypes.DEVICE_UNHEALTHY, EventTypes.DEVICE_HEALTHY):
        return
    dev = DeviceEvent.model_validate(event.data)
    health = Health.UNHEALTHY if event.type == EventTypes.DEVICE_UNHEALTHY else Health.HEALTHY
    await hosts.device_health(ctx, dev.host_id, dev.id, health, event.time)


# -- endpoints -----------------------------------------------------------------------------------------
@app.endpoint("workloads.submit", concurrency=8)
async def submit(req: WorkloadSubmit, ctx: Ctx) -> WorkloadView:
    spec = req.spec.model_copy(update={"tenant": req.tenant})
    check_spec(spec, ctx.state.fleet)
    tenant = req.tenant
    if tenant is not None:
        await quotas.check([spec], tenant, ctx.state.quotas.get(tenant), lambda: _usage(ctx, tenant))
    async with session_scope(ctx.db) as session:
        wl, created = await store.create_workload(session, spec, req.tenant, req.idempotency_key,
                                                  lifecycle.utcnow())
    if created:
        ctx.state.workloads_changed()
    view = wl.view()
    view.created = created
    return view


@app.endpoint("workloads.submit_batch", concurrency=4)
async def submit_batch(req: WorkloadBatchSubmit, ctx: Ctx) -> WorkloadBatchResult:
    """Many workloads in one transaction: each checked as ``submit`` checks one, the quota against their
    sum; one refusal refuses the batch (every item's problems named, at ``body.workloads.<i>``)."""
    specs = [spec.model_copy(update={"tenant": req.tenant}) for spec in req.specs]
    errors: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        try:
            check_spec(spec, ctx.state.fleet)
        except InvalidRequest as exc:
            errors += [{**e, "loc": f"body.workloads.{i}.{str(e['loc']).removeprefix('body.')}"} for e in exc.errors]
    if errors:
        raise InvalidRequest(f"{errors[0]['loc']}: {errors[0]['msg']}", title="Workload cannot run anywhere",
                             errors=errors)
    tenant = req.tenant
    if tenant is not None:
        await quotas.check(specs, tenant, ctx.state.quotas.get(tenant), lambda: _usage(ctx, tenant))
    async with session_scope(ctx.db) as session:
        wls, created = await store.create_workloads(session, specs, req.tenant, req.idempotency_key,
                                                    lifecycle.utcnow())
    if created:
        ctx.state.workloads_changed()
    return WorkloadBatchResult(items=[wl.view() for wl in wls], created=created)


@app.endpoint("workloads.get", concurrency=8)
async def get_workload(req: WorkloadRef, ctx: Ctx) -> WorkloadView:
    async with session_scope(ctx.db) as session:
        view = await store.read_workload_view(session, req.id, req.tenant, ctx.settings.scheduler.history_limit)
    if view is None:
        raise NotFound(f"no workload {req.id!r}", title="Workload not found")
    return view


@app.endpoint("workloads.list", concurrency=8)
async def list_workloads(req: WorkloadQuery, ctx: Ctx) -> WorkloadPage:
    async with session_scope(ctx.db) as session:
        return await store.list_workloads(session, req)


@app.endpoint("workloads.stop")
async def stop_workload(req: WorkloadRef, ctx: Ctx) -> WorkloadView:
    s = ctx.settings.scheduler
    now = lifecycle.utcnow()
    async with session_scope(ctx.db) as session:
        wl = (await store.read_workloads(session, [req.id])).get(req.id)
        if wl is None or (req.tenant is not None and wl.tenant != req.tenant):
            raise NotFound(f"no workload {req.id!r}", title="Workload not found")
        lifecycle.stop(wl, "stopped by request", now, s.command_ttl_s)
        added = await store.update_workloads(session, [wl], now)
    if added:
        ctx.state.workloads_changed()
    return await get_workload(req, ctx)


@app.endpoint("workloads.scale")
async def scale_workload(req: WorkloadScale, ctx: Ctx) -> WorkloadView:
    """Change a running service's replica count (new replicas checked against the tenant's quota)."""
    s = ctx.settings.scheduler
    now = lifecycle.utcnow()
    async with session_scope(ctx.db) as session:
        wl = (await store.read_workloads(session, [req.id])).get(req.id)
        if wl is None or (req.tenant is not None and wl.tenant != req.tenant):
            raise NotFound(f"no workload {req.id!r}", title="Workload not found")
        if wl.spec.kind != "service":
            raise InvalidRequest("only a service's replicas can be changed; submit a new job instead",
                                 title="Not a service", errors=[{"loc": "body.replicas", "msg": "not a service"}])
        if wl.state.terminal:
            raise InvalidRequest(f"the service has ended ({wl.state.value})", title="Service ended",
                                 errors=[{"loc": "body.replicas", "msg": f"the service is {wl.state.value}"}])
        more = req.replicas - len(wl.replicas)
        if more > 0 and wl.tenant is not None:
            tenant = wl.tenant
            await quotas.check([wl.spec.model_copy(update={"replicas": more})], tenant, ctx.state.quotas.get(tenant),
                               lambda: _usage(ctx, tenant))
        added, removed = lifecycle.scale(wl, req.replicas, now, s.command_ttl_s)
        outbox = await store.update_workload_replicas(session, wl, added, removed, now) if added or removed else 0
    if outbox:
        ctx.state.workloads_changed()
    return await get_workload(WorkloadRef(id=req.id, tenant=req.tenant), ctx)


@app.endpoint("workloads.update")
async def update_workload(req: WorkloadUpdate, ctx: Ctx) -> WorkloadView:
    """A rolling update: a new service with the changed spec beside the running one (which it replaces once
    every replica of it is ready; ``rollouts``). The tenant's quota must hold both during the update."""
    async with session_scope(ctx.db) as session:
        current = (await store.read_workloads(session, [req.id], lock=False)).get(req.id)
    if current is None or (req.tenant is not None and current.tenant != req.tenant):
        raise NotFound(f"no workload {req.id!r}", title="Workload not found")
    problems = []
    if current.spec.kind != "service" or current.state.terminal:
        problems.append(("body.spec", "only a running service can be updated"))
    if req.spec.kind != "service":
        problems.append(("body.spec.kind", "a rolling update keeps kind 'service'"))
    if req.spec.name != current.spec.name:
        problems.append(("body.spec.name", f"a rolling update keeps the name {current.spec.name!r} (the endpoint)"))
    if problems:
        raise InvalidRequest(problems[0][1], title="Cannot update", errors=[{"loc": loc, "msg": msg}
                                                                           for loc, msg in problems])
    spec = req.spec.model_copy(update={"tenant": current.tenant})
    check_spec(spec, ctx.state.fleet)
    tenant = current.tenant
    if tenant is not None:
        await quotas.check([spec], tenant, ctx.state.quotas.get(tenant), lambda: _usage(ctx, tenant))
    async with session_scope(ctx.db) as session:
        wl, _ = await store.create_workload(session, spec, current.tenant, None, lifecycle.utcnow(),
                                            replaces=current.id)
    ctx.state.workloads_changed()
    return wl.view()


@app.endpoint("endpoints.list", concurrency=4)
async def list_endpoints(req: EndpointsQuery, ctx: Ctx) -> EndpointList:
    """Every running service's set of ready replicas (a gateway reads them once at start)."""
    async with session_scope(ctx.db) as session:
        services = await store.list_services(session, req.tenant)
    return EndpointList(items=[endpoints.endpoint_set(wl) for wl in services])


@app.endpoint("workloads.logs", concurrency=8)
async def workload_logs(req: LogsQuery, ctx: Ctx) -> LogsView:
    async with session_scope(ctx.db) as session:
        loc = await store.read_replica_location(session, req.id, req.tenant, req.replica)
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


async def _usage(ctx: Ctx, tenant: str) -> TenantUsage:
    async with session_scope(ctx.db) as session:
        return (await quotas.usage_views(session, ctx.state.fleet, ctx.state.quotas, tenant))[0]


@app.endpoint("workloads.usage", concurrency=8)
async def tenant_usage(req: TenantRef, ctx: Ctx) -> TenantUsage:
    """What a tenant holds per resource, with its quota (min, max), what of it is borrowed, and which work."""
    return await _usage(ctx, req.tenant)


@app.endpoint("quotas.usage", concurrency=4)
async def quota_usage(req: QuotaQuery, ctx: Ctx) -> TenantUsages:
    """``workloads.usage`` for one tenant, or for every tenant with a quota or active work."""
    async with session_scope(ctx.db) as session:
        return TenantUsages(items=await quotas.usage_views(session, ctx.state.fleet, ctx.state.quotas, req.tenant))


@app.endpoint("quotas.list", concurrency=8)
async def list_quotas(req: QuotaQuery, ctx: Ctx) -> TenantQuotas:
    """Every tenant's quota, or one tenant's."""
    book = ctx.state.quotas.by_tenant
    items = [TenantQuota(tenant=t, **q.model_dump()) for t, q in sorted(book.items())
             if req.tenant is None or t == req.tenant]
    return TenantQuotas(items=items)


@app.endpoint("quotas.get", concurrency=8)
async def get_quota(req: TenantRef, ctx: Ctx) -> Quota:
    """A tenant's quota; an empty one (no limit) when none is set."""
    return ctx.state.quotas.get(req.tenant)


@app.endpoint("quotas.set")
async def set_quota(req: TenantQuota, ctx: Ctx) -> Quota:
    """Set a tenant's quota; resources it omits have no guarantee and no limit."""
    quota = Quota.model_validate(req.model_dump(exclude={"tenant"}))
    async with session_scope(ctx.db) as session:
        await quotas.update_quota(session, req.tenant, quota)
    ctx.state.quotas.set(req.tenant, quota)
    ctx.state.placer.poke()
    return quota
