"""The workload spec validates every field and says which one is wrong and why."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from libs.schemas.devices import HardwareType
from libs.schemas.workload import Demand, WorkloadSpec, framework_specifier


def spec(**kw: Any) -> WorkloadSpec:
    kw.setdefault("name", "job")
    kw.setdefault("hardware", {"type": "gpu"})
    return WorkloadSpec.model_validate(kw)


def error_of(**kw: Any) -> tuple[str, str]:
    with pytest.raises(ValidationError) as exc:
        spec(**kw)
    err = exc.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]), err["msg"]


def test_workload_spec_defaults_and_examples_validate():
    s = spec()
    assert s.replicas == 1 and s.priority == 100 and not s.gang and s.restart_policy == "on_failure"
    assert s.hardware.count == 1 and s.placement.spread == "none"
    for example in WorkloadSpec.model_json_schema()["examples"]:
        WorkloadSpec.model_validate(example)


@pytest.mark.parametrize(("kw", "loc", "reason"), [
    ({"hardware": {"type": "gpu", "count": 0}}, "hardware.count", "greater than or equal to 1"),
    ({"hardware": {"type": "gpu", "share": 0}}, "hardware.share", "greater than 0"),
    ({"hardware": {"type": "gpu", "share": 1.5}}, "hardware.share", "less than or equal to 1"),
    ({"hardware": {"type": "gpu", "share": 0.5, "count": 2}}, "hardware", "count must be 1"),
    ({"hardware": {"type": "gpu", "compute_units": 100}}, "hardware", "only allowed with type 'any'"),
    ({"hardware": {"type": "any", "compute_units": 100, "count": 2}}, "hardware", "cannot be combined"),
    ({"hardware": {"type": "tpu"}}, "hardware.type", "type must be one of cpu, gpu, npu"),
    ({"hardware": {"type": "gpu", "vendor": "NVIDIA"}}, "hardware.vendor", "lower-case key"),
    ({"runtime": {"requires": ["cuda>=12.1", "cuda<13"]}}, "runtime.requires", "listed twice"),
    ({"runtime": {"requires": [">=12.1"]}}, "runtime.requires", "requires[0]: invalid requirement"),
    ({"runtime": {"framework_version": "2.4"}}, "runtime", "framework is not"),
    ({"runtime": {"framework": "pytorch", "framework_version": ">=x"}}, "runtime.framework_version", "invalid"),
    ({"replicas": 0}, "replicas", "greater than or equal to 1"),
    ({"priority": 1001}, "priority", "less than or equal to 1000"),
    ({"restart_policy": "sometimes"}, "restart_policy", "Input should be"),
    ({"placement": {"spread": "rack"}}, "placement.spread", "Input should be"),
    ({"placement": {"sites": ["bj"], "avoid_sites": ["bj"]}}, "placement", "both list ['bj']"),
    ({"placement": {"data_gib": 10}}, "placement", "needs data_site"),
    ({"replicas": 2, "placement": {"topology": "same_host", "spread": "host"}}, "", "contradicts"),
    ({"variants": {"huawei": {}}, "hardware": {"type": "gpu", "vendor": "nvidia"}}, "", "no entry for vendor"),
    ({"variants": {"Bad Key": {}}}, "variants", "must be a lower-case"),
    ({"unknown": 1}, "unknown", "Extra inputs are not permitted"),
    ({"name": "has space"}, "name", "letters, digits"),
    ({"duration_s": 0}, "duration_s", "greater than 0"),
])
def test_workload_spec_errors_name_field_and_reason(kw, loc, reason):
    got_loc, msg = error_of(**kw)
    assert got_loc == loc
    assert reason in msg


def test_workload_spec_framework_version_becomes_prefix():
    assert str(framework_specifier("2.4")) == "==2.4.*"
    assert str(framework_specifier(">=2.3,<2.5")) == ">=2.3,<2.5"
    assert str(framework_specifier("8.0.RC1")) == "==8.0.RC1"


def test_workload_spec_variant_lookup_order():
    s = spec(variants={"npu": {"image": "npu"}, "huawei": {"image": "hw"}, "default": {"image": "any"}})
    images = [v.image if v else None for v in (s.variant_for("huawei", HardwareType.NPU),
                                                s.variant_for("cambricon", HardwareType.NPU),
                                                s.variant_for("nvidia", HardwareType.GPU))]
    assert images == ["hw", "npu", "any"]
    assert spec(variants={"huawei": {}}).variant_for("nvidia", "gpu") is None
    assert spec().variant_for("nvidia", "gpu") is not None


def test_workload_spec_tenant_can_be_overridden_by_the_gateway():
    s = spec(tenant="claimed")
    assert s.model_copy(update={"tenant": "from-key"}).tenant == "from-key"


@pytest.mark.parametrize(("hardware", "demand"), [
    ({"type": "gpu", "count": 4, "memory_gib": 40}, Demand("gpu", 4.0, False, None, 40)),
    ({"type": "gpu", "share": 0.25, "memory_gib": 10}, Demand("gpu", 0.25, True, None, 10)),
    ({"type": "npu", "share": 1}, Demand("npu", 1.0, False, None, None)),
    ({"type": "any", "compute_units": 600}, Demand(None, 0.0, False, 600, None)),
    ({"type": "any", "count": 2}, Demand(None, 2.0, False, None, None)),
])
def test_workload_spec_demand_is_what_one_replica_asks_for(hardware: dict[str, Any], demand: Demand) -> None:
    s = spec(hardware=hardware, replicas=3)
    assert s.demand() == demand
    assert s.demand().devices_for(s.replicas) == 3 * demand.devices
    assert s.demand().compute_units_for(s.replicas) == (None if demand.compute_units is None
                                                       else 3 * demand.compute_units)


def test_workload_spec_resources_default_to_no_cpu_beside_devices_one_for_cpu_work_and_one_gib() -> None:
    d = spec(hardware={"type": "gpu", "count": 2}).demand()
    assert (d.cpu, d.host_memory_mib) == (0, 1024)
    d = spec(hardware={"type": "cpu"}).demand()
    assert (d.cpu, d.host_memory_mib) == (1, 1024)
    d = spec(hardware={"type": "gpu"}, resources={"cpu": 32, "memory_gib": 256}).demand()
    assert (d.cpu, d.host_memory_mib) == (32, 256 * 1024)


def test_workload_spec_cpu_only_work_takes_its_cpus_from_resources() -> None:
    s = spec(hardware={"type": "cpu", "arch": "arm64", "cpu_features": ["SVE"]}, resources={"cpu": 16})
    hw = s.primary
    assert (hw.arch, hw.cpu_features, s.demand().cpu, s.demand().devices) == ("aarch64", ["sve"], 16, 0.0)
    for bad, field in (({"type": "cpu", "count": 4}, "count"), ({"type": "cpu", "share": 0.5}, "share")):
        with pytest.raises(ValidationError, match=field):
            spec(hardware=bad)
    with pytest.raises(ValidationError, match="without a CPU"):
        spec(hardware={"type": "cpu"}, resources={"cpu": 0})


def test_workload_spec_alternatives_are_ordered_and_each_may_carry_resources_and_variant() -> None:
    s = spec(hardware=[{"type": "gpu", "model": ["H100*", "H800*"], "count": 8},
                       {"type": "npu", "model": "Ascend910B*", "count": 16, "resources": {"cpu": 48},
                        "variant": "ascend"}],
             resources={"cpu": 32, "memory_gib": 512},
             variants={"ascend": {"image": "ascend:1"}, "default": {"image": "cuda:1"}})
    assert [a.models for a in s.alternatives] == [("H100*", "H800*"), ("Ascend910B*",)]
    assert (s.demand(0).cpu, s.demand(1).cpu, s.demand(1).host_memory_mib) == (32, 48, 512 * 1024)
    variant = s.variant_for("huawei", "npu", 1)
    assert variant is not None and variant.image == "ascend:1"
    with pytest.raises(ValidationError, match=r"hardware\.1\.count"):
        spec(hardware=[{"type": "gpu"}, {"type": "gpu", "count": 0}])
    with pytest.raises(ValidationError, match="1 to 8 alternatives"):
        spec(hardware=[])
    with pytest.raises(ValidationError, match="not a key of variants"):
        spec(hardware=[{"type": "gpu", "variant": "rocm"}])


def test_workload_spec_variant_key_names_what_a_placed_replica_runs() -> None:
    s = spec(hardware=[{"type": "gpu"}, {"type": "npu", "variant": "ascend"}, {"type": "cpu"}],
             variants={"ascend": {"image": "ascend:1"}, "nvidia": {"image": "cuda:1"}, "default": {"image": "any:1"}})
    assert s.variant_key(*s.placed_on(("nvidia", "gpu"), 0)) == "nvidia"
    assert s.variant_key(*s.placed_on(("amd", "gpu"), 0)) == "default"
    assert s.variant_key(*s.placed_on(("huawei", "npu"), 1)) == "ascend"  # the alternative names it
    assert s.placed_on(None, 2) == ("", "cpu", 2) and s.variant_key(*s.placed_on(None, 2)) == "default"
    assert s.placed_on(("nvidia", "gpu"), 9) == ("nvidia", "gpu", 0)  # out of range: the first
    for args in ((("nvidia", "gpu"), 0), (("huawei", "npu"), 1), (None, 2)):
        key = s.variant_key(*s.placed_on(*args))
        assert key is not None and s.variant_for(*s.placed_on(*args)) == s.variants[key]
    assert spec().variant_key("nvidia", "gpu") is None  # no variants: run as is
    assert spec(variants={"huawei": {}}).variant_key("nvidia", "gpu") is None


def test_workload_spec_replica_view_carries_its_variant_once_placed() -> None:
    from services.scheduler.lifecycle import Replica

    s = spec(variants={"nvidia": {"image": "cuda:1"}, "default": {"image": "any:1"}})
    device = {"id": "h1:nvidia:0", "index": 0, "vendor": "nvidia", "hardware_type": "gpu"}
    placed = Replica(replica=0, attempt=1, state="running", host_id="h1", devices=[device],
                     resources={"alternative": 0})
    assert placed.view(s).variant == "nvidia"
    other = Replica(replica=1, attempt=1, state="placed", host_id="h2",
                    devices=[{**device, "id": "h2:hygon:0", "vendor": "hygon"}], resources={"alternative": 0})
    assert other.view(s).variant == "default"
    assert Replica(replica=2).view(s).variant is None  # pending: nothing chosen yet
