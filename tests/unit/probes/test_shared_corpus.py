"""Every file of the shared third-party corpus of real tool outputs parses into the devices it shows.

The corpus lives beside the repository (``../shared/tool-outputs``, override with
``XPUMESH_SHARED_TOOL_OUTPUTS``) and is never copied into it. Each expected record below
was written by reading the file: device count, vendor, type, model, memory, driver and
runtime versions, health where shown, and the warnings incomplete files must raise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.probes.expectations import MODEL_NOT_SHOWN, Expect, ParseFile, mismatches

CORPUS = Path(os.environ.get("XPUMESH_SHARED_TOOL_OUTPUTS")
              or Path(__file__).resolve().parents[3].parent / "shared" / "tool-outputs")

if not CORPUS.is_dir():
    pytest.skip(f"shared tool-output corpus not found at {CORPUS} "
                "(set XPUMESH_SHARED_TOOL_OUTPUTS to its folder)", allow_module_level=True)

NV, AMD, HY, HW = "nvidia", "amd", "hygon", "huawei"
CUDA = "cuda"

EXPECTED: dict[str, Expect] = {
    # ------------------------------------------------------------------ nvidia-smi
    "nvidia-smi/L-h200-mig-driver590.48.01.txt": Expect(
        1, NV, "gpu", "H200", first={"uuid": "GPU-00000000-0000-0000-0000-000000000000",
                                     "extra": {"mig_mode": "Enabled", "mig_devices": "5"}}),
    "nvidia-smi/csv-query-compute-apps-h100-load-driver590.48.01.txt": Expect(
        1, NV, "gpu", "H100-80GB-HBM3", warns=("per-process list",), first={"pci_bus_id": "0000:00:09.0"}),
    "nvidia-smi/csv-query-gpu-allfields-h100-driver590.48.01.txt": Expect(
        1, NV, "gpu", "H100-80GB-HBM3", 81559, "590.48.01", first={"firmware_version": "96.00.A5.00.01"}),
    "nvidia-smi/csv-query-gpu-allfields-l40s-driver595.80.txt": Expect(1, NV, "gpu", "L40S", 46068, "595.80"),
    "nvidia-smi/csv-query-gpu-allfields-rtx2080super-windows-driver591.86.txt": Expect(
        1, NV, "gpu", "GeForce-RTX-2080-SUPER", 8192, "591.86", first={"pci_bus_id": "0000:0c:00.0"}),
    "nvidia-smi/q-text-a10-driver535.129.03.txt": Expect(
        1, NV, "gpu", "A10", 23028, "535.129.03", {CUDA: "12.2"},
        first={"uuid": "GPU-73d12ef7-f589-f867-4259-c7090ab44736", "pci_bus_id": "0000:07:00.0"}),
    "nvidia-smi/q-text-h100-80gb-hbm3-x8-driver535.161.08.txt": Expect(
        8, NV, "gpu", "H100-80GB-HBM3", 81559, "535.161.08", {CUDA: "12.2"},
        first={"uuid": "GPU-ee7954ec-da95-fd7a-ddfd-c6b32cc2f8aa"}),
    "nvidia-smi/table-geforce-truncated-name-ERR-driver525.txt": Expect(
        1, NV, "gpu", "GeForce", 23028, "525.125.06", {CUDA: "12.0"}, health="unhealthy",
        warns=("name truncated", "ERR!")),
    "nvidia-smi/table-h100-80gb-hbm3-x1-driver590.48.01.txt": Expect(
        1, NV, "gpu", "H100-80GB-HBM3", 81559, "590.48.01", {CUDA: "13.1"}),
    "nvidia-smi/table-h100-80gb-hbm3-x8-driver550.90.07.txt": Expect(
        8, NV, "gpu", "H100-80GB-HBM3", 81559, "550.90.07", {CUDA: "12.4"}, first={"pci_bus_id": "0000:19:00.0"}),
    "nvidia-smi/table-h200-mig-driver590.48.01.txt": Expect(
        1, NV, "gpu", "H200", 143771, "590.48.01", {CUDA: "13.1"},
        first={"extra": {"mig_mode": "Enabled", "mig_devices": "5"}}),
    "nvidia-smi/table-l40s-driver595.80.txt": Expect(1, NV, "gpu", "L40S", 46068, "595.80", {CUDA: "13.2"}),
    "nvidia-smi/xml-a100-sxm4-80gb-mig-driver535.txt": Expect(
        1, NV, "gpu", "A100-SXM4-80GB", 81920, "535.54.03", {CUDA: "12.2"}, warns=("4 attached GPUs",)),
    "nvidia-smi/xml-a100-sxm4-mig-netdata.txt": Expect(
        1, NV, "gpu", "A100-SXM4-40GB", 40960, "510.47.03", {CUDA: "11.6"}),
    "nvidia-smi/xml-tesla-p100-netdata.txt": Expect(
        1, NV, "gpu", "P100-PCIE-16GB", 16384, "510.47.03", {CUDA: "11.6"}),
    "nvidia-smi/xml-tesla-t4-driver515.txt": Expect(1, NV, "gpu", "T4", 15360, "515.105.01", {CUDA: "11.7"}),
    # ------------------------------------------------------------------ rocm-smi / amd-smi (AMD)
    "rocm-smi/json-mi100-rocm6.0.2.txt": Expect(
        4, AMD, "gpu", "MI100", 32752, "6.3.6", first={"pci_bus_id": "0000:83:00.0", "numa_node": 1}),
    "rocm-smi/json-rx6700xt-rocm6.1.2.txt": Expect(1, AMD, "gpu", "Radeon-RX-6700-XT", 12272, "6.3.6"),
    "rocm-smi/json-rx7800xt-navi32-rocm6.2.4-gpustack.txt": Expect(1, AMD, "gpu", "Radeon-RX-7800-XT", 16368),
    "rocm-smi/json-vega20-instinct-mi50-32gb.txt": Expect(
        1, AMD, "gpu", "MI50-32GB", 32752, "5.9.17", warns=("topology names 8 devices",)),
    "rocm-smi/table-mi210-x4-concise.txt": Expect(4, AMD, "gpu", "MI210"),
    "rocm-smi/table-mi300x-x4-concise-pyxis.txt": Expect(4, AMD, "gpu", "MI300X"),
    "rocm-smi/table-rx9070-w7900-concise.txt": Expect(2, AMD, "gpu", ("Radeon-RX-9070", "Radeon-Pro-W7900")),
    "amd-smi/list-x2-changelog.txt": Expect(
        2, AMD, "gpu", "unknown", warns=("UUID redacted", MODEL_NOT_SHOWN), first={"pci_bus_id": "0000:23:00.0"}),
    "amd-smi/static-asic-mi308x-changelog.txt": Expect(1, AMD, "gpu", "MI308X", warns=("serial redacted",)),
    "amd-smi/static-mi300a-readme.txt": Expect(4, AMD, "gpu", "MI300A", 64289, "6.9.0-rc5+"),
    # ------------------------------------------------------------------ Hygon DCU
    "hy-smi/hy-smi-K100_AI-x4-paddlenlp.txt": Expect(4, HY, "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "hy-smi/rocm-smi-json-hygon-dcu-dtk24.04.3.txt": Expect(
        1, HY, "dcu", "unknown", 65520, warns=("card series and serial number masked",),
        first={"uuid": "7100fa8866904061"}),
    "hy-smi/rocm-smi-on-dcu-K100-x8-flagperf.txt": Expect(8, HY, "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "hy-smi/rocm-smi-on-dcu-x4-ROCm-concise-paddledocs.txt": Expect(
        4, HY, "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "hy-smi/rocm-smi-on-dcu-x4-olderdtk-paddledocs.txt": Expect(4, HY, "dcu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    # ------------------------------------------------------------------ Huawei Ascend
    "npu-smi/info-310-atlas300-3000-npusmi23.0.0.txt": Expect(
        1, HW, "npu", "Ascend310", 7759, "23.0.0", health="healthy"),
    "npu-smi/info-310-x4-atlas800-3000-npusmi21.0.4.txt": Expect(
        4, HW, "npu", "Ascend310", 8192, "21.0.4.B030", health="healthy", indexes=(3, 4, 5, 6)),
    "npu-smi/info-310P3-atlas300IDuo-npusmi25.2.0-devicetable-only.txt": Expect(
        2, HW, "npu", "Ascend310P3", (44280, 43693), "25.2.0", health="healthy"),
    "npu-smi/info-910-x8-anonymized-npusmi24.1.RC2-with-procs.txt": Expect(
        8, HW, "npu", "unknown", 32768, "24.1.RC2", warns=("NPU name masked",),
        health=("healthy",) * 3 + ("unhealthy",) + ("healthy",) * 3 + ("unhealthy",)),
    "npu-smi/info-910-x8-name910B-32GB-npusmi24.1.0.txt": Expect(
        8, HW, "npu", "Ascend910B", 32768, "24.1.0", health="healthy"),
    "npu-smi/info-910A-x4-npusmi1.9.3-old-layout-paddledocs.txt": Expect(
        4, HW, "npu", "Ascend910A", 32768, "21.0.rc1", health="healthy", indexes=(4, 5, 6, 7)),
    "npu-smi/info-910A-x8-atlas800-9010-npusmi22.0.3.1.txt": Expect(
        8, HW, "npu", "Ascend910A", 32768, "22.0.3.1", health="healthy"),
    "npu-smi/info-910B1-x8-npusmi23.0.rc2.txt": Expect(
        3, HW, "npu", "Ascend910B1", 65536, "23.0.rc2", health="healthy", warns=("elided",), indexes=(0, 1, 7)),
    "npu-smi/info-910B2C-x2-npusmi23.0.3-paddledocs.txt": Expect(
        2, HW, "npu", "Ascend910B2C", 65536, "23.0.3", health="healthy"),
    "npu-smi/info-910B3-x1-npusmi23.0.1-gpustack.txt": Expect(
        1, HW, "npu", "Ascend910B3", 65536, "23.0.1", health="healthy", indexes=(4,)),
    "npu-smi/info-A3-Ascend910-x16chips-phyid-npusmi25.2.0.txt": Expect(
        16, HW, "npu", "Ascend910", 65536, "25.2.0", health="healthy", indexes=tuple(range(16))),
    "npu-smi/info-l-x8-IT21HMDC_Bin5-host.txt": Expect(8, HW, "npu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "npu-smi/info-m-310-x4-atlas800-3000-with-mcu.txt": Expect(4, HW, "npu", "Ascend310"),
    "npu-smi/info-m-910A-x8-atlas800-9010.txt": Expect(8, HW, "npu", "Ascend910A"),
    "npu-smi/t-board-910B-IT21HMDC_Bin5.txt": Expect(
        1, HW, "npu", "Ascend910B", None, "25.5.1",
        first={"uuid": "1025C9048791", "firmware_version": "7.8.0.6.201", "pci_bus_id": "0000:c1:00.0"}),
    "npu-smi/t-common-910B1.txt": Expect(1, HW, "npu", "unknown", warns=(MODEL_NOT_SHOWN,), indexes=(1,)),
    "npu-smi/t-topo-910B-x8.txt": Expect(8, HW, "npu", "unknown", warns=(MODEL_NOT_SHOWN,)),
    "npu-smi/t-usages-910B-IT21HMDC_Bin5.txt": Expect(1, HW, "npu", "unknown", 65536, warns=(MODEL_NOT_SHOWN,)),
    "npu-smi/t-usages-910B1.txt": Expect(1, HW, "npu", "unknown", 65536, warns=(MODEL_NOT_SHOWN,)),
    # ------------------------------------------------------------------ other vendors
    "cnmon/cnmon-MLU370-X4-x3-v4.20.11-paddledocs.txt": Expect(
        3, "cambricon", "mlu", "MLU370-X4", 23308, "4.20.11", first={"firmware_version": "1.1.6"}),
    "cnmon/cnmon-MLU370-X8-x2-v5.10.13-paddledocs.txt": Expect(
        2, "cambricon", "mlu", "MLU370-X8", 23374, "5.10.13", first={"pci_bus_id": "0000:39:00.0"}),
    "efsmi/efsmi-S60-x2-v1.2.0.301-paddledocs.txt": Expect(
        2, "enflame", "gcu", "S60", (49120, 42976), "1.2.0.301", first={"uuid": "A073640510015"}),
    "efsmi/efsmi-S60G-x2-v1.6.3.12-flagtree.txt": Expect(
        2, "enflame", "gcu", "S60G", 23552, "1.6.3.12", warns=("same serial",)),
    "ixsmi/ixsmi-BI-V100-x1-ixml4.0.0-driver4.2.0.txt": Expect(1, "iluvatar", "gpu", "BI-V100", 32768, "4.2.0"),
    "ixsmi/ixsmi-BI-V150-x16-ixml4.3.0-ernie.txt": Expect(
        16, "iluvatar", "gpu", "BI-V150", 32768, "4.3.0", {CUDA: "10.2"}),
    "ixsmi/ixsmi-BI-V150S-x1-ixml4.0.0.txt": Expect(1, "iluvatar", "gpu", "BI-V150S", 32768, "4.1.0"),
    "mthreads-gmi/mthreads-gmi-MTT-S4000-excerpt-v1.12.2-faq.txt": Expect(
        1, "mthreads", "gpu", "MTT-S4000", 32768, "1.2.0", warns=("used > total", "truncated")),
    "mthreads-gmi/mthreads-gmi-MTT-S5000-x8-v2.4.1-paddlefleet.txt": Expect(
        8, "mthreads", "gpu", "MTT-S5000", 81920, "5.1.0-server"),
    "mthreads-gmi/mthreads-gmi-MTT-S80-x1-v1.14.0-gpustack.txt": Expect(
        1, "mthreads", "gpu", "MTT-S80", 16384, "2.7.0"),
    "mx-smi/mx-smi-MetaX-C500-x8-v2.1.12-with-procs.txt": Expect(
        8, "metax", "gpu", "C500", 65536, "2.12.13", {"maca": "2.29.0.19"}),
    "mx-smi/mx-smi-MetaX-C550-x8-v2.2.4-ernie.txt": Expect(
        8, "metax", "gpu", "C550", 65536, "2.15.9", {"maca": "2.32.0.6"}, health="healthy"),
    "xpu-smi/xpu_smi-P800-OAM-x8-driver5.0.21.21-ernie.txt": Expect(
        8, "kunlunxin", "xpu", "P800-OAM", 98304, "5.0.21.21", {"xpu-rt": "5.0.21"}),
    "xpu-smi/xpu_smi-R300-x2-paddledocs.txt": Expect(
        2, "kunlunxin", "xpu", "R300", 32768, "4.0", {"xpu-rt": "4.31"}, warns=("serial number masked",)),
}


CORPUS_FILES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md")


def test_shared_corpus_every_file_has_an_expected_record() -> None:
    assert sorted(EXPECTED) == CORPUS_FILES


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_shared_corpus_file_parses_to_expected_devices(name: str, parse_capture_file: ParseFile) -> None:
    assert name in EXPECTED, f"{name}: no expected record written for this file"
    devices, warnings = parse_capture_file(CORPUS / name)
    assert mismatches(devices, warnings, EXPECTED[name]) == []


def test_shared_corpus_scores_every_file_right(capsys: pytest.CaptureFixture[str], parse_capture_file: ParseFile) -> None:
    right = [name for name in CORPUS_FILES
             if name in EXPECTED and not mismatches(*parse_capture_file(CORPUS / name), EXPECTED[name])]
    with capsys.disabled():
        print(f"\nshared corpus: {len(right)}/{len(CORPUS_FILES)} files parsed right ({CORPUS})")
    assert len(right) == len(CORPUS_FILES)
