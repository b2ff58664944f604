"""Random fleets and batches: every decision keeps the invariants, whatever the placer."""

from __future__ import annotations

import random

import pytest

from libs.schemas.devices import Health
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    DeviceInfo,
    HostHold,
    HostInfo,
    build_snapshot,
    place,
    place_greedy,
)
from tests.unit.placement.fleet import PROFILES, check_valid, wl


def _random_case(seed: int):
    rng = random.Random(seed)
    hosts, devs, allocs = [], [], []
    cpus = seed % 2 == 1  # odd seeds: hosts report CPUs and memory, work asks for them, some is CPU-only
    for h in range(rng.randint(3, 12)):
        hid = f"h{h}"
        site, up = rng.choice(["bj", "sh", "gz"]), rng.random() > 0.1
        if cpus:
            hosts.append(HostInfo(hid, site, up=up, cpus=rng.choice([8, 32, 64]), memory_mib=rng.choice([16, 64]) * 1024,
                                  arch=rng.choice(["x86_64", "aarch64"])))
            if rng.random() < 0.3:  # a CPU-only host, part of it in use
                allocs.append(Allocation(f"cpu{h}", rng.choice([10, 500]), rng.random() < 0.5, "t1", (),
                                         (HostHold(hid, rng.randint(1, 8), 4096),)))
                continue
        else:
            hosts.append(HostInfo(hid, site, up=up))
        prof = rng.choice(list(PROFILES))
        n = rng.choice([1, 2, 4, 8])
        for i in range(n):
            devs.append(DeviceInfo(f"{hid}/{i}", hid, **PROFILES[prof], link_group=f"l{i // 4}",
                                   health=Health.UNHEALTHY if rng.random() < 0.05 else Health.HEALTHY))
        used = rng.randint(0, n)
        if used:
            allocs.append(Allocation(f"run{h}", rng.choice([10, 100, 500]), rng.random() < 0.5, "t1",
                                     tuple(AllocatedDevice(f"{hid}/{i}") for i in range(used)),
                                     (HostHold(hid, rng.randint(1, 24), 8192),) if cpus else ()))
        if used < n and rng.random() < 0.3:
            allocs.append(Allocation(f"share{h}", 50, True, "t2", (AllocatedDevice(f"{hid}/{used}", 0.5),)))
    batch = []
    for w in range(rng.randint(1, 25)):
        r = rng.random()
        spec: dict = {"priority": rng.choice([0, 100, 600]), "tenant": rng.choice(["t1", "t2"])}
        if r < 0.5:
            spec["hardware"] = {"type": rng.choice(["gpu", "npu"]), "count": rng.choice([1, 2, 4, 8])}
        elif r < 0.7:
            spec["hardware"] = {"type": "gpu", "share": rng.choice([0.25, 0.5]), "memory_gib": rng.choice([8, 30])}
        else:
            spec["hardware"] = {"type": "any", "compute_units": rng.choice([300, 700, 1500])}
        if cpus:
            spec["resources"] = {"cpu": rng.choice([1, 4, 16]), "memory_gib": rng.choice([1, 8, 24])}
            if rng.random() < 0.25:
                spec["hardware"] = {"type": "cpu", **({"arch": "aarch64"} if rng.random() < 0.3 else {})}
        if rng.random() < 0.3 and "share" not in spec["hardware"]:
            spec["replicas"] = rng.randint(2, 3)
            spec["gang"] = rng.random() < 0.5
            spec["placement"] = {"spread": rng.choice(["none", "host", "site"])}
        elif rng.random() < 0.2 and spec["hardware"].get("count", 1) > 1:
            spec["placement"] = {"topology": "same_link_group"}
        batch.append(wl(f"w{w}", **spec))
    return build_snapshot(hosts, devs, allocs), batch


@pytest.mark.parametrize("seed", range(40))
def test_random_fleet_decisions_keep_invariants(seed):
    snap, batch = _random_case(seed)
    quotas = {"t2": {"gpu": 6}} if seed % 3 == 0 else None
    decisions = [place(batch, snap, quotas=quotas), place(batch, snap, quotas=quotas, time_limit_s=0),
                 place_greedy(batch, snap, quotas=quotas), place_greedy(batch, snap, quotas=quotas, strategy="first_fit")]
    for d in decisions:
        check_valid(d, snap, batch)
        placed = {(a.workload_id, a.replica) for a in d.assignments}
        for p in d.pending:
            assert p.reason
            assert not placed & {(p.workload_id, r) for r in p.replicas}
        for w in batch:
            n = sum(1 for a in d.assignments if a.workload_id == w.id)
            missing = sum(len(p.replicas) for p in d.pending if p.workload_id == w.id)
            assert n + missing == w.spec.replicas
        if quotas:
            held = sum(x.share for a in snap.allocations if a.tenant == "t2"
                       for x in a.devices if "gpu" in str(snap.profiles[snap.dev_profile[snap.dev_index[x.device_id]]].hardware_type))
            used = sum(share for a in d.assignments
                       if next(w for w in batch if w.id == a.workload_id).spec.tenant == "t2"
                       for dev, share in zip(a.device_ids, a.shares, strict=True)
                       if snap.profiles[snap.dev_profile[snap.dev_index[dev]]].hardware_type == "gpu")
            assert used <= max(0, 6 - held) + 1e-9 or used == 0
    # the optimiser never places fewer replicas than its own greedy fallback
    assert len(decisions[0].assignments) >= len(decisions[1].assignments) - sum(
        1 for p in decisions[0].preemptions)


@pytest.mark.parametrize("seed", range(12))
def test_derived_snapshot_places_like_a_freshly_built_one(seed):
    """Filter verdicts and pool masks are kept with the fleet across with_decision; a chain of
    derived snapshots must decide exactly as snapshots built from scratch."""
    snap, batch = _random_case(seed)
    _, later = _random_case(seed + 100)
    hosts, devs = snap.hosts, _device_infos(snap)
    for chunk in (batch, later, batch):
        derived = place(chunk, snap)
        fresh = place(chunk, build_snapshot(hosts, devs, snap.allocations))
        assert derived.assignments == fresh.assignments
        assert [(p.workload_id, p.reason) for p in derived.pending] == [(p.workload_id, p.reason) for p in fresh.pending]
        snap = snap.with_decision(derived, chunk)


def _device_infos(snap):
    out = []
    for d, dev_id in enumerate(snap.dev_ids):
        prof = snap.profiles[snap.dev_profile[d]]
        out.append(DeviceInfo(dev_id, snap.hosts[snap.dev_host[d]].id, prof.hardware_type, prof.vendor, prof.model,
                              prof.memory_mib, prof.compute_units, prof.driver_version, dict(prof.runtimes),
                              Health.HEALTHY if snap.dev_usable[d] else Health.UNHEALTHY,
                              f"l{snap.dev_link[d]}" if snap.dev_link[d] >= 0 else None))
    return out


def test_with_decision_applies_assignments_and_preemptions():
    snap, batch = _random_case(3)
    d = place(batch, snap)
    after = snap.with_decision(d, batch)
    taken = sum(sum(a.shares) for a in d.assignments)
    freed = sum(x.share for p in d.preemptions for a in snap.allocations if a.workload_id == p.workload_id
                for x in a.devices)
    before = float(snap.dev_free_share.sum())
    assert abs(float(after.dev_free_share.sum()) - (before - taken + freed)) < 1e-6
    assert {a.workload_id for a in after.allocations} >= {a.workload_id for a in d.assignments}
