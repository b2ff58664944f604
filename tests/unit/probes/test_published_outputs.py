"""The project's own fixtures of real published tool outputs parse into the devices they show.

Each file under tests/fixtures/probes/published/<tool>/ is one output as a user, a vendor
doc or another project published it (its ``# source:`` header says where). The records
below were written by reading each file: they cover the current releases of each tool
(610-branch nvidia-smi, HCU-era hy-smi), other shapes of the same tool (amd-smi monitor
and metric, neuron-ls JSON), anonymised and cut output (masked bus ids, elided rows, N/A
fields), devices the tool cannot reach, Intel's xpu-smi beside Kunlunxin's, and vendors
with their own probe (Gaudi hl-smi, AWS neuron-ls, MetaX ht-smi, Xilinx xbutil/xbmgmt,
Intel/Altera fpgainfo).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.probes.expectations import MODEL_NOT_SHOWN, Expect, ParseFile, mismatches

PUBLISHED = Path(__file__).resolve().parents[2] / "fixtures" / "probes" / "published"
NV, CUDA = "nvidia", "cuda"
UNREACHABLE = "cannot be reached"
TRUNCATED = "name truncated"
PRO6000 = "RTX-PRO-6000-Blac"

EXPECTED: dict[str, Expect] = {
    # ------------------------------------------------------------------ nvidia-smi, 610 branch and failures
    "nvidia-smi/table-b200-x2-kmd610.43.02-excerpt.txt": Expect(
        2, NV, "gpu", "B200", 183359, "610.43.02", {CUDA: "13.3"}, first={"pci_bus_id": "0000:63:00.0"}),
    "nvidia-smi/table-rtx3080-kmd610.43.03.txt": Expect(
        1, NV, "gpu", "GeForce-RTX-3080", 16384, "610.43.03", {CUDA: "13.3"}, warns=(TRUNCATED,)),
    "nvidia-smi/table-rtx5070-kmd610.43.02.txt": Expect(
        1, NV, "gpu", "GeForce-RTX-5070", 12227, "610.43.02", {CUDA: "13.3"}, warns=(TRUNCATED,)),
    "nvidia-smi/table-unreachable-gpu1-rtxpro6000-kmd610.57.04.txt": Expect(
        4, NV, "gpu", (PRO6000, "unknown", PRO6000, PRO6000), (97887, None, 97887, 97887), "610.57.04",
        {CUDA: "13.3"}, health=("unknown", "unhealthy", "unknown", "unknown"), warns=(UNREACHABLE, TRUNCATED),
        indexes=(0, 1, 2, 3)),
    "nvidia-smi/unreachable-only-0000-0b.txt": Expect(
        1, NV, "gpu", "unknown", health="unhealthy", warns=(UNREACHABLE,),
        first={"pci_bus_id": "0000:0b:00.0",
               "extra": {"error": "Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error"}}),
    "nvidia-smi/unreachable-a-i0-0000-09.txt": Expect(
        1, NV, "gpu", "unknown", health="unhealthy", warns=(UNREACHABLE,), indexes=(0,),
        first={"pci_bus_id": "0000:09:00.0"}),
    "nvidia-smi/unreachable-no-space-0000-07.txt": Expect(
        1, NV, "gpu", "unknown", health="unhealthy", warns=(UNREACHABLE,), first={"pci_bus_id": "0000:07:00.0"}),
    "nvidia-smi/table-gtx1660-cuda-na-driver550.54.10.txt": Expect(1, NV, "gpu", "GeForce-GTX-1660", 6144, "550.54.10"),
    "nvidia-smi/xml-gtx1660ti-driver430.64-cut.txt": Expect(
        1, NV, "gpu", "GeForce-GTX-1660-Ti", None, "430.64", {CUDA: "10.1"}, warns=("not well-formed",),
        first={"uuid": "GPU-e189fb8d-1627-f8f0-2ba3-c0585a8e9e85", "pci_bus_id": "0000:29:00.0"}),
    # ------------------------------------------------------------------ amd-smi monitor / metric
    "amd-smi/monitor-ptumv-x8-changelog.txt": Expect(8, "amd", "gpu", "unknown", 196300, warns=(MODEL_NOT_SHOWN,)),
    "amd-smi/monitor-q-procs-x1-changelog.txt": Expect(1, "amd", "gpu", "unknown", 16335, warns=(MODEL_NOT_SHOWN,)),
    "amd-smi/monitor-ptv-x32-partitions-changelog.txt": Expect(
        32, "amd", "gpu", "unknown", 196300, warns=(MODEL_NOT_SHOWN,), indexes=tuple(range(32))),
    "amd-smi/monitor-violation-x16-elided-changelog.txt": Expect(
        16, "amd", "gpu", "unknown", warns=("elided", MODEL_NOT_SHOWN)),
    "amd-smi/monitor-all-na-strix-halo.txt": Expect(1, "amd", "gpu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "amd-smi/metric-power-x2-changelog.txt": Expect(2, "amd", "gpu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "amd-smi/metric-p-json-x1-changelog.txt": Expect(1, "amd", "gpu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    # ------------------------------------------------------------------ Intel xpu-smi (not Kunlunxin's)
    "xpu-smi/intel-table-arc-b580-readme.txt": Expect(
        1, "intel", "gpu", "Arc-B580", 12216, "9FF4708BCC22C0EE6FD801A", {"level-zero": "1.27.0"},
        first={"pci_bus_id": "0000:03:00.0"}),
    "xpu-smi/intel-discovery-d0-arc-b580-readme.txt": Expect(
        1, "intel", "gpu", "Arc-B580", 12216, "9FF4708BCC22C0EE6FD801A", health="healthy",
        first={"uuid": "00000000-0000-0003-0000-0000e20b8086", "pci_bus_id": "0000:03:00.0"}),
    "xpu-smi/intel-discovery-list-0x020a-guide.txt": Expect(
        1, "intel", "gpu", "unknown", warns=(MODEL_NOT_SHOWN,), first={"pci_bus_id": "0000:4d:00.0"}),
    "xpu-smi/intel-discovery-j-0x020a-guide.txt": Expect(
        1, "intel", "gpu", "unknown", warns=(MODEL_NOT_SHOWN,),
        first={"uuid": "00000000-0000-0000-0000-020a00008086", "pci_bus_id": "0000:4d:00.0"}),
    "xpu-smi/intel-discovery-d-detail-0x020a-guide.txt": Expect(
        1, "intel", "gpu", "unknown", 32768, "16929133", warns=(MODEL_NOT_SHOWN,),
        first={"firmware_version": "ATS0_1.1"}),
    "xpu-smi/intel-discovery-dump-csv-x2-guide.txt": Expect(2, "intel", "gpu", "Flex-170", indexes=(0, 1)),
    "xpu-smi/intel-discovery-d0-flex170-issue69-cut.txt": Expect(1, "intel", "gpu", "Flex-170", first={"uuid": None}),
    # ------------------------------------------------------------------ hy-smi, HCU labels
    "hy-smi/hcu-table-x8-400W-hyhal.txt": Expect(8, "hygon", "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "hy-smi/hcu-showmemavailable-x8-hyhal.txt": Expect(8, "hygon", "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "hy-smi/hcu-a-card-series-x8-elided.txt": Expect(8, "hygon", "dcu", "K100_AI"),
    "hy-smi/hcu-table-x2-1000W-dtk26.04.txt": Expect(2, "hygon", "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "hy-smi/hcu-table-x1-400W-beside-ht-smi.txt": Expect(1, "hygon", "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    # ------------------------------------------------------------------ npu-smi, masked and new layouts
    "npu-smi/info-910B4-1-masked-bus-id-hami47.txt": Expect(
        2, "huawei", "npu", "Ascend910B4-1", 65536, "25.2.0", health="healthy", warns=("bus id masked",),
        indexes=(0, 1), first={"pci_bus_id": None}),
    "npu-smi/info-A3-x2chips-npusmi26.0.rc2-cut.txt": Expect(
        2, "huawei", "npu", "Ascend910", 65536, "26.0.rc2", health="healthy", indexes=(0, 1),
        first={"pci_bus_id": "0000:9d:00.0"}),
    # ------------------------------------------------------------------ Intel Gaudi hl-smi
    "hl-smi/hl-225-x8-hl1.12.1.txt": Expect(
        8, "habana", "npu", "HL-225", 98304, "1.12.1-cb7a7bc", {"synapseai": "1.12.1"},
        first={"pci_bus_id": "0000:43:00.0", "firmware_version": "46.0.5.0"}),
    "hl-smi/hl-225-L-detail-hl1.12.1-trimmed.txt": Expect(
        1, "habana", "npu", "HL-225", 98304, "1.12.1-cb7a7bc", {"synapseai": "1.12.1"}, health="healthy",
        first={"uuid": "01P0-HL2080A0-15-TF8A81-09-07-06", "pci_bus_id": "0000:43:00.0",
               "extra": {"serial": "AM50016138"}}),
    "hl-smi/hl-205-x8-hl1.6.0-wrapped-proc.txt": Expect(
        8, "habana", "npu", "HL-205", 32768, "1.6.0-3c06a7c", {"synapseai": "1.6.0"},
        first={"pci_bus_id": "0000:19:00.0"}),
    # ------------------------------------------------------------------ AWS neuron-ls
    "neuron-ls/trn2n.48xlarge-x16-docs.txt": Expect(
        16, "aws", "npu", "Trainium2", 98304, indexes=tuple(range(16)),
        first={"pci_bus_id": "0000:cc:00.0", "numa_node": 1, "extra": {"neuron_cores": "4"}}),
    "neuron-ls/trn2n.48xlarge-json-elided-docs.txt": Expect(
        2, "aws", "npu", "Trainium2", 98304, warns=("elided",), indexes=(0, 15),
        first={"pci_bus_id": "0000:cc:00.0", "numa_node": 1}),
    "neuron-ls/trn2n.48xlarge-wide-procs-docs.txt": Expect(
        16, "aws", "npu", "Trainium2", 98304, first={"pci_bus_id": "0000:cc:00.0"}),
    "neuron-ls/trn1.2xlarge-x1-docs.txt": Expect(
        1, "aws", "npu", "Trainium", 32768, first={"pci_bus_id": "0000:00:1e.0", "numa_node": None}),
    "neuron-ls/inf1-x1-issue359-with-banner.txt": Expect(
        1, "aws", "npu", "unknown", 8192, warns=(MODEL_NOT_SHOWN,), first={"pci_bus_id": "0000:00:1f.0"}),
    # ------------------------------------------------------------------ MetaX ht-smi
    "ht-smi/mars-x201-x1-v2.3.1.txt": Expect(
        1, "metax", "gpu", "Mars-X201", 65536, "3.8.1", {"hpcc": "3.7.1.5"}, health="healthy",
        first={"pci_bus_id": "0000:98:00.0", "firmware_version": "1.31.1.0"}),
    # ------------------------------------------------------------------ FPGA vendor tools
    "xbutil/xbmgmt-examine-u280-u250-golden-xrt2.13-cut.txt": Expect(
        2, "xilinx", "fpga", ("Alveo-U250", "Alveo-U280"), None, "2.13.0", {"xrt": "2.13.0"},
        health=("unhealthy", "healthy"), warns=("not ready",), first={"pci_bus_id": "0000:17:00.0"}),
    "xbutil/xbutil-examine-u200-xrt2.12.txt": Expect(
        1, "xilinx", "fpga", "Alveo-U200", None, "2.12.69", {"xrt": "2.12.0"},
        first={"pci_bus_id": "0000:17:00.1"}),
    "xbutil/xbutil-examine-u50-and-not-ready-xrt2.11-cut.txt": Expect(
        2, "xilinx", "fpga", ("unknown", "Alveo-U50"), None, "2.11.0", {"xrt": "2.11.0"},
        health=("unhealthy", "unknown"), warns=("not ready",), first={"pci_bus_id": "0000:b1:00.1"}),
    "fpgainfo/fme-pac-n3000-opae-install-guide.txt": Expect(
        1, "altera", "fpga", "PAC-N3000", first={"pci_bus_id": "0000:08:00.0", "firmware_version": "D.2.1.24"}),
    "fpgainfo/fme-n6000-ofs-pr2675-cut.txt": Expect(
        1, "altera", "fpga", "IPU-N6000", first={"pci_bus_id": "0000:0d:00.0", "firmware_version": "65.5.0"}),
}

PUBLISHED_FILES = sorted(str(p.relative_to(PUBLISHED)) for p in PUBLISHED.rglob("*.txt"))


def test_published_outputs_every_file_has_an_expected_record() -> None:
    assert sorted(EXPECTED) == PUBLISHED_FILES


def test_published_outputs_every_file_names_its_source() -> None:
    for name in PUBLISHED_FILES:
        head = (PUBLISHED / name).read_text().splitlines()[:2]
        assert head[0].startswith("# source: ") and len(head[0]) > 30, name
        assert head[1].startswith("# command: "), name


@pytest.mark.parametrize("name", PUBLISHED_FILES)
def test_published_outputs_file_parses_to_expected_devices(name: str, parse_capture_file: ParseFile) -> None:
    devices, warnings = parse_capture_file(PUBLISHED / name)
    assert mismatches(devices, warnings, EXPECTED[name]) == []
