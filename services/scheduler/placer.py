"""Batch placement: take the queue, place it on a snapshot of the fleet, apply the decision.

One batch: read the queued workloads (highest priority, then oldest) and what holds
devices (desired replicas plus whatever agents report running that nobody wants); in a
worker thread, lay them over the fleet's allocation-free snapshot (rebuilt, also in a worker
thread, only when the fleet changed), order the batch fairly among tenants (dominant-resource
fairness above their guarantees, ``placement.elastic``) and run ``place`` with the tenants' device
limits and guarantees (CP-SAT is CPU-bound); then, in one
transaction, record the decision (status, objective, assignments, preemptions, pending),
preempt or reclaim (the reason goes to the stopped workload's event), assign (saying when the
work borrows above its tenant's guarantee) and explain. The fleet may have changed while the solver ran, so every
assignment is checked again against the fleet and the rows (a gang is applied whole or
not at all). Launch and stop commands leave through the outbox with the state changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from libs.aio import wait_event
from libs.config import SchedulerSettings
from libs.db import session_scope
from libs.schemas.commands import ReplicaResources
from libs.schemas.scheduler import Explanation
from libs.schemas.workload import WorkloadSpec
from services.scheduler import lifecycle, store
from services.scheduler.fleet import Fleet
from services.scheduler.lifecycle import Workload
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    Assignment,
    FleetSnapshot,
    HostHold,
    PendingWorkload,
    PlacementDecision,
    PlacementRules,
    Quotas,
    place_alternatives,
)
from services.scheduler.placement.elastic import Guarantees, classify, fair_order
from services.scheduler.reconcile import Actual

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    decision_id: int | None = None
    placed: int = 0
    pending: int = 0
    preempted: int = 0
    status: str = "EMPTY"
    batch: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)  # this round's phases (``PHASES``)


# A round's phases: read the queue (the queued workloads), read what holds devices (the active replicas), lay
# the allocations over the fleet's snapshot, solve (fair order, placement, borrowing), apply the decision and
# commit it.
PHASES = ("queue", "held", "snapshot", "solve", "apply")


@dataclass
class PlacerStats:
    """What the placer did since it started: rounds that placed something, replicas placed (committed), and
    the seconds spent in each phase over every round (``PHASES``)."""

    rounds: int = 0
    placed: int = 0
    phases_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def add(self, result: BatchResult) -> None:
        self.rounds += 1
        self.placed += result.placed
        for k, v in result.timings_s.items():
            self.phases_s[k] = self.phases_s.get(k, 0.0) + v


def allocations_of(rows: list[Any]) -> list[Allocation]:
    """One allocation per workload from its active replicas' rows (``store.list_active_replicas``), in the
    rows' order (oldest workload first)."""
    by_wl: dict[str, list[AllocatedDevice]] = {}
    holds: dict[str, list[HostHold]] = {}
    meta: dict[str, tuple[int, bool, str | None]] = {}
    for r in rows:
        meta[r.workload_id] = (r.priority, r.preemptible == "true", r.tenant)
        devs = by_wl.setdefault(r.workload_id, [])
        for d in r.devices:
            devs.append(AllocatedDevice(d["id"], float(d.get("share", 1.0)), d.get("memory_mib")))
        res = r.resources or {}
        if r.host_id and (res.get("cpu") or res.get("memory_mib")):
            holds.setdefault(r.workload_id, []).append(
                HostHold(r.host_id, int(res.get("cpu") or 0), int(res.get("memory_mib") or 0), res.get("numa_node")))
    return [Allocation(w, *meta[w], tuple(devs), tuple(holds.get(w, ()))) for w, devs in by_wl.items()]


def _allocations(rows: list[Any], actual: Actual) -> list[Allocation]:
    out = allocations_of(rows)
    desired = {(r.workload_id, r.replica, r.attempt) for r in rows}
    for host_id, rep in actual.orphans(desired):  # running but unwanted: holds its devices until stopped
        held = tuple(AllocatedDevice(d, s) for d, s in zip(rep.device_ids, rep.shares or [1.0] * len(rep.device_ids),
                                                            strict=False))
        out.append(Allocation(f"orphan:{host_id}:{rep.workload_id}:{rep.replica}:{rep.attempt}", 1001, False, None,
                              held))
    return out


def _batch(wls: dict[str, Workload], order: list[str]) -> tuple[list[PendingWorkload], dict[str, list[int]]]:
    """Pending workloads for the engine; a partly placed workload asks only for its unplaced replicas."""
    batch: list[PendingWorkload] = []
    missing: dict[str, list[int]] = {}
    for wid in order:
        wl = wls.get(wid)
        if wl is None or not wl.state.queued:
            continue
        todo = [r.replica for r in wl.replicas if r.state == "pending"]
        if not todo:
            continue
        spec = wl.spec.model_copy(update={"replicas": len(todo), "tenant": wl.tenant})
        batch.append(PendingWorkload(wid, spec))
        missing[wid] = todo
    return batch, missing


def _decide(base: FleetSnapshot, allocations: list[Allocation], batch: list[PendingWorkload],
            rules: PlacementRules, quotas: Quotas | None, guarantees: Guarantees, named: Mapping[str, set[str]],
            s: SchedulerSettings) -> tuple[PlacementDecision, set[str]]:
    """Runs in a worker thread: reads only immutable inputs (the fleet's snapshot, this round's rows). The
    batch is ordered fairly among tenants (``fair_order``); returns the decision and which of the workloads
    it places run above their tenant's guarantee (borrowed)."""
    snap = base.with_allocations(allocations)
    ordered = fair_order(batch, snap, guarantees)
    decision = place_alternatives(ordered, snap, rules=rules, quotas=quotas, guarantees=guarantees or None,
                                  time_limit_s=s.solver_time_limit_s, max_candidates=s.max_candidates)
    placed = {a.workload_id for a in decision.assignments}
    if not placed or not (guarantees or named):
        return decision, set()
    after = snap.with_decision(decision, ordered)
    return decision, classify(after, guarantees, named).borrowed_workloads(after) & placed


def _resources(a: Assignment, spec: WorkloadSpec) -> ReplicaResources:
    alts = spec.alternatives
    variant = alts[a.alternative].variant if a.alternative < len(alts) else None
    return ReplicaResources(alternative=a.alternative, variant=variant, cpu=a.cpu, memory_mib=a.host_memory_mib,
                            numa_node=a.numa_node)


class Placer:
    def __init__(self, fleet: Fleet, actual: Actual, sessions: Any, settings: SchedulerSettings,
                 on_commit: Callable[[], None], quotas: Callable[[], Quotas | None],
                 guarantees: Callable[[], Guarantees] = dict, named: Callable[[], Mapping[str, set[str]]] = dict
                 ) -> None:
        self.fleet, self.actual, self.sessions, self.settings = fleet, actual, sessions, settings
        self.on_commit, self.quotas, self.guarantees, self.named = on_commit, quotas, guarantees, named
        self.wake = asyncio.Event()
        self.batches = 0
        self.last: BatchResult | None = None
        self.stats = PlacerStats()

    def poke(self) -> None:
        self.wake.set()

    async def run(self) -> None:
        """Place batches until cancelled: after a poke (debounced, so a burst of work makes one batch), or
        every ``retry_interval_s`` for what is still pending; at once again after a batch that placed or
        preempted; one second after a batch that failed."""
        s = self.settings
        while True:
            await wait_event(self.wake, s.retry_interval_s)
            await asyncio.sleep(s.batch_debounce_s)
            self.wake.clear()
            try:
                result = await self.place_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("placement batch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if result.placed or result.preempted:
                self.wake.set()  # freed or taken capacity may let more of the queue through

    async def place_once(self) -> BatchResult:
        s = self.settings
        t0 = time.perf_counter()
        async with session_scope(self.sessions) as session:
            order = await store.list_queued_ids(session, s.batch_max)
            if not order:
                return BatchResult()
            wls = await store.read_workloads(session, order, lock=False)
            tq = time.perf_counter()
            rows = await store.list_active_replicas(session)
        batch, missing = _batch(wls, order)
        if not batch:
            return BatchResult()
        t1 = time.perf_counter()
        allocations = _allocations(rows, self.actual)
        base = await self.fleet.base()
        t2 = time.perf_counter()
        decision, borrowed = await asyncio.to_thread(_decide, base, allocations, batch, self.fleet.rules,
                                                     self.quotas(), self.guarantees(), self.named(), s)
        t3 = time.perf_counter()
        result = await self.apply(decision, batch, missing, borrowed)
        result.timings_s = {"queue": tq - t0, "held": t1 - tq, "snapshot": t2 - t1, "solve": t3 - t2,
                            "apply": time.perf_counter() - t3}
        self.batches += 1
        self.last = result
        self.stats.add(result)
        log.info("placed batch of %d: %d replicas placed, %d workloads pending, %d preempted (%s, %.3fs; %s)",
                 len(batch), result.placed, result.pending, result.preempted, decision.solver_status,
                 decision.timings_s.get("total", 0.0),
                 ", ".join(f"{k} {v:.3f}s" for k, v in result.timings_s.items()))
        return result

    def _valid(self, assignments: list[Assignment]) -> bool:
        return all(self.fleet.host_up(a.host_id) and all(self.fleet.device_usable(d) for d in a.device_ids)
                   for a in assignments)

    def _devices(self, a: Assignment) -> list[dict[str, Any]]:
        out = []
        for dev_id, share, mem in zip(a.device_ids, a.shares, a.memory_mib, strict=True):
            d = self.fleet.device(dev_id)
            assert d is not None
            out.append({"id": dev_id, "index": d.index, "vendor": d.vendor, "hardware_type": str(d.hardware_type),
                        "share": share, "memory_mib": mem, "uuid": d.uuid})
        return out

    async def apply(self, decision: PlacementDecision, batch: list[PendingWorkload],
                    missing: dict[str, list[int]], borrowed: set[str] | frozenset[str] = frozenset()) -> BatchResult:
        s = self.settings
        ttl = s.command_ttl_s
        now = lifecycle.utcnow()
        result = BatchResult(status=decision.solver_status, batch=[w.id for w in batch])
        victims = {p.workload_id for p in decision.preemptions}
        async with session_scope(self.sessions) as session:
            result.decision_id = decision_id = await store.create_decision(
                session, placer=decision.placer, solver_status=decision.solver_status,
                objective=float(decision.objective), batch=result.batch,
                assignments=[{"workload_id": a.workload_id, "replica": missing[a.workload_id][a.replica],
                              "host_id": a.host_id, "devices": list(a.device_ids), "shares": list(a.shares),
                              "cpu": a.cpu, "memory_mib": a.host_memory_mib, "alternative": a.alternative}
                             for a in decision.assignments],
                preemptions=[{"workload_id": p.workload_id, "priority": p.priority, "devices": list(p.device_ids),
                              "for_workload": p.for_workload} for p in decision.preemptions],
                pending=[{"workload_id": p.workload_id, "replicas": list(p.replicas), "reason": p.reason,
                          "counts": p.counts} for p in decision.pending],
                timings={k: round(v, 6) for k, v in decision.timings_s.items()})
            wls = await store.read_workloads(session, set(missing) | victims)
            for victim in decision.preemptions:
                wl = wls.get(victim.workload_id)
                if wl is not None and any(r.active for r in wl.replicas):
                    winner = wls.get(victim.for_workload)
                    prio = f" (priority {winner.spec.priority} > {victim.priority})" if winner is not None else ""
                    lifecycle.preempt(wl, victim.reason or f"preempted for {victim.for_workload}{prio}", now, ttl)
                    result.preempted += 1
            for wid, assigned in decision.by_workload().items():
                wl = wls.get(wid)
                todo = missing[wid]
                if wl is None or not wl.state.queued or not self._valid(assigned):
                    continue
                reps = {r.replica: r for r in wl.replicas}
                if any(reps[todo[a.replica]].state != "pending" for a in assigned):
                    continue
                lifecycle.assign(wl, [(reps[todo[a.replica]], a.host_id, self.fleet.hosts[a.host_id].site,
                                       self._devices(a), _resources(a, wl.spec)) for a in assigned], decision_id, now, ttl)
                result.placed += len(assigned)
                lent = "; borrowing idle capacity above the tenant's guaranteed min" if wid in borrowed else ""
                lifecycle.settle(wl, f"placed by decision {decision_id} ({decision.solver_status}){lent}", now)
            for p in decision.pending:
                wl = wls.get(p.workload_id)
                if wl is None or not wl.state.queued:
                    continue
                result.pending += 1
                waiting = [missing[p.workload_id][i] for i in p.replicas]
                if wl.explanation is None or wl.explanation.reason != p.reason or wl.explanation.replicas != waiting:
                    wl.explanation = Explanation(reason=p.reason, counts=dict(p.counts), replicas=waiting, at=now)
                    wl.events.append((wl.state, p.reason))  # the explanation changed: tell subscribers
                    wl.dirty = True
            added = await store.update_workloads(
                session, [wl for wl in wls.values() if wl.dirty or wl.history or wl.events or wl.commands], now)
        if added:
            self.on_commit()
        return result
