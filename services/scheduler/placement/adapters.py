"""Build the placement snapshot from what the inventory serves.

The engine itself takes plain ``HostInfo``/``DeviceInfo`` rows; these helpers fill them from
``libs.schemas.inventory`` models so the scheduler service does not have to know how link
groups or host status map.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from libs.schemas.devices import Link
from libs.schemas.inventory import HostStatus, HostSummary, InventoryDevice
from libs.schemas.inventory import SiteLink as InventorySiteLink
from services.scheduler.placement.snapshot import (
    Allocation,
    DeviceInfo,
    FleetSnapshot,
    HostInfo,
    SiteLink,
    build_snapshot,
)

#: Link kinds that only say "through PCIe / the CPU" (nvidia-smi topo names and similar).
#: Any other kind (NV#, NVLINK, HCCS, XGMI, MLU-LINK, …) joins a fast link group.
SLOW_LINKS = frozenset({"X", "SYS", "NODE", "PHB", "PXB", "PIX", "PCIE", "PCI", "SOC", "QPI", "UPI"})


def link_groups(devices: Sequence[tuple[int, Sequence[Link]]]) -> dict[int, int]:
    """Device index → link group (the smallest index in its island of fast links).

    ``devices`` are (index, links) of one vendor on one host; a device with no fast link is
    an island of its own."""
    parent = {index: index for index, _ in devices}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for index, links in devices:
        for link in links:
            if link.peer_index in parent and link.kind.strip().upper() not in SLOW_LINKS:
                ra, rb = find(index), find(link.peer_index)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return {index: find(index) for index in parent}


def host_info(host: HostSummary) -> HostInfo:
    return HostInfo(id=host.id, site=host.site, up=host.status == HostStatus.UP, labels=dict(host.labels),
                    arch=host.arch)


def device_infos(devices: Iterable[InventoryDevice]) -> list[DeviceInfo]:
    """DeviceInfo rows with link groups named ``<vendor>:<group>`` per host."""
    by_host: dict[tuple[str, str], list[InventoryDevice]] = {}
    for d in devices:
        by_host.setdefault((d.host_id, d.vendor), []).append(d)
    out: list[DeviceInfo] = []
    for (_, vendor), devs in by_host.items():
        groups = link_groups([(d.index, d.links) for d in devs])
        for d in devs:
            out.append(DeviceInfo(
                id=d.id, host_id=d.host_id, hardware_type=d.hardware_type, vendor=d.vendor,
                model=d.catalog_model or d.model, memory_mib=d.memory_mib or 0,
                compute_units=d.compute_units or 0.0, driver_version=d.driver_version, runtimes=dict(d.runtimes),
                health=d.health, link_group=f"{vendor}:{groups[d.index]}",
            ))
    return out


def snapshot_from_inventory(
    hosts: Iterable[HostSummary],
    devices: Iterable[InventoryDevice],
    allocations: Iterable[Allocation] = (),
    links: Iterable[InventorySiteLink] = (),
) -> FleetSnapshot:
    """One call from inventory pages to a snapshot (allocations come from the scheduler's own state)."""
    return build_snapshot(
        [host_info(h) for h in hosts],
        device_infos(devices),
        allocations,
        [SiteLink(ln.a, ln.b, ln.bandwidth_gbps, ln.latency_ms) for ln in links],
    )
