"""Reclaim: a tenant within its guarantee takes back what other tenants borrowed.

Runs after priority preemption, one still-pending workload at a time in queue order. A
workload may reclaim when its tenant stays within its guarantee (``elastic.may_reclaim``); the
victims are other tenants' preemptible borrowed allocations (``elastic.victims``), stopped
through the preemption model (``preempt.Preemptor`` with that victim set), least disruption
first. Each stop carries the reason, which becomes the victim's event and explanation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from services.scheduler.placement.capacity import Selected
from services.scheduler.placement.elastic import (
    Amounts,
    Guarantees,
    add,
    classify,
    demand_amounts,
    guaranteed,
    may_reclaim,
    spec_amounts,
    victims,
)
from services.scheduler.placement.feasibility import FeasibilityCache
from services.scheduler.placement.preempt import Preemptor, host_usage, take
from services.scheduler.placement.quota import QuotaLeft
from services.scheduler.placement.result import Preemption
from services.scheduler.placement.snapshot import FleetSnapshot
from services.scheduler.placement.workloads import Item, PendingWorkload


def reclaim(items: Sequence[Item], snap: FleetSnapshot, feas: FeasibilityCache, by_item: dict[int, Selected],
            preemptions: list[Preemption], batch: Sequence[PendingWorkload], max_candidates: int, deadline: float,
            quota: QuotaLeft, guarantees: Guarantees, no_preempt_for: frozenset[str] = frozenset()) -> None:
    """Place still-pending workloads of tenants within their guarantee by stopping borrowed work; ``quota``
    (what is left of each tenant's device limits after this batch) is updated with what they take."""
    if not guaranteed(guarantees):
        return
    borrowing = classify(snap, guarantees)
    stopped = {p.workload_id for p in preemptions}
    gone = {ai for ai, a in enumerate(snap.allocations) if a.workload_id in stopped}
    used: dict[str, Amounts] = {t: dict(u) for t, u in borrowing.used.items()}
    for ai in gone:
        t = snap.allocations[ai].tenant
        if t is not None:
            add(used.setdefault(t, {}), borrowing.amounts(ai), -1.0)
    by_workload: dict[int, list[Item]] = {}
    for it in items:
        by_workload.setdefault(it.workload, []).append(it)
    for w, its in by_workload.items():  # what this batch placed counts as used
        if all(it.idx in by_item for it in its) and its[0].tenant is not None:
            add(used.setdefault(its[0].tenant, {}), spec_amounts(batch[w].spec, batch[w].alternative))
    for w, its in by_workload.items():
        missing = [it for it in its if it.idx not in by_item]
        tenant = its[0].tenant
        if not missing or tenant is None or batch[w].id in no_preempt_for:
            continue
        gang = its[0].gang
        want = its if gang else missing
        n = sum(len(it.replicas) for it in want)
        asked = demand_amounts(batch[w].spec.demand(batch[w].alternative), n)
        if not may_reclaim(tenant, asked, used.get(tenant, {}), guarantees):
            continue
        left = deadline - time.perf_counter()
        if left <= 0.005:
            break
        allowed = victims(snap, borrowing, tenant) - gone
        if not allowed:
            continue
        pre = Preemptor(snap, feas, {d for s in by_item.values() for d in s.devices}, host_usage(by_item, items),
                        victims=allowed)
        limits = {hw: v for (t, hw), v in quota.items() if t == tenant}
        res = pre.try_place(want, gang, max_candidates, min(left, 1.0), limits)
        if res is None:
            continue
        take(res, snap, by_item, its, gang, quota, tenant)
        add(used.setdefault(tenant, {}), asked)
        why = _within(tenant, asked, used[tenant], guarantees[tenant])
        for ai in res.evicted:
            a = snap.allocations[ai]
            gone.add(ai)
            if a.tenant is not None:
                add(used.setdefault(a.tenant, {}), borrowing.amounts(ai), -1.0)
            preemptions.append(Preemption(
                a.workload_id, a.priority, tuple(d.device_id for d in a.devices), batch[w].id,
                reason=f"reclaimed for {batch[w].id} of tenant {tenant}, within its guarantee ({why}): "
                       f"this workload ran on capacity tenant {a.tenant} borrowed above its own min"))


def _within(tenant: str, asked: Mapping[str, float], used: Mapping[str, float], mins: Mapping[str, float]) -> str:
    """'gpu 4 of min 4' for each guaranteed resource the workload asks for (``used`` includes it)."""
    return ", ".join(f"{r} {used.get(r, 0.0):g} of min {mins[r]:g}" for r in sorted(asked)
                     if mins.get(r, 0.0) > 0 and asked[r] > 0)
