"""Tentative capacity, option costs, and the final choice of concrete devices.

A *choice* says "item i takes n whole devices of pool q" or "item i takes a share of
device d". Stages above work with counts per pool; ``select_devices`` turns the final
choices into device ids (best-fit link group first, so multi-device replicas stay on one
NVLink/HCCS island when they can).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from services.scheduler.placement.numa import fitting_nodes, free_devices_by_node, node_count
from services.scheduler.placement.snapshot import EPS, BoolArray, FleetSnapshot, FloatArray, IntArray
from services.scheduler.placement.workloads import SHARE_SCALE, Item, Kind


@dataclass(frozen=True, slots=True)
class Weights:
    """Objective weights (integers; rewards dwarf costs so placing always beats not placing).

    reward(item) = place + reward_unit * (priority + 1) * units, units = devices * 100 (a
    share counts its fraction). ``place`` alone exceeds the largest sum of costs one placement
    can carry (about 1,000), so even a tiny low-priority share is worth placing. A compute-unit
    request can carry more (its pressure is per device, up to ~3,000), but its units reward
    is at least 10,000.
    """

    place: int = 2000
    reward_unit: int = 100
    frag: int = 100  # per pool left partly used: charged when a fresh pool is opened and not
    #                  filled, refunded (a bonus) when a placement fills a pool completely
    waste: int = 2  # per free device of a pool the placement touches (best-fit tie-break)
    fresh_share: int = 30  # opening an untouched device for a fractional share
    share_waste: int = 40  # per whole device of share left on a shared device
    data_per_10s: int = 1  # per 10 s of moving the input data to the host's site
    data_cap: int = 200
    balance: int = 20  # * the site's utilisation (0..1)
    pressure: int = 100  # flexible requests: * the class's relative pressure (see PlacementCosts)
    cpu_on_accelerators: int = 300  # CPU-only work on a host with devices (CPU-only hosts first)
    cpu_strand: int = 400  # * how much more of a host's CPUs than of its devices a placement takes (0..1)
    gap: int = 200  # the solver stops when it cannot gain more than this (two fragments)


DEFAULT_WEIGHTS = Weights()


class Choice(NamedTuple):  # a tuple: the greedy pass builds thousands per batch
    item: int
    pool: int
    device: int  # SHARE: the device; otherwise -1
    n: int  # whole devices taken (SHARE: 0)
    share: int  # SHARE: share units taken on ``device``
    mem: int  # SHARE: MiB taken on ``device``
    fresh: bool = False  # SHARE: ``device`` was untouched before this choice
    cost: int = 0  # PlacementCosts.pool_costs (+ share waste) for this option


def pool_cost(w: Weights, free: int, size: int, used: int) -> int:
    """Fragmentation cost of taking ``used`` of a pool's ``free`` devices (``size`` usable)."""
    cost = w.waste * free
    if used >= free:
        return cost - (0 if free >= size else w.frag)  # filled: a fresh pool costs nothing, a partial one gains
    return cost + (w.frag if free >= size else 0)  # a fresh pool left partly used


def cu_need(item: Item, cu: FloatArray) -> np.ndarray:
    """Devices of each pool's profile needed to reach the item's compute units, for all its
    replicas (0 = impossible)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(cu > 0, np.ceil(item.cu / np.maximum(cu, EPS) - 1e-9), 0) * len(item.replicas)
    return need.astype(np.int64)


class PlacementCosts:
    """Per-option cost terms that do not depend on what else lands on the pool: data
    transfer and utilisation balance per site, and for flexible requests (type 'any', or
    no vendor) the pressure on the device class they would take: rigid requests of this
    batch that can only use that class, divided by its free devices. Flexible work thus
    leaves scarce classes to the work that has no alternative. Pressure is relative to the
    fleet-wide ratio (1.0 = average), capped at 3. A compute-unit request pays it per device
    it would take, so it also prefers fewer, bigger chips: 2,000 CU on two MI300X rather than
    seven A100 that count-based requests need (the device count decides how many of them
    still fit later)."""

    def __init__(self, snap: FleetSnapshot, weights: Weights) -> None:
        self.snap = snap
        self.weights = weights
        site_total = _site_usable(snap)
        site_free = np.bincount(snap.host_site, weights=snap.host_free, minlength=len(snap.sites))
        with np.errstate(divide="ignore", invalid="ignore"):
            util = np.where(site_total > 0, 1.0 - site_free / np.maximum(site_total, 1), 1.0)
        self.balance = np.round(util * weights.balance).astype(np.int64)
        self._data: dict[tuple[str | None, float], IntArray] = {}
        classes: dict[tuple[str, str], int] = {}
        prof_class = np.array([classes.setdefault((str(p.hardware_type), p.vendor), len(classes))
                               for p in snap.profiles], dtype=np.int64)
        self.pool_class = prof_class[snap.pool_profile] if len(prof_class) else np.zeros(0, dtype=np.int64)
        self.pool_site = snap.host_site[snap.pool_host].astype(np.int64)
        self.pressure = np.zeros(len(classes), dtype=np.int64)
        self.prof_cu = np.array([p.compute_units for p in snap.profiles], dtype=np.float64)
        self._flex: dict[int, bool] = {}
        self.is_cpu_class = np.zeros(len(classes), dtype=np.bool_)
        for (hw, _vendor), c in classes.items():
            self.is_cpu_class[c] = hw == "cpu"
        # per host: devices (usable) and whether it has any, for the CPU terms
        self.host_devices = np.bincount(snap.dev_host[snap.dev_usable], minlength=snap.n_hosts).astype(np.int64)

    def site_cost(self, item: Item) -> IntArray:
        """Integer cost per site for this item (data transfer + balance)."""
        key = (item.data_site, item.data_gib)
        hit = self._data.get(key)
        if hit is None:
            secs = self.snap.transfer_seconds(item.data_site, item.data_gib)
            data = np.minimum(np.ceil(secs / 10.0) * self.weights.data_per_10s, self.weights.data_cap)
            hit = self._data[key] = data.astype(np.int64) + self.balance
        return hit

    def set_pressure(self, items: Sequence[Item], pool_ok: Callable[[Item], BoolArray]) -> None:
        demand = np.zeros(len(self.pressure), dtype=np.float64)
        seen: dict[int, IntArray] = {}
        # classes a signature's pools belong to: kept with the fleet, per pool_ok array
        known = self.snap.shared.setdefault(("pool_classes", id(self.snap.pool_profile)), {})
        assert isinstance(known, dict)
        for it in items:
            cls = seen.get(id(it.sig))
            if cls is None:
                ok = pool_ok(it)
                hit = known.get(id(ok))
                if hit is None or hit[0] is not ok:
                    present = np.bincount(self.pool_class, weights=ok, minlength=len(demand)) > 0
                    hit = known[id(ok)] = (ok, np.flatnonzero(present))
                cls = seen[id(it.sig)] = hit[1]
                self._flex[id(it.sig)] = len(cls) > 1
            if len(cls) == 1:
                demand[cls[0]] += it.n if it.kind != Kind.SHARE else it.share / SHARE_SCALE
        supply = np.bincount(self.pool_class, weights=self.snap.pool_free, minlength=len(self.pressure))
        demand[self.is_cpu_class] = 0.0  # CPUs are not devices: their pressure is not compared with devices'
        supply[self.is_cpu_class] = 0.0
        ratio = demand / np.maximum(supply, 1.0)
        mean = demand.sum() / max(supply.sum(), 1.0)  # the fleet-wide ratio
        rel = np.minimum(ratio / mean, 3.0) if mean > 0 else np.zeros_like(ratio)
        self.pressure = np.round(rel * self.weights.pressure).astype(np.int64)

    def pool_costs(self, item: Item, pools: IntArray, need: IntArray | None = None) -> IntArray:
        """Cost of each pool for this item, before fragmentation (see ``pool_cost``)."""
        cost = self.site_cost(item)[self.pool_site[pools]]
        if self._flex.get(id(item.sig)):
            per_device = need if item.kind == Kind.CU and need is not None else 1
            cost = cost + self.pressure[self.pool_class[pools]] * per_device
        if item.kind == Kind.CU and need is not None:
            cu = self.prof_cu[self.snap.pool_profile[pools]]
            over = (need * cu - item.cu * len(item.replicas)) / np.maximum(cu, EPS)
            cost = cost + np.round(np.clip(over, 0, 8) * self.weights.share_waste).astype(np.int64)
        hosts = self.snap.pool_host[pools]
        if item.cpu_only:  # leave accelerator hosts' CPUs to the work on their devices
            cost = cost + (self.host_devices[hosts] > 0) * self.weights.cpu_on_accelerators
        elif item.cpu > 0:
            cost = cost + self.cpu_strand_cost(item, pools, need)
        return cost

    def cpu_strand_cost(self, item: Item, pools: IntArray, need: IntArray | None) -> IntArray:
        """Taking a larger part of a host's CPUs than of its devices strands its other devices (they have no
        CPUs left to run with): ``cpu_strand`` x (share of the host's CPUs - share of its devices), when positive."""
        snap = self.snap
        hosts = snap.pool_host[pools]
        total = snap.host_cpu[hosts]
        known = total < (1 << 39)
        if not known.any():
            return np.zeros(len(pools), dtype=np.int64)
        devs = need if need is not None and item.kind != Kind.SHARE else (
            np.full(len(pools), item.n if item.kind != Kind.SHARE else item.share / SHARE_SCALE))
        cpu_part = item.cpu / np.maximum(total, 1)
        dev_part = devs / np.maximum(self.host_devices[hosts], 1)
        over = np.clip(cpu_part - dev_part, 0, 1) * known
        return np.round(over * self.weights.cpu_strand).astype(np.int64)


def _site_usable(snap: FleetSnapshot) -> FloatArray:
    """Usable devices per site; kept with the fleet (health and hosts do not change with decisions)."""
    key = ("site_usable", id(snap.dev_usable))
    hit = snap.shared.get(key)
    if isinstance(hit, tuple) and hit[0] is snap.dev_usable:
        return hit[1]
    total = np.bincount(snap.dev_host[snap.dev_usable], minlength=snap.n_hosts)
    site_total = np.bincount(snap.host_site, weights=total, minlength=len(snap.sites)).astype(np.float64)
    snap.shared[key] = (snap.dev_usable, site_total)
    return site_total


class Capacity:
    """Mutable free capacity used while choosing; starts as a copy of the snapshot's."""

    def __init__(self, snap: FleetSnapshot) -> None:
        self.snap = snap
        self.pool_free = snap.pool_free.copy()
        self.free_share = snap.dev_free_share.copy()
        self.free_mem = snap.dev_free_mem.copy()
        self.host_mem_free = snap.host_mem_free.copy()
        self.fresh_taken: dict[int, int] = {}  # pool → whole devices turned into shared ones
        self._whole: dict[int, list[int]] = {}
        self.new_partial: list[int] = []
        self.touched: set[int] = set()  # pools whose free count differs from the snapshot
        self._touched_order: list[int] = []  # the same pools, in the order they were first touched
        self._touched_arr: IntArray = np.zeros(0, dtype=np.int64)

    def whole_devices(self, pool: int) -> list[int]:
        """Devices of the pool that were whole and free in the snapshot (shares take from the front)."""
        hit = self._whole.get(pool)
        if hit is None:
            snap = self.snap
            hit = [d for d in snap.pool_devices(pool) if snap.dev_usable[d]
                   and snap.dev_free_share[d] >= 1 - EPS and snap.dev_free_mem[d] >= snap.dev_mem[d]]
            self._whole[pool] = hit
        return hit

    def fresh_device(self, pool: int) -> int:
        whole = self.whole_devices(pool)
        k = self.fresh_taken.get(pool, 0)
        return whole[k] if k < len(whole) and self.pool_free[pool] > 0 else -1

    def link_fits(self, pool: int, n: int) -> bool:
        """Whether ``n`` whole free devices of the pool share one link group (approximate while
        choosing: shares taken from the pool are assumed to come from its first devices)."""
        whole = self.whole_devices(pool)[self.fresh_taken.get(pool, 0):]
        links = self.snap.dev_link[whole]
        links = links[links >= 0]  # devices without a known link group never count
        return len(links) >= n and int(np.bincount(links).max()) >= n

    def _touch(self, pool: int) -> None:
        if pool not in self.touched:
            self.touched.add(pool)
            self._touched_order.append(pool)

    def touched_pools(self) -> IntArray:
        """``touched`` as an array (first-touched order)."""
        if len(self._touched_arr) != len(self._touched_order):
            self._touched_arr = np.array(self._touched_order, dtype=np.int64)
        return self._touched_arr

    def host_fits(self, item: Item, pool: int) -> bool:
        """The pool's host has the item's CPUs (besides a CPU pool's own) and host memory free now."""
        snap = self.snap
        h = int(snap.pool_host[pool])
        if self.host_mem_free[h] < item.host_mem:
            return False
        cp = int(snap.host_cpu_pool[h])
        return item.cpu == 0 or cp < 0 or pool == cp or bool(self.pool_free[cp] >= item.cpu)

    def hosts_fit(self, item: Item, pools: IntArray) -> BoolArray:
        """``host_fits`` for many pools."""
        snap = self.snap
        hosts = snap.pool_host[pools]
        ok = self.host_mem_free[hosts] >= item.host_mem
        if item.cpu:
            cp = snap.host_cpu_pool[hosts]
            ok &= (cp < 0) | (cp == pools) | (self.pool_free[np.maximum(cp, 0)] >= item.cpu)
        return ok

    def apply(self, item: Item, c: Choice, sign: int = 1) -> None:
        """Take (sign=1) or give back (sign=-1) the capacity of a choice: devices, and the host's CPUs and memory."""
        snap = self.snap
        h = int(snap.pool_host[c.pool])
        self.host_mem_free[h] -= sign * item.host_mem
        cp = int(snap.host_cpu_pool[h])
        if item.cpu and cp >= 0 and cp != c.pool:
            self.pool_free[cp] -= sign * item.cpu
            self._touch(cp)
        if item.kind == Kind.SHARE:
            if c.fresh:  # an untouched device becomes a shared one (or back)
                self.pool_free[c.pool] -= sign
                self._touch(c.pool)
                self.fresh_taken[c.pool] = self.fresh_taken.get(c.pool, 0) + sign
                if sign > 0:
                    self.new_partial.append(c.device)
            self.free_share[c.device] -= sign * c.share / SHARE_SCALE
            self.free_mem[c.device] -= sign * c.mem
        else:
            self.pool_free[c.pool] -= sign * c.n
            self._touch(c.pool)


@dataclass(slots=True)
class Selected:
    item: int
    host: int
    devices: list[int]
    shares: list[float]
    mems: list[int]
    numa_node: int | None = None


def select_devices(
    snap: FleetSnapshot, items: Sequence[Item], choices: Sequence[Choice]
) -> tuple[list[Selected], list[int]]:
    """Concrete devices for each choice; returns (selected, items that could not be fitted)."""
    free_share: dict[int, float] = {}
    free_mem: dict[int, int] = {}
    taken: set[int] = set()
    out: list[Selected] = []
    failed: list[int] = []
    numa_used: dict[tuple[int, int], int] = {}  # (host, node) → CPUs single-node items took in this batch
    # Shares name their device; whole requests then pick from what is left, link-bound and single-node first.
    order = sorted(choices, key=lambda c: (items[c.item].kind != Kind.SHARE, not items[c.item].link,
                                           not items[c.item].numa, -c.n))
    for c in order:
        item = items[c.item]
        host = int(snap.pool_host[c.pool])
        if item.numa and item.kind != Kind.SHARE:
            got = _select_numa(snap, item, c, taken, numa_used)
            if got is None:
                failed.append(c.item)
            else:
                out.append(got)
            continue
        if item.kind == Kind.SHARE:
            d = c.device
            fs = free_share.get(d, float(snap.dev_free_share[d]))
            fm = free_mem.get(d, int(snap.dev_free_mem[d]))
            if not snap.dev_usable[d] or fs + EPS < c.share / SHARE_SCALE or fm < c.mem:
                failed.append(c.item)
                continue
            free_share[d] = fs - c.share / SHARE_SCALE
            free_mem[d] = fm - c.mem
            taken.add(d)
            out.append(Selected(c.item, host, [d], [c.share / SHARE_SCALE], [c.mem]))
            continue
        if snap.is_cpu_pool(c.pool):  # CPU-only work: CPUs of the host, no devices
            out.append(Selected(c.item, host, [], [], []))
            continue
        avail = [d for d in snap.pool_devices(c.pool) if d not in taken and snap.dev_usable[d]
                 and snap.dev_free_share[d] >= 1 - EPS and snap.dev_free_mem[d] >= snap.dev_mem[d]]
        devs = _pick(snap, avail, c.n, item.link)
        if devs is None:
            failed.append(c.item)
            continue
        taken.update(devs)
        out.append(Selected(c.item, host, devs, [1.0] * len(devs), [int(snap.dev_mem[d]) for d in devs]))
    return out, failed


def _select_numa(snap: FleetSnapshot, item: Item, c: Choice, taken: set[int],
                 numa_used: dict[tuple[int, int], int]) -> Selected | None:
    """A single-node item's devices and node: the fullest node that still has its CPUs and devices."""
    host = int(snap.pool_host[c.pool])
    nodes = fitting_nodes(snap, item, c.pool, numa_used, taken)
    if not nodes:
        return None
    node = nodes[0]
    multi = node_count(snap, host) > 1
    devs: list[int] = []
    if not snap.is_cpu_pool(c.pool):
        avail = free_devices_by_node(snap, c.pool, taken).get(node, []) if multi else [
            d for d in snap.pool_devices(c.pool) if d not in taken and snap.dev_usable[d]
            and snap.dev_free_share[d] >= 1 - EPS and snap.dev_free_mem[d] >= snap.dev_mem[d]]
        picked = _pick(snap, avail, c.n, item.link)
        if picked is None:
            return None
        devs = picked
        taken.update(devs)
    cpu = item.n if item.cpu_only else item.cpu
    numa_used[(host, node)] = numa_used.get((host, node), 0) + cpu
    return Selected(c.item, host, devs, [1.0] * len(devs), [int(snap.dev_mem[d]) for d in devs],
                    numa_node=node if multi or snap.hosts[host].numa_cpus else None)


def _pick(snap: FleetSnapshot, avail: list[int], n: int, link: bool) -> list[int] | None:
    if len(avail) < n:
        return None
    groups: dict[int, list[int]] = {}
    for d in avail:
        groups.setdefault(int(snap.dev_link[d]), []).append(d)
    # best fit: the smallest known link group that holds all n devices
    fitting = sorted((len(g), k) for k, g in groups.items() if k >= 0 and len(g) >= n)
    if fitting:
        return groups[fitting[0][1]][:n]
    if link:
        return None
    # otherwise fill from the largest groups so the replica spans as few groups as possible
    ordered = sorted(groups.values(), key=len, reverse=True)
    return [d for g in ordered for d in g][:n]
