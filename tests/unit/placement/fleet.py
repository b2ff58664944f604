"""Small fleets and workloads for placement tests."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from libs.schemas.devices import HardwareType, Health
from libs.schemas.workload import WorkloadSpec
from services.scheduler.placement import (
    Allocation,
    DeviceInfo,
    FleetSnapshot,
    HostInfo,
    PendingWorkload,
    SiteLink,
    build_snapshot,
)

GPU = HardwareType.GPU
NPU = HardwareType.NPU

PROFILES: dict[str, dict[str, Any]] = {
    "a100": dict(hardware_type=GPU, vendor="nvidia", model="A100-SXM4-80GB", memory_mib=81920,
                 compute_units=312.0, driver_version="550.54.14", runtimes={"cuda": "12.4"}),
    "a100-old": dict(hardware_type=GPU, vendor="nvidia", model="A100-SXM4-80GB", memory_mib=81920,
                     compute_units=312.0, driver_version="525.85.12", runtimes={"cuda": "12.0"}),
    "910b": dict(hardware_type=NPU, vendor="huawei", model="Ascend910B3", memory_mib=65536,
                 compute_units=313.0, driver_version="24.1.rc2", runtimes={"cann": "8.0.RC1"}),
    "mi300": dict(hardware_type=GPU, vendor="amd", model="MI300X", memory_mib=196608,
                  compute_units=1307.0, driver_version="6.7.0", runtimes={"rocm": "6.0.2"}),
}


def host(hid: str, site: str = "bj", up: bool = True, labels: dict[str, str] | None = None,
         arch: str = "x86_64", **kw: Any) -> HostInfo:
    return HostInfo(hid, site, up, labels or {}, arch, **kw)


def devices(hid: str, profile: str, n: int, *, link: str | None = "nv0", unhealthy: Iterable[int] = (),
            start: int = 0) -> list[DeviceInfo]:
    bad = set(unhealthy)
    return [DeviceInfo(f"{hid}/{profile}{i}", hid, **PROFILES[profile], link_group=link,
                       health=Health.UNHEALTHY if i in bad else Health.HEALTHY)
            for i in range(start, start + n)]


def fleet(spec: dict[str, tuple[str, int]], *, sites: dict[str, str] | None = None,
          allocations: Iterable[Allocation] = (), links: Iterable[SiteLink] = (),
          down: Iterable[str] = ()) -> FleetSnapshot:
    """``{"h1": ("a100", 8)}`` → hosts with that many devices of the profile."""
    sites = sites or {}
    off = set(down)
    hosts = [host(h, sites.get(h, "bj"), up=h not in off) for h in spec]
    devs = [d for h, (p, n) in spec.items() for d in devices(h, p, n)]
    return build_snapshot(hosts, devs, allocations, links)


def wl(wid: str, **spec: Any) -> PendingWorkload:
    spec.setdefault("name", wid)
    return PendingWorkload(wid, WorkloadSpec.model_validate(spec))


def check_valid(decision: Any, snap: FleetSnapshot, batch: list[PendingWorkload]) -> None:
    """Invariants every decision must keep: capacity (devices, the hosts' CPUs and memory), health, gangs,
    one host per replica."""
    specs = {w.id: w.spec for w in batch}
    evicted = {p.workload_id for p in decision.preemptions}
    share = snap.dev_free_share.copy()
    mem = snap.dev_free_mem.copy()
    cpu_free, host_mem = snap.host_cpu_free.copy(), snap.host_mem_free.copy()
    for alloc in snap.allocations:
        if alloc.workload_id in evicted:
            for ad in alloc.devices:
                d = snap.dev_index[ad.device_id]
                share[d] += ad.share
                mem[d] += ad.memory_mib if ad.memory_mib is not None else round(ad.share * snap.dev_mem[d])
            for hold in alloc.hosts:
                cpu_free[snap.host_index[hold.host_id]] += hold.cpu
                host_mem[snap.host_index[hold.host_id]] += hold.memory_mib
    seen: set[tuple[str, int]] = set()
    for a in decision.assignments:
        assert (a.workload_id, a.replica) not in seen, "replica placed twice"
        seen.add((a.workload_id, a.replica))
        h = snap.host_index[a.host_id]
        assert snap.host_up[h], f"{a.host_id} is down"
        spec = specs[a.workload_id]
        hw = spec.alternatives[a.alternative]
        demand = spec.demand(a.alternative)
        assert (a.cpu, a.host_memory_mib) == (demand.cpu, demand.host_memory_mib)
        cpu_free[h] -= a.cpu
        host_mem[h] -= a.host_memory_mib
        if hw.is_cpu:
            assert not a.device_ids and snap.host_cpu_pool[h] >= 0, "CPU-only work on a host without CPUs"
        elif hw.compute_units is None:
            assert len(a.device_ids) == hw.count
        for dev_id, s, m in zip(a.device_ids, a.shares, a.memory_mib, strict=True):
            d = snap.dev_index[dev_id]
            prof = snap.profiles[snap.dev_profile[d]]
            assert hw.type == "any" or str(prof.hardware_type) == str(hw.type), "device of another type"
            assert not hw.models or any(fnmatch.fnmatchcase(prof.model.lower(), g.lower()) for g in hw.models), \
                f"{prof.model} matches none of {hw.models}"
            assert snap.dev_host[d] == h, "device not on the assigned host"
            assert snap.dev_usable[d], f"{dev_id} is unhealthy"
            share[d] -= s
            mem[d] -= m
    assert (share > -1e-6).all(), "device share oversubscribed"
    assert (mem >= 0).all(), "device memory oversubscribed"
    assert (cpu_free >= 0).all(), "host CPUs oversubscribed"
    assert (host_mem >= 0).all(), "host memory oversubscribed"
    by_wl: dict[str, int] = {}
    for wid, _r in seen:
        by_wl[wid] = by_wl.get(wid, 0) + 1
    for wid, n in by_wl.items():
        if specs[wid].gang:
            assert n == specs[wid].replicas, f"gang {wid} partially placed"
