"""Moore Threads GPUs: mthreads-gmi."""

from __future__ import annotations

import re

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import dashed, pci
from libs.schemas.devices import HardwareType

_FIRST = re.compile(r"^(\d+)\s+(.+?)\s*\|\s*(\S+)\s*\|\s*(\d+(?:\.\d+)?)%\s+(\d+)MiB\((\d+)MiB\)")
_SECOND = re.compile(r"^\s+(\S+)(?:\s+(P\d+))?\s*\|\s*(\S+)\s*\|\s*(-?\d+)C\s*(\S+)?")


class MthreadsProbe(ToolProbe):
    name = "mthreads"
    vendor = "mthreads"
    hardware_type = HardwareType.GPU
    tools = ("mthreads-gmi",)

    def commands(self) -> list[list[str]]:
        return [["mthreads-gmi"]]

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        text = capture.text
        driver = re.search(r"Driver Version:\s*(\S+)", text)
        tool = re.search(r"mthreads-gmi:\s*(\S+)", text)
        collector.set_common(driver_version=driver.group(1) if driver else None)
        lines = text.splitlines()
        start = next((n for n, line in enumerate(lines) if line.startswith("+-")), -1)
        if start < 0:
            collector.warn(f"{capture.label}: no mthreads-gmi device table found")
            return
        found = 0
        closed = False
        for position in range(start + 1, len(lines)):
            line = lines[position]
            if re.match(r"^-{10,}\s*$", line):
                closed = True
                break
            first = _FIRST.match(line)
            if not first:
                continue
            found += 1
            second = _SECOND.match(lines[position + 1]) if position + 1 < len(lines) else None
            used, total = int(first.group(5)), int(first.group(6))
            index = int(first.group(1))
            collector.add(index=index, model=dashed(first.group(2)), pci_bus_id=pci(first.group(3)),
                          memory_mib=total, memory_used_mib=used, utilization_pct=float(first.group(4)),
                          temperature_c=float(second.group(4)) if second else None,
                          extra={"device_type": second.group(1) if second else None,
                                 "pcie_width": second.group(3) if second else None,
                                 "mthreads_gmi": tool.group(1) if tool else None})
            if used > total:
                collector.warn(f"{capture.label}: GPU {index} shows {used} MiB used of {total} MiB total "
                               "(used > total; IOMMU or driver problem?)")
        if not closed and found:
            collector.warn(f"{capture.label}: device table not closed; output truncated after "
                           f"{found} GPU(s), more may exist")
        if not found:
            collector.warn(f"{capture.label}: the mthreads-gmi table has no GPU rows")
