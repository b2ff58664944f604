"""Iluvatar CoreX GPUs: ixsmi, an nvidia-smi-like table."""

from __future__ import annotations

import re

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.smi_table import parse_smi_table
from agent.probes.util import dashed
from libs.schemas.devices import HardwareType, Health


def iluvatar_model(name: str) -> str:
    """'Iluvatar BI-V150S' → 'BI-V150S'."""
    return dashed(re.sub(r"(?i)^iluvatar\s+", "", name.strip()))


class IluvatarProbe(ToolProbe):
    name = "iluvatar"
    vendor = "iluvatar"
    hardware_type = HardwareType.GPU
    tools = ("ixsmi",)

    def commands(self) -> list[list[str]]:
        return [["ixsmi"]]

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        table = parse_smi_table(capture.text)
        if not table.found:
            collector.warn(f"{capture.label}: no ixsmi device table found")
            return
        collector.set_common(driver_version=table.header.get("driver"),
                             runtimes={"cuda": table.header.get("cuda", "")})
        if table.elided:
            collector.warn(f"{capture.label}: rows elided with '...'; only {len(table.rows)} GPU(s) could be read")
        for row in table.rows:
            collector.add(index=row.index, model=iluvatar_model(row.name), pci_bus_id=row.bus_id,
                          memory_mib=row.memory_total_mib, memory_used_mib=row.memory_used_mib,
                          temperature_c=row.temperature_c, power_w=row.power_w,
                          utilization_pct=row.utilization_pct,
                          health=Health.UNHEALTHY if row.errors else None,
                          extra={"ixml": table.header.get("ixml")})
            if row.errors:
                collector.warn(f"{capture.label}: GPU {row.index} shows ERR! ({', '.join(row.errors)})")
        if not table.rows:
            collector.warn(f"{capture.label}: the device table has no GPU rows")
