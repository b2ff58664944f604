"""What the scheduler does with news about hosts: capability reports, ``host.up/down``, device health.

Each piece of news becomes the hosts' next views (``Fleet.*_view``) and the work it moves off
them (replicas on a host gone down, or on a device gone or unhealthy); both are written in
**one transaction**, and only after the commit do the views replace the fleet's. A write that
fails leaves memory as it was, so the redelivered message is worked out again instead of
being skipped as already applied (which once left a lost device's work where it was, and
memory and ``scheduler.hosts`` apart). One lock orders the changes, so two handlers never
build on the same old view.

``sweep`` is the safety net under the event path: every ``scheduler.lost_sweep_interval_s``
it takes the registry's word on which hosts are down (a ``host.down`` this instance never
handled still counts) and moves work off every host down and every device unusable in the
fleet view — work a placement committed while the host was going down, for instance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from libs.bus import subjects
from libs.bus.errors import BusError
from libs.db import session_scope
from libs.events import CloudEvent
from libs.schemas.devices import Health
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.registry import MemberKind, MemberPage, MemberQuery, MemberStatus
from libs.service import Context
from services.scheduler import reconcile, store
from services.scheduler.fleet import HostView
from services.scheduler.reconcile import Loss
from services.scheduler.state import SchedulerState

log = logging.getLogger(__name__)
Ctx = Context[SchedulerState]


async def commit(ctx: Ctx, views: Sequence[HostView], losses: Sequence[Loss]) -> None:
    """Write the views and lose the work in one transaction; then, and only then, change memory."""
    if not views and not losses:
        return
    state = ctx.state
    async with session_scope(ctx.db) as session:
        if views:
            await store.update_hosts(session, views)
        added, hit = await reconcile.lose_replicas(session, losses, ttl_s=ctx.settings.scheduler.command_ttl_s)
    state.fleet.apply(views)
    if added:
        state.workloads_changed()
    if hit:
        log.info("%s: %d workloads lost replicas", "; ".join(sorted({x.reason for x in losses})), hit)
    state.placer.poke()


async def capability(ctx: Ctx, reports: Sequence[tuple[CloudEvent, CapabilityReport]]) -> None:
    """Agents' reports: each host's newest view; a device the agent marks unhealthy or drops moves its work."""
    fleet = ctx.state.fleet
    async with ctx.state.fleet_lock:
        views: dict[str, HostView] = {}
        losses: list[Loss] = []
        for e, rep in reports:
            cur = views.get(rep.host_id) or fleet.hosts.get(rep.host_id)
            before = cur.usable_devices() if cur is not None else set()
            view = fleet.capability_view(rep, e.time, views.get(rep.host_id))
            if view is None:
                continue
            views[view.id] = view
            losses += [Loss(view.id, f"device {d} unhealthy or gone", d) for d in sorted(before - view.usable_devices())]
        await commit(ctx, list(views.values()), losses)


async def liveness(ctx: Ctx, host_id: str, up: bool, at: datetime) -> None:
    """The registry's ``host.up``/``host.down``: a host gone down loses its work."""
    async with ctx.state.fleet_lock:
        view = ctx.state.fleet.liveness_view(host_id, up, at)
        if view is not None:
            await commit(ctx, [view], [] if up else [Loss(host_id, f"host {host_id} down")])


async def device_health(ctx: Ctx, host_id: str, dev_id: str, health: Health, at: datetime) -> None:
    """The inventory's ``device.unhealthy``/``device.healthy``: an unhealthy device loses its work."""
    async with ctx.state.fleet_lock:
        view = ctx.state.fleet.health_view(host_id, dev_id, health, at)
        if view is not None:
            lost = view.device_health(dev_id) == Health.UNHEALTHY
            await commit(ctx, [view], [Loss(host_id, f"device {dev_id} unhealthy", dev_id)] if lost else [])


async def _registry_down(ctx: Ctx) -> list[tuple[str, datetime]]:
    """(host, since) of every host the registry holds down; empty while the registry does not answer."""
    out: list[tuple[str, datetime]] = []
    after: str | None = None
    for _ in range(20):  # 100,000 members at most, the registry's own bound
        try:
            page = await ctx.bus.request(subjects.rpc_subject("registry", "members.list"),
                                         MemberQuery(kind=MemberKind.HOST, status=MemberStatus.DOWN, limit=5000,
                                                     after=after), MemberPage,
                                         timeout=ctx.settings.scheduler.inventory_timeout_s)
        except BusError as exc:
            log.debug("lost-work sweep: the registry did not answer (%s)", type(exc).__name__)
            break
        out += [(m.id, m.status_changed_at) for m in page.items]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    return out


async def sweep(ctx: Ctx) -> None:
    """Take the registry's down hosts, then move work off every host down and device unusable."""
    fleet = ctx.state.fleet
    down = await _registry_down(ctx)
    async with ctx.state.fleet_lock:
        heard = [v for v in (fleet.liveness_view(h, False, at) for h, at in down if fleet.host_up(h)) if v is not None]
        if heard:
            log.warning("lost-work sweep: the registry holds %d hosts down that this scheduler had up (%s, …)",
                        len(heard), heard[0].id)
        losses: list[Loss] = []
        for h in ({h.id: h for h in fleet.hosts.values()} | {v.id: v for v in heard}).values():
            if not h.up:
                losses.append(Loss(h.id, f"host {h.id} down"))
            else:
                losses += [Loss(h.id, f"device {d} unhealthy or gone", d) for d in h.devices
                           if h.device_health(d) == Health.UNHEALTHY]
        if not losses:
            return
        async with session_scope(ctx.db) as session:
            rows = await store.list_active_replicas(session, sorted({x.host_id for x in losses}))
        held = {(r.host_id, None) for r in rows} | {(r.host_id, d["id"]) for r in rows for d in r.devices}
        await commit(ctx, heard, [x for x in losses if (x.host_id, x.device) in held])
