"""Device identity and link groups: one id format, one PCIe/link rule set, one union-find."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.schemas.devices import Device, HardwareType, Health, HostFacts, Link, device_host, device_id
from libs.schemas.hostevents import CapabilityReport
from libs.topology import UnionFind, is_fast_link, link_groups
from services.scheduler.fleet import Fleet
from services.scheduler.placement import build_snapshot, place
from tests.unit.placement.fleet import wl

NOW = datetime(2025, 1, 1, tzinfo=UTC)
FACTS = HostFacts(hostname="a", arch="aarch64", os="EulerOS", kernel="5.10", cpu_model="Kunpeng 920", cpu_sockets=2,
                  cpu_cores=96, cpu_threads=192, memory_mib=1 << 20)


def _dev(i: int, links: list[tuple[int, str]], vendor: str = "huawei") -> Device:
    return Device(index=i, hardware_type=HardwareType.NPU, vendor=vendor, model="Ascend910B3", memory_mib=65536,
                  driver_version="24.1.rc2", runtimes={"cann": "8.0.RC1"}, health=Health.HEALTHY,
                  links=[Link(peer_index=p, kind=k) for p, k in links])


def test_device_id_names_host_vendor_and_index():
    assert device_id("hz-a100-03", "nvidia", 2) == "hz-a100-03:nvidia:2"
    assert device_host(device_id("hz-a100-03", "nvidia", 2)) == "hz-a100-03"


def test_union_find_roots_each_set_at_its_smallest_member():
    sets = UnionFind(6)
    sets.union(4, 2)
    sets.union(2, 5)
    sets.union(1, 3)
    assert [sets.find(i) for i in range(6)] == [0, 1, 2, 1, 2, 2]


def test_link_kinds_of_the_pcie_tree_are_not_fast():
    assert all(not is_fast_link(k) for k in ("PIX", "SYS", " node ", "PCIe", "QPI", "UPI", "X"))
    assert all(is_fast_link(k) for k in ("NV12", "HCCS", "XGMI", "MLU-LINK"))


def test_link_groups_follow_fast_links_only():
    devs = [_dev(0, [(1, "NV12")]), _dev(1, []), _dev(2, [(0, "SYS")]), _dev(3, [(1, "HCCS")])]
    assert link_groups(devs) == {0: "huawei-lg0", 1: "huawei-lg0", 3: "huawei-lg0"}


def test_link_groups_join_only_devices_of_one_vendor():
    devs = [_dev(0, [(1, "XGMI")], vendor="amd"), _dev(1, [], vendor="amd"), _dev(0, [(1, "HCCS")]), _dev(1, [])]
    assert link_groups(devs) == {0: "amd-lg0", 1: "amd-lg0", 2: "huawei-lg0", 3: "huawei-lg0"}


def test_link_groups_keep_a_same_link_group_replica_on_one_island():
    islands = [[j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i] for i in range(8)]
    devs = [_dev(i, [(p, "HCCS") for p in peers] + [((i + 4) % 8, "SYS")]) for i, peers in enumerate(islands)]
    fleet = Fleet()
    fleet.apply_capability(CapabilityReport(host_id="a", site="hangzhou", generation=1, facts=FACTS, devices=devs), NOW)
    _, hosts, infos, links = fleet.snapshot_inputs()
    assert {d.id: d.link_group for d in infos} == {device_id("a", "huawei", i): f"huawei-lg{4 * (i // 4)}"
                                                   for i in range(8)}
    snap = build_snapshot(hosts, infos, (), links)
    d = place([wl("w", hardware={"type": "npu", "count": 4}, placement={"topology": "same_link_group"})], snap)
    assert len({int(x.rsplit(":", 1)[1]) // 4 for x in d.assignments[0].device_ids}) == 1
