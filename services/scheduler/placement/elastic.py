"""Elastic quotas inside placement: who borrows, who may reclaim, and the fair order of the queue.

A tenant's quota gives, per resource, a guaranteed ``min`` and a limit ``max`` (see
``libs.schemas.tenancy.Quota``). The resources are devices per hardware type (shares count as
fractions), ``compute_units``, ``cpu`` (logical CPUs of hosts) and ``memory_gib`` (host memory).
``max`` is enforced at submit and, for devices, as a placement constraint (``quota``); this module
works with the guarantees (``Guarantees``: tenant → resource → min).

* **Borrowed work** (``classify``). A tenant's running work fills its guarantee in this order:
  non-preemptible first, then higher priority, then older (allocation order). An allocation that
  takes the tenant above its ``min`` of a resource it holds is *borrowed*. Only the resources
  somebody guarantees (or the tenant's own quota names) are looked at; with no guarantee
  anywhere nothing is borrowed.
* **Reclaim** (``may_reclaim``, ``victims``). A pending workload whose tenant stays within its
  guarantee (used + asked <= min, for every guaranteed resource it asks for, at least one) may
  stop other tenants' *preemptible borrowed* work whatever its priority; the engine does this
  through the preemption model (``preempt.Preemptor`` with a victim set). Non-preemptible work is
  never reclaimed. The other way round, work within a tenant's guarantee (``protected_work``) is
  not preempted by other tenants' higher-priority work, only by the tenant's own.
* **Fair order** (``fair_order``). Within one priority the queue is ordered by dominant-resource
  fairness: the workload whose tenant has the lowest dominant share goes next, then its demand
  is added to that tenant (progressive filling). The dominant share is the largest fraction of
  the fleet's capacity of one resource (devices per type, CPUs, memory; compute units would count
  the same devices twice) that the tenant holds above its ``min``: a tenant within its guarantee
  has share 0 and goes before every borrower.

Pure functions over the snapshot; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from libs.schemas.hardware import Demand
from libs.schemas.workload import WorkloadSpec
from services.scheduler.placement.snapshot import UNLIMITED, Allocation, FleetSnapshot
from services.scheduler.placement.workloads import PendingWorkload

#: tenant → resource (hardware type, 'compute_units', 'cpu', 'memory_gib') → guaranteed amount
Guarantees = Mapping[str, Mapping[str, float]]
Amounts = dict[str, float]
COMPUTE_UNITS, CPU, MEMORY_GIB = "compute_units", "cpu", "memory_gib"
_EPS = 1e-6


def demand_amounts(demand: Demand, replicas: int) -> Amounts:
    """What ``replicas`` replicas of one alternative ask for, per resource. A count request's compute units
    are not known before placement (they depend on the model) and are left out."""
    out: Amounts = {}
    if demand.hardware_type is not None and demand.hardware_type != CPU and demand.devices > 0:
        out[demand.hardware_type] = demand.devices_for(replicas)
    cu = demand.compute_units_for(replicas)
    if cu:
        out[COMPUTE_UNITS] = cu
    if demand.cpu:
        out[CPU] = float(demand.cpu * replicas)
    if demand.host_memory_mib:
        out[MEMORY_GIB] = demand.host_memory_mib * replicas / 1024
    return out


def spec_amounts(spec: WorkloadSpec, alternative: int = 0) -> Amounts:
    return demand_amounts(spec.demand(alternative), spec.replicas)


def allocation_amounts(snap: FleetSnapshot, alloc: Allocation) -> Amounts:
    """What one allocation holds, per resource."""
    out: Amounts = {}
    for dev in alloc.devices:
        d = snap.dev_index.get(dev.device_id)
        if d is None:
            continue
        hw = str(snap.profiles[snap.dev_profile[d]].hardware_type)
        out[hw] = out.get(hw, 0.0) + dev.share
        cu = float(snap.dev_cu[d]) * dev.share
        if cu:
            out[COMPUTE_UNITS] = out.get(COMPUTE_UNITS, 0.0) + cu
    for hold in alloc.hosts:
        if hold.cpu:
            out[CPU] = out.get(CPU, 0.0) + hold.cpu
        if hold.memory_mib:
            out[MEMORY_GIB] = out.get(MEMORY_GIB, 0.0) + hold.memory_mib / 1024
    return out


def add(into: Amounts, more: Mapping[str, float], sign: float = 1.0) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + sign * v


def capacity(snap: FleetSnapshot) -> Amounts:
    """The fleet's usable capacity per resource (hosts that report no CPUs or memory add none)."""
    out: Amounts = {}
    usable = snap.dev_usable
    for p, prof in enumerate(snap.profiles):
        hw = str(prof.hardware_type)
        if hw == CPU:
            continue
        mask = usable & (snap.dev_profile == p)
        n = float(mask.sum())
        if n:
            out[hw] = out.get(hw, 0.0) + n
            out[COMPUTE_UNITS] = out.get(COMPUTE_UNITS, 0.0) + float(snap.dev_cu[mask].sum())
    up = snap.host_up.astype(bool) if len(snap.host_up) else np.zeros(0, dtype=bool)
    known_cpu = up & (snap.host_cpu < UNLIMITED // 2)
    known_mem = up & (snap.host_mem < UNLIMITED // 2)
    if known_cpu.any():
        out[CPU] = float(snap.host_cpu[known_cpu].sum())
    if known_mem.any():
        out[MEMORY_GIB] = float(snap.host_mem[known_mem].sum()) / 1024
    return out


def dominant_share(used: Mapping[str, float], mins: Mapping[str, float], cap: Mapping[str, float]) -> float:
    """Largest share of the fleet's capacity of any resource held above the guarantee. Compute units are
    left out: they measure the same devices again."""
    best = 0.0
    for r, u in used.items():
        c = cap.get(r, 0.0) if r != COMPUTE_UNITS else 0.0
        if c > 0:
            best = max(best, max(0.0, u - mins.get(r, 0.0)) / c)
    return best


@dataclass(slots=True)
class Borrowing:
    """Per tenant what it holds, and which allocations (snapshot indices) are above its guarantee."""

    used: dict[str, Amounts] = field(default_factory=dict)
    borrowed: set[int] = field(default_factory=set)
    amounts: list[Amounts] = field(default_factory=list)  # per allocation

    def borrowed_workloads(self, snap: FleetSnapshot) -> set[str]:
        return {snap.allocations[ai].workload_id for ai in self.borrowed}


def guaranteed(guarantees: Guarantees) -> set[str]:
    """Resources some tenant is guaranteed a part of."""
    return {r for mins in guarantees.values() for r, m in mins.items() if m > 0}


def classify(snap: FleetSnapshot, guarantees: Guarantees, named: Mapping[str, set[str]] | None = None) -> Borrowing:
    """Usage per tenant and the borrowed allocations (see the module docstring). ``named``: tenant → resources
    its quota names, looked at besides the guaranteed ones."""
    out = Borrowing(amounts=[allocation_amounts(snap, a) for a in snap.allocations])
    looked = guaranteed(guarantees)
    by_tenant: dict[str, list[int]] = {}
    for ai, a in enumerate(snap.allocations):
        if a.tenant is not None:
            by_tenant.setdefault(a.tenant, []).append(ai)
    for tenant, ais in by_tenant.items():
        mins = guarantees.get(tenant, {})
        keys = looked | set(mins) | set((named or {}).get(tenant, ()))
        ais.sort(key=lambda ai: (snap.allocations[ai].preemptible, -snap.allocations[ai].priority, ai))
        used = out.used.setdefault(tenant, {})
        for ai in ais:
            held = out.amounts[ai]
            add(used, held)
            if any(v > 0 and used[r] > mins.get(r, 0.0) + _EPS for r, v in held.items() if r in keys):
                out.borrowed.add(ai)
    return out


def may_reclaim(tenant: str | None, asked: Mapping[str, float], used: Mapping[str, float],
                guarantees: Guarantees) -> bool:
    """Whether the tenant's work may reclaim borrowed capacity: it asks for a resource the tenant is
    guaranteed, and stays within the guarantee of every guaranteed resource it asks for."""
    if tenant is None:
        return False
    mins = {r: m for r, m in guarantees.get(tenant, {}).items() if m > 0}
    wanted = [r for r, v in asked.items() if v > 0 and r in mins]
    return bool(wanted) and all(used.get(r, 0.0) + asked[r] <= mins[r] + _EPS for r in wanted)


def victims(snap: FleetSnapshot, borrowing: Borrowing, tenant: str) -> set[int]:
    """Allocations reclaimable for ``tenant``: other tenants' preemptible borrowed work."""
    return {ai for ai in borrowing.borrowed
            if snap.allocations[ai].preemptible and snap.allocations[ai].tenant not in (None, tenant)}


def _turn(used: Mapping[str, Amounts], guarantees: Guarantees, cap: Amounts, queues: Mapping[str, list[int]],
          heads: Mapping[str, int], t: str) -> tuple[float, int]:
    """Who goes next: the lowest dominant share, then the oldest head of its queue."""
    return dominant_share(used.get(t, {}), guarantees.get(t, {}), cap), queues[t][heads[t]]


def protected_work(snap: FleetSnapshot, guarantees: Guarantees) -> dict[int, str]:
    """Allocations within the guarantee of a tenant that has one (allocation → tenant): only that tenant's
    own work may preempt them by priority, so a borrower cannot take a guarantee away."""
    b = classify(snap, guarantees)
    return {ai: a.tenant for ai, a in enumerate(snap.allocations)
            if a.tenant is not None and a.tenant in guarantees and ai not in b.borrowed and a.preemptible}


def fair_order(batch: Sequence[PendingWorkload], snap: FleetSnapshot, guarantees: Guarantees,
               borrowing: Borrowing | None = None) -> list[PendingWorkload]:
    """The batch in priority order (as given within a priority) with dominant-resource fairness among
    tenants within each priority: progressive filling by the lowest dominant share above ``min``."""
    if not batch:
        return []
    b = borrowing if borrowing is not None else classify(snap, guarantees)
    cap = capacity(snap)
    used = {t: dict(u) for t, u in b.used.items()}
    asks = [spec_amounts(w.spec, w.alternative) for w in batch]
    by_prio: dict[int, list[int]] = {}
    for i, w in enumerate(batch):
        by_prio.setdefault(w.spec.priority, []).append(i)
    out: list[PendingWorkload] = []
    for prio in sorted(by_prio, reverse=True):
        queues: dict[str, list[int]] = {}
        for i in by_prio[prio]:
            queues.setdefault(batch[i].spec.tenant or "", []).append(i)
        heads = {t: 0 for t in queues}
        while heads:
            t = min(heads, key=partial(_turn, used, guarantees, cap, queues, heads))
            i = queues[t][heads[t]]
            out.append(batch[i])
            add(used.setdefault(t, {}), asks[i])
            heads[t] += 1
            if heads[t] == len(queues[t]):
                del heads[t]
    return out
