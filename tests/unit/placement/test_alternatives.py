"""Ordered hardware alternatives: the first that can be placed wins, before anything is preempted; the
placement names the alternative taken; a workload that fits none says why for each."""

from __future__ import annotations

from services.scheduler.placement import AllocatedDevice, Allocation, build_snapshot, place_alternatives
from tests.unit.placement.fleet import check_valid, devices, host, wl

ALTS = [{"type": "gpu", "model": "MI300*", "count": 8},
        {"type": "npu", "model": "Ascend910B*", "count": 8, "resources": {"cpu": 48}},
        {"type": "gpu", "model": ["A100*", "H100*"], "count": 8}]


def _fleet(allocations=()):
    hosts = [host("amd", cpus=128, memory_mib=1 << 20), host("asc", cpus=192, memory_mib=1 << 20),
             host("nv", cpus=128, memory_mib=1 << 20)]
    devs = devices("amd", "mi300", 8, link=None) + devices("asc", "910b", 8, link=None) + \
        devices("nv", "a100", 8, link=None)
    return build_snapshot(hosts, devs, allocations)


def _busy(host_id: str, profile: str, wid: str, priority: int = 10) -> Allocation:
    return Allocation(wid, priority, True, None, tuple(AllocatedDevice(f"{host_id}/{profile}{i}") for i in range(8)))


def test_alternatives_first_choice_is_taken_when_it_fits():
    snap = _fleet()
    batch = [wl("pre", hardware=ALTS)]
    d = place_alternatives(batch, snap)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert (a.host_id, a.alternative) == ("amd", 0)


def test_alternatives_fall_back_to_the_second_with_its_own_resources():
    snap = _fleet([_busy("amd", "mi300", "other", priority=900)])
    batch = [wl("pre", hardware=ALTS, resources={"cpu": 32})]
    d = place_alternatives(batch, snap)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert (a.host_id, a.alternative, a.cpu, len(a.device_ids)) == ("asc", 1, 48, 8)


def test_alternatives_a_free_later_choice_comes_before_preempting_for_the_first():
    snap = _fleet([_busy("amd", "mi300", "low", priority=1)])
    batch = [wl("pre", hardware=ALTS, priority=500)]
    d = place_alternatives(batch, snap)
    check_valid(d, snap, batch)
    assert [(a.host_id, a.alternative) for a in d.assignments] == [("asc", 1)] and not d.preemptions


def test_alternatives_preempt_for_the_first_choice_preemption_can_free():
    snap = _fleet([_busy("amd", "mi300", "low-amd", priority=1), _busy("asc", "910b", "high-asc", priority=999),
                   _busy("nv", "a100", "low-nv", priority=1)])
    batch = [wl("pre", hardware=ALTS, priority=500)]
    d = place_alternatives(batch, snap)
    check_valid(d, snap, batch)
    assert [(a.host_id, a.alternative) for a in d.assignments] == [("amd", 0)]
    assert [p.workload_id for p in d.preemptions] == ["low-amd"]


def test_alternatives_a_gang_falls_back_whole_and_replicas_keep_their_numbers():
    snap = _fleet([_busy("amd", "mi300", "other", priority=900)])
    batch = [wl("g", hardware=[{"type": "gpu", "model": "MI300*", "count": 4}, {"type": "gpu", "model": "A100*",
                                                                                "count": 4}],
                replicas=2, gang=True)]
    d = place_alternatives(batch, snap)
    check_valid(d, snap, batch)
    assert sorted((a.replica, a.host_id, a.alternative) for a in d.assignments) == [(0, "nv", 1), (1, "nv", 1)]


def test_alternatives_pending_names_each_alternatives_reason_in_order():
    snap = _fleet([_busy("amd", "mi300", "a", 900), _busy("asc", "910b", "b", 900), _busy("nv", "a100", "c", 900)])
    batch = [wl("pre", hardware=ALTS)]
    d = place_alternatives(batch, snap)
    assert not d.assignments
    [p] = d.pending
    assert p.reason.startswith("alternative 0 (8 x gpu MI300*): ")
    assert "; else alternative 1 (8 x npu Ascend910B*): " in p.reason
    assert "; else alternative 2 (8 x gpu A100*|H100*): " in p.reason
    assert any(k.startswith("alternative 2: ") for k in p.counts), p.counts


def test_alternatives_single_requests_are_one_place_call():
    snap = _fleet([_busy("amd", "mi300", "low", priority=1)])
    batch = [wl("one", hardware=ALTS[0], priority=500)]
    d = place_alternatives(batch, snap)
    check_valid(d, snap, batch)
    assert [p.workload_id for p in d.preemptions] == ["low"] and d.assignments[0].alternative == 0
