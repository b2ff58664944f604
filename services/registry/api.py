"""The registry service: heartbeats in, up/down events out, the catalog answered over the bus.

A heartbeat speaks only for the member its subject names (``libs.bus.identity``): a host's on
``xpumesh.host.<site>.<host>.heartbeat`` with that id and site, a service instance's on
``xpumesh.svc.<service>.<instance>.heartbeat`` with the id ``<service>.<instance>``. It may
announce at most ``registry.max_interval_s``, and a new member is taken only while the table
holds fewer than ``registry.max_members``.
"""

from __future__ import annotations

from libs.bus import identity, subjects
from libs.bus.errors import InvalidRequest, NotFound
from libs.bus.outcomes import reject
from libs.events import CloudEvent
from libs.schemas.registry import Heartbeat, Member, MemberKind, MemberPage, MemberQuery, MemberRef
from libs.service import Context, ServiceApp
from services.registry.state import RegistryState, load_state

app: ServiceApp[RegistryState] = ServiceApp("registry", state=load_state, singleton=True)
Ctx = Context[RegistryState]


async def _on_heartbeat(event: CloudEvent, ctx: Ctx, handler: str) -> None:
    hb = Heartbeat.model_validate(event.data)
    if hb.kind == MemberKind.HOST:
        identity.check_host(event.received_on, hb.site, hb.id)
    else:
        identity.check_service(event.received_on, hb.id)
    limits = ctx.settings.registry
    if hb.interval_s > limits.max_interval_s:
        raise InvalidRequest(f"heartbeat interval above the registry's {limits.max_interval_s:g} s")
    table = ctx.state.table
    if hb.id not in table.live and len(table.live) >= limits.max_members:
        reject(app.name, handler, "registry_full")
        return
    if table.heartbeat(hb) is not None:
        ctx.state.changed.set()


@app.subscribe(subjects.HOST_HEARTBEAT_ALL, queue="registry")
async def on_host_heartbeat(event: CloudEvent, ctx: Ctx) -> None:
    await _on_heartbeat(event, ctx, "on_host_heartbeat")


@app.subscribe(subjects.SERVICE_HEARTBEAT_ALL, queue="registry")
async def on_service_heartbeat(event: CloudEvent, ctx: Ctx) -> None:
    await _on_heartbeat(event, ctx, "on_service_heartbeat")


@app.every(lambda s: s.registry.sweep_interval_s, wake=lambda ctx: ctx.state.changed, first_run="after")
async def writer(ctx: Ctx) -> None:
    """Sweep for silent members; write transitions at once, last-seen times in batches."""
    await ctx.state.write(ctx.db, ctx.settings.registry)


@app.task
async def relay(ctx: Ctx) -> None:
    await ctx.state.relay.run()


@app.task
async def follow_endpoints(ctx: Ctx) -> None:
    """Keep every service's replicas in rotation (the scheduler's snapshot, then its endpoint.changed events),
    for a bridge that mirrors them (Consul); none does without ``consul_url``."""
    if ctx.state.bridge.mirrors and ctx.state.follower is not None:
        await ctx.state.follower.run(ctx.settings.registry.endpoint_resync_s)


@app.every(lambda s: s.registry.endpoint_push_interval_s, first_run="after")
async def mirror_endpoints(ctx: Ctx) -> None:
    """Push the endpoint changes to the bridge: the first push after the first snapshot is a full sync."""
    st = ctx.state
    if st.bridge.mirrors and st.endpoints is not None and st.follower is not None and st.follower.synced.is_set():
        await st.endpoints.push()


@app.endpoint("members.list", concurrency=8)
async def list_members(req: MemberQuery, ctx: Ctx) -> MemberPage:
    items, cursor = ctx.state.table.query(req)
    return MemberPage(items=items, next_cursor=cursor)


@app.endpoint("members.get", concurrency=8)
async def get_member(req: MemberRef, ctx: Ctx) -> Member:
    live = ctx.state.table.live.get(req.id)
    if live is None:
        raise NotFound(f"no member {req.id!r}")
    return live.member
