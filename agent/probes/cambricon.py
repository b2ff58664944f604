"""Cambricon MLUs: cnmon (v4 and v5 table layouts)."""

from __future__ import annotations

import re

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import after_header_rule, box_rows, find_line, looks_like_pci, num, pci, version
from libs.schemas.devices import HardwareType

_FIRST = re.compile(r"^(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$")  # Card VF Name Firmware
_MEM = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB", re.IGNORECASE)
_POWER = re.compile(r"(\d+(?:\.\d+)?)\s*W\s*/\s*(\d+(?:\.\d+)?)\s*W", re.IGNORECASE)


class CambriconProbe(ToolProbe):
    name = "cambricon"
    vendor = "cambricon"
    hardware_type = HardwareType.MLU
    tools = ("cnmon",)

    def commands(self) -> list[list[str]]:
        return [["cnmon"]]

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        lines = capture.text.splitlines()
        top = re.search(r"Driver\s+(v?[\d.]+)", capture.text)
        if top:
            collector.set_common(driver_version=version(top.group(1)))
        head = find_line(lines, lambda line: "|" in line and "Card" in line and "Name" in line)
        if head < 0:
            collector.warn(f"{capture.label}: no cnmon device table found")
            return
        rows, elided, _ = box_rows(lines, after_header_rule(lines, head))
        found = 0
        for position, row in enumerate(rows):
            match = _FIRST.match(row[0]) if row else None
            if not match or position + 1 >= len(rows) or len(row) < 2:
                continue
            found += 1
            second = rows[position + 1]
            inited_driver = row[1].split()
            driver = inited_driver[-1] if inited_driver and not looks_like_pci(row[1]) else None
            memory = _MEM.search(second[1]) if len(second) > 1 else None
            power = _POWER.search(second[0])
            temp = re.search(r"(\d+)\s*C\b", second[0])
            collector.add(
                index=int(match.group(1)), model=match.group(3), firmware_version=version(match.group(4)),
                driver_version=version(driver) if driver and driver[0] in "vV0123456789" else None,
                pci_bus_id=pci(row[1]) if looks_like_pci(row[1]) else None,
                memory_mib=int(memory.group(2)) if memory else None,
                memory_used_mib=int(memory.group(1)) if memory else None,
                temperature_c=float(temp.group(1)) if temp else None,
                power_w=float(power.group(1)) if power else None,
                utilization_pct=num(row[2].split()[0]) if len(row) > 2 and row[2].split() else None,
                extra={"vf": match.group(2) if match.group(2) != "/" else None})
        if elided:
            collector.warn(f"{capture.label}: rows elided with '...'; only {found} card(s) could be read")
        if not found:
            collector.warn(f"{capture.label}: the cnmon table has no card rows")
