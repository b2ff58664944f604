"""A catalog model request placed by the ordinary rules: each build's runtime requirement is matched against
the devices' drivers and runtimes, the first build that fits is taken and named, and with every build's
hardware busy it pends naming each build."""

from __future__ import annotations

from libs.catalog import load_rules
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    PlacementRules,
    build_snapshot,
    place_alternatives,
)
from tests.unit.placement.fleet import check_valid, devices, host, wl

COMPAT, DRIVERS = load_rules()
RULES = PlacementRules.of(COMPAT, DRIVERS)
QWEN = {"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}}


def _fleet(nvidia: str, allocations: tuple[Allocation, ...] = ()):
    hosts = [host("nv", cpus=128, memory_mib=1 << 20), host("asc", cpus=192, memory_mib=1 << 20)]
    return build_snapshot(hosts, devices("nv", nvidia, 8, link=None) + devices("asc", "910b", 8, link=None),
                          allocations)


def _busy(host_id: str, profile: str) -> Allocation:
    return Allocation(f"busy-{host_id}", 900, False, None,
                      tuple(AllocatedDevice(f"{host_id}/{profile}{i}") for i in range(8)))


def test_model_request_takes_the_first_build_whose_runtime_the_driver_carries():
    snap = _fleet("a100")  # driver 550.54.14 carries CUDA 12.4: vLLM's CUDA build fits
    batch = [wl("q", **QWEN)]
    d = place_alternatives(batch, snap, rules=RULES)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert (a.host_id, a.alternative, batch[0].spec.alternatives[a.alternative].variant) == ("nv", 0, "vllm-cuda")


def test_model_request_skips_a_build_the_driver_is_too_old_for():
    snap = _fleet("a100-old")  # driver 525.85.12: CUDA 12.0 only; the Ascend build (CANN 8.1.RC1, HDK 24.1.rc2) fits
    batch = [wl("q", **QWEN)]
    d = place_alternatives(batch, snap, rules=RULES)
    check_valid(d, snap, batch)
    [a] = d.assignments
    assert (a.host_id, a.alternative, batch[0].spec.alternatives[a.alternative].variant) == ("asc", 1, "vllm-ascend")


def test_model_request_with_every_build_busy_pends_naming_each_build():
    snap = _fleet("a100", (_busy("nv", "a100"), _busy("asc", "910b")))
    d = place_alternatives([wl("q", **QWEN)], snap, rules=RULES)
    assert not d.assignments
    [p] = d.pending
    assert p.reason.startswith("alternative 0 (1 x gpu nvidia variant vllm-cuda): ")
    assert "; else alternative 1 (1 x npu huawei Ascend910B* variant vllm-ascend): " in p.reason
    assert "no free gpu" in p.reason and "no free npu" in p.reason
