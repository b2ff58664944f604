"""Orchestration: filters → greedy passes (scored with candidates, best-fit) → CP-SAT per
sub-problem → device selection → preemption → explanations. See the package docstring for
the contract."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from libs.topology import UnionFind
from services.scheduler.placement.capacity import (
    DEFAULT_WEIGHTS,
    Choice,
    PlacementCosts,
    Selected,
    Weights,
    pool_cost,
    select_devices,
)
from services.scheduler.placement.constraints import HostResources
from services.scheduler.placement.elastic import Guarantees, protected_work
from services.scheduler.placement.explain import Explainer, format_reason
from services.scheduler.placement.feasibility import FeasibilityCache
from services.scheduler.placement.greedy import GreedyResult, Strategy, greedy_pass
from services.scheduler.placement.hint import with_baseline
from services.scheduler.placement.preempt import Preemptor, host_usage, take
from services.scheduler.placement.quota import QuotaLeft, Quotas, binding, left_after, quotas_left, shortfalls
from services.scheduler.placement.reclaim import reclaim
from services.scheduler.placement.result import (
    Assignment,
    Pending,
    PlacementDecision,
    Preemption,
    SubproblemStats,
)
from services.scheduler.placement.rules import PlacementRules
from services.scheduler.placement.snapshot import FleetSnapshot
from services.scheduler.placement.solver import ModelInput, solve
from services.scheduler.placement.workloads import UNITS_PER_DEVICE, Item, Kind, PendingWorkload, expand

_NO_RULES = PlacementRules()


def _binding_hosts(items: Sequence[Item], g: GreedyResult, snap: FleetSnapshot,
                   left: Mapping[int, tuple[int, int]]) -> set[int]:
    """Hosts whose CPUs or memory the candidates of all items together could overrun."""
    need: dict[int, list[int]] = {}
    for it in items:
        most: dict[int, tuple[int, int]] = {}
        for c in g.candidates.get(it.idx, ()):
            h = int(snap.pool_host[c.pool])
            cpu, mem = HostResources.usage(snap, it, c)
            a, b = most.get(h, (0, 0))
            most[h] = (max(a, cpu), max(b, mem))
        for h, (cpu, mem) in most.items():
            acc = need.setdefault(h, [0, 0])
            acc[0] += cpu
            acc[1] += mem
    out = set()
    for h, (cpu, mem) in need.items():
        cpu_left, mem_left = left.get(h, (int(snap.host_cpu_free[h]), int(snap.host_mem_free[h])))
        if cpu > cpu_left or mem > mem_left:
            out.add(h)
    return out


def _split(items: Sequence[Item], g: GreedyResult, binding: set[tuple[str, str]],
           pool_hw: Mapping[int, str], snap: FleetSnapshot, hosts: set[int]) -> list[list[int]]:
    """Items that share a workload, a candidate pool, a binding quota or a host whose CPUs or memory they could
    overrun, as independent sub-problems."""
    uf = UnionFind(len(items))
    owner: dict[object, int] = {}
    for it in items:
        opts = g.candidates.get(it.idx)
        if not opts:
            continue
        keys: list[object] = [("w", it.workload)]
        for c in opts:
            keys.append(c.pool)
            if it.tenant is not None and (it.tenant, pool_hw[c.pool]) in binding:
                keys.append(("q", it.tenant, pool_hw[c.pool]))
            if hosts and int(snap.pool_host[c.pool]) in hosts:
                keys.append(("h", int(snap.pool_host[c.pool])))
        for k in keys:
            o = owner.setdefault(k, it.idx)
            if o != it.idx:
                uf.union(o, it.idx)
    groups: dict[int, list[int]] = {}
    for it in items:
        if g.candidates.get(it.idx):
            groups.setdefault(uf.find(it.idx), []).append(it.idx)
    return sorted(groups.values(), key=len, reverse=True)


def _solo_best(snap: FleetSnapshot, item: Item, opts: list[Choice], w: Weights) -> Choice:
    """Exact optimum for an item that competes with nothing: the cheapest option."""
    def cost(c: Choice) -> int:
        base = c.cost
        free, size = int(snap.pool_free[c.pool]), int(snap.pool_usable[c.pool])
        if item.kind == Kind.SHARE:
            return base + (w.fresh_share + pool_cost(w, free, size, 1) if c.fresh else 0)
        return base + pool_cost(w, free, size, c.n)
    return min(opts, key=cost)


def place(
    batch: Sequence[PendingWorkload],
    snapshot: FleetSnapshot,
    *,
    rules: PlacementRules | None = None,
    quotas: Quotas | None = None,
    time_limit_s: float = 1.0,
    max_candidates: int = 4,
    weights: Weights = DEFAULT_WEIGHTS,
    workers: int = 1,
    no_preempt_for: frozenset[str] = frozenset(),
    guarantees: Guarantees | None = None,
) -> PlacementDecision:
    """Place a batch with CP-SAT over bounded candidates (see the package docstring); nothing is preempted
    for the workloads of ``no_preempt_for`` (those that have another hardware alternative to try first).
    ``guarantees`` (tenant → resource → min): tenants within theirs reclaim others' borrowed work."""
    return _run(batch, snapshot, rules or _NO_RULES, quotas, time_limit_s, max_candidates, weights,
                workers, strategy="scored", optimise=True, no_preempt_for=no_preempt_for, guarantees=guarantees)


def place_greedy(
    batch: Sequence[PendingWorkload],
    snapshot: FleetSnapshot,
    *,
    rules: PlacementRules | None = None,
    quotas: Quotas | None = None,
    strategy: Strategy = "best_fit",
) -> PlacementDecision:
    """Baseline: first-fit or best-fit in queue order, no optimisation and no preemption."""
    return _run(batch, snapshot, rules or _NO_RULES, quotas, 0.0, 1, DEFAULT_WEIGHTS, 1,
                strategy=strategy, optimise=False)


def _run(batch: Sequence[PendingWorkload], snap: FleetSnapshot, rules: PlacementRules, quotas: Quotas | None,
         time_limit_s: float, max_candidates: int, weights: Weights, workers: int, *, strategy: Strategy,
         optimise: bool, no_preempt_for: frozenset[str] = frozenset(),
         guarantees: Guarantees | None = None) -> PlacementDecision:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    items = expand(batch)
    feas = FeasibilityCache(snap, rules)
    for it in items:
        feas.get(it.sig)
    costs = PlacementCosts(snap, weights)
    if optimise:
        costs.set_pressure(items, lambda it: feas.get(it.sig).pool_ok)
    left = quotas_left(snap, quotas)
    t1 = time.perf_counter()
    timings["feasibility"] = t1 - t0
    k = max(1, max_candidates)
    g = greedy_pass(items, snap, feas, costs, weights, left, strategy=strategy,
                    max_candidates=k if optimise else 1)
    hint = "" if not optimise else "scored"
    if optimise and time_limit_s > 0 and len(g.choices) < len(items):  # all placed: best-fit cannot beat it
        base = greedy_pass(items, snap, feas, costs, weights, left, strategy="best_fit")
        g, hint = with_baseline(items, g, base, costs)
    t2 = time.perf_counter()
    timings["greedy"] = t2 - t1
    choices: dict[int, Choice] = {}
    stats: list[SubproblemStats] = []
    status = "GREEDY"
    if not optimise:
        choices = dict(g.choices)
    elif time_limit_s <= 0:
        choices = dict(g.choices)
        status = "GREEDY_FALLBACK"
        stats.append(SubproblemStats("all", len(items), 0, "GREEDY_FALLBACK", 0.0, 0.0, 0.0))
    else:
        status = _optimise(items, g, snap, costs, weights, left, t0 + time_limit_s, workers, choices, stats)
    t3 = time.perf_counter()
    timings["solve"] = t3 - t2
    selected, failed = select_devices(snap, items, list(choices.values()))
    by_item = {s.item: s for s in selected}
    for i in failed:  # a gang loses all replicas when one cannot get its devices
        if items[i].gang:
            for s in [s for s in selected if items[s.item].workload == items[i].workload]:
                by_item.pop(s.item, None)
    t4 = time.perf_counter()
    timings["select"] = t4 - t3
    preemptions: list[Preemption] = []
    if optimise and time_limit_s > 0:
        _preempt(items, snap, feas, by_item, preemptions, batch, max_candidates, t0 + time_limit_s, left,
                 no_preempt_for, protected_work(snap, guarantees) if guarantees else None)
        if guarantees:
            reclaim(items, snap, feas, by_item, preemptions, batch, max_candidates, t0 + time_limit_s,
                    left_after(items, snap, by_item, left), guarantees, no_preempt_for)
    t5 = time.perf_counter()
    timings["preempt"] = t5 - t4
    assignments, pending = _results(batch, items, snap, feas, by_item, g, left)
    timings["explain"] = time.perf_counter() - t5
    timings["total"] = time.perf_counter() - t0
    objective = sum(s.objective for s in stats)
    return PlacementDecision(assignments, preemptions, pending, status, objective, timings, stats,
                             placer="cpsat" if optimise else strategy, hint=hint)


def _optimise(items: Sequence[Item], g: GreedyResult, snap: FleetSnapshot, costs: PlacementCosts, weights: Weights,
              quotas_left: QuotaLeft, deadline: float, workers: int, choices: dict[int, Choice],
              stats: list[SubproblemStats]) -> str:
    pool_hw = {c.pool: str(snap.profiles[snap.pool_profile[c.pool]].hardware_type)
               for opts in g.candidates.values() for c in opts}
    bound = binding(items, g.candidates, pool_hw, quotas_left)
    fixed, full = _perfect(items, g, snap)
    quota_model = dict(quotas_left)
    host_left: dict[int, tuple[int, int]] = {}
    for i in fixed:
        c = g.choices[i]
        choices[i] = c
        key = (items[i].tenant or "", pool_hw[c.pool])
        if key in quota_model:
            quota_model[key] -= c.n * UNITS_PER_DEVICE
        h = int(snap.pool_host[c.pool])
        cpu, mem = HostResources.usage(snap, items[i], c)
        a, b = host_left.get(h, (int(snap.host_cpu_free[h]), int(snap.host_mem_free[h])))
        host_left[h] = (a - cpu, b - mem)
    if fixed:
        stats.append(SubproblemStats("greedy-exact-fills", len(fixed), len(fixed), "FIXED", 0.0, 0.0, 0.0))
    g = _without(g, fixed, full, snap)
    stuck = {it.workload for it in items if it.gang and it.idx not in fixed and not g.candidates.get(it.idx)}
    for it in items:  # a gang with a replica that has nowhere to go cannot be placed at all
        if it.workload in stuck:
            g.candidates[it.idx] = []
    groups = _split(items, g, bound, pool_hw, snap, _binding_hosts(items, g, snap, host_left))
    wl_items: dict[int, int] = {}
    for it in items:
        wl_items[it.workload] = wl_items.get(it.workload, 0) + 1
    hard = [grp for grp in groups if len(grp) > 1 or items[grp[0]].gang]
    solo = [grp[0] for grp in groups if len(grp) == 1 and not items[grp[0]].gang]
    for i in solo:
        choices[i] = _solo_best(snap, items[i], g.candidates[i], weights)
    if solo:
        stats.append(SubproblemStats("independent", len(solo), sum(len(g.candidates[i]) for i in solo),
                                     "TRIVIAL", 0.0, 0.0, 0.0))
    statuses = set()
    total_opts = sum(len(g.candidates[i]) for grp in hard for i in grp) or 1
    for n, grp in enumerate(hard):
        opts = sum(len(g.candidates[i]) for i in grp)
        budget = (deadline - time.perf_counter()) * opts / total_opts
        total_opts -= opts
        mi = ModelInput(items, grp, {i: g.candidates[i] for i in grp}, {i: g.choices[i] for i in grp if i in g.choices},
                        pool_hw, {k: quota_model[k] for k in bound}, g.site_cap, wl_items, host_left)
        hw_names = sorted({pool_hw[c.pool] for i in grp for c in g.candidates[i]})
        name = f"{'+'.join(hw_names)}#{n}"
        if budget <= 1e-3:
            sol, st = None, SubproblemStats(name, len(grp), opts, "GREEDY_FALLBACK", 0.0, 0.0, 0.0)
        else:
            sol, st = solve(snap, mi, weights, budget, workers, name)
        if sol is None:
            sol = dict(mi.hint)
            st = SubproblemStats(st.name, st.items, st.options, "GREEDY_FALLBACK", st.objective, st.bound, st.wall_s)
        choices.update(sol)
        stats.append(st)
        statuses.add(st.status)
    if "GREEDY_FALLBACK" in statuses:
        return "GREEDY_FALLBACK"
    if "FEASIBLE" in statuses:
        return "FEASIBLE"
    if "OPTIMAL" in statuses:
        return "OPTIMAL"
    if solo:
        return "TRIVIAL"
    return "EXACT_FILL" if fixed else "EMPTY"  # EXACT_FILL: the greedy pass filled every request exactly


def _perfect(items: Sequence[Item], g: GreedyResult, snap: FleetSnapshot) -> tuple[set[int], set[int]]:
    """Items whose greedy placement already fills its pool exactly, with every other item on
    that pool (and every replica of their workloads) doing the same. Moving them cannot
    reduce fragmentation, so they are committed as is and the solver works on the rest.
    Returns (fixed items, pools they fill)."""
    used: dict[int, int] = {}
    on_pool: dict[int, list[int]] = {}
    for i, c in g.choices.items():
        if items[i].kind == Kind.SHARE:
            if c.fresh:
                used[c.pool] = used.get(c.pool, 0) + 1
                on_pool.setdefault(c.pool, []).append(i)
            continue
        used[c.pool] = used.get(c.pool, 0) + c.n
        on_pool.setdefault(c.pool, []).append(i)
    full = {q for q, u in used.items() if u >= snap.pool_free[q]}
    by_wl: dict[int, list[int]] = {}
    for it in items:
        by_wl.setdefault(it.workload, []).append(it.idx)
    ok_wl = {w for w, its in by_wl.items()
             if all(i in g.choices and items[i].kind != Kind.SHARE and g.choices[i].pool in full for i in its)}
    while True:
        clean = {q for q in full if all(items[i].workload in ok_wl for i in on_pool[q])}
        drop = {w for w in ok_wl if any(g.choices[i].pool not in clean for i in by_wl[w])}
        if not drop:
            break
        ok_wl -= drop
    fixed = {i for w in ok_wl for i in by_wl[w]}
    return fixed, {g.choices[i].pool for i in fixed}


def _without(g: GreedyResult, fixed: set[int], full: set[int], snap: FleetSnapshot) -> GreedyResult:
    """The greedy result minus fixed items, with options on the pools they fill removed."""
    if not fixed:
        return g
    def usable(c: Choice) -> bool:
        if c.pool not in full:
            return True
        d = c.device  # a share of an already-shared device does not need a whole free one
        return d >= 0 and not (snap.dev_free_share[d] >= 1 - 1e-9 and snap.dev_free_mem[d] >= snap.dev_mem[d])
    out = GreedyResult(site_cap=g.site_cap, failed=g.failed)
    for i, opts in g.candidates.items():
        if i not in fixed:
            out.candidates[i] = [c for c in opts if usable(c)]
    out.choices = {i: c for i, c in g.choices.items() if i not in fixed}
    return out


def _preempt(items: Sequence[Item], snap: FleetSnapshot, feas: FeasibilityCache, by_item: dict[int, Selected],
             preemptions: list[Preemption], batch: Sequence[PendingWorkload], max_candidates: int,
             deadline: float, quotas_left: QuotaLeft, no_preempt_for: frozenset[str] = frozenset(),
             protected: dict[int, str] | None = None) -> None:
    floor = snap.min_preemptible_priority()
    if floor is None:
        return
    by_workload: dict[int, list[Item]] = {}
    for it in items:
        by_workload.setdefault(it.workload, []).append(it)
    pre: Preemptor | None = None
    quota = left_after(items, snap, by_item, quotas_left)
    for w, its in by_workload.items():  # items are in priority order, so workloads are too
        missing = [it for it in its if it.idx not in by_item]
        if not missing or its[0].priority <= floor or batch[w].id in no_preempt_for:
            continue
        left = deadline - time.perf_counter()
        if left <= 0.005:
            break
        if pre is None:
            pre = Preemptor(snap, feas, {d for s in by_item.values() for d in s.devices}, host_usage(by_item, items),
                            protected=protected)
        gang = its[0].gang
        want = its if gang else missing
        tenant = its[0].tenant
        limits = {hw: v for (t, hw), v in quota.items() if t == tenant} if tenant is not None else {}
        res = pre.try_place(want, gang, max_candidates, min(left, 1.0), limits)
        if res is None:
            continue
        take(res, snap, by_item, its, gang, quota, tenant or "")
        for ai in res.evicted:
            a = snap.allocations[ai]
            preemptions.append(Preemption(a.workload_id, a.priority, tuple(d.device_id for d in a.devices),
                                          batch[w].id))


def _results(batch: Sequence[PendingWorkload], items: Sequence[Item], snap: FleetSnapshot,
             feas: FeasibilityCache, by_item: dict[int, Selected], g: GreedyResult,
             quotas_left: QuotaLeft) -> tuple[list[Assignment], list[Pending]]:
    assignments: list[Assignment] = []
    missing: dict[int, list[Item]] = {}
    for it in items:
        s = by_item.get(it.idx)
        if s is None:
            missing.setdefault(it.workload, []).append(it)
            continue
        wid = batch[it.workload].id
        host = snap.hosts[s.host].id
        per = len(s.devices) // len(it.replicas)
        for k, r in enumerate(it.replicas):
            sl = slice(k * per, (k + 1) * per)
            assignments.append(Assignment(wid, r, host, tuple(snap.dev_ids[d] for d in s.devices[sl]),
                                          tuple(s.shares[sl]), tuple(s.mems[sl]), it.cpu_per_replica,
                                          it.mem_per_replica, it.alternative, s.numa_node))
    quota_after = left_after(items, snap, by_item, quotas_left)
    explainer = Explainer(feas)
    pending: list[Pending] = []
    for w, its in missing.items():
        it = its[0]
        counts, passed = explainer.host_counts(it)
        extra: list[str] = []
        spec = batch[w].spec
        if passed and it.gang:
            extra.append(f"{passed} host{'s' if passed != 1 else ''}: had room at batch start, but not for every "
                         "replica at once or not after higher-priority or better-fitting work")
        elif passed:
            extra.append(f"{passed} host{'s' if passed != 1 else ''}: had room at batch start but were taken "
                         "by higher-priority or better-fitting work")
        if it.gang:
            extra.insert(0, f"gang of {spec.replicas}: all replicas must fit at once")
        if it.uniform:
            extra.insert(1, "on one device model" + (" and one site" if it.spread != "site" else "")
                         + f": no model has room for all {spec.replicas} (placement.mixed_models: true lets them mix)")
        for line in shortfalls(it, quota_after):
            extra.insert(0, line)
        if spec.placement.spread != "none" and spec.replicas > 1:
            extra.append(f"spread {spec.placement.spread}: at most "
                         + ("one replica per host" if spec.placement.spread == "host"
                            else f"{g.site_cap.get(w, 1)} replicas per site"))
        reps = tuple(sorted(r for x in its for r in x.replicas))
        pending.append(Pending(batch[w].id, reps, format_reason(counts, extra), counts))
    return assignments, pending
