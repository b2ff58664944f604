"""Inventory models become snapshot rows: host status, link groups, catalog model and CU."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.schemas.devices import HardwareType, Health, Link
from libs.schemas.inventory import HostStatus, HostSummary, InventoryDevice, SiteLink
from services.scheduler.placement import place
from services.scheduler.placement.adapters import link_groups, snapshot_from_inventory
from tests.unit.placement.fleet import wl

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _host(hid: str, status: HostStatus = HostStatus.UP) -> HostSummary:
    return HostSummary(id=hid, site="hangzhou", hostname=hid, status=status, generation=1, arch="aarch64",
                       os="EulerOS", cpu_model="Kunpeng 920", cpu_threads=192, memory_mib=1 << 20,
                       first_seen=NOW, updated_at=NOW, reported_at=NOW, labels={"team": "nlp"})


def _npu(hid: str, i: int, peers: list[int]) -> InventoryDevice:
    return InventoryDevice(id=f"{hid}:huawei:{i}", host_id=hid, site="hangzhou", host_status=HostStatus.UP, slot=i,
                           index=i, hardware_type=HardwareType.NPU, vendor="huawei", model="910B3",
                           catalog_model="Ascend910B3", compute_units=313.0, memory_mib=65536,
                           driver_version="24.1.rc2", runtimes={"cann": "8.0.RC1"},
                           links=[Link(peer_index=p, kind="HCCS") for p in peers]
                           + [Link(peer_index=(i + 4) % 8, kind="SYS")], health=Health.HEALTHY)


def test_link_groups_follow_fast_links_only():
    groups = link_groups([(0, [Link(peer_index=1, kind="NV12")]), (1, []), (2, [Link(peer_index=0, kind="SYS")])])
    assert groups == {0: 0, 1: 0, 2: 2}


def test_snapshot_from_inventory_maps_status_groups_and_catalog():
    devs = [_npu("a", i, [j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i]) for i in range(8)]
    snap = snapshot_from_inventory([_host("a"), _host("b", HostStatus.DOWN)], devs,
                                   links=[SiteLink(a="hangzhou", b="ningbo", bandwidth_gbps=400, latency_ms=2.6)])
    assert snap.host_up.tolist() == [True, False]
    assert snap.profiles[0].model == "Ascend910B3" and snap.dev_cu[0] == 313.0
    assert len(set(snap.dev_link.tolist())) == 2  # two HCCS islands of four
    d = place([wl("w", hardware={"type": "npu", "count": 4}, placement={"topology": "same_link_group"})], snap)
    ids = {int(x.rsplit(":", 1)[1]) // 4 for x in d.assignments[0].device_ids}
    assert len(ids) == 1
