"""discover() on this host, host facts from fake trees, labels, and the CLI entry point."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
from pathlib import Path

import psutil
import pytest

from agent.discover import default_probes, derive_labels, discover, discover_main, label_value
from agent.facts import collect_host_facts
from libs.schemas.devices import Device, HardwareType, HostFacts, format_cpu_list, parse_cpu_list

MIB = 1024 * 1024


def _has_accelerator_tools() -> bool:
    return any(shutil.which(tool) for probe in default_probes() for tool in probe.tools if tool != "lspci")


def _cpuinfo_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                None)


def _numa_nodes() -> int:
    return max(1, len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))))


async def test_discover_this_host_reports_real_cpu_and_memory() -> None:
    result = await discover()
    host = result.host
    assert host.hostname == socket.gethostname()
    assert host.arch == platform.machine()
    assert host.kernel == platform.release()
    assert host.cpu_threads == psutil.cpu_count(logical=True) == os.cpu_count()
    assert host.cpu_cores == (psutil.cpu_count(logical=False) or host.cpu_threads)
    assert host.memory_mib == psutil.virtual_memory().total // MIB
    assert host.cpu_sockets >= 1
    assert host.numa_nodes == _numa_nodes()
    model = _cpuinfo_model()
    if model:
        assert host.cpu_model == " ".join(model.split())
    assert result.labels["xpumesh.io/arch"] == platform.machine()
    if not _has_accelerator_tools():
        assert result.devices == []
        assert {r.probe for r in result.probes} >= {"nvidia", "amd", "huawei", "fpga"}


def test_facts_never_crash_on_missing_files(tmp_path: Path) -> None:
    facts = collect_host_facts(proc_root=tmp_path / "proc", sys_root=tmp_path / "sys", etc_root=tmp_path / "etc")
    assert facts.numa_nodes == 1
    assert facts.cpu_sockets == 1
    assert facts.cpu_threads >= 1
    assert facts.memory_mib > 0
    assert facts.os  # falls back to the kernel's system name


def test_facts_read_arm64_cpuinfo_os_release_and_numa(tmp_path: Path) -> None:
    proc, sys_root, etc = tmp_path / "proc", tmp_path / "sys", tmp_path / "etc"
    proc.mkdir()
    blocks = [f"processor\t: {n}\nBogoMIPS\t: 200.00\nCPU implementer\t: 0x48\nCPU part\t: 0xd01\n" for n in range(4)]
    (proc / "cpuinfo").write_text("\n".join(blocks))
    for cpu, package in enumerate([0, 0, 1, 1]):
        topology = sys_root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
    for node in range(4):
        (sys_root / "devices" / "system" / "node" / f"node{node}").mkdir(parents=True)
    etc.mkdir()
    (etc / "os-release").write_text('NAME="openEuler"\nVERSION="22.03 (LTS-SP3)"\nID="openEuler"\n'
                                    'PRETTY_NAME="openEuler 22.03 (LTS-SP3)"\n')
    facts = collect_host_facts(proc_root=proc, sys_root=sys_root, etc_root=etc)
    assert facts.cpu_model == "HiSilicon Kunpeng-920"
    assert facts.cpu_sockets == 2
    assert facts.numa_nodes == 4
    assert facts.os == "openEuler 22.03 (LTS-SP3)"
    assert facts.cpu_vendor == "huawei"  # implementer 0x48: HiSilicon


def test_facts_read_vendor_features_numa_layout_and_allocatable(tmp_path: Path) -> None:
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    flags = "fpu sse4_2 avx avx2 avx512f avx512bw amx_tile amx_bf16 not_a_feature"
    blocks = [f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8468\n"
              f"flags\t\t: {flags}\n" for n in range(4)]
    (proc / "cpuinfo").write_text("\n".join(blocks))
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\n")
    for node, (cpus, kib) in enumerate([("0-1", 8388608), ("2-3", 8388608)]):
        d = sys_root / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal:       {kib} kB\nNode {node} MemFree: 1 kB\n")
    facts = collect_host_facts(proc_root=proc, sys_root=sys_root, etc_root=tmp_path / "etc", reserved_cpus=1,
                               reserved_memory_mib=1024)
    assert facts.cpu_vendor == "intel"
    assert facts.cpu_features == ["amx_bf16", "amx_tile", "avx", "avx2", "avx512bw", "avx512f", "sse4_2"]
    assert [(n.id, n.cpu_ids(), n.memory_mib) for n in facts.numa] == [(0, [0, 1], 8192), (1, [2, 3], 8192)]
    # allocatable: the CPUs this process may use (psutil/affinity: the real host's) less the reserve
    assert facts.cpu_allocatable == max(0, min(facts.cpu_threads, len(os.sched_getaffinity(0))) - 1)
    assert facts.memory_allocatable_mib == facts.memory_mib - 1024


def test_cpu_lists_parse_and_format_round_trip() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert format_cpu_list([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    for bad in ("3-1", "a", "-1", "0-70000"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def _host() -> HostFacts:
    return HostFacts(hostname="h", arch="aarch64", os="x", kernel="k", cpu_model="c", cpu_sockets=1, cpu_cores=1,
                     cpu_threads=1, memory_mib=1, numa_nodes=2)


def test_labels_are_valid_kubernetes_values() -> None:
    devices = [
        Device(index=0, hardware_type=HardwareType.GPU, vendor="amd", model="MI300A", memory_mib=64289,
               driver_version="6.9.0-rc5+", runtimes={"rocm": "6.2.0"}),
        Device(index=1, hardware_type=HardwareType.GPU, vendor="amd", model="MI300X", memory_mib=196592,
               driver_version="6.9.0-rc5+"),
    ]
    labels = derive_labels(_host(), devices, {"rdma": True, "infiniband": True, "roce": False})
    assert labels == {
        "xpumesh.io/arch": "aarch64", "xpumesh.io/numa-nodes": "2", "xpumesh.io/amd.driver": "6.9.0-rc5",
        "xpumesh.io/rocm": "6.2.0", "xpumesh.io/gpu.count": "2", "xpumesh.io/gpu.vendor": "amd",
        "xpumesh.io/gpu.model": "MI300A", "xpumesh.io/gpu.memory-mib": "64289", "xpumesh.io/gpu.mixed": "true",
        "xpumesh.io/network.rdma": "true", "xpumesh.io/network.infiniband": "true",
    }
    assert label_value("  K100_AI / 64G ") == "K100_AI-64G"
    assert label_value("x" * 80) == "x" * 63
    assert label_value("+++") is None


def test_discover_main_prints_json(fixtures_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert discover_main(str(fixtures_dir / "ascend-910b"), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["devices"]) == 8
    assert data["devices"][0]["model"] == "Ascend910B3"
    assert data["labels"]["xpumesh.io/cann"] == "8.0.RC1"
    assert data["host"]["hostname"] == socket.gethostname()


def test_discover_main_prints_a_table(fixtures_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert discover_main(str(fixtures_dir / "mixed"), as_json=False) == 0
    out = capsys.readouterr().out
    assert "L40S" in out and "Alveo-U250" in out and "xpumesh.io/network.roce=true" in out
    assert "isolation  replicas run as " in out  # how tenants' replicas are kept apart (or that they are not)


def test_discover_main_rejects_a_missing_probe_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert discover_main(str(tmp_path / "absent"), as_json=True) == 2
    assert "probe dir not found" in capsys.readouterr().err


def test_discover_main_says_what_each_probe_read_found_and_could_not_read(
        tmp_path: Path, fixtures_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = fixtures_dir / "published"
    for name in ("nvidia-smi/table-unreachable-gpu1-rtxpro6000-kmd610.57.04.txt",
                 "npu-smi/info-910B4-1-masked-bus-id-hami47.txt"):
        shutil.copy(published / name, tmp_path / Path(name).name)
    assert discover_main(str(tmp_path), as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    nvidia = next(line for line in lines if line.startswith("  nvidia "))
    assert "read nvidia-smi [table-unreachable-gpu1-rtxpro6000-kmd610.57.04.txt]" in nvidia
    assert "3 gpu RTX-PRO-6000-Blac, 1 gpu unknown (1 unhealthy)" in nvidia
    assert any(line.startswith("  amd ") and "not present" in line for line in lines)
    assert any(line.startswith("  ! nvidia") and "0000:34:00.0 cannot be reached" in line
               and "Unknown Error" in line for line in lines)
    assert any(line.startswith("  ! huawei") and "bus id masked" in line for line in lines)
