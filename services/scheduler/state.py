"""The scheduler's in-memory state, built once at start and handed to every handler as ``ctx.state``.

* ``fleet``: hosts as agents and the registry describe them, and the reference data (catalog,
  rules, site links) placement needs; loaded from ``scheduler.hosts`` and the seed files, then
  kept current by the consumers and the reference refresh;
* ``actual``: the latest state report per host (what agents really run), read back from the
  stream at start (``reconcile.replay_state``) and then kept current by ``scheduler-state``;
* ``quotas``: every tenant's elastic quota, read from ``tenant_quotas`` at start and on every refresh
  (the placer reads its device limits, guarantees and named resources at each batch);
* ``relay``: the outbox relay, told (``poke``) after every commit that wrote outbox rows;
* ``placer``: the batch placer, told after anything that may let queued work through.

Workloads themselves are not kept here: every handler reads and writes them in its own
transaction (``store``), so several scheduler instances may run side by side.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from libs.db import session_scope
from libs.db.outbox import OutboxRelay
from libs.service import Context
from services.scheduler import quotas, reconcile, reference, store
from services.scheduler.autoscale import Load
from services.scheduler.fleet import Fleet
from services.scheduler.orm import outbox
from services.scheduler.placer import Placer
from services.scheduler.quotas import QuotaBook
from services.scheduler.reconcile import Actual


@dataclass
class SchedulerState:
    fleet: Fleet
    actual: Actual
    quotas: QuotaBook
    relay: OutboxRelay
    placer: Placer
    load: Load = field(default_factory=Load)  # the gateways' requests in flight per service (``autoscale``)
    # orders changes of the fleet view (each is worked out, written, then applied: ``hosts``)
    fleet_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def workloads_changed(self) -> None:
        """After a commit that changed workloads: relay what it wrote to the outbox, and place again."""
        self.relay.poke()
        self.placer.poke()


async def load_state(ctx: Context[SchedulerState]) -> SchedulerState:
    """The persisted fleet view, the seed reference data (until the inventory answers) and the quotas."""
    fleet = Fleet()
    async with session_scope(ctx.db) as session:
        for view in await store.list_hosts(session):
            fleet.hosts[view.id] = view
        book = QuotaBook()
        book.replace(await quotas.list_quotas(session))
    catalog, compat, driver = reference.seed_reference()
    fleet.set_reference(catalog, compat, driver, [], "seed")
    actual = Actual()
    relay = OutboxRelay("scheduler", ctx.db, outbox, ctx.bus)
    placer = Placer(fleet, actual, ctx.db, ctx.settings.scheduler, on_commit=relay.poke,
                    quotas=book.placement_limits, guarantees=book.guarantees, named=book.named)
    await _replay_state(ctx, actual)
    placer.poke()  # place what was queued before the start
    return SchedulerState(fleet, actual, book, relay, placer)


async def _replay_state(ctx: Context[SchedulerState], actual: Actual) -> None:
    """What agents run, as their latest reports say, before anything is placed; reconciled once more, so
    unwanted work is stopped now rather than at the hosts' next report."""
    s = ctx.settings.scheduler
    fresh = actual.fresh(await reconcile.replay_state(ctx.bus, max_skew_s=ctx.settings.bus.max_report_skew_s,
                                                      timeout_s=s.state_replay_timeout_s))
    if not fresh:
        return
    async with session_scope(ctx.db) as session:
        _, unwanted = await reconcile.reconcile_hosts(session, fresh, resend_after_s=s.resend_after_s,
                                                      ttl_s=s.command_ttl_s)
    actual.keep(fresh)
    await reconcile.stop_unwanted(ctx.bus, actual, unwanted, s)
