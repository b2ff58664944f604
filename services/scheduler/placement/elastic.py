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

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from libs.schemas.hardware import Demand
from libs.schemas.workload import WorkloadSpec
from services.scheduler.placement.snapshot import UNLIMITED, FleetSnapshot, FloatArray
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


def _amounts(snap: FleetSnapshot) -> tuple[list[str], FloatArray]:
    """What every allocation holds, as a matrix (allocation x resource) with the resource names; kept with the
    snapshot."""
    hit = snap.__dict__.get("_elastic_amounts")
    if hit is not None:
        return hit
    hw = sorted({str(p.hardware_type) for p in snap.profiles} - {CPU})
    names = [*hw, COMPUTE_UNITS, CPU, MEMORY_GIB]
    col = {n: i for i, n in enumerate(names)}
    prof_col = np.array([col.get(str(p.hardware_type), -1) for p in snap.profiles] or [-1], dtype=np.int64)
    held_by, devs, shares, hold_by, cpus, mems = [], [], [], [], [], []
    index = snap.dev_index
    for ai, a in enumerate(snap.allocations):
        for dev in a.devices:
            d = index.get(dev.device_id)
            if d is not None:
                held_by.append(ai)
                devs.append(d)
                shares.append(dev.share)
        for hold in a.hosts:
            hold_by.append(ai)
            cpus.append(hold.cpu)
            mems.append(hold.memory_mib)
    m = np.zeros((len(snap.allocations), len(names)), dtype=np.float64)
    if devs:
        by, d_arr, sh = np.array(held_by), np.array(devs), np.array(shares, dtype=np.float64)
        c = prof_col[snap.dev_profile[d_arr]]
        ok = c >= 0
        np.add.at(m, (by[ok], c[ok]), sh[ok])
        np.add.at(m, (by, np.full(len(by), col[COMPUTE_UNITS])), sh * snap.dev_cu[d_arr])
    if hold_by:
        by = np.array(hold_by)
        np.add.at(m, (by, np.full(len(by), col[CPU])), np.array(cpus, dtype=np.float64))
        np.add.at(m, (by, np.full(len(by), col[MEMORY_GIB])), np.array(mems, dtype=np.float64) / 1024)
    snap.__dict__["_elastic_amounts"] = (names, m)
    return names, m


def _row(names: Sequence[str], values: FloatArray) -> Amounts:
    return {n: float(v) for n, v in zip(names, values, strict=True) if v > 0}


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
    names: list[str] = field(default_factory=list)
    matrix: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))  # allocation x resource

    def amounts(self, ai: int) -> Amounts:
        """What allocation ``ai`` holds, per resource."""
        return _row(self.names, self.matrix[ai])

    def borrowed_workloads(self, snap: FleetSnapshot) -> set[str]:
        return {snap.allocations[ai].workload_id for ai in self.borrowed}


def guaranteed(guarantees: Guarantees) -> set[str]:
    """Resources some tenant is guaranteed a part of."""
    return {r for mins in guarantees.values() for r, m in mins.items() if m > 0}


def classify(snap: FleetSnapshot, guarantees: Guarantees, named: Mapping[str, set[str]] | None = None) -> Borrowing:
    """Usage per tenant and the borrowed allocations (see the module docstring). ``named``: tenant → resources
    its quota names, looked at besides the guaranteed ones. Vectorised: one pass over the allocations, then
    per-tenant running sums in the fill order."""
    names, m = _amounts(snap)
    out = Borrowing(names=names, matrix=m)
    codes: dict[str, int] = {}
    tenant = np.full(len(snap.allocations), -1, dtype=np.int64)
    pre = np.zeros(len(snap.allocations), dtype=np.int64)
    prio = np.zeros(len(snap.allocations), dtype=np.int64)
    for ai, a in enumerate(snap.allocations):
        if a.tenant is not None:
            tenant[ai] = codes.setdefault(a.tenant, len(codes))
            pre[ai] = a.preemptible
            prio[ai] = a.priority
    if not codes:
        return out
    order = np.lexsort((np.arange(len(tenant)), -prio, pre, tenant))
    order = order[tenant[order] >= 0]
    t_sorted, held = tenant[order], m[order]
    cum = np.cumsum(held, axis=0)
    starts = np.flatnonzero(np.r_[True, t_sorted[1:] != t_sorted[:-1]])
    before = np.vstack([np.zeros((1, len(names))), cum[starts[1:] - 1]]) if len(starts) else np.zeros((0, len(names)))
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(t_sorted)]))
    running = cum - before[group]
    looked = guaranteed(guarantees)
    mins = np.zeros((len(codes), len(names)))
    watch = np.zeros((len(codes), len(names)), dtype=np.bool_)
    col = {n: i for i, n in enumerate(names)}
    for t, c in codes.items():
        own = guarantees.get(t, {})
        for r in looked | set(own) | set((named or {}).get(t, ())):
            if r in col:
                watch[c, col[r]] = True
                mins[c, col[r]] = own.get(r, 0.0)
    over = (running > mins[t_sorted] + _EPS) & (held > 0) & watch[t_sorted]
    out.borrowed = {int(ai) for ai in order[over.any(axis=1)]}
    totals = running[np.r_[starts[1:] - 1, len(t_sorted) - 1]] if len(starts) else np.zeros((0, len(names)))
    inverse = {c: t for t, c in codes.items()}
    for g, start in enumerate(starts):
        out.used[inverse[int(t_sorted[start])]] = _row(names, totals[g])
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
        if len(queues) == 1:  # one tenant: its own order
            out += [batch[i] for i in by_prio[prio]]
            for t, idx in queues.items():
                for i in idx:
                    add(used.setdefault(t, {}), asks[i])
            continue
        # a heap of (dominant share, the oldest head's batch index, tenant, position in its queue): a tenant's
        # share changes only when it takes a turn, so only its entry is pushed again
        heap = [(dominant_share(used.get(t, {}), guarantees.get(t, {}), cap), idx[0], t, 0) for t, idx in queues.items()]
        heapq.heapify(heap)
        while heap:
            _share, i, t, k = heapq.heappop(heap)
            out.append(batch[i])
            add(used.setdefault(t, {}), asks[i])
            if k + 1 < len(queues[t]):
                share = dominant_share(used[t], guarantees.get(t, {}), cap)
                heapq.heappush(heap, (share, queues[t][k + 1], t, k + 1))
    return out
