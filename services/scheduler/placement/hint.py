"""The solver's starting point: the better of the scored greedy pass and plain best-fit.

The scored pass ranks options by the objective's costs and keeps each item's best few as
the solver's candidates. Its own placement can still place fewer workloads than plain
best-fit on the same fleet (an early item takes the last pool a later, larger one needed,
and that pool is then missing from the later item's candidates). So best-fit runs too;
each of its choices joins the item's candidates (costed as the scored pass would), and
whichever of the two placements places more whole workloads (ties: the scored one) is the
hint, the fallback and the floor the solver must match per priority class (see
``solver``). The solver thus never places fewer workloads than best-fit on the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.scheduler.placement.capacity import Choice, PlacementCosts
from services.scheduler.placement.greedy import GreedyResult
from services.scheduler.placement.workloads import Item, Kind


def placed_workloads(items: Sequence[Item], choices: dict[int, Choice]) -> set[int]:
    """Workloads (batch indices) with every item chosen."""
    missing = {it.workload for it in items if it.idx not in choices}
    return {it.workload for it in items} - missing


def _same(a: Choice, b: Choice) -> bool:
    return a.pool == b.pool and a.device == b.device and a.n == b.n


def with_baseline(items: Sequence[Item], scored: GreedyResult, baseline: GreedyResult,
                  costs: PlacementCosts) -> tuple[GreedyResult, str]:
    """``scored`` with the baseline's choices added to the candidates, and the better of the two
    placements as choices. Returns (result, which placement is the hint: 'scored' | 'best_fit')."""
    candidates = {i: list(opts) for i, opts in scored.candidates.items()}
    base_choices: dict[int, Choice] = {}
    for i, c in baseline.choices.items():
        item = items[i]
        need = None if item.kind == Kind.SHARE else np.array([c.n], dtype=np.int64)
        opts = candidates.setdefault(i, [])
        known = next((o for o in opts if _same(c, o)), None)
        if known is None:
            known = c._replace(cost=int(costs.pool_costs(item, np.array([c.pool], dtype=np.int64), need)[0]))
            opts.append(known)
        base_choices[i] = known  # the very option the solver sees, so the hint finds it
    better = len(placed_workloads(items, base_choices)) > len(placed_workloads(items, scored.choices))
    out = GreedyResult(choices=base_choices if better else dict(scored.choices), candidates=candidates,
                       failed=baseline.failed if better else scored.failed, site_cap=scored.site_cap)
    return out, "best_fit" if better else "scored"
