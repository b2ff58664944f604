"""placement.numa 'single': a replica's devices and CPUs from one NUMA node of its host."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.scheduler.placement import Allocation, HostHold, build_snapshot, place, place_greedy
from tests.unit.placement.fleet import check_valid, devices, host, wl


def _fleet(allocations=()):
    """One host, two nodes of 32 CPUs, 4 A100 on each node."""
    devs = [replace(d, numa_node=0 if i < 4 else 1) for i, d in enumerate(devices("h", "a100", 8, link=None))]
    return build_snapshot([host("h", cpus=64, memory_mib=1 << 20, numa_cpus=(32, 32))], devs, allocations)


def _nodes(snap, a):
    return {int(snap.dev_numa[snap.dev_index[d]]) for d in a.device_ids}


@pytest.mark.parametrize("placer", ["cpsat", "best_fit"])
def test_numa_single_takes_devices_and_cpus_of_one_node(placer):
    snap = _fleet()
    batch = [wl("j", hardware={"type": "gpu", "count": 4}, resources={"cpu": 16}, placement={"numa": "single"})]
    d = place(batch, snap) if placer == "cpsat" else place_greedy(batch, snap)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert a.numa_node is not None and _nodes(snap, a) == {a.numa_node}


def test_numa_single_more_devices_than_a_node_has_waits_and_says_why():
    snap = _fleet()
    d = place([wl("j", hardware={"type": "gpu", "count": 6}, placement={"numa": "single"})], snap)
    [p] = d.pending
    assert p.counts == {"no NUMA node with room for its devices and CPUs": 1}, p.counts
    # without the option the same job fits across both nodes
    assert place([wl("j", hardware={"type": "gpu", "count": 6})], snap).assignments


def test_numa_single_avoids_the_node_whose_cpus_are_held():
    snap = _fleet([Allocation("hog", 10, False, None, (), (HostHold("h", 30, 1024, 0),))])
    batch = [wl("j", hardware={"type": "gpu", "count": 2}, resources={"cpu": 8}, placement={"numa": "single"})]
    d = place(batch, snap)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert a.numa_node == 1 and _nodes(snap, a) == {1}
    after = snap.with_decision(d, batch)
    assert after.numa_free[(0, 1)] == 32 - 8 and after.numa_free[(0, 0)] == 2


@pytest.mark.parametrize("placer", ["cpsat", "best_fit"])
def test_numa_single_two_jobs_in_one_batch_get_a_node_each(placer):
    snap = _fleet()
    batch = [wl(f"j{i}", hardware={"type": "gpu", "count": 4}, resources={"cpu": 20}, placement={"numa": "single"})
             for i in range(2)]
    d = place(batch, snap) if placer == "cpsat" else place_greedy(batch, snap)
    check_valid(d, snap, batch)
    assert sorted(a.numa_node or 0 for a in d.assignments) == [0, 1] and all(a.numa_node is not None for a in d.assignments)
    for a in d.assignments:
        assert _nodes(snap, a) == {a.numa_node}


def test_numa_single_cpu_work_fits_one_node_or_waits():
    snap = _fleet()
    ok = place([wl("c", hardware={"type": "cpu"}, resources={"cpu": 30}, placement={"numa": "single"})], snap)
    assert ok.assignments[0].numa_node in (0, 1)
    big = place([wl("c", hardware={"type": "cpu"}, resources={"cpu": 40}, placement={"numa": "single"})], snap)
    assert not big.assignments and "NUMA" in big.pending[0].reason
    assert place([wl("c", hardware={"type": "cpu"}, resources={"cpu": 40})], snap).assignments
