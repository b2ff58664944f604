"""The registry's state: the liveness table, its outbox relay and bridge, the endpoints it mirrors, and the writer's step.

Heartbeats only touch memory; ``RegistryState.write`` (the service's periodic writer) stores
status transitions at once (with their events, through the outbox, in one transaction) and
last-seen times every ``registry.flush_interval_s``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.config import RegistrySettings
from libs.db import session_scope
from libs.db.batches import apply_batch
from libs.db.outbox import OutboxRelay
from libs.endpoints import EndpointFollower
from libs.service import Context
from services.registry import store
from services.registry.bridge import RegistryBridge, bridge_from_settings
from services.registry.endpoints import EndpointMirror
from services.registry.liveness import Table
from services.registry.orm import outbox


@dataclass
class RegistryState:
    table: Table
    relay: OutboxRelay
    bridge: RegistryBridge
    # every service's replicas in rotation, mirrored into a bridge that mirrors (Consul), kept by ``follower``
    endpoints: EndpointMirror | None = None
    follower: EndpointFollower | None = None
    # set by a heartbeat that queued a transition: the writer runs at once instead of at its interval
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    last_flush: float = field(default_factory=time.monotonic)

    async def write(self, sessions: async_sessionmaker[AsyncSession], settings: RegistrySettings) -> None:
        """Sweep for silent members, then store what is waiting. A failed write puts it back (and raises), so
        the next run stores it; a member the database refuses for its data is dropped alone (counted
        ``database_rejected``), so it cannot hold back every other member's transitions."""
        table = self.table
        table.sweep(settings.missed_heartbeats)
        flush_touched = time.monotonic() - self.last_flush >= settings.flush_interval_s
        if not table.transitions and not flush_touched:
            return
        transitions, touched = table.take_writes(include_touched=flush_touched)
        try:
            if transitions:  # one bad member is dropped (and counted), never the batch retried for ever
                await apply_batch(sessions, "registry", "writer", transitions, store.update_members)
        except Exception:
            table.put_back(transitions, touched)
            raise
        try:
            async with session_scope(sessions) as session:
                await store.update_last_seen(session, touched)
        except Exception:
            table.put_back([], touched)
            raise
        if flush_touched:
            self.last_flush = time.monotonic()
        self.relay.poke()
        await self.bridge.apply(transitions, touched)


async def load_state(ctx: Context[RegistryState]) -> RegistryState:
    async with session_scope(ctx.db) as session:
        table = Table.of(await store.list_members(session))
    bridge = bridge_from_settings(ctx.settings)
    mirror = EndpointMirror(bridge)
    follower = EndpointFollower(ctx.bus, mirror, service="registry", request_timeout_s=ctx.settings.bus.request_timeout_s,
                                drain_timeout_s=ctx.settings.bus.drain_timeout_s)
    return RegistryState(table=table, relay=OutboxRelay("registry", ctx.db, outbox, ctx.bus), bridge=bridge,
                         endpoints=mirror, follower=follower)
