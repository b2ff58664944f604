"""The placement engine's input records: hosts, devices, what running work holds (devices, and the CPUs and
memory of hosts), site links, device profiles; and the arithmetic of laying holdings over free capacity.

The scheduler service fills these from its own tables; ``snapshot.build_snapshot`` turns them into
column arrays."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from libs.schemas.devices import HardwareType, Health

IntArray = npt.NDArray[np.int64]
I32Array = npt.NDArray[np.int32]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: CPUs or MiB of a host that does not report them: never the limit.
UNLIMITED = 1 << 40


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One host. ``cpus``/``memory_mib``: what replicas may take (allocatable); None: not reported."""

    id: str
    site: str
    up: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    arch: str = "x86_64"
    cpus: int | None = None
    memory_mib: int | None = None
    cpu_vendor: str = ""
    cpu_model: str = ""
    cpu_features: frozenset[str] = frozenset()
    numa_cpus: tuple[int, ...] = ()  # allocatable CPUs per NUMA node, by node id


class HostHold(NamedTuple):
    """What an allocation holds of one host besides devices: logical CPUs and host memory."""

    host_id: str
    cpu: int = 0
    memory_mib: int = 0
    numa_node: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One device as the scheduler sees it. ``compute_units`` comes from the catalog."""

    id: str
    host_id: str
    hardware_type: HardwareType
    vendor: str
    model: str
    memory_mib: int = 0
    compute_units: float = 0.0
    driver_version: str | None = None
    runtimes: Mapping[str, str] = field(default_factory=dict)
    health: Health = Health.HEALTHY
    link_group: str | None = None
    numa_node: int | None = None  # the host's NUMA node it hangs off, where known

    @property
    def usable(self) -> bool:
        """Unhealthy devices are never placed on; ``unknown`` (probe could not tell) is usable."""
        return self.health != Health.UNHEALTHY


class AllocatedDevice(NamedTuple):
    device_id: str
    share: float = 1.0
    memory_mib: int | None = None  # None: share * device memory


@dataclass(frozen=True, slots=True)
class Allocation:
    """Running (or already placed) work holding devices."""

    workload_id: str
    priority: int
    preemptible: bool
    tenant: str | None
    devices: tuple[AllocatedDevice, ...]
    hosts: tuple[HostHold, ...] = ()  # CPUs and host memory held, per host


@dataclass(frozen=True, slots=True)
class SiteLink:
    """Measured network between two sites (symmetric)."""

    a: str
    b: str
    bandwidth_gbps: float
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything feasibility needs to know about a device that is not per-device state."""

    hardware_type: HardwareType
    vendor: str
    model: str
    memory_mib: int
    compute_units: float
    driver_version: str | None
    runtimes: tuple[tuple[str, str], ...]

    @property
    def runtime_map(self) -> dict[str, str]:
        return dict(self.runtimes)


def apply_allocations(allocations: Sequence[Allocation], dev_index: Mapping[str, int], dev_mem: npt.NDArray[np.int64]
                       ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], dict[int, tuple[int, ...]]]:
    """Free share and memory per device once ``allocations`` hold theirs, and which allocations hold each
    device. Devices the snapshot does not have are ignored."""
    free_share = np.ones(len(dev_mem), dtype=np.float64)
    free_mem = dev_mem.copy()
    out: dict[int, list[int]] = {}
    for ai, alloc in enumerate(allocations):
        for dev in alloc.devices:
            d = dev_index.get(dev.device_id)
            if d is None:
                continue
            out.setdefault(d, []).append(ai)
            free_share[d] -= dev.share
            free_mem[d] -= dev.memory_mib if dev.memory_mib is not None else round(dev.share * dev_mem[d])
    np.clip(free_share, 0.0, 1.0, out=free_share)
    np.clip(free_mem, 0, None, out=free_mem)
    return free_share, free_mem, {d: tuple(ais) for d, ais in out.items()}


def numa_totals(hosts: Sequence[HostInfo]) -> dict[tuple[int, int], int]:
    return {(h, node): n for h, host in enumerate(hosts) for node, n in enumerate(host.numa_cpus)}


def take_holds(holds: Iterable[HostHold], host_index: Mapping[str, int], cpu_free: IntArray, mem_free: IntArray,
          numa_free: dict[tuple[int, int], int], sign: int) -> None:
    """Give back (sign 1) or take (-1) what ``holds`` hold of their hosts (unknown hosts are ignored)."""
    for hold in holds:
        h = host_index.get(hold.host_id)
        if h is None:
            continue
        cpu_free[h] = max(0, int(cpu_free[h]) + sign * hold.cpu)
        mem_free[h] = max(0, int(mem_free[h]) + sign * hold.memory_mib)
        key = (h, hold.numa_node) if hold.numa_node is not None else None
        if key is not None and key in numa_free:
            numa_free[key] = max(0, numa_free[key] + sign * hold.cpu)


def index_allocs(allocations: Sequence[Allocation], dev_index: Mapping[str, int]) -> dict[int, tuple[int, ...]]:
    out: dict[int, list[int]] = {}
    for ai, alloc in enumerate(allocations):
        for dev in alloc.devices:
            d = dev_index.get(dev.device_id)
            if d is not None:
                out.setdefault(d, []).append(ai)
    return {d: tuple(ais) for d, ais in out.items()}


