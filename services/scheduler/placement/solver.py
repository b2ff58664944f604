"""The CP-SAT model over the bounded candidate options of a sub-problem.

Variables (all Boolean):

* ``x[o]``   option ``o`` is used (item i on pool q with n devices, or a share of device d);
* ``t[q]``   pool ``q`` is touched (``x -> t`` for its options); its capacity is
  ``sum n*x + sum u <= free[q]*t[q]``. Touching costs ``pool_cost(free, size, 0)``: the
  best-fit tie-break, plus ``frag`` when the pool was untouched (a new fragment);
* ``f[q]``   pool ``q`` ends completely used (``sum n*x + sum u >= free[q]*f[q]``): the
  fragment is closed again (fresh pool) or removed (partly used pool);
* ``u[d]``   an untouched device is opened for fractional shares:
  ``sum share*x <= 1000*u[d]`` and ``sum mem*x <= mem[d]*u[d]`` (already-shared devices get
  their free share/memory as constants);
* ``g[w]``   gang ``w`` placed: every replica item has ``sum x = g[w]`` (all-or-none).

Other constraints: one option per item, every rule of ``constraints.MODEL_RULES`` (spread: at
most 1 replica per host, at most ceil(R/sites) per site; binding tenant quotas), "place at least as many items as the
greedy hint", and "place at least as many whole workloads of priority >= p as the hint" for
every priority p of the sub-problem (the hint is the better of the scored greedy pass and
best-fit, see ``hint``; the bench counts whole workloads). The objective maximises sum reward*x - costs (see ``capacity.Weights``); the
search stops once the remaining gap is below ``Weights.gap`` (two fragments).

The model is written straight into the CP-SAT protobuf (no Python expression objects),
which keeps building at a few microseconds per option.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ortools.sat.python import cp_model_helper as cmh

from services.scheduler.placement.capacity import Choice, Weights, pool_cost
from services.scheduler.placement.constraints import MODEL_RULES, NEG
from services.scheduler.placement.result import SubproblemStats
from services.scheduler.placement.snapshot import EPS, FleetSnapshot
from services.scheduler.placement.workloads import SHARE_SCALE, Item, Kind


@dataclass(slots=True)
class ModelInput:
    items: Sequence[Item]  # all items of the batch (indexed by Item.idx)
    member: list[int]  # item indices in this sub-problem
    options: dict[int, list[Choice]]  # item → options
    hint: dict[int, Choice]  # greedy choices of these items
    pool_hw: dict[int, str]  # pool → hardware type name
    quotas_left: dict[tuple[str, str], int]  # only the binding ones
    site_cap: dict[int, int]  # workload → max replicas per site (spread=site)
    wl_items: Mapping[int, int]  # workload → its items in the whole batch
    host_left: Mapping[int, tuple[int, int]] = field(default_factory=dict)  # host → (CPUs, MiB) left, where fixed
    #                                                                          items took some


class _Proto:
    def __init__(self) -> None:
        self.p = cmh.CpModelProto()  # cp_model.CpModel() costs ~1 ms to construct; the bare proto does not
        self.n = 0
        self.obj_vars: list[int] = []
        self.obj_coeffs: list[int] = []

    def bool(self) -> int:
        v = self.p.variables.add()
        v.domain.extend((0, 1))
        self.n += 1
        return self.n - 1

    def linear(self, vs: Sequence[int], cs: Sequence[int], lo: int, hi: int) -> None:
        ct = self.p.constraints.add().linear
        ct.vars.extend(vs)
        ct.coeffs.extend(cs)
        ct.domain.extend((lo, hi))

    def at_most_one(self, vs: Sequence[int]) -> None:
        self.p.constraints.add().at_most_one.literals.extend(vs)

    def implies(self, a: int, b: int) -> None:
        ct = self.p.constraints.add()
        ct.enforcement_literal.append(a)
        ct.bool_and.literals.append(b)

    def cost(self, v: int, c: int) -> None:  # minimised
        if c:
            self.obj_vars.append(v)
            self.obj_coeffs.append(c)


def solve(snap: FleetSnapshot, mi: ModelInput, weights: Weights, time_limit_s: float, workers: int,
          name: str) -> tuple[dict[int, Choice] | None, SubproblemStats]:
    """Solve one sub-problem. Returns (item → choice, stats); choices None when no solution came back."""
    t0 = time.perf_counter()
    m = _Proto()
    items = mi.items
    x_of: list[tuple[int, Choice]] = []
    pool_terms: dict[int, tuple[list[int], list[int]]] = {}
    dev_terms: dict[int, tuple[list[int], list[int], list[int]]] = {}
    gang: dict[int, int] = {}
    hint_vars: list[int] = []
    count_vars: list[int] = []
    wl_xs: dict[int, list[list[int]]] = {}  # workload → options of each of its items
    w = weights
    for i in mi.member:
        item = items[i]
        reward = w.place + w.reward_unit * (item.priority + 1) * item.units
        opts = mi.options.get(i, [])
        if not opts:
            if item.gang:  # a replica with nowhere to go: the gang cannot be placed
                g0 = gang.get(item.workload)
                if g0 is None:
                    g0 = gang[item.workload] = m.bool()
                m.linear([g0], [1], 0, 0)
            continue
        xs: list[int] = []
        hinted = mi.hint.get(i)
        for c in opts:
            x = m.bool()
            xs.append(x)
            x_of.append((x, c))
            if hinted is not None and hinted == c:
                hint_vars.append(x)
            cost = c.cost
            if item.kind == Kind.SHARE:
                d = c.device
                fresh = snap.dev_free_share[d] >= 1 - EPS and snap.dev_free_mem[d] >= snap.dev_mem[d]
                left = (1.0 if fresh else float(snap.dev_free_share[d])) - c.share / SHARE_SCALE
                cost += round(left * w.share_waste)
                vs_s, cs_s, cs_m = dev_terms.setdefault(d, ([], [], []))
                vs_s.append(x)
                cs_s.append(c.share)
                cs_m.append(c.mem)
            else:
                vs, cs = pool_terms.setdefault(c.pool, ([], []))
                vs.append(x)
                cs.append(c.n)
            m.cost(x, cost - reward)
        count_vars.extend(xs)
        wl_xs.setdefault(item.workload, []).append(xs)
        if item.gang:
            g = gang.get(item.workload)
            if g is None:
                g = gang[item.workload] = m.bool()
            m.linear([*xs, g], [1] * len(xs) + [-1], 0, 0)
        elif len(xs) > 1:
            m.at_most_one(xs)

    hint_touched: set[int] = set()
    hint_fresh: set[int] = set()
    hint_used: dict[int, int] = {}
    for c in mi.hint.values():
        if items[c.item].kind == Kind.SHARE:
            if snap.dev_free_share[c.device] >= 1 - EPS and snap.dev_free_mem[c.device] >= snap.dev_mem[c.device]:
                hint_fresh.add(c.device)
        else:
            hint_touched.add(c.pool)
            hint_used[c.pool] = hint_used.get(c.pool, 0) + c.n
    for d in hint_fresh:
        q = int(snap.dev_pool[d])
        hint_touched.add(q)
        hint_used[q] = hint_used.get(q, 0) + 1

    # shared devices: fresh ones need u[d], which then counts against the pool
    fresh_in_pool: dict[int, list[int]] = {}
    for d, (vs, cs, ms) in dev_terms.items():
        fresh = snap.dev_free_share[d] >= 1 - EPS and snap.dev_free_mem[d] >= snap.dev_mem[d]
        if fresh:
            u = m.bool()
            m.cost(u, w.fresh_share)
            if d in hint_fresh:
                hint_vars.append(u)
            m.linear([*vs, u], [*cs, -SHARE_SCALE], NEG, 0)
            m.linear([*vs, u], [*ms, -int(snap.dev_mem[d])], NEG, 0)
            fresh_in_pool.setdefault(int(snap.dev_pool[d]), []).append(u)
        elif len(vs) > 1:
            m.linear(vs, cs, NEG, int(snap.dev_free_share[d] * SHARE_SCALE + 1e-6))
            m.linear(vs, ms, NEG, int(snap.dev_free_mem[d]))
    for q in set(pool_terms) | set(fresh_in_pool):
        vs, cs = pool_terms.get(q, ([], []))
        us = fresh_in_pool.get(q, [])
        free, size = int(snap.pool_free[q]), int(snap.pool_usable[q])
        t = m.bool()
        m.cost(t, pool_cost(w, free, size, 0))
        if q in hint_touched:
            hint_vars.append(t)
        for v in (*vs, *us):
            m.implies(v, t)
        m.linear([*vs, *us, t], [*cs, *([1] * len(us)), -free], NEG, 0)
        if sum(cs) + len(us) >= free:
            f = m.bool()
            m.cost(f, pool_cost(w, free, size, free) - pool_cost(w, free, size, 0))
            if hint_used.get(q, 0) == free:
                hint_vars.append(f)
            m.linear([*vs, *us, f], [*cs, *([1] * len(us)), -free], 0, 1 << 40)
    for rule in MODEL_RULES:  # spread, link group, tenant quota (see ``constraints``)
        rule.encode(m, snap, mi, x_of)
    for wl, g in gang.items():
        if any(items[i].workload == wl for i in mi.hint):
            hint_vars.append(g)
    if count_vars:
        m.linear(count_vars, [1] * len(count_vars), len(mi.hint), len(count_vars))
    hint_vars.extend(_floor_per_priority(m, mi, wl_xs, gang))
    m.p.objective.vars.extend(m.obj_vars)
    m.p.objective.coeffs.extend(m.obj_coeffs)
    hint_set = set(hint_vars)
    m.p.solution_hint.vars.extend(range(m.n))
    m.p.solution_hint.values.extend(1 if v in hint_set else 0 for v in range(m.n))
    build_s = time.perf_counter() - t0

    params = cmh.SatParameters()
    params.max_time_in_seconds = max(1e-3, time_limit_s - build_s)
    params.num_workers = workers
    params.absolute_gap_limit = float(weights.gap)
    # Small models: the LP with cuts (linearization 2) proves the fragmentation terms fast; probing
    # and symmetry detection cost more than they save at this size.
    params.linearization_level = 2
    params.cp_model_probing_level = 0
    params.symmetry_level = 0
    params.max_presolve_iterations = 1
    wrapper = cmh.SolveWrapper()
    wrapper.set_parameters(params)
    response = wrapper.solve(m.p)
    wall = time.perf_counter() - t0
    status_name = response.status.name
    if response.status not in (cmh.CpSolverStatus.OPTIMAL, cmh.CpSolverStatus.FEASIBLE):
        return None, SubproblemStats(name, len(mi.member), len(x_of), status_name, 0.0, 0.0, wall)
    sol = list(response.solution)
    chosen = {c.item: c for x, c in x_of if sol[x]}
    stats = SubproblemStats(name, len(mi.member), len(x_of), status_name, -response.objective_value,
                            -response.best_objective_bound, wall)
    return chosen, stats


def _floor_per_priority(m: _Proto, mi: ModelInput, wl_xs: dict[int, list[list[int]]],
                        gang: dict[int, int]) -> list[int]:
    """For each priority p: whole workloads of priority >= p placed >= the hint's. A workload is
    whole when every one of its items is placed (a gang: its g; one item: its options' sum;
    several independent replicas: a new variable <= each item's sum). Returns the new
    variables that the hint sets."""
    items = mi.items
    first = {items[i].workload: items[i] for i in mi.member}
    hinted: dict[int, int] = {}
    for i in mi.hint:
        hinted[items[i].workload] = hinted.get(items[i].workload, 0) + 1
    need: dict[int, int] = {}  # priority → workloads of the hint at that priority
    hinted_whole: list[int] = []
    terms: dict[int, tuple[list[int], list[int]]] = {}  # priority → (vars, coeffs)
    for wl, per_item in wl_xs.items():
        if len(per_item) < mi.wl_items[wl]:
            continue  # a replica with no options here: never whole
        prio = first[wl].priority
        in_hint = hinted.get(wl, 0) == mi.wl_items[wl]
        if in_hint:
            need[prio] = need.get(prio, 0) + 1
        vs, cs = terms.setdefault(prio, ([], []))
        g = gang.get(wl)
        if g is not None:
            vs.append(g)
            cs.append(1)
        elif len(per_item) == 1:
            vs.extend(per_item[0])
            cs.extend([1] * len(per_item[0]))
        else:
            whole = m.bool()
            for xs in per_item:
                m.linear([*xs, whole], [1] * len(xs) + [-1], 0, len(xs))
            vs.append(whole)
            cs.append(1)
            if in_hint:
                hinted_whole.append(whole)
    acc_v: list[int] = []
    acc_c: list[int] = []
    floor = 0
    for prio in sorted(terms, reverse=True):
        acc_v.extend(terms[prio][0])
        acc_c.extend(terms[prio][1])
        floor += need.get(prio, 0)
        if floor:
            m.linear(acc_v, acc_c, floor, 1 << 40)
    return hinted_whole
