"""Placement rules beyond device capacity, one object each: a host's CPUs and memory, spread over
hosts, spread over sites, one device model (and site) per gang, one link group, tenant quota (its
accounting in ``quota``).

Each rule answers the same questions, in the spirit of Nomad's feasibility iterators:

* ``start(group)``: a new workload's items are about to be placed (per-workload state resets);
* ``restricts(item)``: can the rule refuse anything for this item now (when no rule can, the
  greedy pass skips asking);
* ``allows(item, pool, n)``: may the item take ``n`` devices of ``pool`` given what the pass
  has already chosen; ``mask(item, pools, need)`` is the same question for many pools;
* ``take(item, choice, sign)``: the pass took (1) or gave back (-1) a choice;
* ``encode(model, snap, mi, options)`` (static): add the rule's constraints over the
  sub-problem's option variables to the CP-SAT model.

``greedy_pass`` builds one instance of each rule per pass; ``solver.solve`` calls ``encode``
of every rule in ``MODEL_RULES``. Capacity itself (free devices, share, memory) is not a
rule: it is what options are built from (``capacity``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from services.scheduler.placement.capacity import Capacity, Choice
from services.scheduler.placement.numa import fitting_nodes
from services.scheduler.placement.quota import QuotaLeft, units
from services.scheduler.placement.snapshot import BoolArray, FleetSnapshot, I32Array, IntArray
from services.scheduler.placement.workloads import UNITS_PER_DEVICE, Item, Kind

if TYPE_CHECKING:
    from services.scheduler.placement.solver import ModelInput

NEG = -(1 << 60)  # "no lower bound" in a CP-SAT linear constraint


class Model(Protocol):
    """The part of the CP-SAT model builder rules write to."""

    def linear(self, vs: Sequence[int], cs: Sequence[int], lo: int, hi: int) -> None: ...

    def at_most_one(self, vs: Sequence[int]) -> None: ...


class Rule(Protocol):
    def start(self, group: Sequence[Item]) -> None: ...

    def restricts(self, item: Item) -> bool: ...

    def allows(self, item: Item, pool: int, n: int) -> bool: ...

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray: ...

    def take(self, item: Item, c: Choice, sign: int = 1) -> None: ...


class HostResources:
    """A host's free CPUs and memory: an option on a device pool also takes the item's ``cpu`` from its host's
    CPU pool and ``host_mem`` from the host (``Capacity.apply`` does the accounting, ``Capacity.host_fits``
    says whether it fits now); CPU-only work takes its CPUs from the CPU pool itself. With
    ``placement.numa: single`` a pool counts only where one NUMA node of its host has room (``numa``). The model bounds, per
    host its candidates could overrun, the CPUs and memory all chosen options take (``ModelInput.host_left``)."""

    def __init__(self, cap: Capacity) -> None:
        self.capacity = cap

    def start(self, group: Sequence[Item]) -> None:
        """No per-workload state."""

    def restricts(self, item: Item) -> bool:
        return item.cpu > 0 or item.host_mem > 0 or item.numa

    def allows(self, item: Item, pool: int, n: int) -> bool:
        return self.capacity.host_fits(item, pool) and (not item.numa or bool(fitting_nodes(
            self.capacity.snap, item, pool)))

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray:
        ok = self.capacity.hosts_fit(item, pools)
        if item.numa:
            snap = self.capacity.snap
            ok &= np.fromiter((bool(fitting_nodes(snap, item, int(q))) for q in pools), dtype=np.bool_,
                              count=len(pools))
        return ok

    def take(self, item: Item, c: Choice, sign: int = 1) -> None:
        """Capacity tracks what was taken."""

    @staticmethod
    def usage(snap: FleetSnapshot, item: Item, c: Choice) -> tuple[int, int]:
        """(CPUs, MiB) an option takes of its host."""
        return (c.n if snap.is_cpu_pool(c.pool) else item.cpu), item.host_mem

    @staticmethod
    def encode(m: Model, snap: FleetSnapshot, mi: ModelInput, options: Sequence[tuple[int, Choice]]) -> None:
        """``sum cpu * x <= cpu left`` and ``sum mem * x <= memory left`` per host whose options could overrun it."""
        terms: dict[int, tuple[list[int], list[int], list[int]]] = {}
        most: dict[tuple[int, int], tuple[int, int]] = {}  # (host, item) → the most one option of it takes
        items = mi.items
        for x, c in options:
            h = int(snap.pool_host[c.pool])
            cpu, mem = HostResources.usage(snap, items[c.item], c)
            if not cpu and not mem:
                continue
            vs, cs, ms = terms.setdefault(h, ([], [], []))
            vs.append(x)
            cs.append(cpu)
            ms.append(mem)
            a, b = most.get((h, c.item), (0, 0))
            most[(h, c.item)] = (max(a, cpu), max(b, mem))
        need: dict[int, tuple[int, int]] = {}
        for (h, _i), (cpu, mem) in most.items():
            a, b = need.get(h, (0, 0))
            need[h] = (a + cpu, b + mem)
        for h, (vs, cs, ms) in terms.items():
            cpu_left, mem_left = mi.host_left.get(h, (int(snap.host_cpu_free[h]), int(snap.host_mem_free[h])))
            cpu_need, mem_need = need[h]
            if cpu_need > cpu_left:
                m.linear(vs, cs, NEG, max(0, cpu_left))
            if mem_need > mem_left:
                m.linear(vs, ms, NEG, max(0, mem_left))


class HostSpread:
    """``spread: host``: no two replicas of a workload on one host."""

    def __init__(self, snap: FleetSnapshot) -> None:
        self.pool_host = snap.pool_host
        self.used: set[int] = set()

    def start(self, group: Sequence[Item]) -> None:
        self.used = set()

    def restricts(self, item: Item) -> bool:
        return item.spread == "host" and bool(self.used)

    def allows(self, item: Item, pool: int, n: int) -> bool:
        return int(self.pool_host[pool]) not in self.used

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray:
        return ~np.isin(self.pool_host[pools], np.fromiter(self.used, dtype=np.int64))

    def take(self, item: Item, c: Choice, sign: int = 1) -> None:
        if sign > 0:
            self.used.add(int(self.pool_host[c.pool]))

    @staticmethod
    def encode(m: Model, snap: FleetSnapshot, mi: ModelInput, options: Sequence[tuple[int, Choice]]) -> None:
        """At most one option per (workload, host)."""
        terms: dict[tuple[int, int], list[int]] = {}
        items = mi.items
        for x, c in options:
            item = items[c.item]
            if item.spread == "host":
                terms.setdefault((item.workload, int(snap.pool_host[c.pool])), []).append(x)
        for xs in terms.values():
            if len(xs) > 1:
                m.at_most_one(xs)


class SiteSpread:
    """``spread: site``: at most ceil(replicas / eligible sites) replicas of a workload per site
    (``site_cap``, per workload, also read by explanations and the solver)."""

    def __init__(self, pool_site: IntArray | I32Array, site_cap: dict[int, int]) -> None:
        self.pool_site = pool_site
        self.site_cap = site_cap  # workload → cap; filled by the greedy pass
        self.count: dict[int, int] = {}
        self.full: set[int] = set()
        self.cap = 0

    def start(self, group: Sequence[Item]) -> None:
        self.count = {}
        self.full = set()
        self.cap = self.site_cap.get(group[0].workload, 0)

    def restricts(self, item: Item) -> bool:
        return item.spread == "site" and bool(self.full)

    def allows(self, item: Item, pool: int, n: int) -> bool:
        return int(self.pool_site[pool]) not in self.full

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray:
        return ~np.isin(self.pool_site[pools], np.fromiter(self.full, dtype=np.int64))

    def take(self, item: Item, c: Choice, sign: int = 1) -> None:
        if sign > 0 and item.spread == "site":
            site = int(self.pool_site[c.pool])
            self.count[site] = self.count.get(site, 0) + 1
            if self.count[site] >= self.cap:
                self.full.add(site)

    @staticmethod
    def encode(m: Model, snap: FleetSnapshot, mi: ModelInput, options: Sequence[tuple[int, Choice]]) -> None:
        """At most ``site_cap`` options per (workload, site)."""
        terms: dict[tuple[int, int], list[int]] = {}
        items = mi.items
        for x, c in options:
            item = items[c.item]
            if item.spread == "site":
                terms.setdefault((item.workload, int(snap.host_site[snap.pool_host[c.pool]])), []).append(x)
        for (wl, _site), xs in terms.items():
            if len(xs) > mi.site_cap.get(wl, len(xs)):
                m.linear(xs, [1] * len(xs), 0, mi.site_cap[wl])


class UniformGang:
    """A gang's replicas on one device model and, unless ``spread`` is 'site', one site (``Item.uniform``;
    ``placement.mixed_models: true`` turns it off). The greedy pass fixes the key with the first replica it
    places (or tries the one ``forced``); the model makes every replica item take the same key:
    ``sum x[i, key] == sum x[i+1, key]`` for each key and each pair of consecutive items."""

    def __init__(self, snap: FleetSnapshot) -> None:
        self.snap = snap
        self.key: tuple[str, int] | None = None
        self.forced: tuple[str, int] | None = None

    @staticmethod
    def pool_key(snap: FleetSnapshot, item: Item, pool: int) -> tuple[str, int]:
        model = snap.profiles[snap.pool_profile[pool]].model
        return model, -1 if item.spread == "site" else int(snap.host_site[snap.pool_host[pool]])

    def start(self, group: Sequence[Item]) -> None:
        self.key = self.forced

    def restricts(self, item: Item) -> bool:
        return item.uniform and self.key is not None

    def allows(self, item: Item, pool: int, n: int) -> bool:
        return self.pool_key(self.snap, item, pool) == self.key

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray:
        return np.fromiter((self.pool_key(self.snap, item, int(q)) == self.key for q in pools), dtype=np.bool_,
                           count=len(pools))

    def take(self, item: Item, c: Choice, sign: int = 1) -> None:
        if sign > 0 and item.uniform and self.key is None:
            self.key = self.pool_key(self.snap, item, c.pool)

    @staticmethod
    def encode(m: Model, snap: FleetSnapshot, mi: ModelInput, options: Sequence[tuple[int, Choice]]) -> None:
        by_item: dict[int, dict[tuple[str, int], list[int]]] = {}
        items = mi.items
        for x, c in options:
            item = items[c.item]
            if item.uniform:
                by_item.setdefault(c.item, {}).setdefault(UniformGang.pool_key(snap, item, c.pool), []).append(x)
        by_wl: dict[int, list[int]] = {}
        for i in sorted(by_item):
            by_wl.setdefault(items[i].workload, []).append(i)
        for its in by_wl.values():
            for a, b in itertools.pairwise(its):
                for key in set(by_item[a]) | set(by_item[b]):
                    xa, xb = by_item[a].get(key, []), by_item[b].get(key, [])
                    m.linear([*xa, *xb], [1] * len(xa) + [-1] * len(xb), 0, 0)


class LinkGroup:
    """``topology: same_link_group``: a replica's whole devices share one link group. The
    candidates already satisfy it (and ``select_devices`` picks the group), so the CP-SAT
    model needs nothing more."""

    def __init__(self, cap: Capacity) -> None:
        self.capacity = cap

    def start(self, group: Sequence[Item]) -> None:
        """No per-workload state."""

    def restricts(self, item: Item) -> bool:
        return item.link and item.kind != Kind.SHARE

    def allows(self, item: Item, pool: int, n: int) -> bool:
        return self.capacity.link_fits(pool, n)

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray:
        return np.fromiter((self.capacity.link_fits(int(q), int(k)) for q, k in zip(pools, need, strict=True)),
                           dtype=np.bool_, count=len(pools))

    def take(self, item: Item, c: Choice, sign: int = 1) -> None:
        """Capacity tracks the devices taken."""

    @staticmethod
    def encode(m: Model, snap: FleetSnapshot, mi: ModelInput, options: Sequence[tuple[int, Choice]]) -> None:
        """Nothing: every candidate already fits one link group."""


class TenantQuota:
    """Tenant quotas: what is left per (tenant, hardware type) changes as the pass takes options;
    the model bounds only the binding ones (``ModelInput.quotas_left``)."""

    def __init__(self, snap: FleetSnapshot, left: QuotaLeft, hw_names: Sequence[str], prof_hw: IntArray) -> None:
        self.left = dict(left)
        self.pool_hw = prof_hw[snap.pool_profile]
        self.hw_names = list(hw_names)
        self._keys: dict[str, list[tuple[int, tuple[str, str]]]] = {}  # tenant → (type index, key)
        for i, name in enumerate(hw_names):
            for tenant, hw in left:
                if hw == name:
                    self._keys.setdefault(tenant, []).append((i, (tenant, hw)))

    def restricts(self, item: Item) -> bool:
        return item.tenant is not None and item.tenant in self._keys

    def allows(self, item: Item, pool: int, n: int) -> bool:
        hw = self.pool_hw[pool]
        for i, key in self._keys[item.tenant or ""]:
            if hw == i and units(item, n) > self.left[key]:
                return False
        return True

    def mask(self, item: Item, pools: IntArray, need: IntArray) -> BoolArray:
        ok = np.ones(len(pools), dtype=np.bool_)
        hw = self.pool_hw[pools]
        for i, key in self._keys[item.tenant or ""]:
            want = need * UNITS_PER_DEVICE if item.kind != Kind.SHARE else np.full(len(pools), units(item, 0))
            ok &= ~((hw == i) & (want > self.left[key]))
        return ok

    def start(self, group: Sequence[Item]) -> None:
        """Quotas hold across workloads: nothing to reset."""

    def take(self, item: Item, c: Choice, sign: int = 1) -> None:
        if item.tenant is not None:
            key = (item.tenant, self.hw_names[int(self.pool_hw[c.pool])])
            if key in self.left:
                self.left[key] -= sign * units(item, c.n)

    @staticmethod
    def encode(m: Model, snap: FleetSnapshot, mi: ModelInput, options: Sequence[tuple[int, Choice]]) -> None:
        """``sum units * x <= left`` for each binding (tenant, type) of the sub-problem."""
        terms: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        items = mi.items
        for x, c in options:
            item = items[c.item]
            if item.tenant is not None:
                key = (item.tenant, mi.pool_hw[c.pool])
                if key in mi.quotas_left:
                    vs, cs = terms.setdefault(key, ([], []))
                    vs.append(x)
                    cs.append(units(item, c.n))
        for key, (vs, cs) in terms.items():
            m.linear(vs, cs, NEG, mi.quotas_left[key])


#: Every rule, in the order the CP-SAT model encodes them.
MODEL_RULES = (HostResources, HostSpread, SiteSpread, UniformGang, LinkGroup, TenantQuota)
