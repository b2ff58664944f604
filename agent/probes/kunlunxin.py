"""Kunlunxin XPUs: xpu-smi (xpu_smi), both the nvidia-smi-like layout and the older DevID table."""

from __future__ import annotations

import re

from agent.probes.base import Capture, ToolProbe
from agent.probes.intel_xpu import is_intel
from agent.probes.records import Collector
from agent.probes.smi_table import parse_smi_table
from agent.probes.util import (
    after_header_rule,
    box_rows,
    cells,
    clean,
    dashed,
    find_line,
    is_masked,
    mib,
    num,
    pci,
    version,
)
from libs.schemas.devices import HardwareType, Health

_KUNLUNXIN_RE = re.compile(r"XPU-RT|Kunlun|\bDevID\b|Runtime Version|\bXPU\b")


class KunlunxinProbe(ToolProbe):
    name = "kunlunxin"
    vendor = "kunlunxin"
    hardware_type = HardwareType.XPU
    tools = ("xpu-smi",)

    def commands(self) -> list[list[str]]:
        return [["xpu-smi"]]

    def accepts(self, capture: Capture) -> bool:
        return capture.tool in self.tools and not is_intel(capture.text)  # Intel's xpu-smi has its own probe

    def looks_like(self, capture: Capture) -> bool:
        return bool(_KUNLUNXIN_RE.search(capture.text))

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        if re.search(r"\|\s*DevID\s*\|", capture.text):
            _devid_table(capture, collector)
            return
        table = parse_smi_table(capture.text)
        if not table.found:
            collector.warn(f"{capture.label}: no xpu-smi device table found")
            return
        collector.set_common(driver_version=table.header.get("driver"),
                             runtimes={"xpu-rt": table.header.get("xpu-rt", "")})
        for row in table.rows:
            collector.add(index=row.index, model=dashed(row.name), pci_bus_id=row.bus_id,
                          memory_mib=row.memory_total_mib, memory_used_mib=row.memory_used_mib,
                          temperature_c=row.temperature_c, power_w=row.power_w,
                          utilization_pct=row.utilization_pct, health=Health.UNHEALTHY if row.errors else None,
                          extra={"l3_mib": _l3(row.third)})
        if table.elided:
            collector.warn(f"{capture.label}: rows elided with '...'; only {len(table.rows)} XPU(s) could be read")
        if not table.rows:
            collector.warn(f"{capture.label}: the device table has no XPU rows")


def _l3(third: list[str]) -> str | None:
    match = re.search(r"/\s*(\d+)\s*MiB", third[1]) if len(third) > 1 else None
    return match.group(1) if match else None


def _devid_table(capture: Capture, col: Collector) -> None:
    text = capture.text
    runtime = re.search(r"Runtime Version:\s*(\S+)", text)
    driver = re.search(r"Driver Version:\s*(\S+)", text)
    col.set_common(driver_version=version(driver.group(1)) if driver else None,
                   runtimes={"xpu-rt": runtime.group(1) if runtime else ""})
    lines = text.splitlines()
    head = find_line(lines, lambda line: re.search(r"\|\s*DevID\s*\|", line) and "PCI" in line)
    if head < 0:
        col.warn(f"{capture.label}: no DEVICES table found")
        return
    columns = cells(lines[head])
    rows, _, _ = box_rows(lines, after_header_rule(lines, head))
    masked = []
    for row in rows:
        values = dict(zip(columns, row, strict=False))
        index = values.get("DevID", "")
        if not index.isdigit():
            continue
        serial = clean(values.get("SN"))
        if is_masked(serial):
            masked.append(index)
        used, _, total = (values.get("Memory") or "").partition("/")
        col.add(index=int(index), model=dashed(values.get("Model") or "") or None,
                pci_bus_id=pci(values.get("PCI Addr")), memory_mib=mib(total),
                uuid=None if is_masked(serial) else serial, memory_used_mib=mib(used + " MB") if used else None,
                utilization_pct=num(values.get("UseRate")),
                extra={"device_node": clean(values.get("INODE")), "l3": clean(values.get("L3"))})
    if masked:
        col.warn(f"{capture.label}: serial number masked in this output (XPU {', '.join(masked)})")
