"""The registry service: heartbeats in, up/down events out, the catalog answered over the bus."""

from __future__ import annotations

from libs.bus import subjects
from libs.bus.errors import NotFound
from libs.events import CloudEvent
from libs.schemas.registry import Heartbeat, Member, MemberPage, MemberQuery, MemberRef
from libs.service import Context, ServiceApp
from services.registry.state import RegistryState, load_state

app: ServiceApp[RegistryState] = ServiceApp("registry", state=load_state)
Ctx = Context[RegistryState]


async def _on_heartbeat(event: CloudEvent, ctx: Ctx) -> None:
    hb = Heartbeat.model_validate(event.data)
    if hb.kind == "host" and hb.site:
        subjects.check_token(hb.site, "site")
    if ctx.state.table.heartbeat(hb) is not None:
        ctx.state.changed.set()


@app.subscribe(subjects.HOST_HEARTBEAT_ALL, queue="registry")
async def on_host_heartbeat(event: CloudEvent, ctx: Ctx) -> None:
    await _on_heartbeat(event, ctx)


@app.subscribe(subjects.SERVICE_HEARTBEAT_ALL, queue="registry")
async def on_service_heartbeat(event: CloudEvent, ctx: Ctx) -> None:
    await _on_heartbeat(event, ctx)


@app.every(lambda s: s.registry.sweep_interval_s, wake=lambda ctx: ctx.state.changed, first_run="after")
async def writer(ctx: Ctx) -> None:
    """Sweep for silent members; write transitions at once, last-seen times in batches."""
    await ctx.state.write(ctx.db, ctx.settings.registry)


@app.task
async def relay(ctx: Ctx) -> None:
    await ctx.state.relay.run()


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
