"""Preemption: make room for high-priority work by stopping lower-priority preemptible work.

Runs after the main placement, one pending workload at a time, highest priority first.
For a workload of priority P, a device can be reclaimed when every allocation on it is
preemptible with priority < P (and the device is not taken by this batch). A small CP-SAT
model over the best ``max_candidates`` pools chooses where its replicas go and which
allocations to stop, minimising disruption: per stopped allocation
``1000 + (priority + 1) * devices it holds``, so fewer, lower-priority, smaller victims win.
A host's CPUs and memory count too: a replica also needs its ``cpu`` and ``host_mem`` free on
its host, or given back by stopped work there (CPU-only work takes CPUs only, and stopping
it gives them back). Gangs get all replicas or nothing. Fractional-share requests do not preempt.

With ``victims`` (allocation indices) the same model *reclaims* instead: only those allocations
may be stopped, whatever their priority (the elastic-quota reclaim of borrowed work, see
``elastic``); everything else blocks its devices. ``protected`` (allocation → tenant) is work
within its tenant's guarantee: only that tenant's own work may preempt it by priority.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

from services.scheduler.placement.capacity import Choice, Selected, cu_need
from services.scheduler.placement.feasibility import FeasibilityCache
from services.scheduler.placement.snapshot import UNLIMITED, Allocation, FleetSnapshot
from services.scheduler.placement.workloads import CPUS_PER_DEVICE_WEIGHT, UNITS_PER_DEVICE, Item, Kind

_NEVER = 1 << 30
_UNLIMITED_HALF = UNLIMITED // 2


@dataclass(slots=True)
class PreemptResult:
    chosen: list[tuple[Choice, list[int]]]  # choice and its concrete devices
    evicted: dict[int, int]  # allocation index → workload index it made room for



def host_usage(by_item: Mapping[int, Selected], items: Sequence[Item]) -> dict[int, tuple[int, int]]:
    """CPUs and host memory per host that this round's selections already take (a Preemptor leaves them)."""
    used: dict[int, tuple[int, int]] = {}
    for s in by_item.values():
        it = items[s.item]
        cpu, mem = used.get(s.host, (0, 0))
        used[s.host] = (cpu + it.cpu_per_replica * len(it.replicas), mem + it.host_mem)
    return used


def take(res: PreemptResult, snap: FleetSnapshot, by_item: dict[int, Selected], its: Sequence[Item], gang: bool,
         quota: dict[tuple[str, str], int], tenant: str) -> None:
    """Record what a preemption placed: its selections replace the workload's (a gang's whole), and the
    devices it took count against the tenant's device limits left in ``quota``."""
    if gang:
        for it in its:
            by_item.pop(it.idx, None)
    for c, devs in res.chosen:
        by_item[c.item] = Selected(c.item, int(snap.pool_host[c.pool]), devs, [1.0] * len(devs),
                                   [int(snap.dev_mem[d]) for d in devs])
        key = (tenant, str(snap.profiles[snap.pool_profile[c.pool]].hardware_type))
        if key in quota:
            quota[key] -= len(devs) * UNITS_PER_DEVICE


class Preemptor:
    def __init__(self, snap: FleetSnapshot, feas: FeasibilityCache, taken: set[int],
                 host_used: Mapping[int, tuple[int, int]] | None = None,
                 victims: AbstractSet[int] | None = None, protected: Mapping[int, str] | None = None) -> None:
        self.snap = snap
        self.victims = victims
        self.protected = protected or {}
        self.tenant: str | None = None  # whose workload is being placed now
        self._guard_by: dict[str, np.ndarray] = {}  # tenant → devices holding its protected work
        for ai, t in self.protected.items():
            for ad in snap.allocations[ai].devices:
                d = snap.dev_index.get(ad.device_id)
                if d is not None:
                    self._guard_by.setdefault(t, np.zeros(snap.n_devices, dtype=np.bool_))[d] = True
        self._guards: dict[str | None, np.ndarray] = {}
        self.feas = feas
        n = snap.n_devices
        # block[d]: the lowest priority that may NOT reclaim d (max priority of its allocations,
        # _NEVER if one is not preemptible); -1 for devices already whole and free.
        block = np.full(n, -1, dtype=np.int64)
        for d, ais in snap.dev_allocs.items():
            for ai in ais:
                a = snap.allocations[ai]
                if victims is not None:
                    block[d] = max(block[d], 0 if ai in victims and a.preemptible else _NEVER)
                else:
                    block[d] = max(block[d], a.priority if a.preemptible else _NEVER)
        whole = snap.whole_free_mask()
        block[~whole & (block < 0)] = _NEVER  # used but not by a known allocation
        block[~snap.dev_usable] = _NEVER
        if taken:
            block[np.fromiter(taken, dtype=np.int64)] = _NEVER
        self.block = block
        self.taken = set(taken)
        self.evicted: set[int] = set()
        self.prof_cu = np.array([p.compute_units for p in snap.profiles], dtype=np.float64)
        self.prof_hw = np.array([str(p.hardware_type) for p in snap.profiles], dtype=object)
        # the hosts' CPUs and memory: free now (after this batch's placements), and who holds the rest
        self.cpu_free = snap.host_cpu_free.copy()
        self.mem_free = snap.host_mem_free.copy()
        for h, (cpu, mem) in (host_used or {}).items():
            self.cpu_free[h] -= cpu
            self.mem_free[h] -= mem
        self.host_allocs: dict[int, list[tuple[int, int, int]]] = {}  # host → (allocation, CPUs, MiB)
        for ai, a in enumerate(snap.allocations):
            for hold in a.hosts:
                at = snap.host_index.get(hold.host_id)
                if at is not None and (hold.cpu or hold.memory_mib):
                    self.host_allocs.setdefault(at, []).append((ai, hold.cpu, hold.memory_mib))

    def _reclaimable(self, ai: int, prio: int) -> bool:
        a = self.snap.allocations[ai]
        if self.victims is not None:
            return ai in self.victims and a.preemptible and ai not in self.evicted
        owner = self.protected.get(ai)
        if owner is not None and owner != self.tenant:
            return False
        return a.preemptible and a.priority < prio and ai not in self.evicted

    def _guarded(self) -> np.ndarray:
        """Devices holding protected work of tenants other than the one being placed."""
        hit = self._guards.get(self.tenant)
        if hit is None:
            hit = np.zeros(self.snap.n_devices, dtype=np.bool_)
            for t, mask in self._guard_by.items():
                if t != self.tenant:
                    hit |= mask
            self._guards[self.tenant] = hit
        return hit

    def _priority(self, item: Item) -> int:
        """The priority the item preempts with: 1 when reclaiming (every victim has block 0)."""
        return 1 if self.victims is not None else item.priority

    def _host_room(self, prio: int) -> tuple[np.ndarray, np.ndarray]:
        """CPUs and memory per host once every allocation priority ``prio`` may reclaim is stopped."""
        cpu, mem = self.cpu_free.copy(), self.mem_free.copy()
        for h, held in self.host_allocs.items():
            for ai, c, m in held:
                if self._reclaimable(ai, prio):
                    cpu[h] += c
                    mem[h] += m
        return cpu, mem

    def try_place(self, items: Sequence[Item], gang: bool, max_candidates: int, time_limit_s: float,
                  quota_units: Mapping[str, int] | None = None) -> PreemptResult | None:
        """Place ``items`` (one workload) by stopping lower-priority work, within the tenant's
        remaining quota per hardware type (units: devices x 100). None when it cannot be done."""
        snap = self.snap
        item0 = items[0]
        if item0.kind == Kind.SHARE:
            return None
        elig = self.feas.get(item0.sig)
        prio = self._priority(item0)
        self.tenant = item0.tenant
        reclaim = (self.block < prio) & elig.pool_ok[snap.dev_pool]
        if self._guard_by:
            reclaim &= ~self._guarded()
        cnt = np.bincount(snap.dev_pool[reclaim], minlength=snap.n_pools)
        busy = np.bincount(snap.dev_pool[reclaim & (self.block >= 0)], minlength=snap.n_pools)
        room_cpu, room_mem = self._host_room(prio)
        hosts = snap.pool_host
        cpu_pool = np.arange(snap.n_pools) >= snap.n_dev_pools
        if item0.kind == Kind.CU:
            need = cu_need(item0, self.prof_cu[snap.pool_profile])
            ok = (need > 0) & (cnt >= need)
        elif item0.cpu_only:
            need = np.full(snap.n_pools, item0.n, dtype=np.int64)
            ok = cpu_pool & elig.pool_ok & (room_cpu[hosts] >= need)
            busy = (self.cpu_free[hosts] < need).astype(np.int64)
        else:
            need = np.full(snap.n_pools, item0.n, dtype=np.int64)
            ok = cnt >= need
        if not item0.cpu_only:
            ok &= room_cpu[hosts] >= item0.cpu
        ok &= room_mem[hosts] >= item0.host_mem
        for hw, left in (quota_units or {}).items():
            ok &= ~((self.prof_hw[snap.pool_profile] == hw) & (need * 100 * len(items) > left))
        pools = np.flatnonzero(ok)
        if len(pools) == 0:
            return None
        # cheapest first: fewest busy devices to reclaim, then lowest blocking priority
        pblock = np.zeros(snap.n_pools, dtype=np.int64)
        np.maximum.at(pblock, snap.dev_pool[reclaim], self.block[reclaim])
        score = busy[pools] * 4096 + pblock[pools]
        limit = max(max_candidates, len(items))
        if len(pools) > limit:
            pools = pools[np.argpartition(score, limit - 1)[:limit]]
        return self._solve(items, gang, pools.tolist(), need, reclaim, time_limit_s)

    def _solve(self, items: Sequence[Item], gang: bool, pools: list[int], need: np.ndarray,
               reclaim: np.ndarray, time_limit_s: float) -> PreemptResult | None:
        snap = self.snap
        prio = self._priority(items[0])
        model = cp_model.CpModel()
        x = {(r, q): model.new_bool_var("") for r in range(len(items)) for q in pools}
        for r in range(len(items)):
            row = [x[r, q] for q in pools]
            if gang:
                model.add_exactly_one(row)
            else:
                model.add_at_most_one(row)
        if items[0].spread == "host":
            by_host: dict[int, list[cp_model.IntVar]] = {}
            for (_r, q), v in x.items():
                by_host.setdefault(int(snap.pool_host[q]), []).append(v)
            for vs in by_host.values():
                if len(vs) > 1:
                    model.add_at_most_one(vs)
        evict: dict[int, cp_model.IntVar] = {}

        def evict_var(ai: int) -> cp_model.IntVar:
            e = evict.get(ai)
            if e is None:
                e = evict[ai] = model.new_bool_var("")
            return e

        freed: dict[int, cp_model.IntVar] = {}
        for q in pools:
            if snap.is_cpu_pool(q):
                continue
            devs = [d for d in snap.pool_devices(q) if reclaim[d]]
            free_now = sum(1 for d in devs if self.block[d] < 0)
            terms = []
            for d in devs:
                if self.block[d] < 0:
                    continue
                f = freed[d] = model.new_bool_var("")
                for ai in snap.dev_allocs.get(d, ()):
                    model.add_implication(f, evict_var(ai))
                terms.append(f)
            model.add(sum(int(need[q]) * x[r, q] for r in range(len(items))) <= free_now + sum(terms))
        # the hosts' CPUs and memory: what the replicas take <= free + what stopped work gives back
        for h in {int(snap.pool_host[q]) for q in pools}:
            on_host = [(r, q) for (r, q) in x if int(snap.pool_host[q]) == h]
            cpu_use = [(int(need[q]) if snap.is_cpu_pool(q) else items[r].cpu, x[r, q]) for r, q in on_host]
            mem_use = [(items[r].host_mem, x[r, q]) for r, q in on_host]
            holders = [(ai, c, m) for ai, c, m in self.host_allocs.get(h, []) if self._reclaimable(ai, prio)]
            if self.cpu_free[h] < _UNLIMITED_HALF and any(c for c, _ in cpu_use):
                model.add(sum(c * v for c, v in cpu_use)
                          <= int(self.cpu_free[h]) + sum(c * evict_var(ai) for ai, c, _ in holders if c))
            if self.mem_free[h] < _UNLIMITED_HALF and any(m for m, _ in mem_use):
                model.add(sum(m * v for m, v in mem_use)
                          <= int(self.mem_free[h]) + sum(m * evict_var(ai) for ai, _, m in holders if m))
        placed = sum(x.values())
        disruption = sum((1000 + (snap.allocations[ai].priority + 1) * _size(snap.allocations[ai])) * e
                         for ai, e in evict.items())
        model.minimize(disruption - (1 << 30) * placed)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.01, time_limit_s)
        solver.parameters.num_workers = 1
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        chosen: list[tuple[Choice, list[int]]] = []
        for (r, q), v in x.items():
            if not solver.value(v):
                continue
            n = int(need[q])
            if snap.is_cpu_pool(q):
                chosen.append((Choice(items[r].idx, q, -1, n, 0, 0), []))
                continue
            devs = [d for d in snap.pool_devices(q) if reclaim[d] and (
                self.block[d] < 0 or (d in freed and solver.value(freed[d])))]
            pick = [d for d in devs if self.block[d] < 0][:n]
            pick += [d for d in devs if self.block[d] >= 0][: n - len(pick)]
            if len(pick) < n:
                return None
            for d in pick:
                self.block[d] = _NEVER
                reclaim[d] = False
                self.taken.add(d)
            chosen.append((Choice(items[r].idx, q, -1, n, 0, 0), pick))
        if not chosen or (gang and len(chosen) < len(items)):
            return None
        evicted = {ai: items[0].workload for ai, e in evict.items() if solver.value(e)}
        self.evicted.update(evicted)
        for c, _devs in chosen:  # what the placed replicas take of their hosts
            h = int(snap.pool_host[c.pool])
            item = next(it for it in items if it.idx == c.item)
            self.cpu_free[h] -= c.n if snap.is_cpu_pool(c.pool) else item.cpu
            self.mem_free[h] -= item.host_mem
        # devices, CPUs and memory the stopped work held elsewhere become free for later preemptors
        for ai in evicted:
            for hold in snap.allocations[ai].hosts:
                at = snap.host_index.get(hold.host_id)
                if at is not None:
                    self.cpu_free[at] += hold.cpu
                    self.mem_free[at] += hold.memory_mib
            for ad in snap.allocations[ai].devices:
                held = snap.dev_index.get(ad.device_id)
                if held is None or held in self.taken or not snap.dev_usable[held] or self.block[held] == -1:
                    continue
                if all(a in self.evicted for a in snap.dev_allocs.get(held, ())):
                    self.block[held] = -1
        return PreemptResult(chosen, evicted)


def _size(a: Allocation) -> int:
    """Devices an allocation holds; CPU-only work counts 16 CPUs as one device (at least one)."""
    if a.devices:
        return len(a.devices)
    return max(1, sum(h.cpu for h in a.hosts) // CPUS_PER_DEVICE_WEIGHT)
