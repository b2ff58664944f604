"""Elastic quotas in placement: borrowed work, reclaim decisions, and the dominant-resource-fair queue order."""

from __future__ import annotations

from services.scheduler.placement import AllocatedDevice, Allocation, HostHold, build_snapshot, place
from services.scheduler.placement.elastic import (
    capacity,
    classify,
    dominant_share,
    fair_order,
    may_reclaim,
    spec_amounts,
    victims,
)
from tests.unit.placement.fleet import check_valid, devices, host, wl


def _alloc(wid: str, tenant: str, devs: list[str], *, preemptible: bool = True, priority: int = 100,
           cpu: int = 0) -> Allocation:
    hosts = (HostHold(devs[0].split("/")[0], cpu, 0),) if cpu else ()
    return Allocation(wid, priority, preemptible, tenant, tuple(AllocatedDevice(d) for d in devs), hosts)


def _snap(allocs: list[Allocation], n: int = 8):
    devs = devices("h0", "a100", n)
    return build_snapshot([host("h0", cpus=64, memory_mib=512 * 1024)], devs, allocs), [d.id for d in devs]


def test_elastic_classify_marks_work_above_min_as_borrowed_non_preemptible_first() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    allocs = [_alloc("a-pre", "a", ids[0:2]), _alloc("a-fixed", "a", ids[2:4], preemptible=False),
              _alloc("a-more", "a", ids[4:6], priority=50), _alloc("b-1", "b", ids[6:8])]
    snap, _ = _snap(allocs)
    b = classify(snap, {"a": {"gpu": 4}, "b": {"gpu": 4}})
    # a's min of 4 is filled by the non-preemptible work, then by priority: a-more (priority 50) is borrowed
    assert b.borrowed_workloads(snap) == {"a-more"}
    assert b.used["a"]["gpu"] == 6 and b.used["b"]["gpu"] == 2
    assert b.used["a"]["compute_units"] == 6 * 312.0


def test_elastic_classify_borrows_nothing_without_guarantees_and_all_without_a_min() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    snap, _ = _snap([_alloc("a-1", "a", ids[:2]), _alloc("c-1", "c", ids[2:3])])
    assert classify(snap, {}).borrowed == set()
    # b is guaranteed gpus: every gpu a and c (no min) hold is borrowed
    assert classify(snap, {"b": {"gpu": 2}}).borrowed_workloads(snap) == {"a-1", "c-1"}


def test_elastic_may_reclaim_only_within_the_guarantee_of_what_it_asks() -> None:
    g = {"b": {"gpu": 4, "cpu": 0}}
    assert may_reclaim("b", {"gpu": 2, "cpu": 2}, {"gpu": 2}, g)  # 2 + 2 <= 4; cpu is not guaranteed
    assert not may_reclaim("b", {"gpu": 3}, {"gpu": 2}, g)  # would end above min: borrow, not reclaim
    assert not may_reclaim("b", {"npu": 1}, {}, g)  # nothing it asks for is guaranteed
    assert not may_reclaim("a", {"gpu": 1}, {}, g) and not may_reclaim(None, {"gpu": 1}, {}, g)


def test_elastic_victims_are_other_tenants_preemptible_borrowed_work() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    allocs = [_alloc("a-pre", "a", ids[0:2]), _alloc("a-fixed", "a", ids[2:4], preemptible=False),
              _alloc("b-own", "b", ids[4:6])]
    snap, _ = _snap(allocs)
    b = classify(snap, {"b": {"gpu": 4}})
    assert b.borrowed_workloads(snap) == {"a-pre", "a-fixed"}
    assert {snap.allocations[ai].workload_id for ai in victims(snap, b, "b")} == {"a-pre"}
    assert victims(snap, b, "a") == set()  # b's work is within its guarantee


def test_elastic_dominant_share_counts_usage_above_min_over_capacity() -> None:
    snap, _ = _snap([])
    cap = capacity(snap)
    assert cap["gpu"] == 8 and cap["cpu"] == 64 and cap["memory_gib"] == 512
    assert dominant_share({"gpu": 4, "cpu": 48}, {"gpu": 2}, cap) == 0.75  # cpu 48/64 dominates gpu 2/8
    assert dominant_share({"gpu": 2}, {"gpu": 4}, cap) == 0.0


def test_elastic_fair_order_lowest_dominant_share_first_within_a_priority() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    snap, _ = _snap([_alloc("a-run", "a", ids[:4])])
    one = {"hardware": {"type": "gpu"}, "resources": {"cpu": 1, "memory_gib": 1}}
    batch = [wl("a1", tenant="a", **one), wl("a2", tenant="a", **one), wl("b1", tenant="b", **one),
             wl("b2", tenant="b", **one), wl("c1", tenant="c", **one), wl("hi", tenant="a", priority=900, **one)]
    order = [w.id for w in fair_order(batch, snap, {})]
    # priority first; then b and c (share 0) alternate with each other before a (4/8 of the gpus)
    assert order[0] == "hi"
    assert order[1:] == ["b1", "c1", "b2", "a1", "a2"]
    # with 6 gpus guaranteed, a's gpus are within its min and only its CPUs count (1/64 each) while b's
    # first gpu (no min) is 1/8 of the fleet's: a's two go before b's second
    order = [w.id for w in fair_order(batch, snap, {"a": {"gpu": 6}})]
    assert order[1:] == ["b1", "c1", "a1", "a2", "b2"]


def test_elastic_spec_amounts_count_devices_cpu_and_memory_per_alternative() -> None:
    w = wl("w", hardware=[{"type": "gpu", "count": 8}, {"type": "npu", "count": 16, "resources": {"cpu": 48}}],
           resources={"cpu": 32, "memory_gib": 256}, replicas=2)
    assert spec_amounts(w.spec, 0) == {"gpu": 16, "cpu": 64, "memory_gib": 512}
    assert spec_amounts(w.spec, 1) == {"npu": 32, "cpu": 96, "memory_gib": 512}


def test_elastic_reclaim_stops_borrowed_preemptible_work_for_a_tenant_below_min() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    allocs = [_alloc("a-fixed", "a", ids[:4], preemptible=False, priority=900),
              _alloc("a-pre", "a", ids[4:8], priority=900)]
    snap, _ = _snap(allocs)
    batch = [wl("b-job", tenant="b", hardware={"type": "gpu", "count": 4}, priority=10)]
    # without a guarantee b (priority 10) cannot preempt a's priority-900 work
    assert place(batch, snap).preemptions == []
    d = place(batch, snap, guarantees={"b": {"gpu": 4}})
    assert [p.workload_id for p in d.preemptions] == ["a-pre"]
    assert "reclaimed for b-job of tenant b" in d.preemptions[0].reason
    assert "gpu 4 of min 4" in d.preemptions[0].reason
    assert sorted(d.assignments[0].device_ids) == ids[4:8]
    check_valid(d, snap, batch)


def test_elastic_reclaim_never_takes_non_preemptible_or_in_guarantee_work() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    allocs = [_alloc("a-fixed", "a", ids[:4], preemptible=False), _alloc("a-fixed2", "a", ids[4:8],
                                                                         preemptible=False)]
    snap, _ = _snap(allocs)
    batch = [wl("b-job", tenant="b", hardware={"type": "gpu", "count": 4})]
    d = place(batch, snap, guarantees={"b": {"gpu": 4}})
    assert d.preemptions == [] and d.pending[0].workload_id == "b-job"
    # a's preemptible work within a's own guarantee is not borrowed, so it is not reclaimed either
    snap2, _ = _snap([_alloc("a-pre", "a", ids)])
    d2 = place(batch, snap2, guarantees={"a": {"gpu": 8}, "b": {"gpu": 4}})
    assert d2.preemptions == []


def test_elastic_reclaim_not_for_work_that_would_borrow() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    snap, _ = _snap([_alloc("a-pre", "a", ids)])
    # b asks 6 with a min of 4: above its guarantee it borrows only idle capacity, it does not reclaim
    d = place([wl("b-big", tenant="b", hardware={"type": "gpu", "count": 6})], snap, guarantees={"b": {"gpu": 4}})
    assert d.preemptions == []


def test_elastic_work_within_a_guarantee_is_not_preempted_by_another_tenants_priority() -> None:
    ids = [f"h0/a100{i}" for i in range(8)]
    snap, _ = _snap([_alloc("b-own", "b", ids[:4], priority=10), _alloc("b-more", "b", ids[4:8], priority=10)])
    urgent = [wl("a-urgent", tenant="a", hardware={"type": "gpu", "count": 4}, priority=900)]
    # b is guaranteed 4: a's urgent work may take b's borrowed half, never the half within b's min
    d = place(urgent, snap, guarantees={"b": {"gpu": 4}})
    assert [p.workload_id for p in d.preemptions] == ["b-more"]
    # with b's whole use guaranteed, nothing of it is taken
    d = place(urgent, snap, guarantees={"b": {"gpu": 8}})
    assert d.preemptions == [] and d.pending[0].workload_id == "a-urgent"
    # b's own higher-priority work still preempts b's guaranteed work, as priorities do within a tenant
    mine = [wl("b-urgent", tenant="b", hardware={"type": "gpu", "count": 4}, priority=900)]
    assert len(place(mine, snap, guarantees={"b": {"gpu": 8}}).preemptions) == 1
    # without guarantees priority decides as before
    assert len(place(urgent, snap).preemptions) == 1
