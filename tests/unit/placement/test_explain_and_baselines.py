"""Pending explanations name the filters with host counts; baselines behave as their names say."""

from __future__ import annotations

from libs.schemas.catalog import RuntimeDriverRule
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    PlacementRules,
    build_snapshot,
    place,
    place_greedy,
)
from tests.unit.placement.fleet import devices, fleet, host, wl

RULES = PlacementRules.of(runtime_driver=[
    RuntimeDriverRule(id="cuda-12.0", vendor="nvidia", runtime="cuda", runtime_versions=">=12.0,<12.1",
                      min_driver_version="525.60.13", source="notes"),
    RuntimeDriverRule(id="cuda-12.4", vendor="nvidia", runtime="cuda", runtime_versions=">=12.4,<12.5",
                      min_driver_version="550.54.14", source="notes"),
])


def test_explain_pending_names_filters_and_host_counts():
    hosts = [host(f"old{i}") for i in range(3)] + [host(f"npu{i}") for i in range(4)] + [host("new0")]
    devs = [d for i in range(3) for d in devices(f"old{i}", "a100-old", 8)]
    devs += [d for i in range(4) for d in devices(f"npu{i}", "910b", 8)]
    devs += devices("new0", "a100", 8)
    busy = Allocation("busy", 900, False, None, tuple(AllocatedDevice(d.id) for d in devs[-8:]))
    snap = build_snapshot(hosts, devs, [busy])
    d = place([wl("w", hardware={"type": "gpu"}, runtime={"requires": ["cuda>=12.4"]})], snap, rules=RULES)
    (p,) = d.pending
    assert p.counts == {"driver too old for cuda>=12.4": 3, "no gpu": 4, "no free gpu": 1}
    assert p.reason == "4 hosts: no gpu; 3 hosts: driver too old for cuda>=12.4; 1 host: no free gpu"
    assert p.replicas == (0,)


def test_explain_names_contention_gang_and_quota():
    snap = fleet({"h": ("a100", 4)})
    batch = [wl("big", hardware={"type": "gpu", "count": 4}, priority=900),
             wl("g", hardware={"type": "gpu", "count": 2}, replicas=2, gang=True),
             wl("q", hardware={"type": "gpu"}, tenant="acme")]
    d = place(batch, snap, quotas={"acme": {"gpu": 0}})
    reasons = {p.workload_id: p.reason for p in d.pending}
    assert "had room at batch start, but not for every replica at once or not after higher-priority" in reasons["g"]
    assert reasons["g"].startswith("gang of 2")
    assert "tenant acme quota for gpu: 0 devices left" in reasons["q"]


def test_explain_a_gang_bigger_than_the_fleet_does_not_blame_other_work():
    snap = fleet({"h1": ("a100", 8), "h2": ("a100", 8)})
    d = place([wl("g", hardware={"type": "gpu", "count": 8}, replicas=3, gang=True)], snap)
    (p,) = d.pending
    assert p.reason.startswith("gang of 3: all replicas must fit at once")
    assert "were taken by" not in p.reason and d.assignments == []


def test_first_fit_takes_the_first_host_and_best_fit_the_tightest():
    snap = fleet({"a": ("a100", 8), "b": ("a100", 2), "c": ("a100", 4)})
    batch = [wl("w", hardware={"type": "gpu", "count": 2})]
    assert place_greedy(batch, snap, strategy="first_fit").assignments[0].host_id == "a"
    assert place_greedy(batch, snap, strategy="best_fit").assignments[0].host_id == "b"
    assert place(batch, snap).assignments[0].host_id == "b"
    assert place_greedy(batch, snap).solver_status == "GREEDY"


def test_optimiser_packs_where_best_fit_strands():
    # best-fit in queue order puts the 2 on the 3-free host and strands 1; the optimiser
    # fills both hosts exactly (2+2 on one, 3 on the other) and places everything.
    snap = fleet({"a": ("a100", 3), "b": ("a100", 4)})
    batch = [wl("two", hardware={"type": "gpu", "count": 2}), wl("three", hardware={"type": "gpu", "count": 3}),
             wl("two-b", hardware={"type": "gpu", "count": 2})]
    bf = place_greedy(batch, snap)
    opt = place(batch, snap)
    assert len(bf.assignments) == 2
    assert len(opt.assignments) == 3 and opt.pending == []
