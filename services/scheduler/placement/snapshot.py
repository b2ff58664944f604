"""An in-memory model of the fleet, built once per batch and read by every stage.

Inputs are small frozen dataclasses (``HostInfo``, ``DeviceInfo``, ``Allocation``,
``SiteLink``) that the scheduler service fills from its own tables. ``build_snapshot``
turns them into column arrays:

* devices are grouped into *pools*: the devices of one host that share one *profile*
  (hardware type, vendor, model, memory, compute units, driver, runtimes). Feasibility
  of runtime/framework/model filters is decided once per profile, capacity once per pool,
  so the hot paths never touch per-device Python objects;
* a host that reports its allocatable CPUs has one more pool, its *CPU pool* (profile: type
  ``cpu``, the CPU's vendor and model; no device rows), whose free count is the host's free
  logical CPUs: CPU-only work takes CPUs from it like whole devices from a device pool, and
  work on the host's devices takes its ``cpu`` from it too (``host_cpu_free``). Host memory
  is one more number per host (``host_mem_free``). A host that reports neither is not limited
  by them (and takes no CPU-only work). CPU pools come after every device pool
  (``n_dev_pools``);
* free capacity per device is a share fraction (1.0 = untouched) and free memory (MiB);
  ``pool_free`` counts whole free, healthy devices per pool;
* allocations (running work) are kept with their priority, preemptibility and tenant so
  preemption and quotas can be decided; ``tenant_usage`` sums devices per tenant and type;
* site-to-site bandwidth/latency form dense matrices for data-locality costs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from libs.schemas.devices import HardwareType
from services.scheduler.placement.inputs import (
    UNLIMITED,
    AllocatedDevice,
    Allocation,
    BoolArray,
    DeviceInfo,
    FloatArray,
    HostHold,
    HostInfo,
    I32Array,
    IntArray,
    Profile,
    SiteLink,
    apply_allocations,
    index_allocs,
    numa_totals,
    take_holds,
)

if TYPE_CHECKING:
    from services.scheduler.placement.result import PlacementDecision
    from services.scheduler.placement.workloads import PendingWorkload

EPS = 1e-9
#: Bandwidth assumed between two sites with no SiteLink row (Gbit/s).
DEFAULT_BANDWIDTH_GBPS = 1.0


@dataclass(eq=False)
class FleetSnapshot:
    """Column arrays over hosts, pools and devices. Treat as read-only; see ``with_decision``."""

    hosts: list[HostInfo]
    host_index: dict[str, int]
    sites: list[str]
    site_index: dict[str, int]
    host_site: I32Array
    host_up: BoolArray
    profiles: list[Profile]
    pool_host: I32Array
    pool_profile: I32Array
    pool_start: IntArray  # CSR: devices of pool q are dev_order[pool_start[q]:pool_start[q+1]]
    dev_ids: list[str]
    dev_index: dict[str, int]
    dev_host: I32Array
    dev_profile: I32Array
    dev_pool: I32Array
    dev_link: I32Array  # global link-group id, -1 when unknown
    dev_usable: BoolArray
    dev_mem: IntArray
    dev_cu: FloatArray
    dev_free_share: FloatArray
    dev_free_mem: IntArray
    allocations: list[Allocation]
    dev_allocs: dict[int, tuple[int, ...]]  # device → indices into allocations (tuples: the GC skips them)
    bandwidth_gbps: FloatArray  # [site, site]; inf on the diagonal
    latency_ms: FloatArray
    n_dev_pools: int = -1  # pools [0, n_dev_pools) hold devices, the rest are CPU pools; -1: all device pools
    host_cpu: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # allocatable (UNLIMITED: unknown)
    host_mem: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # MiB
    host_cpu_free: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    host_mem_free: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    host_cpu_pool: I32Array = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # its CPU pool, -1: none
    numa_free: dict[tuple[int, int], int] = field(default_factory=dict)  # (host, node) → free CPUs, where known
    dev_numa: I32Array = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # NUMA node, -1: unknown
    shared: dict[object, object] = field(default_factory=dict)  # caches over the immutable parts, kept by children
    pool_free: IntArray = field(init=False)
    pool_usable: IntArray = field(init=False)
    host_free: IntArray = field(init=False)

    def __post_init__(self) -> None:
        if self.n_dev_pools < 0:
            self.n_dev_pools = len(self.pool_host)
        if len(self.dev_numa) != len(self.dev_ids):
            self.dev_numa = np.full(len(self.dev_ids), -1, dtype=np.int32)
        n = len(self.hosts)
        if len(self.host_cpu) != n:  # built without host resources: nothing limits them
            self.host_cpu = np.full(n, UNLIMITED, dtype=np.int64)
            self.host_mem = np.full(n, UNLIMITED, dtype=np.int64)
            self.host_cpu_free = self.host_cpu.copy()
            self.host_mem_free = self.host_mem.copy()
            self.host_cpu_pool = np.full(n, -1, dtype=np.int32)
        self.refresh_free()

    # -- derived state -------------------------------------------------------------------------
    def refresh_free(self) -> None:
        """Recompute whole-free counts per pool/host from the device arrays."""
        whole = self.whole_free_mask()
        self.pool_free = np.bincount(self.dev_pool[whole], minlength=len(self.pool_host)).astype(np.int64)
        self.pool_usable = np.bincount(self.dev_pool[self.dev_usable], minlength=len(self.pool_host)).astype(np.int64)
        self.host_free = np.bincount(self.dev_host[whole], minlength=len(self.hosts)).astype(np.int64)
        if self.n_dev_pools < len(self.pool_host):  # CPU pools: the host's free and allocatable CPUs
            cpu_hosts = self.pool_host[self.n_dev_pools:]
            self.pool_free[self.n_dev_pools:] = self.host_cpu_free[cpu_hosts]
            self.pool_usable[self.n_dev_pools:] = self.host_cpu[cpu_hosts]

    def is_cpu_pool(self, pool: int) -> bool:
        return pool >= self.n_dev_pools

    def whole_free_mask(self) -> BoolArray:
        return self.dev_usable & (self.dev_free_share >= 1 - EPS) & (self.dev_free_mem >= self.dev_mem)

    @property
    def n_hosts(self) -> int:
        return len(self.hosts)

    @property
    def n_pools(self) -> int:
        return len(self.pool_host)

    @property
    def n_devices(self) -> int:
        return len(self.dev_ids)

    def pool_devices(self, pool: int) -> range:
        """Device indices of a pool (devices are stored pool-major)."""
        return range(int(self.pool_start[pool]), int(self.pool_start[pool + 1]))

    def transfer_seconds(self, data_site: str | None, data_gib: float) -> FloatArray:
        """Seconds to move ``data_gib`` from ``data_site`` to each site (0 at the data site)."""
        if not data_site or data_gib <= 0:
            return np.zeros(len(self.sites))
        src = self.site_index.get(data_site)
        if src is None:
            return np.full(len(self.sites), data_gib * 8.0 * 1.073741824 / DEFAULT_BANDWIDTH_GBPS)
        secs = data_gib * 8.0 * 1.073741824 / self.bandwidth_gbps[src]
        return np.asarray(secs + self.latency_ms[src] / 1000.0 * (secs > 0), dtype=np.float64)

    def tenant_usage(self) -> dict[tuple[str, str], float]:
        """Devices (shares count as fractions) held per (tenant, hardware type)."""
        cached = self.__dict__.get("_tenant_usage")
        if cached is None:
            cached = {}
            for alloc in self.allocations:
                self._add_usage(cached, alloc)
            self.__dict__["_tenant_usage"] = cached
        return dict(cached)

    def _add_usage(self, usage: dict[tuple[str, str], float], alloc: Allocation) -> None:
        """Devices per type (shares as fractions), and for CPU-only work (no devices) its CPUs as 'cpu'."""
        if alloc.tenant is None:
            return
        for dev in alloc.devices:
            d = self.dev_index.get(dev.device_id)
            if d is None:
                continue
            key = (alloc.tenant, str(self.profiles[self.dev_profile[d]].hardware_type))
            usage[key] = usage.get(key, 0.0) + dev.share
        if not alloc.devices:
            for hold in alloc.hosts:
                key = (alloc.tenant, "cpu")
                usage[key] = usage.get(key, 0.0) + hold.cpu

    def min_preemptible_priority(self) -> int | None:
        """The lowest priority of any preemptible allocation (None: nothing can be preempted)."""
        if "_min_preemptible" not in self.__dict__:
            self.__dict__["_min_preemptible"] = min(
                (a.priority for a in self.allocations if a.preemptible), default=None)
        value: int | None = self.__dict__["_min_preemptible"]
        return value

    def host_id(self, host: int) -> str:
        return self.hosts[host].id

    # -- evolution -----------------------------------------------------------------------------
    def with_decision(
        self, decision: PlacementDecision, batch: Sequence[PendingWorkload]
    ) -> FleetSnapshot:
        """A new snapshot with the decision's assignments allocated and its preemptions released."""
        specs = {w.id: w.spec for w in batch}
        free_share = self.dev_free_share.copy()
        free_mem = self.dev_free_mem.copy()
        cpu_free, hmem_free = self.host_cpu_free.copy(), self.host_mem_free.copy()
        numa_free = dict(self.numa_free)
        evicted = {p.workload_id for p in decision.preemptions}
        allocations = [a for a in self.allocations if a.workload_id not in evicted]
        for alloc in self.allocations:
            if alloc.workload_id in evicted:
                for dev in alloc.devices:
                    d = self.dev_index.get(dev.device_id)
                    if d is not None:
                        free_share[d] = min(1.0, free_share[d] + dev.share)
                        free_mem[d] = min(int(self.dev_mem[d]), int(free_mem[d]) + self._alloc_mem(d, dev))
                take_holds(alloc.hosts, self.host_index, cpu_free, hmem_free, numa_free, 1)
        # copy-on-write: only the entries of devices that get a new allocation are new lists
        dev_allocs = index_allocs(allocations, self.dev_index) if evicted else dict(self.dev_allocs)
        by_workload: dict[str, list[AllocatedDevice]] = {}
        holds: dict[str, list[HostHold]] = {}
        for a in decision.assignments:
            by_workload.setdefault(a.workload_id, [])
            for dev_id, share, mem in zip(a.device_ids, a.shares, a.memory_mib, strict=True):
                d = self.dev_index[dev_id]
                free_share[d] = max(0.0, free_share[d] - share)
                free_mem[d] = max(0, int(free_mem[d]) - mem)
                by_workload[a.workload_id].append(AllocatedDevice(dev_id, share, mem))
            if a.cpu or a.host_memory_mib:
                hold = HostHold(a.host_id, a.cpu, a.host_memory_mib, a.numa_node)
                holds.setdefault(a.workload_id, []).append(hold)
                take_holds((hold,), self.host_index, cpu_free, hmem_free, numa_free, -1)
        for wid, devs in by_workload.items():
            spec = specs[wid]
            allocations.append(Allocation(wid, spec.priority, spec.preemptible, spec.tenant, tuple(devs),
                                          tuple(holds.get(wid, ()))))
            for dev in devs:
                d = self.dev_index[dev.device_id]
                dev_allocs[d] = (*dev_allocs.get(d, ()), len(allocations) - 1)
        child = FleetSnapshot(
            hosts=self.hosts, host_index=self.host_index, sites=self.sites, site_index=self.site_index,
            host_site=self.host_site, host_up=self.host_up, profiles=self.profiles, pool_host=self.pool_host,
            pool_profile=self.pool_profile, pool_start=self.pool_start, dev_ids=self.dev_ids,
            dev_index=self.dev_index, dev_host=self.dev_host, dev_profile=self.dev_profile,
            dev_pool=self.dev_pool, dev_link=self.dev_link, dev_usable=self.dev_usable, dev_mem=self.dev_mem,
            dev_cu=self.dev_cu, dev_free_share=free_share, dev_free_mem=free_mem, allocations=allocations,
            dev_allocs=dev_allocs, bandwidth_gbps=self.bandwidth_gbps, latency_ms=self.latency_ms,
            n_dev_pools=self.n_dev_pools, host_cpu=self.host_cpu, host_mem=self.host_mem, host_cpu_free=cpu_free,
            host_mem_free=hmem_free, host_cpu_pool=self.host_cpu_pool, numa_free=numa_free, dev_numa=self.dev_numa,
            shared=self.shared,
        )
        if not evicted:  # carry the cached aggregates forward instead of rescanning every allocation
            added = allocations[len(self.allocations):]
            usage = self.__dict__.get("_tenant_usage")
            if usage is not None:
                usage = dict(usage)
                for alloc in added:
                    self._add_usage(usage, alloc)
                child.__dict__["_tenant_usage"] = usage
            if "_min_preemptible" in self.__dict__:
                child.__dict__["_min_preemptible"] = min(
                    (p for p in [self.__dict__["_min_preemptible"], *(a.priority for a in added if a.preemptible)]
                     if p is not None), default=None)
        return child

    def with_allocations(self, allocations: Iterable[Allocation]) -> FleetSnapshot:
        """This snapshot (built without allocations) with ``allocations`` holding their devices: what
        ``build_snapshot`` gives for the same fleet and allocations, sharing this one's arrays and caches."""
        alloc_list = list(allocations)
        free_share, free_mem, dev_allocs = apply_allocations(alloc_list, self.dev_index, self.dev_mem)
        cpu_free, mem_free, numa_free = self.host_cpu.copy(), self.host_mem.copy(), numa_totals(self.hosts)
        for alloc in alloc_list:
            take_holds(alloc.hosts, self.host_index, cpu_free, mem_free, numa_free, -1)
        return replace(self, dev_free_share=free_share, dev_free_mem=free_mem, allocations=alloc_list,
                       dev_allocs=dev_allocs, host_cpu_free=cpu_free, host_mem_free=mem_free, numa_free=numa_free)

    def _alloc_mem(self, d: int, dev: AllocatedDevice) -> int:
        if dev.memory_mib is not None:
            return dev.memory_mib
        return round(dev.share * int(self.dev_mem[d]))


def build_snapshot(
    hosts: Iterable[HostInfo],
    devices: Iterable[DeviceInfo],
    allocations: Iterable[Allocation] = (),
    links: Iterable[SiteLink] = (),
) -> FleetSnapshot:
    """Build the column model. Devices on unknown hosts are dropped; allocations on unknown
    devices are ignored (the device left the fleet). Cost: one pass over the devices."""
    host_list = list(hosts)
    host_index = {h.id: i for i, h in enumerate(host_list)}
    if len(host_index) != len(host_list):
        raise ValueError("duplicate host ids in snapshot input")
    sites = sorted({h.site for h in host_list} | {x for ln in links for x in (ln.a, ln.b)})
    site_index = {s: i for i, s in enumerate(sites)}
    host_site = np.fromiter((site_index[h.site] for h in host_list), dtype=np.int32, count=len(host_list))
    host_up = np.fromiter((h.up for h in host_list), dtype=np.bool_, count=len(host_list))

    profile_ids: dict[Profile, int] = {}
    profiles: list[Profile] = []
    link_ids: dict[tuple[int, str], int] = {}
    rows: list[tuple[int, int, int, DeviceInfo]] = []  # (pool key host, profile, link, dev)
    for dev in devices:
        h = host_index.get(dev.host_id)
        if h is None:
            continue
        prof = Profile(dev.hardware_type, dev.vendor, dev.model, int(dev.memory_mib), float(dev.compute_units),
                       dev.driver_version, tuple(sorted(dev.runtimes.items())))
        p = profile_ids.get(prof)
        if p is None:
            p = profile_ids[prof] = len(profiles)
            profiles.append(prof)
        link = -1
        if dev.link_group is not None:
            link = link_ids.setdefault((h, dev.link_group), len(link_ids))
        rows.append((h, p, link, dev))
    rows.sort(key=lambda r: (r[0], r[1]))  # pool-major: host, then profile
    n = len(rows)
    dev_host = np.fromiter((r[0] for r in rows), dtype=np.int32, count=n)
    dev_profile = np.fromiter((r[1] for r in rows), dtype=np.int32, count=n)
    dev_link = np.fromiter((r[2] for r in rows), dtype=np.int32, count=n)
    dev_ids = [r[3].id for r in rows]
    dev_index = {d: i for i, d in enumerate(dev_ids)}
    if len(dev_index) != n:
        raise ValueError("duplicate device ids in snapshot input")
    dev_usable = np.fromiter((r[3].usable for r in rows), dtype=np.bool_, count=n)
    prof_mem = np.array([p.memory_mib for p in profiles], dtype=np.int64)
    prof_cu = np.array([p.compute_units for p in profiles], dtype=np.float64)
    dev_mem = prof_mem[dev_profile] if n else np.zeros(0, dtype=np.int64)
    dev_cu = prof_cu[dev_profile] if n else np.zeros(0, dtype=np.float64)

    # CPU pools, one per host that reports its allocatable CPUs, after every device pool
    cpu_hosts = [h for h, host in enumerate(host_list) if host.cpus is not None]
    cpu_profile: list[int] = []
    for h in cpu_hosts:
        host = host_list[h]
        prof = Profile(HardwareType.CPU, host.cpu_vendor, host.cpu_model, 0, 0.0, None, ())
        p = profile_ids.get(prof)
        if p is None:
            p = profile_ids[prof] = len(profiles)
            profiles.append(prof)
        cpu_profile.append(p)

    # Pools: consecutive runs of (host, profile).
    if n:
        pool_key = dev_host.astype(np.int64) * max(1, len(profiles)) + dev_profile
        starts = np.flatnonzero(np.r_[True, pool_key[1:] != pool_key[:-1]])
        pool_start = np.r_[starts, n].astype(np.int64)
        dev_pool = (np.cumsum(np.r_[False, pool_key[1:] != pool_key[:-1]])).astype(np.int32)
        pool_host = dev_host[starts].astype(np.int32)
        pool_profile = dev_profile[starts].astype(np.int32)
    else:
        pool_start = np.zeros(1, dtype=np.int64)
        dev_pool = np.zeros(0, dtype=np.int32)
        pool_host = np.zeros(0, dtype=np.int32)
        pool_profile = np.zeros(0, dtype=np.int32)

    n_dev_pools = len(pool_host)
    host_cpu_pool = np.full(len(host_list), -1, dtype=np.int32)
    if cpu_hosts:
        host_cpu_pool[cpu_hosts] = np.arange(n_dev_pools, n_dev_pools + len(cpu_hosts), dtype=np.int32)
        pool_host = np.r_[pool_host, np.array(cpu_hosts, dtype=np.int32)].astype(np.int32)
        pool_profile = np.r_[pool_profile, np.array(cpu_profile, dtype=np.int32)].astype(np.int32)
        pool_start = np.r_[pool_start, np.full(len(cpu_hosts), n, dtype=np.int64)].astype(np.int64)
    host_cpu = np.fromiter((UNLIMITED if h.cpus is None else h.cpus for h in host_list), dtype=np.int64,
                           count=len(host_list))
    host_mem = np.fromiter((UNLIMITED if h.memory_mib is None else h.memory_mib for h in host_list),
                           dtype=np.int64, count=len(host_list))

    alloc_list = list(allocations)
    free_share, free_mem, dev_allocs = apply_allocations(alloc_list, dev_index, dev_mem)
    cpu_free, hmem_free, numa_free = host_cpu.copy(), host_mem.copy(), numa_totals(host_list)
    for alloc in alloc_list:
        take_holds(alloc.hosts, host_index, cpu_free, hmem_free, numa_free, -1)

    s = len(sites)
    bandwidth = np.full((s, s), DEFAULT_BANDWIDTH_GBPS, dtype=np.float64)
    latency = np.zeros((s, s), dtype=np.float64)
    for ln in links:
        i, j = site_index[ln.a], site_index[ln.b]
        if ln.bandwidth_gbps <= 0:
            raise ValueError(f"site link {ln.a}-{ln.b}: bandwidth_gbps must be > 0")
        bandwidth[i, j] = bandwidth[j, i] = ln.bandwidth_gbps
        latency[i, j] = latency[j, i] = ln.latency_ms
    np.fill_diagonal(bandwidth, np.inf)
    np.fill_diagonal(latency, 0.0)

    return FleetSnapshot(
        hosts=host_list, host_index=host_index, sites=sites, site_index=site_index, host_site=host_site,
        host_up=host_up, profiles=profiles, pool_host=pool_host, pool_profile=pool_profile, pool_start=pool_start,
        dev_ids=dev_ids, dev_index=dev_index, dev_host=dev_host, dev_profile=dev_profile, dev_pool=dev_pool,
        dev_link=dev_link, dev_usable=dev_usable, dev_mem=dev_mem, dev_cu=dev_cu, dev_free_share=free_share,
        dev_free_mem=free_mem, allocations=alloc_list, dev_allocs=dev_allocs, bandwidth_gbps=bandwidth,
        latency_ms=latency, n_dev_pools=n_dev_pools, host_cpu=host_cpu, host_mem=host_mem, host_cpu_free=cpu_free,
        host_mem_free=hmem_free, host_cpu_pool=host_cpu_pool, numa_free=numa_free,
        dev_numa=np.fromiter((-1 if r[3].numa_node is None else r[3].numa_node for r in rows), dtype=np.int32,
                             count=n),
    )
