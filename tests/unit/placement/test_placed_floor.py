"""The optimiser never places fewer whole workloads than best-fit on the same batch."""

from __future__ import annotations

import pytest

from services.scheduler.placement import place, place_greedy
from tests.unit.placement.fleet import check_valid, fleet, wl
from tests.unit.placement.test_random_fleets import _random_case


def test_placed_floor_whole_workload_beats_one_replica_of_a_bigger_one():
    # Four free NPUs. Best-fit places "pair" (2) and cannot fit a 4-device replica in the 2
    # left. One replica of "wide" is worth more priority-weighted device units than "pair",
    # and it is one item just like "pair": counting items let the optimiser run half of
    # "wide" and leave both workloads unfinished. Whole workloads count: "pair" runs.
    snap = fleet({"n1": ("910b", 4)})
    batch = [wl("pair", hardware={"type": "npu", "count": 2}),
             wl("wide", hardware={"type": "npu", "count": 4}, replicas=2)]
    bf = place_greedy(batch, snap)
    opt = place(batch, snap)
    check_valid(opt, snap, batch)
    assert bf.placed_workloads() == {"pair"}
    assert opt.placed_workloads() == {"pair"}
    assert [a.workload_id for a in opt.assignments] == ["pair"]
    assert {p.workload_id: p.replicas for p in opt.pending} == {"wide": (0, 1)}
    assert opt.solver_status in ("OPTIMAL", "FEASIBLE", "TRIVIAL")
    assert opt.hint in ("scored", "best_fit")


# Random fleets (see test_random_fleets) where counting placed items instead of whole
# workloads, or starting from the scored greedy placement alone, placed fewer workloads
# than best-fit.
@pytest.mark.parametrize("seed", [92, 146, 225, 280, 707, 1345, 1661, 1718, 1756, 2566, 2828])
def test_placed_floor_never_below_best_fit_on_random_fleets(seed):
    snap, batch = _random_case(seed)
    bf = place_greedy(batch, snap)
    opt = place(batch, snap)
    check_valid(opt, snap, batch)
    assert len(opt.placed_workloads()) >= len(bf.placed_workloads())


def test_placed_floor_with_a_single_candidate_per_replica():
    # max_candidates=1 still gives the solver each replica's own best option (and best-fit's)
    snap = fleet({"a": ("a100", 3), "b": ("a100", 4)})
    batch = [wl("two", hardware={"type": "gpu", "count": 2}), wl("three", hardware={"type": "gpu", "count": 3})]
    opt = place(batch, snap, max_candidates=1)
    assert opt.placed_workloads() == {"two", "three"}
