"""MetaX GPUs: mx-smi (C-series) and ht-smi (the newer tool of the X-series / Mars cards)."""

from __future__ import annotations

import re

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import after_header_rule, box_rows, clean, dashed, find_line, health, num, pci, to_int
from libs.schemas.devices import HardwareType

_MEM = re.compile(r"(\d+)\s*(?:MiB)?\s*/\s*(\d+)\s*MiB", re.IGNORECASE)


def metax_model(name: str) -> str:
    """'MetaX C500' → 'C500'."""
    return dashed(re.sub(r"(?i)^metax\s+", "", name.strip()))


class MetaxProbe(ToolProbe):
    name = "metax"
    vendor = "metax"
    hardware_type = HardwareType.GPU
    tools = ("mx-smi", "ht-smi")

    def commands(self) -> list[list[str]]:
        return [["mx-smi"], ["ht-smi"]]

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        if capture.tool == "ht-smi":
            _ht_smi(capture, collector)
            return
        text = capture.text
        driver = re.search(r"Kernel Mode Driver Version:\s*(\S+)", text)
        maca = re.search(r"MACA Version:\s*(\S+)", text)
        bios = re.search(r"BIOS Version:\s*(\S+)", text)
        collector.set_common(driver_version=driver.group(1) if driver else None,
                             runtimes={"maca": maca.group(1) if maca else ""},
                             firmware_version=bios.group(1) if bios else None)
        lines = text.splitlines()
        head = find_line(lines, lambda line: "|" in line and "GPU" in line and "NAME" in line.upper()
                         and "Bus-id" in line)
        if head < 0:
            collector.warn(f"{capture.label}: no mx-smi device table found")
            return
        rows, elided, _ = box_rows(lines, after_header_rule(lines, head))
        found = 0
        for position, row in enumerate(rows):
            match = re.match(r"^(\d+)\s+(\S.*)$", row[0]) if row else None
            if not match or position + 1 >= len(rows) or len(row) < 2 or not pci(row[1]):
                continue
            found += 1
            second = rows[position + 1]
            memory = _MEM.search(second[1]) if len(second) > 1 else None
            power = re.search(r"(\d+(?:\.\d+)?)\s*W\s*/", second[0])
            temp = re.search(r"(\d+)\s*C\b", second[0])
            state = clean(second[2]) if len(second) > 2 else None
            collector.add(index=int(match.group(1)), model=metax_model(match.group(2)), pci_bus_id=pci(row[1]),
                          memory_mib=int(memory.group(2)) if memory else None,
                          memory_used_mib=int(memory.group(1)) if memory else None,
                          health=health(state) if state else None,
                          temperature_c=float(temp.group(1)) if temp else None,
                          power_w=float(power.group(1)) if power else None,
                          utilization_pct=num(row[2]) if len(row) > 2 else None,
                          extra={"state": state})
        attached_line = re.search(r"Attached GPUs\s*:\s*(\d+)", text)
        attached = to_int(attached_line.group(1)) if attached_line else None
        if elided or (attached is not None and attached != found):
            collector.warn(f"{capture.label}: {attached if attached is not None else '?'} GPUs attached, "
                           f"{found} could be read (rows elided or output trimmed?)")
        if not found:
            collector.warn(f"{capture.label}: the mx-smi table has no GPU rows")


def _ht_smi(capture: Capture, col: Collector) -> None:
    """'| 0      Mars X201 | 0           Off | 0000:98:00.0 | 0%  Disabled |' then power/temp/memory/state."""
    text = capture.text
    driver = re.search(r"Kernel Mode Driver Version:\s*(\S+)", text)
    hpcc = re.search(r"HPCC Version:\s*(\S+)", text)
    bios = re.search(r"BIOS Version:\s*(\S+)", text)
    col.set_common(driver_version=driver.group(1) if driver else None,
                   runtimes={"hpcc": hpcc.group(1) if hpcc else ""}, firmware_version=bios.group(1) if bios else None)
    lines = text.splitlines()
    head = find_line(lines, lambda line: "|" in line and "Board" in line and "Name" in line)
    if head < 0:
        col.warn(f"{capture.label}: no ht-smi device table found")
        return
    rows, _, _ = box_rows(lines, after_header_rule(lines, head))
    found = 0
    for position, row in enumerate(rows):
        board = re.match(r"^(\d+)\s+(\S.*)$", row[0]) if row else None
        gpu = re.match(r"^(\d+)\b", row[1]) if len(row) > 1 else None
        if not board or not gpu or len(row) < 3 or not pci(row[2]) or position + 1 >= len(rows):
            continue
        found += 1
        second = rows[position + 1]
        memory = re.search(r"(\d+)\s*/\s*(\d+)\s*MiB", second[2]) if len(second) > 2 else None
        power = re.search(r"(\d+(?:\.\d+)?)\s*W\s*/", second[0])
        temp = re.search(r"(\d+)\s*C\b", second[1]) if len(second) > 1 else None
        state = clean(second[3]) if len(second) > 3 else None
        col.add(index=int(gpu.group(1)), model=metax_model(board.group(2)), pci_bus_id=pci(row[2]),
                memory_mib=int(memory.group(2)) if memory else None,
                memory_used_mib=int(memory.group(1)) if memory else None, health=health(state) if state else None,
                temperature_c=float(temp.group(1)) if temp else None, power_w=float(power.group(1)) if power else None,
                utilization_pct=num(row[3]) if len(row) > 3 else None, extra={"state": state, "board": board.group(1)})
    if not found:
        col.warn(f"{capture.label}: the ht-smi table has no GPU rows")
