"""Greedy placement: first-fit and best-fit baselines, and the pass that seeds CP-SAT.

Items are taken in queue order (priority, then arrival) and each goes to the first
(first-fit, kube-scheduler/Volcano style without scoring plugins) or the tightest
(best-fit, HAMi ``binpack`` style) pool that still fits it. Gangs that do not fit
completely are rolled back.

The scored pass (CP-SAT's) also keeps, for every item, its best ``max_candidates`` options at
the moment it was considered, scored against the capacity left by the items before it (so
identical items are steered to different hosts). These bounded sets are what the CP-SAT
model chooses among; the greedy choice is always the first of them, so the greedy result
is a valid hint. A few pools that earlier items of the pass filled, but that fit the item at
batch start, are added too, so the solver can trade places between items.

Ranking does not touch every eligible pool per item: pools are bucketed once per
signature by what their score depends on (``_Groups``), buckets are scored and walked in
order, and only pools already changed in this pass are re-scored individually.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from services.scheduler.placement.capacity import Capacity, Choice, PlacementCosts, Weights, cu_need
from services.scheduler.placement.constraints import (
    HostResources,
    HostSpread,
    LinkGroup,
    Rule,
    SiteSpread,
    TenantQuota,
    UniformGang,
)
from services.scheduler.placement.feasibility import Eligibility, FeasibilityCache
from services.scheduler.placement.snapshot import EPS, FleetSnapshot, IntArray
from services.scheduler.placement.workloads import SHARE_SCALE, Item, Kind

Strategy = Literal["first_fit", "best_fit", "scored"]
_BIG = 1 << 40
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(slots=True)
class GreedyResult:
    choices: dict[int, Choice] = field(default_factory=dict)  # item → choice
    candidates: dict[int, list[Choice]] = field(default_factory=dict)  # item → options, best first
    failed: dict[int, str] = field(default_factory=dict)  # item → why the greedy pass left it
    site_cap: dict[int, int] = field(default_factory=dict)  # workload → max replicas per site (spread=site)


class _Ctx:
    """Per-pass lookups shared by all items."""

    def __init__(self, snap: FleetSnapshot, feas: FeasibilityCache, costs: PlacementCosts, weights: Weights) -> None:
        self.snap = snap
        self.feas = feas
        self.costs = costs
        self.w = weights
        self.prof_cu = np.array([p.compute_units for p in snap.profiles], dtype=np.float64)
        self.prof_mem = np.array([p.memory_mib for p in snap.profiles], dtype=np.int64)
        hw_names = sorted({str(p.hardware_type) for p in snap.profiles})
        self.hw_names = hw_names
        hw_idx = {h: i for i, h in enumerate(hw_names)}
        self.prof_hw = np.array([hw_idx[str(p.hardware_type)] for p in snap.profiles], dtype=np.int64)
        self.pool_site = snap.host_site[snap.pool_host]
        self._sites: dict[int, int] = {}
        self._groups: dict[int, _Groups] = {}
        self._all: _AllGroups | None = None
        self.ranked: dict[tuple[object, ...], _Ranked] = {}

    def groups(self, elig: Eligibility) -> _Groups:
        hit = self._groups.get(id(elig))
        if hit is None:
            if self._all is None:
                self._all = _AllGroups(self.snap)
            hit = self._groups[id(elig)] = _Groups(self._all, elig)
        return hit

    def eligible_sites(self, elig: Eligibility) -> int:
        key = id(elig)
        hit = self._sites.get(key)
        if hit is None:
            hit = self._sites[key] = max(1, len(np.unique(self.pool_site[elig.pool_ok])))
        return hit


def _mask(rules: Sequence[Rule], item: Item, pools: IntArray, need: IntArray) -> np.ndarray:
    """Mask of pools every rule allows (capacity is checked by the caller)."""
    ok = np.ones(len(pools), dtype=np.bool_)
    for rule in rules:
        if rule.restricts(item):
            ok &= rule.mask(item, pools, need)
    return ok


def _top(score: np.ndarray, limit: int) -> np.ndarray:
    if len(score) > limit:
        part = np.argpartition(score, limit - 1)[:limit]
        return part[np.argsort(score[part], kind="stable")]
    return np.argsort(score, kind="stable")


class _AllGroups:
    """Pools with a whole free device, bucketed once per pass by everything filters and scores
    read: profile, host class (site, up, labels, arch), free and usable devices. Ranking then
    costs O(groups) per replica, not O(pools)."""

    def __init__(self, snap: FleetSnapshot) -> None:
        pools = np.flatnonzero(snap.pool_free > 0)
        host_class = _host_classes(snap)
        pf = snap.pool_free[pools]
        usable = snap.pool_usable[pools]
        m = int(usable.max()) + 1 if len(pools) else 1
        key = ((snap.pool_profile[pools].astype(np.int64) * (int(host_class.max()) + 1 if len(host_class) else 1)
                + host_class[snap.pool_host[pools]]) * m + pf) * m + usable
        order = np.argsort(key, kind="stable")  # pools ascend within a group
        skey = key[order]
        starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]]) if len(skey) else np.zeros(0, dtype=np.int64)
        members = pools[order]
        self.rep = members[starts]
        self.members = members.tolist()
        self.starts = np.r_[starts, len(members)].tolist()


def _host_classes(snap: FleetSnapshot) -> IntArray:
    """Hosts that every filter treats alike share a class; cached with the fleet's hosts."""
    key = ("host_classes", id(snap.hosts), id(snap.host_up))
    cached = snap.shared.get(key)
    if isinstance(cached, np.ndarray):
        return cached
    ids: dict[tuple[object, ...], int] = {}
    hit = np.fromiter((ids.setdefault((int(snap.host_site[h]), bool(snap.host_up[h]), host.arch,
                                       frozenset(host.labels.items())), len(ids))
                       for h, host in enumerate(snap.hosts)), dtype=np.int64, count=snap.n_hosts)
    snap.shared[key] = hit
    return hit


class _Groups:
    """The groups one signature may use (its pools pass every filter, group by group)."""

    def __init__(self, all_groups: _AllGroups, elig: Eligibility) -> None:
        self.gid = np.flatnonzero(elig.pool_ok[all_groups.rep]) if len(all_groups.rep) else _EMPTY
        self.rep = all_groups.rep[self.gid]
        self.firsts = self.rep.astype(np.int64)
        self.members = all_groups.members
        self.starts = all_groups.starts


def _scores(ctx: _Ctx, item: Item, pools: IntArray, pf: IntArray, strategy: Strategy
            ) -> tuple[np.ndarray, IntArray, IntArray]:
    """(score without the pool-index tie-break, devices needed, placement cost) per pool;
    score is -1 where the pool cannot take the item."""
    snap = ctx.snap
    if item.kind == Kind.CU:
        need = cu_need(item, ctx.prof_cu[snap.pool_profile[pools]])
        leftover = pf - need
        ok = (need > 0) & (leftover >= 0)
    else:
        need = np.full(len(pools), item.n, dtype=np.int64)
        leftover = pf - item.n
        ok = leftover >= 0
    if strategy != "scored":
        base = np.zeros(len(pools), dtype=np.int64)
        return np.where(ok, leftover * _BIG if strategy == "best_fit" else 0, -1), need, base
    w = ctx.w
    base = ctx.costs.pool_costs(item, pools, need)
    # frag: +frag for a fresh pool left partly used, -frag for a partly used pool filled up
    fresh = (pf >= snap.pool_usable[pools]).astype(np.int64)
    score = pf * w.waste + base + fresh * w.frag - (leftover == 0) * w.frag + 4096
    score *= _BIG // 1024
    return np.where(ok, score, -1), need, base


@dataclass(slots=True)
class _Ranked:
    """A signature's groups that can take one item shape, scored against the snapshot and
    sorted best first (Python lists: the walk reads them one element at a time)."""

    key: list[int]  # score + the group's first pool (the walk's sort key)
    score: list[int]
    need: list[int]
    base: list[int]
    gid: list[int]  # index into _AllGroups.starts


def _ranked(ctx: _Ctx, item: Item, elig: Eligibility, strategy: Strategy) -> _Ranked:
    """Group representatives ranked for this item. They are scored at snapshot state, so the
    ranking is shared by every item of the pass with the same shape and signature."""
    shape = (id(elig), strategy, item.kind, item.n, item.cu, len(item.replicas), item.data_site, item.data_gib)
    hit = ctx.ranked.get(shape)
    if hit is None:
        groups = ctx.groups(elig)
        score, need, base = _scores(ctx, item, groups.rep, ctx.snap.pool_free[groups.rep], strategy)
        live = np.flatnonzero(score >= 0)
        key = score[live] + groups.firsts[live]
        order = live[np.argsort(key, kind="stable")]
        hit = ctx.ranked[shape] = _Ranked((score[order] + groups.firsts[order]).tolist(), score[order].tolist(),
                                          need[order].tolist(), base[order].tolist(), groups.gid[order].tolist())
    return hit


def _whole_options(ctx: _Ctx, item: Item, elig: Eligibility, cap: Capacity, strategy: Strategy, limit: int,
                   rules: Sequence[Rule], snapshot_extra: int = 0) -> list[Choice]:
    """The ``limit`` best pools that fit the item now, best first, then up to ``snapshot_extra``
    pools that earlier items of this pass filled but that fit it at batch start."""
    snap = ctx.snap
    if len(elig.whole_pools) == 0:
        return []
    ranked = _ranked(ctx, item, elig, strategy)
    touched = cap.touched
    active = [rule for rule in rules if rule.restricts(item)]

    def allowed(q: int, n: int) -> bool:
        for rule in active:
            if not rule.allows(item, q, n):
                return False
        return True

    restricted = bool(active)
    # Sort keys are unique (score + pool index, pool indices differ), so the order found is total.
    found: list[tuple[int, int, int, int]] = []  # (score, pool, need, cost)
    groups = ctx.groups(elig)
    starts, members = groups.starts, groups.members
    kth = None
    for k, key in enumerate(ranked.key):
        if kth is not None and key > kth:
            break
        sg, n, cost, gg = ranked.score[k], ranked.need[k], ranked.base[k], ranked.gid[k]
        taken = 0
        for q in members[starts[gg]:starts[gg + 1]]:
            if q in touched or (restricted and not allowed(q, n)):
                continue
            found.append((sg + q, q, n, cost))
            taken += 1
            if taken >= limit:
                break
        if len(found) >= limit:
            found.sort()
            del found[limit:]
            kth = found[-1][0]
    extra: list[tuple[int, int, int, int]] = []
    # Pools this pass already changed: scored as they are now, and as they were at batch start.
    tq = cap.touched_pools()
    if len(tq):
        tq = tq[elig.pool_ok[tq]]
    if len(tq):
        m = len(tq)
        both = np.concatenate([tq, tq])
        pf = snap.pool_free[both]
        pf[:m] = cap.pool_free[tq]
        all_score, all_need, all_base = _scores(ctx, item, both, pf, strategy)
        t_score, s_score = all_score[:m], all_score[m:]
        for j in np.flatnonzero(t_score >= 0).tolist():
            q, n = int(tq[j]), int(all_need[j])
            if allowed(q, n):
                found.append((int(t_score[j]) + q, q, n, int(all_base[j])))
        if snapshot_extra:
            # full now, but not at batch start: the solver may free it by moving earlier items
            late = np.flatnonzero((t_score < 0) & (s_score >= 0))
            if len(late):
                for j in late[np.argsort(s_score[late] + tq[late], kind="stable")].tolist():
                    q, n = int(tq[j]), int(all_need[m + j])
                    if allowed(q, n):
                        extra.append((int(s_score[j]) + q, q, n, int(all_base[m + j])))
                        if len(extra) >= snapshot_extra:
                            break
    found.sort()
    chosen = found[:limit] + extra
    return [Choice(item.idx, q, -1, n, 0, 0, cost=cost) for _, q, n, cost in chosen]


def _share_options(ctx: _Ctx, item: Item, elig: Eligibility, cap: Capacity, strategy: Strategy, limit: int,
                   rules: Sequence[Rule]) -> list[Choice]:
    snap, w = ctx.snap, ctx.w
    s = item.share / SHARE_SCALE
    scored: list[tuple[int, Choice]] = []
    # 1. devices already shared
    devs = elig.share_devs
    if cap.new_partial:
        extra = np.array(cap.new_partial, dtype=np.int64)
        devs = np.concatenate([devs, extra[elig.pool_ok[snap.dev_pool[extra]]]])
    if len(devs):
        mem = np.full(len(devs), item.mem_mib) if item.mem_mib else np.ceil(item.share * snap.dev_mem[devs] / SHARE_SCALE)
        ok = (cap.free_share[devs] + EPS >= s) & (cap.free_mem[devs] >= mem)
        if ok.any():
            pools = snap.dev_pool[devs].astype(np.int64)
            ok &= _mask(rules, item, pools, np.ones(len(devs), dtype=np.int64))
            idx = np.flatnonzero(ok)
            left = cap.free_share[devs[idx]] - s
            base = np.zeros(len(idx), dtype=np.int64)
            if strategy == "first_fit":
                score = pools[idx] * 4
            elif strategy == "best_fit":
                score = np.round(left * SHARE_SCALE).astype(np.int64) * _BIG + devs[idx]
            else:
                base = ctx.costs.pool_costs(item, pools[idx])
                score = (np.round(left * w.share_waste).astype(np.int64) + base) * _BIG // 1024 + devs[idx]
            for j in _top(score, limit):
                d = int(devs[idx[j]])
                scored.append((int(score[j]), Choice(item.idx, int(snap.dev_pool[d]), d, 0, item.share,
                                                      int(mem[idx[j]]), cost=int(base[j]))))
    # 2. untouched devices, tightest pool first
    pools = elig.whole_pools
    if len(pools):
        pf = cap.pool_free[pools]
        mem_f = np.full(len(pools), item.mem_mib) if item.mem_mib else np.ceil(
            item.share * ctx.prof_mem[snap.pool_profile[pools]] / SHARE_SCALE)
        ok = (pf > 0) & (ctx.prof_mem[snap.pool_profile[pools]] >= mem_f)
        if ok.any():
            ok &= _mask(rules, item, pools, np.ones(len(pools), dtype=np.int64))
            idx = np.flatnonzero(ok)
            cand = pools[idx]
            base = np.zeros(len(idx), dtype=np.int64)
            if strategy == "first_fit":
                score = cand * 4 + 1
            elif strategy == "best_fit":
                score = (SHARE_SCALE + pf[idx]) * _BIG + cand  # after every shared device
            else:
                fresh = pf[idx] >= snap.pool_usable[cand]
                frag = np.where(pf[idx] == 1, np.where(fresh, 0, -w.frag), np.where(fresh, w.frag, 0))
                base = ctx.costs.pool_costs(item, cand)
                score = (w.fresh_share + round((1 - s) * w.share_waste) + pf[idx] * w.waste + frag + base
                         ) * _BIG // 1024 + cand
            for j in _top(score, limit):
                q = int(cand[j])
                d = cap.fresh_device(q)
                if d >= 0:
                    scored.append((int(score[j]), Choice(item.idx, q, d, 0, item.share, int(mem_f[idx[j]]), True,
                                                         cost=int(base[j]))))
    scored.sort(key=lambda t: t[0])
    return [c for _, c in scored[:limit]]


def greedy_pass(
    items: Sequence[Item],
    snap: FleetSnapshot,
    feas: FeasibilityCache,
    costs: PlacementCosts,
    weights: Weights,
    quotas_left: dict[tuple[str, str], int],
    *,
    strategy: Strategy,
    max_candidates: int = 1,
) -> GreedyResult:
    """Place items one by one; the scored pass also records each item's options."""
    ctx = _Ctx(snap, feas, costs, weights)
    cap = Capacity(snap)
    res = GreedyResult()
    uniform = UniformGang(snap)
    rules: list[Rule] = [HostResources(cap), HostSpread(snap), SiteSpread(ctx.pool_site, res.site_cap), uniform,
                         LinkGroup(cap), TenantQuota(snap, quotas_left, ctx.hw_names, ctx.prof_hw)]
    i = 0
    while i < len(items):
        w = items[i].workload
        j = i
        while j < len(items) and items[j].workload == w:
            j += 1
        group = items[i:j]
        if group[0].spread == "site":
            res.site_cap.setdefault(w, math.ceil(len(group) / ctx.eligible_sites(feas.get(group[0].sig))))
        taken, failed = _place_group(ctx, group, cap, rules, res, strategy, max_candidates)
        if failed and group[0].uniform:  # another model (and site) may hold the whole gang
            tried = {uniform.pool_key(snap, group[0], c.pool) for c in taken[:1]}
            keys = [k for k in dict.fromkeys(uniform.pool_key(snap, group[0], c.pool)
                                             for c in res.candidates.get(group[0].idx, ())) if k not in tried]
            first = {it.idx: list(res.candidates.get(it.idx, ())) for it in group}
            for key in keys[:UNIFORM_RETRIES]:
                _undo(items, cap, rules, taken)
                uniform.forced = key
                taken, failed = _place_group(ctx, group, cap, rules, res, strategy, max_candidates)
                uniform.forced = None
                for it in group:  # the solver sees every model tried
                    seen = {(c.pool, c.n, c.device) for c in first[it.idx]}
                    first[it.idx] += [c for c in res.candidates.get(it.idx, ()) if (c.pool, c.n, c.device) not in seen]
                if not failed:
                    break
            res.candidates.update(first)
        if failed and items[i].gang:
            _undo(items, cap, rules, taken)
            for item in group:
                res.failed.setdefault(item.idx, "gang")
        else:
            for c in taken:
                res.failed.pop(c.item, None)
                res.choices[c.item] = c
        i = j
    return res


UNIFORM_RETRIES = 3  # other (model, site) keys a uniform gang is tried on when its first one fails


def _place_group(ctx: _Ctx, group: Sequence[Item], cap: Capacity, rules: Sequence[Rule], res: GreedyResult,
                 strategy: Strategy, max_candidates: int) -> tuple[list[Choice], bool]:
    """One workload's items, in order: what was taken, and whether one found no room."""
    for rule in rules:
        rule.start(group)
    taken: list[Choice] = []
    failed = False
    for item in group:
        elig = ctx.feas.get(item.sig)
        if item.kind == Kind.SHARE:
            opts = _share_options(ctx, item, elig, cap, strategy, max_candidates, rules)
        else:
            opts = _whole_options(ctx, item, elig, cap, strategy, max_candidates, rules,
                                  snapshot_extra=max(2, max_candidates // 2) if max_candidates > 1 else 0)
        if strategy == "scored" or item.uniform:  # the solver's candidates (and the models a gang may retry on)
            res.candidates[item.idx] = opts
        if not opts or not _fits_now(cap, item, opts[0]):
            res.failed[item.idx] = "no room"
            failed = True
            continue
        c = opts[0]
        cap.apply(item, c)
        for rule in rules:
            rule.take(item, c)
        taken.append(c)
    return taken, failed


def _undo(items: Sequence[Item], cap: Capacity, rules: Sequence[Rule], taken: list[Choice]) -> None:
    for c in reversed(taken):
        cap.apply(items[c.item], c, sign=-1)
        for rule in rules:
            rule.take(items[c.item], c, sign=-1)


def _fits_now(cap: Capacity, item: Item, c: Choice) -> bool:
    if not cap.host_fits(item, c.pool):
        return False
    if item.kind == Kind.SHARE:
        return bool(cap.free_share[c.device] + EPS >= item.share / SHARE_SCALE and cap.free_mem[c.device] >= c.mem)
    return bool(cap.pool_free[c.pool] >= c.n)
