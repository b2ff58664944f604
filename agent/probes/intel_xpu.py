"""Intel Data Center and Arc GPUs: Intel's xpu-smi (table, discovery box, ``-j`` JSON, ``--dump`` CSV).

Kunlunxin ships a tool of the same name; captures are routed by content (:func:`is_intel`),
so Intel output never becomes a Kunlunxin device and the reverse.
"""

from __future__ import annotations

import csv
import json
import re
from typing import Any

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.smi_table import parse_smi_table
from agent.probes.util import cells, clean, dashed, health, mib, pci, to_int
from libs.schemas.devices import HardwareType, Health

_INTEL_RE = re.compile(r"Intel\(R\)|Intel XPU-SMI|Level Zero:|\"device_list\"|PCI BDF Address|SOC UUID")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# PCI device ids seen beside a product name in published xpu-smi output (issue #69, torch-xpu-ops logs, README).
DEVICE_IDS = {0x56C0: "Flex-170", 0x0BD5: "Max-1550", 0xE20B: "Arc-B580"}
DUMP_FIELDS = "1,2,4,5,8,9,11,16"  # id, name, SOC UUID, serial, driver, GFX firmware, PCI BDF, memory size


def is_intel(text: str) -> bool:
    """True when an xpu-smi output is Intel's (its header, its JSON keys or its device names say so)."""
    return bool(_INTEL_RE.search(text))


def intel_model(name: str | None, device_id: int | None = None) -> str | None:
    """'Intel(R) Arc(TM) B580 Graphics' → 'Arc-B580'; 'Intel(R) Data Center GPU Max 1550' → 'Max-1550'."""
    text = clean(name) or ""
    bracket = re.search(r"\[0x([0-9a-fA-F]{3,4})\]", text)
    if bracket:
        device_id = device_id or int(bracket.group(1), 16)
        text = ""  # 'Intel(R) Graphics [0x56c0]' names only the PCI id
    text = re.sub(r"\((?:R|TM)\)", "", text)
    text = re.sub(r"(?i)\b(intel|graphics|data center gpu)\b", " ", text)
    if text.strip():
        return dashed(text)
    return DEVICE_IDS.get(device_id or -1)


class IntelXpuProbe(ToolProbe):
    name = "intel"
    vendor = "intel"
    hardware_type = HardwareType.GPU
    tools = ("xpu-smi",)

    def commands(self) -> list[list[str]]:
        # CSV first: one machine-readable line per device with name, UUID, driver, BDF and memory size
        return [["xpu-smi", "discovery", "--dump", DUMP_FIELDS], ["xpu-smi", "discovery", "-j"]]

    def accepts(self, capture: Capture) -> bool:
        return capture.tool in self.tools and is_intel(capture.text)

    def priority(self, capture: Capture) -> int:
        return 0 if capture.has("--dump") else 1 if capture.has("-j", "--json") else 2

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        text = capture.text.lstrip()
        if capture.has("--dump") or re.match(r"Device ID,", text):
            _dump(capture, collector)
        elif text.startswith(("{", "[")):
            _json(capture, collector)
        elif "Device Information" in text:
            _discovery(capture, collector)
        else:
            _table(capture, collector)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


_IDENTITY = ("device_name", "pci_bdf_address", "soc_uuid", "uuid")


def _add(col: Collector, index: int | None, kv: dict[str, Any]) -> bool:
    """Add one device when the record names it (name, PCI address or UUID); False otherwise."""
    value = {key: str(item) for key, item in kv.items() if item is not None and not isinstance(item, (dict, list))}
    if index is None or not any(clean(value.get(key)) for key in _IDENTITY):
        return False
    device_id = to_int(value.get("pci_device_id"))
    model = intel_model(value.get("device_name"), device_id)
    uuid = value.get("soc_uuid") or value.get("uuid")
    state = clean(value.get("device_state"))
    col.add(index=index, model=model, pci_bus_id=pci(value.get("pci_bdf_address")),
            uuid=uuid if uuid and _UUID_RE.fullmatch(uuid.strip()) else None,
            memory_mib=mib(value.get("memory_physical_size")), driver_version=clean(value.get("driver_version")),
            firmware_version=clean(value.get("gfx_firmware_version") or value.get("firmware_version")),
            health=health(state) if state else None,
            extra={"device_name": clean(value.get("device_name")), "pci_device_id": clean(value.get("pci_device_id")),
                   "serial": clean(value.get("serial_number")), "device_state": state})
    return True


def _discovery(capture: Capture, col: Collector) -> None:
    devices: list[tuple[int, dict[str, str]]] = []
    for line in capture.text.splitlines():
        row = cells(line) if line.strip().startswith("|") else []
        if len(row) < 2:
            continue
        if row[0].isdigit():
            devices.append((int(row[0]), {}))
        key, found, value = row[1].partition(":")
        if devices and found:
            devices[-1][1].setdefault(_key(key), value.strip())
    added = [_add(col, index, kv) for index, kv in devices]
    if not any(added):
        col.warn(f"{capture.label}: no device in the xpu-smi discovery table")


def _json(capture: Capture, col: Collector) -> None:
    try:
        data = json.loads(capture.text)
    except ValueError as exc:
        col.warn(f"{capture.label}: JSON not readable ({exc})")
        return
    entries = data.get("device_list", [data]) if isinstance(data, dict) else data if isinstance(data, list) else []
    added = [_add(col, to_int(str(entry.get("device_id", ""))), {_key(k): v for k, v in entry.items()})
             for entry in entries if isinstance(entry, dict)]
    if not any(added):
        col.warn(f"{capture.label}: no device (device_id with a name, PCI address or UUID) in the JSON")


def _dump(capture: Capture, col: Collector) -> None:
    rows = list(csv.reader([line for line in capture.text.splitlines() if line.strip()], skipinitialspace=True))
    if len(rows) < 2:
        col.warn(f"{capture.label}: no device rows in the CSV dump")
        return
    names = [_key(name) for name in rows[0]]
    added = [_add(col, to_int(kv.get("device_id")), kv) for kv in
             (dict(zip(names, (value.strip() for value in row), strict=False)) for row in rows[1:])]
    if "device_id" not in names or not any(added):
        col.warn(f"{capture.label}: no 'Device ID,…' header with device rows in the CSV dump")


def _table(capture: Capture, col: Collector) -> None:
    table = parse_smi_table(capture.text)
    driver = re.search(r"Driver:\s*(\S+)", capture.text)
    level_zero = re.search(r"Level Zero:\s*(\S+)", capture.text)
    col.set_common(driver_version=driver.group(1) if driver else None,
                   runtimes={"level-zero": level_zero.group(1) if level_zero else ""})
    if not table.rows:
        col.warn(f"{capture.label}: no GPU rows in the xpu-smi table")
    for row in table.rows:
        col.add(index=row.index, model=intel_model(row.name), pci_bus_id=row.bus_id, memory_mib=row.memory_total_mib,
                memory_used_mib=row.memory_used_mib, temperature_c=row.temperature_c, power_w=row.power_w,
                utilization_pct=row.utilization_pct, health=Health.UNHEALTHY if row.errors else None)
