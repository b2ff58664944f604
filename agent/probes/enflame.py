"""Enflame GCUs: efsmi."""

from __future__ import annotations

import re
from collections import Counter

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import after_header_rule, box_rows, clean, dashed, find_line, num, pci
from libs.schemas.devices import HardwareType


def enflame_model(name: str) -> str:
    """'Enflame S60G' → 'S60G'."""
    return dashed(re.sub(r"(?i)^enflame\s+", "", name.strip()))


class EnflameProbe(ToolProbe):
    name = "enflame"
    vendor = "enflame"
    hardware_type = HardwareType.GCU
    tools = ("efsmi",)

    def commands(self) -> list[list[str]]:
        return [["efsmi"]]

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        text = capture.text.replace("℃", " C")
        driver = re.search(r"Driver Ver:\s*(\S+)", text)
        collector.set_common(driver_version=driver.group(1) if driver else None)
        lines = text.splitlines()
        head = find_line(lines, lambda line: "|" in line and "DEV" in line and "NAME" in line)
        if head < 0:
            collector.warn(f"{capture.label}: no efsmi device table found")
            return
        rows, elided, _ = box_rows(lines, after_header_rule(lines, head))
        devices = []
        for position, row in enumerate(rows):
            match = re.match(r"^(\d+)\s+(\S.*)$", row[0]) if row else None
            if not match or len(row) < 3 or position + 1 >= len(rows) or not pci(row[2]):
                continue
            second = rows[position + 1]
            tail = second[2].split() if len(second) > 2 else []
            devices.append((int(match.group(1)), match.group(2), row, second, tail[-1] if len(tail) > 1 else None))
        serials = Counter(serial for *_, serial in devices if serial)
        for index, name, row, second, serial in devices:
            temp = re.search(r"(-?\d+)\s*C\b", second[0])
            power = re.search(r"(\d+(?:\.\d+)?)\s*W", second[0])
            memory = re.search(r"(\d+)\s*MiB", second[1]) if len(second) > 1 else None
            bus_ecc = row[2].split()
            unique = serial if serial and serials[serial] == 1 else None
            collector.add(index=index, model=enflame_model(name), firmware_version=clean(row[1]),
                          pci_bus_id=pci(row[2]), memory_mib=int(memory.group(1)) if memory else None, uuid=unique,
                          temperature_c=float(temp.group(1)) if temp else None,
                          power_w=float(power.group(1)) if power else None,
                          utilization_pct=num(second[2].split()[0]) if len(second) > 2 and second[2].split() else None,
                          extra={"serial": serial if not unique else None,
                                 "ecc": bus_ecc[1] if len(bus_ecc) > 1 else None,
                                 "virtualization": second[1].split()[-1] if len(second) > 1 and second[1].split() else None})
        duplicated = sorted(serial for serial, count in serials.items() if count > 1)
        if duplicated:
            collector.warn(f"{capture.label}: several GCUs report the same serial ({', '.join(duplicated)}); "
                           "serial kept in extra, not used as uuid")
        if elided:
            collector.warn(f"{capture.label}: rows elided with '...'; only {len(devices)} GCU(s) could be read")
        if not devices:
            collector.warn(f"{capture.label}: the efsmi table has no device rows")
