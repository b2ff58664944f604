"""Huawei Ascend NPUs: npu-smi info (table, -l, -m, -t board|usages|common|health|topo) and CANN version files."""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.probes.base import READ_FILE, Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import (
    after_header_rule,
    box_rows,
    clean,
    find_line,
    health,
    is_masked,
    kv_pairs,
    looks_like_pci,
    mib,
    num,
    pci,
    split_columns,
    to_int,
    topo_matrix,
    version,
)
from libs.schemas.devices import HardwareType

PCI_DEVICE_MODELS = {0xD100: "Ascend310", 0xD500: "Ascend310P", 0xD801: "Ascend910", 0xD802: "Ascend910B"}
TOOLKIT_INFO = ["/usr/local/Ascend/ascend-toolkit/latest/*/ascend_toolkit_install.info",
                "/usr/local/Ascend/ascend-toolkit/latest/ascend_toolkit_install.info"]
DRIVER_INFO = "/usr/local/Ascend/driver/version.info"
_ORDER = ("table", "mapping", "board", "usages", "common", "health", "list", "topo", "file")


def ascend_model(name: str | None) -> str | None:
    """'910B3' → 'Ascend910B3'; 'Ascend 910A' → 'Ascend910A'; 'MiniD' (Ascend 310) → 'Ascend310'."""
    text = clean(name)
    if not text or is_masked(text):
        return None
    text = re.sub(r"\s+", "", text)
    if re.match(r"(?i)^mini", text):
        return "Ascend310"
    return "Ascend" + re.sub(r"(?i)^ascend", "", text)


def kind(capture: Capture) -> str:
    if capture.tool == READ_FILE:
        return "file"
    kind_of_t = capture.option("-t")
    if kind_of_t:
        return kind_of_t.lower()
    if capture.has("-m") or "Chip Logic ID" in capture.text:
        return "mapping"
    if capture.has("-l") or "Total Count" in capture.text:
        return "list"
    if "CPU Affinity" in capture.text and re.search(r"\bNPU0\b", capture.text):
        return "topo"
    return "table"


class AscendProbe(ToolProbe):
    name = "huawei"
    vendor = "huawei"
    hardware_type = HardwareType.NPU
    tools = ("npu-smi",)

    def commands(self) -> list[list[str]]:
        return [["npu-smi", "info"], ["npu-smi", "info", "-m"], ["npu-smi", "info", "-t", "topo"],
                [READ_FILE, *TOOLKIT_INFO], [READ_FILE, DRIVER_INFO]]

    def followup_commands(self, captures: Sequence[Capture]) -> list[list[str]]:
        """Board facts (serial, firmware) of every NPU the device table shows."""
        table = Collector(self.name, self.vendor, self.hardware_type)
        for capture in captures:
            if capture.tool == "npu-smi" and kind(capture) == "table":
                _table(capture, table)
        ids = {int(r["extra"]["npu_id"]) for r in table.records if "npu_id" in r.get("extra", {})}
        return [["npu-smi", "info", "-t", "board", "-i", str(npu)] for npu in sorted(ids)]

    def accepts(self, capture: Capture) -> bool:
        return capture.tool in self.tools or (
            capture.tool == READ_FILE and any("/Ascend/" in a or "ascend" in a.lower() for a in capture.args))

    def priority(self, capture: Capture) -> int:
        found = kind(capture)
        return _ORDER.index(found) if found in _ORDER else len(_ORDER)

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        found = kind(capture)
        parser = {"table": _table, "mapping": _mapping, "list": _list, "topo": _topo, "file": _file,
                  "board": _board, "usages": _usages, "common": _common, "health": _common}.get(found)
        if parser is None:
            collector.warn(f"{capture.label}: 'npu-smi info -t {found}' output is not read by this probe")
            return
        parser(capture, collector)


# ---------------------------------------------------------------- npu-smi info (table)


def _table(capture: Capture, col: Collector) -> None:
    text = capture.text
    header = re.search(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)", text)
    if header:
        col.set_common(driver_version=header.group(2))
    lines = text.splitlines()
    head = find_line(lines, lambda line: "|" in line and re.search(r"\bNPU\b", line) and "Name" in line)
    if head < 0:
        col.warn(f"{capture.label}: no npu-smi device table found")
        return
    second_id = _second_id(lines[head + 1] if head + 1 < len(lines) else "")
    rows, elided, _ = box_rows(lines, after_header_rule(lines, head))
    pairs = [(rows[i], rows[i + 1]) for i in range(len(rows) - 1)
             if re.match(r"^\d+\s+\S", rows[i][0]) and len(rows[i]) >= 3 and len(rows[i + 1]) >= 3
             and (looks_like_pci(rows[i + 1][1]) or _masked_bus(rows[i + 1][1]))]
    chips: dict[int, int] = {}
    for first, _ in pairs:
        number = int(first[0].split()[0])
        chips[number] = chips.get(number, 0) + 1
    masked: list[str] = []
    masked_bus: list[str] = []
    for first, second in pairs:
        npu, name = first[0].split(None, 1)
        ids = second[0].split()
        chip = to_int(ids[0]) if ids else 0
        other = to_int(ids[1]) if len(ids) > 1 else None
        index = other if other is not None else (int(npu) if chips[int(npu)] == 1 else None)
        usage = re.findall(r"(\d+)\s*/\s*(\d+)", second[2])
        memory, hbm = [*usage, ("0", "0"), ("0", "0")][:2]
        use_hbm = int(hbm[1]) > 0
        stats = first[2].split()
        model = ascend_model(name)
        if model is None and is_masked(name):
            masked.append(npu)
        if _masked_bus(second[1]):
            masked_bus.append(npu)
        record = col.add(
            index=index, keys=(("npu", int(npu), chip),), model=model,
            memory_mib=int(hbm[1]) if use_hbm else (int(memory[1]) or None), pci_bus_id=pci(second[1]),
            health=health(first[1]), power_w=num(clean(stats[0])) if stats else None,
            temperature_c=num(clean(stats[1])) if len(stats) > 1 else None,
            utilization_pct=num(clean(second[2].split()[0])) if second[2].split() else None,
            memory_used_mib=int(hbm[0]) if use_hbm else int(memory[0]),
            extra={"npu_id": npu, "chip_id": chip, second_id: other, "name": clean(name) if model else None})
        if model is None and is_masked(name):
            record["_model_note"] = True
    if masked:
        col.warn(f"{capture.label}: NPU name masked in this output (NPU {', '.join(masked)}); "
                 "model reported as 'unknown'")
    if masked_bus:
        col.warn(f"{capture.label}: PCI bus id masked in this output (NPU {', '.join(sorted(set(masked_bus)))}); "
                 "bus id not reported")
    if elided:
        col.warn(f"{capture.label}: rows elided with '...'; only {len(pairs)} NPU chip(s) could be read")
    if not pairs:
        col.warn(f"{capture.label}: no NPU rows in the device table")


_MASKED_BUS_RE = re.compile(r"[0-9A-Fa-fxX]{1,8}:[0-9A-Fa-fxX]{2}:[0-9A-Fa-fxX]{2}\.[0-7xX]")


def _masked_bus(cell: str) -> bool:
    """'0000:xx:00.0': a bus id its publisher anonymised; it costs the bus id, never the NPU."""
    text = cell.strip()
    return bool(_MASKED_BUS_RE.fullmatch(text)) and "x" in text.lower() and not looks_like_pci(text)


def _second_id(line: str) -> str:
    first = line.split("|")[1] if line.count("|") >= 2 else ""
    if "Phy-ID" in first:
        return "phy_id"
    return "logic_id" if "Device" in first else "device"


# ---------------------------------------------------------------- -m, -l, -t topo


def _mapping(capture: Capture, col: Collector) -> None:
    lines = [line for line in capture.text.splitlines() if line.strip()]
    head = find_line(lines, lambda line: "Chip Logic ID" in line)
    if head < 0:
        col.warn(f"{capture.label}: no 'NPU ID  Chip ID  Chip Logic ID  Chip Name' table found")
        return
    columns = split_columns(lines[head])
    for line in lines[head + 1:]:
        row = dict(zip(columns, split_columns(line), strict=False))
        logic = to_int(row.get("Chip Logic ID"))
        if logic is None or to_int(row.get("NPU ID")) is None:
            continue  # the MCU row has no logic id
        col.add(index=logic, keys=(("npu", to_int(row["NPU ID"]), to_int(row.get("Chip ID")) or 0),),
                model=ascend_model(row.get("Chip Name")),
                extra={"npu_id": row["NPU ID"], "chip_id": row.get("Chip ID"), "logic_id": logic,
                       "chip_name": clean(row.get("Chip Name")), "phy_id": clean(row.get("Chip Phy-ID"))})


def _list(capture: Capture, col: Collector) -> None:
    pairs = kv_pairs(capture.text)
    total = next((to_int(v) for k, v in pairs if k == "Total Count"), None)
    npus: list[tuple[int, int]] = []
    for key, value in pairs:
        if key == "NPU ID" and to_int(value) is not None:
            npus.append((int(value), 1))
        elif key == "Chip Count" and npus and to_int(value):
            npus[-1] = (npus[-1][0], int(value))
    single = all(count == 1 for _, count in npus)
    for npu, count in npus:
        for chip in range(count):
            col.add(index=npu if single else None, keys=(("npu", npu, chip),),
                    extra={"npu_id": npu, "chip_id": chip})
    if total is not None and total != len(npus):
        col.warn(f"{capture.label}: Total Count is {total} but {len(npus)} NPU(s) are listed")
    if not npus:
        col.warn(f"{capture.label}: no 'NPU ID' entry found")


def _topo(capture: Capture, col: Collector) -> None:
    matrix = topo_matrix(capture.text, "NPU")
    if not matrix:
        col.warn(f"{capture.label}: no NPU topology matrix found")
    for index, row in matrix.items():
        col.add(index=index, links=row["links"], extra={"cpu_affinity": row["cpu_affinity"]})


# ---------------------------------------------------------------- -t board|usages|common|health


def _npu_chip(capture: Capture, values: dict[str, str]) -> tuple[int | None, int]:
    """NPU and chip ids of an 'npu-smi info -t … -i N' output; no NPU when it has no 'NPU ID' line."""
    npu = to_int(values.get("NPU ID"))
    chip = to_int(values.get("Chip ID")) if values.get("Chip ID") else to_int(capture.option("-c"))
    return (npu if npu is not None and npu >= 0 else None), chip or 0


def _board(capture: Capture, col: Collector) -> None:
    values = dict(kv_pairs(capture.text))
    npu, chip = _npu_chip(capture, values)
    if npu is None:
        col.warn(f"{capture.label}: no 'NPU ID' in the board output")
        return
    device_id = to_int(values.get("PCI Device ID"))
    model = ascend_model(values.get("Chip Name")) or PCI_DEVICE_MODELS.get(device_id or -1)
    count = to_int(values.get("Chip Count")) or 1
    chips = [chip] if capture.option("-c") is not None or count == 1 else list(range(count))
    for each in chips:
        col.add(index=npu if count == 1 else None, keys=(("npu", npu, each),), model=model,
                uuid=clean(values.get("Serial Number")), driver_version=clean(values.get("Software Version")),
                firmware_version=clean(values.get("Firmware Version")),
                pci_bus_id=pci(values.get("PCIe Bus Info")) if len(chips) == 1 else None,
                extra={"npu_id": npu, "chip_id": each, "board": clean(values.get("Product Name")),
                       "board_id": clean(values.get("Board ID")),
                       "pci_device_id": f"0x{device_id:04x}" if device_id is not None else None})


def _usages(capture: Capture, col: Collector) -> None:
    values = dict(kv_pairs(capture.text))
    npu, chip = _npu_chip(capture, values)
    if npu is None:
        col.warn(f"{capture.label}: no 'NPU ID' in the usages output")
        return
    if "HBM Capacity(MB)" not in values and "DDR Capacity(MB)" not in values:
        col.warn(f"{capture.label}: no HBM or DDR capacity in the usages output")
        return
    hbm, ddr = mib(values.get("HBM Capacity(MB)")) or 0, mib(values.get("DDR Capacity(MB)")) or 0
    total = hbm or ddr or None
    rate = num(values.get("HBM Usage Rate(%)") if hbm else values.get("DDR Usage Rate(%)"))
    single = (to_int(values.get("Chip Count")) or 1) == 1
    col.add(index=npu if single else None, keys=(("npu", npu, chip),), memory_mib=total,
            memory_used_mib=int(total * rate / 100) if total and rate is not None else None,
            utilization_pct=num(values.get("NPU Utilization(%)") or values.get("Aicore Usage Rate(%)")),
            extra={"npu_id": npu, "chip_id": chip})


def _common(capture: Capture, col: Collector) -> None:
    pairs = kv_pairs(capture.text)
    top = dict(pairs)
    npu, _ = _npu_chip(capture, {"NPU ID": top.get("NPU ID", "")})
    if npu is None:
        col.warn(f"{capture.label}: no 'NPU ID' in this output")
        return
    if not any(key in top for key in ("Chip ID", "Health Status", "Temperature(C)", "Aicore Usage Rate(%)")):
        col.warn(f"{capture.label}: no chip facts (Chip ID, Health Status, Temperature) in this output")
        return
    sections: list[dict[str, str]] = []
    for key, value in pairs:
        if key in ("Chip ID", "Chip Name"):
            sections.append({})
        if sections:
            sections[-1].setdefault(key, value)
    chips = [s for s in sections if "Chip ID" in s] or [top]
    single = (to_int(top.get("Chip Count")) or 1) == 1
    for section in chips:
        chip = to_int(section.get("Chip ID")) or 0
        col.add(index=npu if single else None, keys=(("npu", npu, chip),), health=health(section.get("Health Status")),
                temperature_c=num(section.get("Temperature(C)")),
                power_w=num(clean(section.get("NPU Real-time Power(W)"))),
                utilization_pct=num(section.get("Aicore Usage Rate(%)")),
                extra={"npu_id": npu, "chip_id": chip, "aicore_count": clean(section.get("Aicore Count")),
                       "aicore_max_mhz": clean(section.get("Aicore Freq(MHZ)"))})


def _file(capture: Capture, col: Collector) -> None:
    path = " ".join(capture.args)
    found = re.search(r"(?im)^\s*version\s*=\s*(\S+)", capture.text)
    if not found:
        col.warn(f"{capture.label}: no 'version=' line")
        return
    if "/driver/" in path:
        col.set_common(driver_version=version(found.group(1)))
    else:
        col.set_common(runtimes={"cann": found.group(1)})
