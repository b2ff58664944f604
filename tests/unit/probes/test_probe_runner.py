"""Capture files, routing, and the live runner against fake vendor tools on PATH."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path

import pytest

from agent.discover import discover, run_probes
from agent.probes.amd import AmdProbe
from agent.probes.ascend import AscendProbe
from agent.probes.base import (
    READ_FILE,
    Capture,
    CommandRunner,
    load_capture,
    load_captures,
    run_probe_live,
    split_command,
)
from agent.probes.cambricon import CambriconProbe
from agent.probes.hygon import HygonProbe
from agent.probes.metax import MetaxProbe
from agent.probes.nvidia import NvidiaProbe

XML = """<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
  <driver_version>550.90.07</driver_version>
  <cuda_version>12.4</cuda_version>
  <attached_gpus>1</attached_gpus>
  <gpu id="00000000:17:00.0">
    <product_name>NVIDIA L40S</product_name>
    <serial>1320123456789</serial>
    <uuid>GPU-11111111-2222-3333-4444-555555555555</uuid>
    <pci><pci_bus_id>00000000:17:00.0</pci_bus_id></pci>
    <fb_memory_usage><total>46068 MiB</total><used>1 MiB</used></fb_memory_usage>
  </gpu>
</nvidia_smi_log>
"""


def _tool(bin_dir: Path, name: str, script: str) -> Path:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(script))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    return folder


def test_capture_headers_are_read_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "whatever.txt"
    path.write_text("# source: lab host a1 (note)\n# command: rocm-smi --json   (as telegraf runs it)\n{}\n")
    capture = load_capture(path)
    assert capture is not None
    assert capture.argv == ("rocm-smi", "--json")
    assert capture.source == "lab host a1 (note)"
    assert capture.text == "{}\n"
    assert capture.has("--json") and not capture.has("-q")


def test_capture_without_header_is_routed_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "nvidia-smi-q.txt").write_text("==============NVSMI LOG==============\n\nDriver Version : 1.2\n")
    (tmp_path / "xpu_smi.out").write_text("anything")
    (tmp_path / "notes.txt").write_text("no header here")
    (tmp_path / "README.md").write_text("# captures")
    (tmp_path / "sys").mkdir()
    captures, warnings = load_captures(tmp_path, ["nvidia-smi", "xpu-smi"])
    assert sorted(c.tool for c in captures) == ["nvidia-smi", "xpu-smi"]
    assert warnings == ["notes.txt: no '# command:' header and no known tool name prefix; skipped"]


async def test_probe_dir_sniffs_the_format_of_unlabelled_files(tmp_path: Path, fixtures_dir: Path) -> None:
    (tmp_path / "nvidia-smi-x.xml").write_text(XML)
    (tmp_path / "lscpu.txt").write_text("# command: lscpu\nArchitecture: x86_64\n")
    result = await discover(probe_dir=tmp_path)
    assert [(d.model, d.memory_mib, d.uuid) for d in result.devices] == [
        ("L40S", 46068, "GPU-11111111-2222-3333-4444-555555555555")]
    skipped = next(r for r in result.probes if r.probe == "probe-dir")
    assert skipped.warnings == ["lscpu.txt: no probe reads 'lscpu' output; skipped"]


async def test_runner_runs_the_vendor_tool(bin_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "smi.xml").write_text(XML)
    _tool(bin_dir, "nvidia-smi", f"""
        if [ "$1" = "-q" ] && [ "$2" = "-x" ]; then cat {tmp_path / "smi.xml"}; exit 0; fi
        echo "unsupported" >&2; exit 2
        """)
    run = await run_probe_live(NvidiaProbe(use_nvml=False), CommandRunner(timeout_s=5))
    assert run.report.available is True
    assert [(d.model, d.driver_version, d.runtimes) for d in run.report.devices] == [
        ("L40S", "550.90.07", {"cuda": "12.4"})]
    assert any("topo -m: exited with 2 (unsupported)" in w for w in run.report.warnings)
    assert [r.memory_used_mib for r in run.readings] == [1]


async def test_runner_times_out_a_hanging_tool(bin_dir: Path) -> None:
    _tool(bin_dir, "cnmon", "sleep 30\n")
    run = await run_probe_live(CambriconProbe(), CommandRunner(timeout_s=0.3))
    assert run.report.available is True
    assert run.report.devices == []
    assert run.report.warnings == ["cnmon: timed out after 0.3s"]


async def test_runner_reports_a_failing_tool(bin_dir: Path) -> None:
    _tool(bin_dir, "mx-smi", "echo 'Failed to initialize MXSML: driver not loaded'\nexit 3\n")
    run = await run_probe_live(MetaxProbe(), CommandRunner(timeout_s=5))
    assert run.report.available is True
    assert run.report.devices == []
    assert "mx-smi: exited with 3 (Failed to initialize MXSML: driver not loaded)" in run.report.warnings
    assert any("no mx-smi device table" in w for w in run.report.warnings)


async def test_runner_runs_a_shared_command_once(bin_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    _tool(bin_dir, "rocm-smi", f"""
        echo x >> {counter}
        echo '{{"card0": {{"Device ID": "0x74a1", "Card Series": "AMD Instinct MI300X", "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "VRAM Total Memory (B)": "206141652992"}}, "system": {{"Driver version": "6.8.5"}}}}'
        """)
    runs, _ = await run_probes(probes=[AmdProbe(), HygonProbe()], timeout_s=5)
    assert counter.read_text().count("x") == 1
    amd, hygon = (run.report for run in runs)
    assert [(d.vendor, d.model, d.memory_mib) for d in amd.devices] == [("amd", "MI300X", 196592)]
    assert hygon.devices == []


async def test_runner_reads_files_for_cat_commands(tmp_path: Path) -> None:
    version = tmp_path / "opt" / "rocm" / ".info" / "version"
    version.parent.mkdir(parents=True)
    version.write_text("6.1.3-122\n")
    runner = CommandRunner()
    capture, warning = await runner.run([READ_FILE, str(tmp_path / "missing"), str(tmp_path / "opt/*/.info/version")])
    assert warning is None and capture is not None
    assert capture.text == "6.1.3-122\n"
    assert capture.argv == (READ_FILE, str(version))
    assert await runner.run([READ_FILE, str(tmp_path / "nope")]) == (None, None)


def test_capture_option_reads_both_spellings() -> None:
    capture = Capture(argv=("nvidia-smi", "--query-gpu=name,uuid", "--format", "csv", "-i", "3"), text="")
    assert capture.option("--query-gpu") == "name,uuid"
    assert capture.option("--format") == "csv"
    assert capture.option("-i") == "3"
    assert capture.option("-c") is None


def test_capture_command_header_drops_sudo_env_and_notes() -> None:
    assert split_command("sudo env LC_ALL=C npu-smi info -t board -i 0") == (
        "npu-smi", "info", "-t", "board", "-i", "0")
    assert split_command("/usr/local/corex/bin/ixsmi -l   (run by the device plugin)") == (
        "/usr/local/corex/bin/ixsmi", "-l")


def test_ascend_followup_asks_board_facts_of_each_npu(fixtures_dir: Path) -> None:
    table = load_capture(fixtures_dir / "ascend-910b" / "npu-smi-info.txt")
    assert table is not None
    commands = AscendProbe().followup_commands([table])
    assert commands == [["npu-smi", "info", "-t", "board", "-i", str(n)] for n in range(8)]
    multi_chip = Capture(argv=("npu-smi", "info"), text=(
        "| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |\n"
        "| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |\n"
        "+===============================+=================+======================================================+\n"
        "| 6       310                   | OK              | 12.8         73                0     / 970           |\n"
        "| 0       3                     | 0000:89:00.0    | 0            2703 / 8192                             |\n"
        "+-------------------------------+-----------------+------------------------------------------------------+\n"
        "| 6       310                   | OK              | 12.8         74                0     / 970           |\n"
        "| 1       4                     | 0000:8A:00.0    | 0            2867 / 8192                             |\n"
        "+===============================+=================+======================================================+\n"))
    assert AscendProbe().followup_commands([multi_chip]) == [["npu-smi", "info", "-t", "board", "-i", "6"]]


async def test_runner_asks_npu_smi_for_board_facts_after_the_table(bin_dir: Path, fixtures_dir: Path) -> None:
    captured = fixtures_dir / "ascend-910b"
    _tool(bin_dir, "npu-smi", f"""
        case "$*" in
          "info") tail -n +3 {captured / "npu-smi-info.txt"} ;;
          "info -t board -i "*) tail -n +3 {captured}/npu-smi-info-t-board-i$5.txt ;;
          *) echo "Error: unsupported" >&2; exit 1 ;;
        esac
        """)
    run = await run_probe_live(AscendProbe(), CommandRunner(timeout_s=5))
    devices = run.report.devices
    assert [(d.model, d.driver_version, d.uuid) for d in devices][:2] == [
        ("Ascend910B3", "23.0.6", "1024863A7C10"), ("Ascend910B3", "23.0.6", "1024863A7C11")]
    assert len(devices) == 8 and all(d.firmware_version == "7.1.0.5.220" for d in devices)
