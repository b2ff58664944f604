"""The registry service: heartbeats in, up/down events out, the catalog answered over the bus."""

from __future__ import annotations

import asyncio
import logging

from libs.aio import wait_event
from libs.bus import subjects
from libs.bus.errors import NotFound
from libs.db import session_scope
from libs.db.outbox import OutboxRelay
from libs.events import CloudEvent
from libs.schemas.registry import Heartbeat, Member, MemberPage, MemberQuery, MemberRef
from libs.service import Context, ServiceApp
from services.registry import models
from services.registry.bridge import bridge_from_settings
from services.registry.orm import outbox

log = logging.getLogger(__name__)
app = ServiceApp("registry")


def _table(ctx: Context) -> models.Table:
    table: models.Table = ctx.state["table"]
    return table


@app.on_startup
async def load_state(ctx: Context) -> None:
    async with session_scope(ctx.db) as session:
        ctx.state["table"] = await models.load(session)
    ctx.state["relay"] = OutboxRelay("registry", ctx.db, outbox, ctx.bus)
    ctx.state["bridge"] = bridge_from_settings(ctx.settings)
    ctx.state["flushed"] = asyncio.Event()
    ctx.state["wake"] = asyncio.Event()


async def _on_heartbeat(event: CloudEvent, ctx: Context) -> None:
    hb = Heartbeat.model_validate(event.data)
    if hb.kind == "host" and hb.site:
        subjects.check_token(hb.site, "site")
    if _table(ctx).heartbeat(hb) is not None:
        ctx.state["wake"].set()


@app.subscribe(subjects.HOST_HEARTBEAT_ALL, queue="registry")
async def on_host_heartbeat(event: CloudEvent, ctx: Context) -> None:
    await _on_heartbeat(event, ctx)


@app.subscribe(subjects.SERVICE_HEARTBEAT_ALL, queue="registry")
async def on_service_heartbeat(event: CloudEvent, ctx: Context) -> None:
    await _on_heartbeat(event, ctx)


@app.task
async def writer(ctx: Context) -> None:
    """Sweep for silent members and write transitions at once, last-seen times in batches."""
    wake: asyncio.Event = ctx.state["wake"]
    loop = asyncio.get_running_loop()
    last_flush = loop.time()
    settings = ctx.settings.registry
    while True:
        await wait_event(wake, settings.sweep_interval_s)
        wake.clear()
        table = _table(ctx)
        table.sweep(settings.missed_heartbeats)
        flush_touched = loop.time() - last_flush >= settings.flush_interval_s
        if not table.transitions and not flush_touched:
            continue
        transitions, touched = table.take_writes(include_touched=flush_touched)
        try:
            async with session_scope(ctx.db) as session:
                await models.write(session, transitions, touched)
        except Exception:
            log.exception("registry write failed; will retry")
            table.transitions[:0] = transitions
            for m in touched:
                table.live[m.id].dirty = True
            await asyncio.sleep(0.5)
            continue
        if flush_touched:
            last_flush = loop.time()
        ctx.state["relay"].poke()
        await ctx.state["bridge"].apply(transitions, touched)
        ctx.state["flushed"].set()


@app.task
async def relay(ctx: Context) -> None:
    await ctx.state["relay"].run()


@app.endpoint("members.list", concurrency=8)
async def list_members(req: MemberQuery, ctx: Context) -> MemberPage:
    items, cursor = _table(ctx).query(req)
    return MemberPage(items=items, next_cursor=cursor)


@app.endpoint("members.get", concurrency=8)
async def get_member(req: MemberRef, ctx: Context) -> Member:
    live = _table(ctx).live.get(req.id)
    if live is None:
        raise NotFound(f"no member {req.id!r}")
    return live.member
