"""Intel Gaudi (Habana Labs) accelerators: hl-smi (``-Q … --format csv``, the default table, ``-L`` detail)."""

from __future__ import annotations

import re

from agent.probes.base import Capture, ToolProbe
from agent.probes.nvidia_smi import csv_rows
from agent.probes.records import Collector
from agent.probes.smi_table import parse_smi_table
from agent.probes.util import clean, dashed, health, indented_kv, mib, num, pci, to_int
from libs.schemas.devices import HardwareType, Health

QUERY = "index,uuid,name,bus_id,driver_version,memory.total,memory.used,power.draw,temperature.aip,utilization.aip"
_VERSION_RE = re.compile(r"hl-([\d.]+)-fw-([\d.]+)")


def _versions(col: Collector, text: str | None) -> None:
    """'hl-1.12.1-fw-46.0.5.0' → SynapseAI (Intel Gaudi software) 1.12.1, firmware 46.0.5.0."""
    match = _VERSION_RE.search(text or "")
    if match:
        col.set_common(runtimes={"synapseai": match.group(1)}, firmware_version=match.group(2))


class GaudiProbe(ToolProbe):
    name = "gaudi"
    vendor = "habana"
    hardware_type = HardwareType.NPU
    tools = ("hl-smi",)

    def commands(self) -> list[list[str]]:
        return [["hl-smi", "-Q", QUERY, "--format", "csv,noheader"], ["hl-smi"]]

    def priority(self, capture: Capture) -> int:
        return 0 if capture.has("-Q", "--query-aip") else 1 if capture.has("-L", "-q") else 2

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        if capture.has("-Q", "--query-aip"):
            _csv(capture, collector)
        elif "HL-SMI LOG" in capture.text or capture.has("-L", "-q"):
            _detail(capture, collector)
        else:
            _table(capture, collector)


def _csv(capture: Capture, col: Collector) -> None:
    query = "-Q" if capture.option("-Q") else "--query-aip"
    rows = csv_rows(capture, query, col)
    added = 0
    for row in rows:
        index = to_int(row.get("index"))
        if index is None and not pci(row.get("bus_id")):
            continue  # not an AIP row
        added += 1
        col.add(index=index, model=dashed(row["name"]) if clean(row.get("name")) else None,
                uuid=clean(row.get("uuid")), pci_bus_id=pci(row.get("bus_id")), memory_mib=mib(row.get("memory.total")),
                driver_version=clean(row.get("driver_version")), memory_used_mib=mib(row.get("memory.used")),
                power_w=num(clean(row.get("power.draw"))), temperature_c=num(clean(row.get("temperature.aip"))),
                utilization_pct=num(clean(row.get("utilization.aip"))))
    if not added:
        col.warn(f"{capture.label}: no AIP rows in the CSV")


def _table(capture: Capture, col: Collector) -> None:
    table = parse_smi_table(capture.text)
    if not table.found:
        col.warn(f"{capture.label}: no hl-smi device table found")
        return
    col.set_common(driver_version=table.header.get("driver"))
    _versions(col, table.header.get("hl-smi"))
    for row in table.rows:
        col.add(index=row.index, model=dashed(row.name), pci_bus_id=row.bus_id, memory_mib=row.memory_total_mib,
                memory_used_mib=row.memory_used_mib, temperature_c=row.temperature_c, power_w=row.power_w,
                utilization_pct=row.utilization_pct, health=Health.UNHEALTHY if row.errors else None)
    if not table.rows:
        col.warn(f"{capture.label}: the hl-smi table has no AIP rows")


def _detail(capture: Capture, col: Collector) -> None:
    lines = capture.text.splitlines()
    top = indented_kv(line for line in lines if line and not line[0].isspace() and " : " in line)
    col.set_common(driver_version=clean(top.get("Driver Version")))
    _versions(col, top.get("HL-SMI Version"))
    sections: list[tuple[int, str, list[str]]] = []
    for line in lines:
        head = re.match(r"^\[(\d+)\]\s+AIP\s+\((\S+)\)\s+(\S+)", line)
        if head:
            sections.append((int(head.group(1)), head.group(3), []))
        elif sections and line[:1].isspace():
            sections[-1][2].append(line)
    for index, bus, body in sections:
        kv = indented_kv(body)
        status = clean(kv.get("Module status"))
        col.add(index=index, model=dashed(kv["Product Name"]) if clean(kv.get("Product Name")) else None,
                uuid=clean(kv.get("AIP UUID")), pci_bus_id=pci(kv.get("PCI/Bus Id") or bus),
                memory_mib=mib(kv.get("Memory Usage/Total")), memory_used_mib=mib(kv.get("Memory Usage/Used")),
                health=health(status) if status else None,
                extra={"serial": clean(kv.get("Serial Number")), "module_id": clean(kv.get("Module ID")),
                       "model_number": clean(kv.get("Model Number"))})
    attached = to_int(top.get("Attached AIPs"))
    if not sections:
        col.warn(f"{capture.label}: no '[N] AIP' section found")
    elif attached is not None and attached != len(sections) and not capture.has("-i"):
        col.warn(f"{capture.label}: reports {attached} attached AIPs but only {len(sections)} section(s) are present")
