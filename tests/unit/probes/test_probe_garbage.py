"""Unexpected text never raises: every parser reports what it could read and warns about the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.discover import default_probes
from agent.probes.base import Capture, CommandRunner, run_probe_live

GARBAGE = {
    "empty": "",
    "blank lines": "\n\n   \n",
    "binary": "\x00\x01\xff\xfe garbage \x7f\n\x00",
    "shell error": "bash: line 1: command failed: Permission denied\n",
    "html": "<html><body><h1>502 Bad Gateway</h1></body></html>\n",
    "broken xml": "<?xml version='1.0'?><nvidia_smi_log><driver_version>5",
    "broken json": '{"card0": {"Device ID": "0x74a1", ',
    "json list": "[1, 2, 3]\n",
    "json wrong shape": '{"card0": "x", "system": 3, "gpu": [{"gpu": "zero"}]}\n',
    "table fragments": "+-----+-----+\n| GPU | Name |\n|=====+=====|\n| x | y |\n| 0 |\n+-----+\n",
    "numbers": "0 1 2 3\n4 5 6 7\n",
    "key values": "NPU ID : abc\nChip Count : -1\nHBM Capacity(MB) : lots\nDriver Version: \n",
    "long line": "|" + "x" * 20000 + "|\n",
}

COMMANDS = {
    "nvidia": [["nvidia-smi"], ["nvidia-smi", "-q"], ["nvidia-smi", "-q", "-x"], ["nvidia-smi", "-L"],
               ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv"],
               ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv"], ["nvidia-smi", "topo", "-m"]],
    "amd": [["amd-smi", "static"], ["amd-smi", "list", "--json"], ["amd-smi", "monitor"], ["rocm-smi"],
            ["rocm-smi", "--json"],
            ["cat", "/opt/rocm/.info/version"]],
    "hygon": [["hy-smi"], ["rocm-smi", "--showproductname"], ["cat", "/opt/dtk/.info/version"]],
    "huawei": [["npu-smi", "info"], ["npu-smi", "info", "-l"], ["npu-smi", "info", "-m"],
               ["npu-smi", "info", "-t", "board", "-i", "0"], ["npu-smi", "info", "-t", "usages", "-i", "0"],
               ["npu-smi", "info", "-t", "common", "-i", "0"], ["npu-smi", "info", "-t", "health", "-i", "0"],
               ["npu-smi", "info", "-t", "topo"], ["npu-smi", "info", "-t", "memory", "-i", "0"],
               ["cat", "/usr/local/Ascend/ascend-toolkit/latest/ascend_toolkit_install.info"]],
    "cambricon": [["cnmon"]], "kunlunxin": [["xpu-smi"]], "iluvatar": [["ixsmi"]],
    "metax": [["mx-smi"], ["ht-smi"]], "mthreads": [["mthreads-gmi"]], "enflame": [["efsmi"]],
    "intel": [["xpu-smi"], ["xpu-smi", "discovery"], ["xpu-smi", "discovery", "-j"],
              ["xpu-smi", "discovery", "--dump", "1,2,11"]],
    "gaudi": [["hl-smi"], ["hl-smi", "-L"], ["hl-smi", "-Q", "index,name,bus_id", "--format", "csv,noheader"]],
    "neuron": [["neuron-ls"], ["neuron-ls", "-j"]],
    "fpga": [["lspci", "-Dn"], ["xbutil", "examine"], ["xbmgmt", "examine"], ["fpgainfo", "fme"]],
}

PROBES = {probe.name: probe for probe in default_probes(Path("/nonexistent"))}
CASES = [(name, argv, label) for name, commands in COMMANDS.items() for argv in commands for label in GARBAGE]


def test_garbage_every_probe_has_commands_listed() -> None:
    assert set(COMMANDS) == set(PROBES)


@pytest.mark.parametrize(("probe_name", "argv", "label"), CASES,
                         ids=[f"{n}-{' '.join(a[1:]) or a[0]}-{g}" for n, a, g in CASES])
def test_garbage_parser_warns_without_raising(probe_name: str, argv: list[str], label: str) -> None:
    probe = PROBES[probe_name]
    capture = Capture(argv=tuple(argv), text=GARBAGE[label], origin="garbage.txt")
    report = probe.parse([capture])
    assert report.devices == []
    assert report.warnings, "garbage must produce a warning"
    assert not any("could not be parsed" in warning for warning in report.warnings), report.warnings


@pytest.mark.parametrize("probe_name", sorted(COMMANDS))
async def test_absent_tool_reports_unavailable(probe_name: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no vendor tool can be found
    probe = PROBES[probe_name]
    if probe_name == "nvidia":
        monkeypatch.setattr(probe, "use_nvml", False)
    if probe_name == "fpga":
        monkeypatch.setattr(probe, "sysfs_root", tmp_path / "no-sys")
    caplog.set_level("DEBUG")
    run = await run_probe_live(probe, CommandRunner(timeout_s=2))
    assert run.report.available is False
    assert run.report.devices == []
    assert run.report.warnings == []
    assert all(record.levelname == "DEBUG" for record in caplog.records if record.name.startswith("agent"))
