"""Each constraint pinned by a scenario whose right answer is known."""

from __future__ import annotations

from libs.schemas.catalog import CompatRule, RuntimeDriverRule
from libs.schemas.devices import HardwareType
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    PlacementRules,
    SiteLink,
    build_snapshot,
    place,
    place_greedy,
)
from tests.unit.placement.fleet import check_valid, devices, fleet, host, wl

CUDA_DRIVER_RULES = PlacementRules.of(runtime_driver=[
    RuntimeDriverRule(id=f"cuda-{v}", vendor="nvidia", runtime="cuda", runtime_versions=f">={v},<{v[:3]}{int(v[3]) + 1}",
                      min_driver_version=drv, source="CUDA release notes")
    for v, drv in [("12.0", "525.60.13"), ("12.1", "530.30.02"), ("12.2", "535.54.03"), ("12.3", "545.23.06"),
                   ("12.4", "550.54.14")]
])


def hosts_of(decision, wid):
    return [a.host_id for a in decision.assignments if a.workload_id == wid]


def test_npu_count2_lands_on_the_host_with_two_ascend():
    snap = fleet({"g1": ("a100", 8), "n1": ("910b", 1), "n2": ("910b", 2)})
    batch = [wl("w", hardware={"type": "npu", "count": 2})]
    d = place(batch, snap)
    assert hosts_of(d, "w") == ["n2"]
    assert sorted(d.assignments[0].device_ids) == ["n2/910b0", "n2/910b1"]
    check_valid(d, snap, batch)


def test_share_two_halves_pack_on_one_a100():
    snap = fleet({"g1": ("a100", 1), "g2": ("a100", 1)})
    batch = [wl(f"w{i}", hardware={"type": "gpu", "share": 0.5}) for i in range(2)]
    d = place(batch, snap)
    devs = {a.device_ids for a in d.assignments}
    assert len(d.assignments) == 2 and len(devs) == 1
    assert all(a.shares == (0.5,) for a in d.assignments)
    assert d.assignments[0].memory_mib == (40960,)
    check_valid(d, snap, batch)


def test_share_respects_reserved_memory():
    snap = fleet({"g1": ("a100", 1)})
    batch = [wl(f"w{i}", hardware={"type": "gpu", "share": 0.25, "memory_gib": 50}) for i in range(2)]
    d = place(batch, snap)
    assert len(d.assignments) == 1 and len(d.pending) == 1
    check_valid(d, snap, batch)


def test_gang_places_all_four_replicas_of_eight():
    snap = fleet({f"h{i}": ("a100", 8) for i in range(4)})
    batch = [wl("g", hardware={"type": "gpu", "count": 8}, replicas=4, gang=True)]
    d = place(batch, snap)
    assert sorted(hosts_of(d, "g")) == ["h0", "h1", "h2", "h3"]
    check_valid(d, snap, batch)


def test_gang_places_none_when_only_three_hosts_fit():
    snap = fleet({"h0": ("a100", 8), "h1": ("a100", 8), "h2": ("a100", 8), "h3": ("a100", 4)})
    batch = [wl("g", hardware={"type": "gpu", "count": 8}, replicas=4, gang=True),
             wl("small", hardware={"type": "gpu", "count": 4}, priority=0)]
    d = place(batch, snap)
    assert hosts_of(d, "g") == []
    assert [p.workload_id for p in d.pending] == ["g"]
    assert "gang of 4" in d.pending[0].reason
    assert hosts_of(d, "small") == ["h3"]
    check_valid(d, snap, batch)


def _full_fleet(preemptible: bool):
    hosts = [host("h0")]
    devs = devices("h0", "a100", 8)
    alloc = Allocation("old", priority=10, preemptible=preemptible, tenant="t",
                       devices=tuple(AllocatedDevice(d.id) for d in devs[:4]))
    other = Allocation("keep", priority=900, preemptible=True, tenant="t",
                       devices=tuple(AllocatedDevice(d.id) for d in devs[4:]))
    return build_snapshot(hosts, devs, [alloc, other])


def test_preemption_high_priority_evicts_preemptible_when_full():
    snap = _full_fleet(preemptible=True)
    batch = [wl("urgent", hardware={"type": "gpu", "count": 4}, priority=500)]
    d = place(batch, snap)
    assert [p.workload_id for p in d.preemptions] == ["old"]
    assert d.preemptions[0].for_workload == "urgent"
    assert hosts_of(d, "urgent") == ["h0"]
    old = {f"h0/a100{i}" for i in range(4)}
    assert set(d.assignments[0].device_ids) == old
    check_valid(d, snap, batch)


def test_preemption_never_touches_non_preemptible_or_higher_priority():
    snap = _full_fleet(preemptible=False)
    batch = [wl("urgent", hardware={"type": "gpu", "count": 4}, priority=500)]
    d = place(batch, snap)
    assert d.preemptions == [] and d.assignments == []
    assert d.pending[0].workload_id == "urgent"


def test_preemption_chooses_least_disruption():
    hosts = [host("h0"), host("h1")]
    devs = devices("h0", "a100", 4) + devices("h1", "a100", 4)
    allocs = [Allocation("big", 50, True, None, tuple(AllocatedDevice(d.id) for d in devs[:4])),
              Allocation("low1", 5, True, None, tuple(AllocatedDevice(d.id) for d in devs[4:6])),
              Allocation("low2", 5, True, None, tuple(AllocatedDevice(d.id) for d in devs[6:]))]
    snap = build_snapshot(hosts, devs, allocs)
    d = place([wl("u", hardware={"type": "gpu", "count": 2}, priority=100)], snap)
    assert [p.workload_id for p in d.preemptions] in (["low1"], ["low2"])


def test_runtime_cuda_124_never_on_an_old_driver():
    hosts = [host("old"), host("new")]
    devs = devices("old", "a100-old", 8) + devices("new", "a100", 1)
    snap = build_snapshot(hosts, devs)
    batch = [wl("w", hardware={"type": "gpu"}, runtime={"requires": ["cuda>=12.4"]})]
    d = place(batch, snap, rules=CUDA_DRIVER_RULES)
    assert hosts_of(d, "w") == ["new"]
    # with the new host full, it stays pending and says why
    batch2 = [wl("a", hardware={"type": "gpu"}), *batch]
    snap2 = build_snapshot([host("old")], devices("old", "a100-old", 8))
    d2 = place(batch2, snap2, rules=CUDA_DRIVER_RULES)
    assert hosts_of(d2, "w") == []
    assert d2.pending[0].counts == {"driver too old for cuda>=12.4": 1}


def test_runtime_driver_decides_over_reported_runtime():
    # the driver (550) carries CUDA 12.4 even though the host's toolkit says 12.0
    dev = devices("h", "a100", 1)[0]
    dev = type(dev)(**{**{f: getattr(dev, f) for f in dev.__slots__}, "runtimes": {"cuda": "12.0"}})
    snap = build_snapshot([host("h")], [dev])
    d = place([wl("w", hardware={"type": "gpu"}, runtime={"requires": ["cuda>=12.4"]})], snap,
              rules=CUDA_DRIVER_RULES)
    assert hosts_of(d, "w") == ["h"]
    # without driver rules the reported runtime decides
    d = place([wl("w", hardware={"type": "gpu"}, runtime={"requires": ["cuda>=12.4"]})], snap)
    assert hosts_of(d, "w") == []
    assert "cuda version does not satisfy cuda>=12.4" in d.pending[0].reason


def test_framework_resolved_through_compat_rules():
    rules = PlacementRules.of(
        compat=[CompatRule(id="pt-2.4-cuda", framework="pytorch", framework_versions=">=2.4,<2.5",
                           hardware_type=HardwareType.GPU, vendor="nvidia", runtime="cuda",
                           runtime_versions=">=12.1,<12.5", source="pytorch.org"),
                CompatRule(id="pt-2.4-npu", framework="pytorch", framework_versions=">=2.4,<2.5",
                           hardware_type=HardwareType.NPU, vendor="huawei", runtime="cann",
                           runtime_versions=">=8.0.RC3", source="torch_npu")],
        runtime_driver=CUDA_DRIVER_RULES.runtime_driver)
    snap = fleet({"old": ("a100-old", 8), "npu": ("910b", 8), "new": ("a100", 8)})
    batch = [wl("w", hardware={"type": "any", "count": 1}, runtime={"framework": "pytorch", "framework_version": "2.4"})]
    d = place(batch, snap, rules=rules)
    assert hosts_of(d, "w") == ["new"]  # old driver tops out at CUDA 12.0; CANN 8.0.RC1 < 8.0.RC3
    d = place([wl("x", hardware={"type": "npu"}, runtime={"framework": "pytorch", "framework_version": "2.4"})],
              snap, rules=rules)
    assert d.pending[0].counts["pytorch==2.4.*: cann version does not satisfy cann>=8.0.RC3"] == 1


def test_compute_units_any_lands_on_whichever_chips_provide_it():
    # 1000 CU: 4 x A100 (312) or 4 x 910B (313) or 1 x MI300X (1307); only the MI300X host has room for one
    snap = fleet({"g": ("a100", 3), "n": ("910b", 2), "m": ("mi300", 1)})
    batch = [wl("w", hardware={"type": "any", "compute_units": 1000})]
    d = place(batch, snap)
    assert hosts_of(d, "w") == ["m"] and len(d.assignments[0].device_ids) == 1
    # 600 CU fits 2 x 910B, 2 x A100 or 1 x MI300X; variants restrict to huawei
    batch = [wl("v", hardware={"type": "any", "compute_units": 600}, variants={"huawei": {"image": "mindspore"}})]
    d = place(batch, snap)
    assert hosts_of(d, "v") == ["n"] and len(d.assignments[0].device_ids) == 2
    check_valid(d, snap, batch)


def test_spread_host_puts_replicas_on_distinct_hosts():
    snap = fleet({f"h{i}": ("a100", 8) for i in range(3)})
    batch = [wl("s", hardware={"type": "gpu", "count": 2}, replicas=3, placement={"spread": "host"})]
    d = place(batch, snap)
    assert sorted(hosts_of(d, "s")) == ["h0", "h1", "h2"]
    # without spread the packer keeps them on one host
    d = place([wl("p", hardware={"type": "gpu", "count": 2}, replicas=3)], snap)
    assert len(set(hosts_of(d, "p"))) == 1


def test_spread_site_puts_replicas_on_distinct_sites():
    snap = fleet({"a1": ("a100", 8), "a2": ("a100", 8), "b1": ("a100", 8)},
                 sites={"a1": "bj", "a2": "bj", "b1": "sh"})
    batch = [wl("s", hardware={"type": "gpu"}, replicas=2, placement={"spread": "site"})]
    d = place(batch, snap)
    sites = {snap.hosts[snap.host_index[h]].site for h in hosts_of(d, "s")}
    assert sites == {"bj", "sh"}


def test_avoid_sites_and_sites_are_honoured():
    snap = fleet({"a": ("a100", 8), "b": ("a100", 2)}, sites={"a": "bj", "b": "sh"})
    d = place([wl("w", hardware={"type": "gpu"}, placement={"avoid_sites": ["bj"]})], snap)
    assert hosts_of(d, "w") == ["b"]
    d = place([wl("w", hardware={"type": "gpu", "count": 4}, placement={"sites": ["sh"]})], snap)
    assert hosts_of(d, "w") == []
    assert d.pending[0].counts == {"site not allowed": 1, "fewer than 4 free gpus": 1}


def test_unhealthy_device_and_down_host_never_chosen():
    hosts = [host("down", up=False), host("sick"), host("ok")]
    devs = devices("down", "a100", 8) + devices("sick", "a100", 2, unhealthy=[0, 1]) + devices("ok", "a100", 2, unhealthy=[0])
    snap = build_snapshot(hosts, devs)
    batch = [wl(f"w{i}", hardware={"type": "gpu"}) for i in range(3)]
    d = place(batch, snap)
    assert [a.device_ids for a in d.assignments] == [("ok/a1001",)]
    assert len(d.pending) == 2
    counts = d.pending[0].counts
    assert counts["host down"] == 1 and counts["unhealthy devices"] == 1


def test_quota_caps_tenant_devices_per_type():
    devs = devices("h", "a100", 8)
    held = Allocation("mine", 100, False, "acme", (AllocatedDevice(devs[0].id),))
    snap = build_snapshot([host("h")], devs, [held])
    batch = [wl(f"w{i}", hardware={"type": "gpu", "count": 2}, tenant="acme") for i in range(3)]
    batch.append(wl("other", hardware={"type": "gpu", "count": 2}, tenant="zen"))
    d = place(batch, snap, quotas={"acme": {"gpu": 5}})
    acme = [a for a in d.assignments if a.workload_id != "other"]
    assert len(acme) == 2  # 1 held + 2 x 2 = 5
    assert hosts_of(d, "other") == ["h"]
    assert any("quota" in p.reason for p in d.pending)
    g = place_greedy(batch, snap, quotas={"acme": {"gpu": 5}})
    assert len([a for a in g.assignments if a.workload_id != "other"]) == 2


def test_data_locality_prefers_the_data_site():
    snap = fleet({"far": ("a100", 8), "near": ("a100", 8)}, sites={"far": "bj", "near": "gz"},
                 links=[SiteLink("bj", "gz", bandwidth_gbps=10)])
    batch = [wl("w", hardware={"type": "gpu", "count": 2}, placement={"data_site": "gz", "data_gib": 500})]
    assert hosts_of(place(batch, snap), "w") == ["near"]
    batch = [wl("w", hardware={"type": "gpu", "count": 2}, placement={"data_site": "bj", "data_gib": 500})]
    assert hosts_of(place(batch, snap), "w") == ["far"]


def test_data_locality_holds_for_each_workload_of_one_batch():
    snap = fleet({"far": ("a100", 8), "near": ("a100", 8)}, sites={"far": "bj", "near": "gz"},
                 links=[SiteLink("bj", "gz", bandwidth_gbps=10)])
    # enough data that moving it costs more than opening a second host
    batch = [wl("to-gz", hardware={"type": "gpu", "count": 2}, placement={"data_site": "gz", "data_gib": 5000}),
             wl("to-bj", hardware={"type": "gpu", "count": 2}, placement={"data_site": "bj", "data_gib": 5000})]
    for d in (place(batch, snap), place(batch, snap, time_limit_s=0)):
        assert hosts_of(d, "to-gz") == ["near"]
        assert hosts_of(d, "to-bj") == ["far"]


def test_same_link_group_keeps_a_replica_on_one_island():
    hosts = [host("h")]
    devs = devices("h", "910b", 4, link="hccs0") + devices("h", "910b", 4, link="hccs1", start=4)
    snap = build_snapshot(hosts, devs)
    batch = [wl("a", hardware={"type": "npu", "count": 2}, placement={"topology": "same_link_group"}),
             wl("b", hardware={"type": "npu", "count": 4}, placement={"topology": "same_link_group"})]
    d = place(batch, snap)
    for a in d.assignments:
        groups = {devs[int(x.split("910b")[1])].link_group for x in a.device_ids}
        assert len(groups) == 1
    assert len(d.assignments) == 2
    d = place([wl("c", hardware={"type": "npu", "count": 5}, placement={"topology": "same_link_group"})], snap)
    assert d.assignments == []


def test_same_host_topology_puts_all_replicas_together():
    snap = fleet({"a": ("a100", 4), "b": ("a100", 8)})
    batch = [wl("w", hardware={"type": "gpu", "count": 3}, replicas=2, placement={"topology": "same_host"})]
    d = place(batch, snap)
    assert hosts_of(d, "w") == ["b", "b"] and {a.replica for a in d.assignments} == {0, 1}
    check_valid(d, snap, batch)


def test_same_host_compute_units_give_each_replica_enough():
    snap = fleet({"small": ("910b", 4), "big": ("910b", 8)})
    batch = [wl("w", hardware={"type": "any", "compute_units": 400}, replicas=3, placement={"topology": "same_host"})]
    d = place(batch, snap)
    assert [a.host_id for a in d.assignments] == ["big"] * 3
    assert all(len(a.device_ids) == 2 for a in d.assignments)  # 2 x 313 CU >= 400 per replica
    check_valid(d, snap, batch)


def test_greedy_fallback_when_the_time_limit_is_tiny():
    snap = fleet({f"h{i}": ("a100", 8) for i in range(4)})
    batch = [wl(f"w{i}", hardware={"type": "gpu", "count": 1 + i % 4}) for i in range(12)]
    for limit in (0, 1e-6):
        d = place(batch, snap, time_limit_s=limit)
        assert d.solver_status == "GREEDY_FALLBACK"
        assert len(d.assignments) == 12
        check_valid(d, snap, batch)
    assert place(batch, snap, time_limit_s=5).solver_status in ("OPTIMAL", "TRIVIAL")


def test_priority_goes_first_under_contention():
    snap = fleet({"h": ("a100", 4)})
    batch = [wl("low", hardware={"type": "gpu", "count": 4}, priority=1),
             wl("high", hardware={"type": "gpu", "count": 4}, priority=900)]
    for d in (place(batch, snap), place_greedy(batch, snap), place_greedy(batch, snap, strategy="first_fit")):
        assert hosts_of(d, "high") == ["h"] and hosts_of(d, "low") == []
