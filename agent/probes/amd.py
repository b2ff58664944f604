"""AMD GPUs: amd-smi (static/list text or JSON, version) and rocm-smi (JSON, concise table, key: value)."""

from __future__ import annotations

import json
import re
from typing import Any

from agent.probes import rocm_smi
from agent.probes.base import READ_FILE, Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import clean, indented_kv, is_masked, mib, pci, to_int
from libs.schemas.devices import HardwareType

ROCM_SMI_QUERY = ["rocm-smi", "--showid", "--showproductname", "--showmeminfo", "vram", "--showbus",
                  "--showuniqueid", "--showserial", "--showdriverversion", "--showtoponuma", "--showtopotype",
                  "--showuse", "--showtemp", "--showpower", "--json"]


class AmdProbe(ToolProbe):
    name = "amd"
    vendor = "amd"
    hardware_type = HardwareType.GPU
    tools = ("amd-smi", "rocm-smi")

    def commands(self) -> list[list[str]]:
        return [["amd-smi", "static", "--json"], ["amd-smi", "version"], ROCM_SMI_QUERY,
                [READ_FILE, "/opt/rocm/.info/version"]]

    def accepts(self, capture: Capture) -> bool:
        # hy-smi and DTK outputs are read as context only: they tell rocm-smi that the host has DCUs
        return capture.tool in (*self.tools, "hy-smi") or (
            capture.tool == READ_FILE and any("/rocm" in a or "/dtk" in a for a in capture.args))

    def priority(self, capture: Capture) -> int:
        return {"amd-smi": 0, "rocm-smi": 1}.get(capture.tool, 2)

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        if capture.tool == "amd-smi":
            parse_amd_smi(capture, collector)
        elif capture.tool == "rocm-smi":
            hint = rocm_smi.vendor_hint(collector.outputs, capture)
            rocm_smi.parse_rocm(capture, collector, rocm_smi.AMD, hint)
        elif capture.tool == READ_FILE and any("/rocm" in a for a in capture.args):
            rocm_smi.read_version_file(capture, collector, "rocm")


def parse_amd_smi(capture: Capture, col: Collector) -> None:
    text = capture.text
    rocm = re.search(r"ROCm version:\s*([\d.]+)", text)
    if rocm:
        col.set_common(runtimes={"rocm": rocm.group(1)})
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        gpus = _json_gpus(capture, col)
    elif capture.has("monitor", "dmon") or _MONITOR_HEAD.search(text):
        _monitor(capture, col)
        return
    else:
        gpus = _text_gpus(text)
    for index, kv in gpus:
        _gpu(capture, col, index, kv)
    if not gpus and not rocm:
        col.warn(f"{capture.label}: no 'GPU: N' section found")


# 'amd-smi monitor' (alias 'dmon'): a right-aligned column table, optionally followed by 'PROCESS INFO:'.
_MONITOR_HEAD = re.compile(r"^GPU\s+(?:XCP\s+)?[A-Z_%]+(?:\s+[A-Z_%]+)+\s*$", re.MULTILINE)


def _monitor(capture: Capture, col: Collector) -> None:
    lines = capture.text.splitlines()
    head = next((n for n, line in enumerate(lines) if _MONITOR_HEAD.match(line)), -1)
    if head < 0:
        col.warn(f"{capture.label}: no 'amd-smi monitor' column header found")
        return
    ends = [match.end() for match in re.finditer(r"\S+", lines[head])]
    names = lines[head].split()
    found = 0
    for line in lines[head + 1:]:
        if not line.strip() or line.strip().endswith(":"):
            if found:
                break  # a blank line or 'PROCESS INFO:' closes the table
            continue
        if line.strip() in ("...", "…"):
            col.warn(f"{capture.label}: rows elided with '...'; only {found} GPU(s) could be read")
            continue
        starts = [0, *ends[:-1]]
        row = {name: clean(line[start:end]) for name, start, end in zip(names, starts, [*ends[:-1], len(line)],
                                                                        strict=True)}
        index = to_int(row.get("GPU"))
        if index is None:
            continue
        found += 1
        col.add(index=index, keys=(("card", index),), memory_mib=mib(row.get("VRAM_TOTAL")),
                memory_used_mib=mib(row.get("VRAM_USED")), power_w=_number(row.get("POWER")),
                temperature_c=_number(row.get("GPU_TEMP") or row.get("GPU_T")),
                utilization_pct=_number(row.get("GFX_UTIL") or row.get("GFX%")),
                extra={"xcp": row.get("XCP")})
    if not found:
        col.warn(f"{capture.label}: the monitor table has no GPU rows")


def _number(value: str | None) -> float | None:
    text = clean(value)
    match = re.match(r"-?\d+(?:\.\d+)?", text or "")
    return float(match.group()) if match else None


def _text_gpus(text: str) -> list[tuple[int, dict[str, str]]]:
    sections: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        header = re.match(r"^GPU:\s*(\d+)\s*$", line)
        if header:
            current = []
            sections.append((int(header.group(1)), current))
        elif line and not line[0].isspace():
            current = None  # CPU: N, or another top-level block
        elif current is not None:
            current.append(line)
    return [(index, indented_kv(body)) for index, body in sections]


def _json_gpus(capture: Capture, col: Collector) -> list[tuple[int, dict[str, str]]]:
    try:
        data, _ = json.JSONDecoder().raw_decode(capture.text.lstrip())
    except ValueError as exc:
        col.warn(f"{capture.label}: JSON not readable ({exc})")
        return []
    entries = data if isinstance(data, list) else data.get("gpu_data", [data]) if isinstance(data, dict) else []
    gpus = []
    for entry in entries if isinstance(entries, list) else []:
        index = entry.get("gpu") if isinstance(entry, dict) else None
        if not isinstance(index, int) or index < 0:
            continue
        flat: dict[str, str] = {}
        _flatten(entry, "", flat)
        gpus.append((index, flat))
    return gpus


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and set(value) == {"value", "unit"}:
        out[prefix] = f"{value['value']} {value['unit']}"
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}/{str(key).upper()}" if prefix else str(key).upper(), out)
    elif isinstance(value, list):
        return
    else:
        out[prefix] = str(value)


def _gpu(capture: Capture, col: Collector, index: int, kv: dict[str, str]) -> None:
    name = clean(kv.get("ASIC/MARKET_NAME")) or clean(kv.get("BOARD/PRODUCT_NAME"))
    device_id = to_int(kv.get("ASIC/DEVICE_ID"))
    memory = mib(kv.get("VRAM/SIZE")) or mib(kv.get("MEM_USAGE/TOTAL_VRAM"))
    uuid = clean(kv.get("UUID"))
    serial = clean(kv.get("ASIC/ASIC_SERIAL")) or clean(kv.get("BOARD/PRODUCT_SERIAL"))
    masked = [label for label, value in (("UUID", uuid), ("serial", serial)) if is_masked(value)]
    if masked:
        col.warn(f"{capture.label}: GPU {index} {' and '.join(masked)} redacted in this output")
    numa = to_int(kv.get("NUMA/NODE"))
    col.add(
        index=index, keys=(("card", index),), model=rocm_smi.amd_model(name, device_id, memory),
        memory_mib=memory, driver_version=clean(kv.get("DRIVER/VERSION")),
        firmware_version=clean(kv.get("VBIOS/VERSION")),
        uuid=next((v for v in (uuid, serial) if v and not is_masked(v)), None), pci_bus_id=pci(kv.get("BUS/BDF") or kv.get("BDF")),
        numa_node=numa if numa is not None and numa >= 0 else None,
        extra={"serial": None if is_masked(serial) or not uuid else serial,
               "device_id": f"0x{device_id:04x}" if device_id is not None else None,
               "kfd_id": clean(kv.get("KFD_ID")), "node_id": clean(kv.get("NODE_ID")),
               "partition_id": clean(kv.get("PARTITION_ID")), "oam_id": clean(kv.get("ASIC/OAM_ID")),
               "gfx_version": clean(kv.get("ASIC/TARGET_GRAPHICS_VERSION")),
               "compute_partition": clean(kv.get("PARTITION/COMPUTE_PARTITION")),
               "memory_partition": clean(kv.get("PARTITION/MEMORY_PARTITION"))},
    )
