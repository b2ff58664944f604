"""discover(probe_dir=…) over the project's own captured hosts (tests/fixtures/probes/<set>)."""

from __future__ import annotations

from pathlib import Path

from agent.discover import discover
from libs.schemas.devices import Discovery, HardwareType, Health, Link


def _summary(result: Discovery) -> set[tuple[str, str, str, int | None, str | None]]:
    return {(d.vendor, d.hardware_type.value, d.model, d.memory_mib, d.driver_version) for d in result.devices}


async def test_nvidia_a100x8_discovers_eight_a100s_with_nvlinks(fixtures_dir: Path) -> None:
    result = await discover(probe_dir=fixtures_dir / "nvidia-a100x8")
    assert len(result.devices) == 8
    assert _summary(result) == {("nvidia", "gpu", "A100-SXM4-80GB", 81920, "550.90.07")}
    assert all(d.runtimes == {"cuda": "12.4"} for d in result.devices)
    first = result.devices[0]
    assert first.uuid == "GPU-5a1c0e0d-3b7f-4c2e-9a6d-00f1c83b77a0"
    assert first.pci_bus_id == "0000:07:00.0"
    assert first.extra["serial"] == "1422221003120"
    assert first.numa_node == 3
    assert first.links == [Link(peer_index=i, kind="NV12") for i in range(1, 8)]
    assert [d.index for d in result.devices] == list(range(8))
    assert result.labels["xpumesh.io/nvidia.driver"] == "550.90.07"
    assert result.labels["xpumesh.io/cuda"] == "12.4"
    assert result.labels["xpumesh.io/gpu.model"] == "A100-SXM4-80GB"
    assert result.labels["xpumesh.io/gpu.count"] == "8"
    assert all(not report.warnings for report in result.probes)


async def test_amd_mi300x_discovers_eight_mi300x_with_rocm_and_xgmi(fixtures_dir: Path) -> None:
    result = await discover(probe_dir=fixtures_dir / "amd-mi300x")
    assert len(result.devices) == 8
    assert _summary(result) == {("amd", "gpu", "MI300X", 196592, "6.8.5")}
    assert all(d.runtimes == {"rocm": "6.2.0"} for d in result.devices)
    assert [d.numa_node for d in result.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert result.devices[3].pci_bus_id == "0000:65:00.0"
    assert {link.kind for d in result.devices for link in d.links} == {"XGMI"}
    assert all(len(d.links) == 7 for d in result.devices)
    assert result.devices[0].extra["compute_partition"] == "SPX"
    assert result.labels["xpumesh.io/rocm"] == "6.2.0"
    assert result.labels["xpumesh.io/amd.driver"] == "6.8.5"
    hygon = next(r for r in result.probes if r.probe == "hygon")
    assert hygon.devices == []


async def test_ascend_910b_discovers_eight_910b3_with_cann_and_hccs(fixtures_dir: Path) -> None:
    result = await discover(probe_dir=fixtures_dir / "ascend-910b")
    assert len(result.devices) == 8
    assert _summary(result) == {("huawei", "npu", "Ascend910B3", 65536, "23.0.6")}
    assert all(d.runtimes == {"cann": "8.0.RC1"} for d in result.devices)
    assert [d.health for d in result.devices] == [Health.HEALTHY] * 6 + [Health.UNHEALTHY, Health.HEALTHY]
    assert result.devices[0].uuid == "1024863A7C10"
    assert result.devices[0].firmware_version == "7.1.0.5.220"
    assert result.devices[0].extra["cpu_affinity"] == "144-167"
    assert all({link.kind for link in d.links} == {"HCCS"} and len(d.links) == 7 for d in result.devices)
    assert result.labels["xpumesh.io/cann"] == "8.0.RC1"
    assert result.labels["xpumesh.io/npu.model"] == "Ascend910B3"


async def test_hygon_dcu_discovers_eight_k100_ai_with_dtk(fixtures_dir: Path) -> None:
    result = await discover(probe_dir=fixtures_dir / "hygon-dcu")
    assert len(result.devices) == 8
    assert _summary(result) == {("hygon", "dcu", "K100_AI", 65520, "6.3.8-V1.5.2")}
    assert all(d.runtimes == {"dtk": "24.04.1"} for d in result.devices)
    assert result.devices[7].pci_bus_id == "0000:df:00.0"
    assert all(d.hardware_type is HardwareType.DCU for d in result.devices)
    assert result.labels["xpumesh.io/dtk"] == "24.04.1"
    assert result.labels["xpumesh.io/dcu.model"] == "K100_AI"
    amd = next(r for r in result.probes if r.probe == "amd")
    assert amd.devices == [] and amd.available is False


async def test_cambricon_mlu370_discovers_eight_mlu370_x8(fixtures_dir: Path) -> None:
    result = await discover(probe_dir=fixtures_dir / "cambricon-mlu370")
    assert len(result.devices) == 8
    assert _summary(result) == {("cambricon", "mlu", "MLU370-X8", 23374, "5.10.29")}
    assert result.devices[2].pci_bus_id == "0000:3d:00.0"
    assert result.devices[0].firmware_version == "1.1.6"
    assert result.labels["xpumesh.io/mlu.count"] == "8"


async def test_mixed_host_discovers_gpus_fpga_and_roce(fixtures_dir: Path) -> None:
    result = await discover(probe_dir=fixtures_dir / "mixed")
    assert _summary(result) == {("nvidia", "gpu", "L40S", 46068, "550.127.05"),
                                ("xilinx", "fpga", "Alveo-U250", None, None)}
    gpus = [d for d in result.devices if d.vendor == "nvidia"]
    assert [d.numa_node for d in gpus] == [0, 1]  # from the captured sysfs tree, by PCI address
    fpga = next(d for d in result.devices if d.vendor == "xilinx")
    assert fpga.pci_bus_id == "0000:3b:00.0"
    assert fpga.extra["functions"] == "2"
    assert result.labels["xpumesh.io/network.rdma"] == "true"
    assert result.labels["xpumesh.io/network.roce"] == "true"
    assert "xpumesh.io/network.infiniband" not in result.labels
    assert result.labels["xpumesh.io/fpga.model"] == "Alveo-U250"
