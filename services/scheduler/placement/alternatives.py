"""Ordered hardware alternatives: the first that can be placed wins (as DRA's ``firstAvailable`` and
Kueue's flavors with ``whenCanPreempt: TryNextFlavor``).

``place_alternatives`` runs ``place`` in rounds over what is still pending:

1. every workload at its first alternative; nothing is preempted for a workload that has another
   alternative, the others preempt as ``place`` does;
2. each later alternative in turn, for the workloads still pending that have it, without preemption;
3. then, for what is still pending, each alternative again in order with preemption allowed: the
   first alternative that preemption can make room for is taken.

Each round sees the fleet after the rounds before it (``FleetSnapshot.with_decision``). Assignments
carry the alternative taken; a workload that fits no alternative is pending with every
alternative's reason, in order. With no workload listing alternatives this is one ``place`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from services.scheduler.placement.engine import place
from services.scheduler.placement.result import Assignment, Pending, PlacementDecision, Preemption
from services.scheduler.placement.snapshot import FleetSnapshot
from services.scheduler.placement.workloads import PendingWorkload


def place_alternatives(batch: Sequence[PendingWorkload], snapshot: FleetSnapshot, **kw: Any) -> PlacementDecision:
    """``place`` (same keyword arguments) trying each workload's hardware alternatives in order."""
    n_alts = {w.id: len(w.spec.alternatives) for w in batch}
    multi = frozenset(w for w, n in n_alts.items() if n > 1)
    first = place(batch, snapshot, no_preempt_for=multi, **kw)
    if not multi or not any(p.workload_id in multi for p in first.pending):
        return first
    specs = {w.id: w.spec for w in batch}
    assignments: list[Assignment] = list(first.assignments)
    preemptions: list[Preemption] = list(first.preemptions)
    reasons: dict[str, list[tuple[int, Pending]]] = {}
    # what is still pending of each multi-alternative workload: original replica indices
    open_: dict[str, tuple[int, ...]] = {}
    for p in first.pending:
        if p.workload_id in multi:
            open_[p.workload_id] = p.replicas
            reasons[p.workload_id] = [(0, p)]
    done_pending = [p for p in first.pending if p.workload_id not in multi]
    snap = snapshot.with_decision(first, batch)
    timings = dict(first.timings_s)
    rounds = [(a, False) for a in range(1, max(n_alts.values()))] + [(a, True) for a in range(max(n_alts.values()))]
    for alt, preempt in rounds:
        todo = [w for w in open_ if n_alts[w] > alt]
        if not todo:
            continue
        sub = [PendingWorkload(w, specs[w].model_copy(update={"replicas": len(open_[w])}), alternative=alt)
               for w in todo]
        blocked = frozenset() if preempt else frozenset(todo)
        d = place(sub, snap, no_preempt_for=blocked, **kw)
        for k, v in d.timings_s.items():
            timings[k] = timings.get(k, 0.0) + v
        still = {q.workload_id: q for q in d.pending}
        for a in d.assignments:
            assignments.append(replace(a, replica=open_[a.workload_id][a.replica]))
        preemptions += d.preemptions
        for w in todo:
            left = still.get(w)
            if left is None:
                del open_[w]
                continue
            if not preempt:
                reasons[w].append((alt, left))
            open_[w] = tuple(open_[w][i] for i in left.replicas)
        snap = snap.with_decision(d, sub)
    for w, reps in open_.items():
        done_pending.append(_pending(w, reps, specs[w], reasons[w]))
    return PlacementDecision(assignments, preemptions, done_pending, first.solver_status, first.objective, timings,
                             first.subproblems, first.placer, first.hint)


def _pending(wid: str, replicas: tuple[int, ...], spec: Any, tried: list[tuple[int, Pending]]) -> Pending:
    """Pending with each alternative's reason in order; host counts of the first, the others' prefixed."""
    alts = spec.alternatives
    reason = "; else ".join(f"alternative {a} ({alts[a].describe()}): {p.reason}" for a, p in tried)
    counts: dict[str, int] = {}
    for a, p in tried:
        for k, v in p.counts.items():
            counts[k if a == 0 else f"alternative {a}: {k}"] = v
    return Pending(wid, replicas, reason, counts)
