"""A host's CPUs and memory are capacity like devices: CPU-only work, CPUs and memory beside devices, in
every stage (greedy, CP-SAT, preemption, explanations)."""

from __future__ import annotations

from typing import Any

import pytest

from services.scheduler.placement import (
    Allocation,
    HostHold,
    build_snapshot,
    place,
    place_greedy,
)
from tests.unit.placement.fleet import check_valid, devices, host, wl

ARM: dict[str, Any] = {"arch": "aarch64", "cpu_vendor": "huawei", "cpu_model": "HiSilicon Kunpeng-920", "cpu_features": frozenset({"asimd", "sve"})}
X86: dict[str, Any] = {"arch": "x86_64", "cpu_vendor": "intel", "cpu_model": "Intel(R) Xeon(R) Platinum 8468",
       "cpu_features": frozenset({"avx2", "avx512f", "amx_tile"})}


def _fleet(allocations=()):
    """A GPU host (8 A100, 128 CPUs), an x86 CPU-only server (64 CPUs) and an ARM one (96 CPUs)."""
    hosts = [host("gpu1", cpus=128, memory_mib=1024 * 1024, **X86), host("x86", cpus=64, memory_mib=256 * 1024, **X86),
             host("arm", cpus=96, memory_mib=512 * 1024, **ARM)]
    return build_snapshot(hosts, devices("gpu1", "a100", 8), allocations)


@pytest.mark.parametrize("placer", ["cpsat", "best_fit"])
def test_host_resources_cpu_work_lands_on_the_arm_server(placer):
    snap = _fleet()
    batch = [wl("etl", hardware={"type": "cpu", "arch": "aarch64"}, resources={"cpu": 16, "memory_gib": 64})]
    d = place(batch, snap) if placer == "cpsat" else place_greedy(batch, snap)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert (a.host_id, a.device_ids, a.cpu, a.host_memory_mib) == ("arm", (), 16, 64 * 1024)


def test_host_resources_cpu_work_prefers_cpu_only_hosts():
    snap = _fleet()
    # the GPU host's CPU pool is the tightest fit by CPUs left, but CPU-only hosts come first
    batch = [wl(f"c{i}", hardware={"type": "cpu", "arch": "x86_64"}, resources={"cpu": 8}) for i in range(4)]
    d = place(batch, snap)
    check_valid(d, snap, batch)
    assert {a.host_id for a in d.assignments} == {"x86"}


def test_host_resources_demo_bug_cpu_count_one_is_placed():
    """{"type": "cpu", "count": 1} waited forever ("no cpu" on every host): it now takes one CPU."""
    snap = _fleet()
    batch = [wl("cpu1", hardware={"type": "cpu", "count": 1})]
    d = place(batch, snap)
    [a] = d.assignments
    assert a.cpu == 1 and a.host_id in ("x86", "arm") and not d.pending


def test_host_resources_device_replicas_naming_no_cpus_share_a_host_with_one_cpu_left():
    """Two GPU replicas that name no CPUs on a host with one allocatable CPU: both run (a default of one whole
    CPU each left the second pending, "1 host: not enough free CPU", with seven GPUs idle)."""
    snap = build_snapshot([host("small", cpus=1, memory_mib=16 * 1024, **X86)], devices("small", "a100", 8), ())
    batch = [wl(f"r{i}", hardware={"type": "gpu"}) for i in range(2)]
    for d in (place(batch, snap), place_greedy(batch, snap)):
        check_valid(d, snap, batch)
        assert not d.pending and sorted(a.cpu for a in d.assignments) == [0, 0]
    asks = [wl("pinned", hardware={"type": "gpu"}, resources={"cpu": 1}),
            wl("also", hardware={"type": "gpu"}, resources={"cpu": 1})]
    d = place(asks, snap)
    assert len(d.assignments) == 1 and len(d.pending) == 1  # a CPU asked for is still held whole


def test_host_resources_cpu_features_and_arch_filter_and_explain():
    snap = _fleet()
    batch = [wl("amx", hardware={"type": "cpu", "arch": "aarch64", "cpu_features": ["amx_tile"]})]
    d = place(batch, snap)
    [p] = d.pending
    assert p.counts == {"CPU architecture not aarch64": 2, "CPU lacks amx_tile": 1}, p.counts


def test_host_resources_gpu_job_waits_for_cpus_with_a_cpu_explanation():
    busy = Allocation("cpu-hog", 100, False, "t1", (), (HostHold("gpu1", 120, 1024),))
    snap = _fleet([busy])
    batch = [wl("train", hardware={"type": "gpu", "count": 8}, resources={"cpu": 32, "memory_gib": 256})]
    for d in (place(batch, snap), place_greedy(batch, snap)):
        assert not d.assignments
        [p] = d.pending
        assert p.counts.get("not enough free CPU") == 1, p.reason
        assert "1 host: not enough free CPU" in p.reason
    # the hog ends: the same job is placed, holding its CPUs and memory
    freed = _fleet()
    d = place(batch, freed)
    [a] = d.assignments
    assert (a.host_id, len(a.device_ids), a.cpu, a.host_memory_mib) == ("gpu1", 8, 32, 256 * 1024)
    after = freed.with_decision(d, batch)
    assert after.host_cpu_free[after.host_index["gpu1"]] == 128 - 32
    assert after.pool_free[after.host_cpu_pool[after.host_index["gpu1"]]] == 96


def test_host_resources_more_cpus_than_any_host_is_explained():
    snap = _fleet()
    d = place([wl("huge", hardware={"type": "gpu", "count": 1}, resources={"cpu": 200})], snap)
    [p] = d.pending
    assert p.counts.get("fewer than 200 allocatable CPUs") == 3, p.counts


@pytest.mark.parametrize("placer", ["cpsat", "greedy-fallback", "best_fit"])
def test_host_resources_two_gpu_jobs_never_overcommit_the_hosts_cpus(placer):
    snap = _fleet()
    # each fits the devices (4 + 4 of 8) but not the CPUs together (2 x 100 of 128)
    batch = [wl(f"j{i}", hardware={"type": "gpu", "count": 4}, resources={"cpu": 100}) for i in range(2)]
    d = (place(batch, snap) if placer == "cpsat" else place(batch, snap, time_limit_s=0) if placer != "best_fit"
         else place_greedy(batch, snap))
    check_valid(d, snap, batch)
    assert len(d.assignments) == 1 and len(d.pending) == 1
    assert "had room at batch start" in d.pending[0].reason  # the other job took the CPUs in this batch
    left = [w for w in batch if w.id == d.pending[0].workload_id]
    again = place(left, snap.with_decision(d, batch))
    assert not again.assignments and again.pending[0].counts == {"not enough free CPU": 1,
                                                                 "fewer than 100 allocatable CPUs": 2}


def test_host_resources_memory_is_capacity_too():
    snap = _fleet()
    batch = [wl(f"m{i}", hardware={"type": "cpu"}, resources={"cpu": 1, "memory_gib": 200}) for i in range(4)]
    d = place(batch, snap)
    check_valid(d, snap, batch)
    # x86: 256 GiB → one; arm: 512 → two; the GPU host (1 TiB) takes the last
    per_host = sorted(a.host_id for a in d.assignments)
    assert per_host == ["arm", "arm", "gpu1", "x86"], per_host


def test_host_resources_preemption_stops_cpu_work_for_a_gpu_job():
    low = [Allocation(f"batch{i}", 10, True, "t1", (), (HostHold("gpu1", 60, 1024),)) for i in range(2)]
    snap = _fleet(low)
    batch = [wl("urgent", hardware={"type": "gpu", "count": 8}, resources={"cpu": 40}, priority=500)]
    d = place(batch, snap)
    check_valid(d, snap, batch)
    assert [a.host_id for a in d.assignments] == ["gpu1"]
    assert len(d.preemptions) == 1 and d.preemptions[0].workload_id.startswith("batch")


def test_host_resources_preemption_frees_cpus_for_cpu_work():
    low = Allocation("low", 10, True, "t1", (), (HostHold("arm", 90, 1024),))
    snap = _fleet([low])
    batch = [wl("hi", hardware={"type": "cpu", "arch": "aarch64"}, resources={"cpu": 64}, priority=500)]
    d = place(batch, snap)
    check_valid(d, snap, batch)
    assert [a.host_id for a in d.assignments] == ["arm"] and [p.workload_id for p in d.preemptions] == ["low"]
