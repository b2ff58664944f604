"""Autoscaling services between ``service.min_replicas`` and ``max_replicas`` on requests in flight.

The gateways count requests in flight to each service's replicas and each instance reports its
means every ``gateway.endpoint_load_interval_s`` (core NATS, ``EndpointLoad``, on a subject
naming the instance, which only gateways may publish). ``Load`` keeps the latest report per
instance; reports older than ``scheduler.autoscale_load_max_age_s`` (an instance gone) no longer
count. Every ``scheduler.autoscale_interval_s`` each autoscaled service that is not draining is
sized: ``ceil(in flight / service.target_in_flight)`` clamped to its bounds; more replicas at
once, fewer only once the load has called for fewer for ``scheduler.autoscale_down_after_s`` (so
a lull between bursts does not stop replicas that are needed again a moment later). The change
is a scale (``lifecycle.scale``), as ``PATCH`` makes it, and is quota-checked the same way.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libs.bus.errors import BusError
from libs.db import session_scope
from libs.schemas.endpoints import EndpointLoad
from libs.service import Context
from services.scheduler import lifecycle, quotas, store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from libs.schemas.tenancy import TenantUsage
    from services.scheduler.state import SchedulerState

log = logging.getLogger(__name__)


@dataclass
class Load:
    """The latest load report of each gateway instance, and since when each service could do with fewer."""

    reports: dict[str, tuple[float, EndpointLoad]] = field(default_factory=dict)
    low_since: dict[str, float] = field(default_factory=dict)
    max_instances: int = 10_000

    def record(self, instance: str, report: EndpointLoad, now: float | None = None) -> None:
        if instance not in self.reports and len(self.reports) >= self.max_instances:
            return
        self.reports[instance] = (time.monotonic() if now is None else now, report)

    def in_flight(self, max_age_s: float, now: float | None = None) -> dict[str, float]:
        """Requests in flight per service, summed over the instances heard from within ``max_age_s``."""
        now = time.monotonic() if now is None else now
        for instance in [i for i, (at, _) in self.reports.items() if now - at > max_age_s]:
            del self.reports[instance]
        out: dict[str, float] = {}
        for _, report in self.reports.values():
            for item in report.items:
                out[item.workload_id] = out.get(item.workload_id, 0.0) + item.in_flight
        return out


def desired(current: int, in_flight: float, target: float, lo: int, hi: int, low_since: float | None, now: float,
            down_after_s: float) -> tuple[int, float | None]:
    """(replicas to run, since when fewer would do): up at once, down only after ``down_after_s`` of low load."""
    want = min(hi, max(lo, math.ceil(in_flight / target) if in_flight > 0 else lo))
    if want > current:
        return want, None
    if want < current:
        if low_since is None:
            return current, now
        return (want, None) if now - low_since >= down_after_s else (current, low_since)
    return current, None


async def _usage(session: AsyncSession, ctx: Context[SchedulerState], tenant: str) -> TenantUsage:
    return (await quotas.usage_views(session, ctx.state.fleet, ctx.state.quotas, tenant))[0]


async def autoscale(ctx: Context[SchedulerState]) -> int:
    """Size every autoscaled service to its load; returns outbox rows added."""
    s = ctx.settings.scheduler
    load = ctx.state.load
    loads = load.in_flight(s.autoscale_load_max_age_s)
    now, mono = lifecycle.utcnow(), time.monotonic()
    added = 0
    async with session_scope(ctx.db) as session:
        for wl in await store.list_services(session):
            svc = wl.spec.service
            if svc is None or not svc.autoscaled or wl.draining_since is not None:
                continue
            assert svc.min_replicas is not None and svc.max_replicas is not None
            current = len(wl.replicas)
            want, low = desired(current, loads.get(wl.id, 0.0), svc.target_in_flight, svc.min_replicas,
                                svc.max_replicas, load.low_since.get(wl.id), mono, s.autoscale_down_after_s)
            if low is None:
                load.low_since.pop(wl.id, None)
            else:
                load.low_since[wl.id] = low
            if want == current:
                continue
            locked = (await store.read_workloads(session, [wl.id])).get(wl.id)
            if locked is None or locked.state.terminal or len(locked.replicas) != current:
                continue
            tenant = locked.tenant
            if want > current and tenant is not None:
                try:
                    await quotas.check([locked.spec.model_copy(update={"replicas": want - current})], tenant,
                                       ctx.state.quotas.get(tenant),
                                       functools.partial(_usage, session, ctx, tenant))
                except BusError as exc:  # over quota: it stays as it is
                    log.info("autoscale: %s stays at %d replicas: %s", wl.id, current, exc.detail)
                    continue
            log.info("autoscale: %s from %d to %d replicas (%.1f in flight, target %g per replica)", wl.id, current,
                     want, loads.get(wl.id, 0.0), svc.target_in_flight)
            new, gone = lifecycle.scale(locked, want, now, s.command_ttl_s)
            added += await store.update_workload_replicas(session, locked, new, gone, now)
    return added
