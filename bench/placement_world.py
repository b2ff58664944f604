"""The placement benchmark's synthetic world: a fleet of mixed hosts, running work to fill it, a trace of
workloads (every kind of request the placer takes). One seed always gives the same fleet and trace."""

from __future__ import annotations

import random
from typing import Any

from libs.schemas.catalog import RuntimeDriverRule
from libs.schemas.devices import HardwareType, Health
from libs.schemas.workload import WorkloadSpec
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    DeviceInfo,
    HostInfo,
    PendingWorkload,
    PlacementRules,
)

SITES = ["bj", "sh", "gz", "sz", "hz", "cd"]
# (weight, hardware type, vendor, model, memory MiB, CU, drivers, runtime name, runtime versions, link split)
KINDS: list[tuple[float, HardwareType, str, str, int, float, list[str], str, list[str], int]] = [
    (0.35, HardwareType.GPU, "nvidia", "A100-SXM4-80GB", 81920, 312, ["535.104.05", "550.54.14"], "cuda",
     ["12.2", "12.4"], 8),
    (0.15, HardwareType.GPU, "nvidia", "H100-SXM5-80GB", 81920, 989, ["550.54.14"], "cuda", ["12.4"], 8),
    (0.25, HardwareType.NPU, "huawei", "Ascend910B3", 65536, 313, ["24.1.rc2"], "cann", ["8.0.RC1", "8.0.RC3"], 4),
    (0.10, HardwareType.GPU, "amd", "MI300X", 196608, 1307, ["6.7.0"], "rocm", ["6.0.2"], 8),
    (0.08, HardwareType.DCU, "hygon", "K100-AI", 65536, 196, ["6.3.8"], "dtk", ["24.04.1"], 8),
    (0.07, HardwareType.MLU, "cambricon", "MLU370-X8", 49152, 96, ["5.10.22"], "neuware", ["3.8.4"], 4),
]
DRIVER_RULES = PlacementRules.of(runtime_driver=[
    RuntimeDriverRule(id=f"cuda-{v}", vendor="nvidia", runtime="cuda", runtime_versions=f">={v},<{nxt}",
                      min_driver_version=drv, source="CUDA toolkit release notes")
    for v, nxt, drv in [("12.0", "12.1", "525.60.13"), ("12.1", "12.2", "530.30.02"), ("12.2", "12.3", "535.54.03"),
                        ("12.3", "12.4", "545.23.06"), ("12.4", "12.5", "550.54.14")]
])


# -- fleet ---------------------------------------------------------------------------------------
def make_fleet(n_hosts: int, rng: random.Random) -> tuple[list[HostInfo], list[DeviceInfo]]:
    hosts: list[HostInfo] = []
    devices: list[DeviceInfo] = []
    weights = [k[0] for k in KINDS]
    for h in range(n_hosts):
        kind = rng.choices(KINDS, weights)[0]
        _, hw, vendor, model, mem, cu, drivers, rt, rt_versions, split = kind
        hid = f"h{h:05d}"
        site = SITES[h % len(SITES)]
        hosts.append(HostInfo(hid, site, up=rng.random() > 0.01, labels={"pool": "prod"},
                              arch="aarch64" if vendor == "huawei" else "x86_64"))
        di = rng.randrange(len(drivers))
        for i in range(8):
            devices.append(DeviceInfo(
                f"{hid}-{i}", hid, hw, vendor, model, mem, cu, drivers[di], {rt: rt_versions[min(di, len(rt_versions) - 1)]},
                Health.UNHEALTHY if rng.random() < 0.003 else Health.HEALTHY, f"l{i // split}"))
    return hosts, devices


def busy_allocations(hosts: list[HostInfo], devices: list[DeviceInfo], target_free: int,
                     rng: random.Random) -> list[Allocation]:
    """Running work leaving ~target_free devices free: about half of them on untouched hosts,
    half on partly used hosts (1-7 devices used, sometimes a half-shared device); every other
    host is fully used."""
    by_host: dict[str, list[DeviceInfo]] = {}
    for d in devices:
        by_host.setdefault(d.host_id, []).append(d)
    order = list(by_host)
    rng.shuffle(order)
    whole_budget = target_free // 2
    part_budget = target_free - whole_budget
    allocs: list[Allocation] = []
    for k, hid in enumerate(order):
        devs = by_host[hid]
        prio = rng.choice([50, 100, 100, 300])
        if whole_budget >= len(devs):
            whole_budget -= len(devs)
            continue
        used = len(devs)
        if part_budget > 0:
            used = max(1, len(devs) - min(part_budget, rng.randint(1, 7)))
            part_budget -= len(devs) - used
        allocs.append(Allocation(f"run-{k}", prio, False, "t0", tuple(AllocatedDevice(d.id) for d in devs[:used])))
        if used < len(devs) and rng.random() < 0.15:  # a shared device among the free ones
            allocs.append(Allocation(f"share-{k}", prio, False, "t0", (AllocatedDevice(devs[used].id, 0.5),)))
    return allocs


# -- trace ---------------------------------------------------------------------------------------
def make_trace(n: int, rng: random.Random) -> list[PendingWorkload]:
    out: list[PendingWorkload] = []
    for i in range(n):
        r = rng.random()
        spec: dict[str, Any] = {"name": f"w{i}", "priority": rng.choices([0, 100, 500, 900], [20, 55, 20, 5])[0],
                                "duration_s": rng.choice([600, 1800, 3600, 4 * 3600, 12 * 3600])}
        placement: dict[str, Any] = {}
        count = rng.choices([1, 2, 3, 4, 8], [40, 20, 5, 20, 15])[0]
        if r < 0.45:
            hw: dict[str, Any] = {"type": "gpu", "count": count}
            v = rng.random()
            if v < 0.5:
                hw["vendor"] = "nvidia"
                if rng.random() < 0.3:
                    spec["runtime"] = {"requires": [rng.choice(["cuda>=12.1", "cuda>=12.4"])]}
            elif v < 0.6:
                hw["vendor"] = "amd"
        elif r < 0.53:
            hw = {"type": "gpu", "share": rng.choice([0.25, 0.5]), "memory_gib": rng.choice([10, 20, 30])}
        elif r < 0.78:
            hw = {"type": "npu", "count": min(count, 4) if rng.random() < 0.5 else count}
            if hw["count"] in (2, 4) and rng.random() < 0.5:
                placement["topology"] = "same_link_group"
        elif r < 0.85:
            hw = {"type": rng.choice(["dcu", "mlu"]), "count": min(count, 4)}
        else:
            hw = {"type": "any", "compute_units": rng.choice([300, 600, 1000, 2000])}
        spec["hardware"] = hw
        if rng.random() < 0.08 and "share" not in hw:
            spec["replicas"] = rng.choice([2, 3, 4])
            spec["gang"] = rng.random() < 0.6
            if rng.random() < 0.4:
                placement["spread"] = rng.choice(["host", "site"])
        s = rng.random()
        if s < 0.15:
            placement["sites"] = rng.sample(SITES, 3)
        elif s < 0.25:
            placement["avoid_sites"] = [rng.choice(SITES)]
        if rng.random() < 0.15:
            placement["data_site"] = rng.choice(SITES)
            placement["data_gib"] = rng.choice([50, 200, 1000])
        if placement:
            spec["placement"] = placement
        spec["tenant"] = rng.choice(["t1", "t2", "t3"])
        out.append(PendingWorkload(f"w{i}", WorkloadSpec.model_validate(spec)))
    return out
