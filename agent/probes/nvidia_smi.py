"""Parsers for nvidia-smi outputs: table, ``-q``, ``-q -x``, ``--query-gpu`` CSV, ``-L``, ``topo -m``."""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from typing import Any

from agent.probes.base import Capture
from agent.probes.records import Collector
from agent.probes.smi_table import parse_smi_table
from agent.probes.util import clean, dashed, indented_kv, mib, num, pci, to_int, topo_matrix
from libs.schemas.devices import Health

_PREFIXES = ("NVIDIA ", "Tesla ")


def nvidia_model(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' → 'H100-80GB-HBM3'; 'Tesla T4' → 'T4'; 'NVIDIA A100-SXM4-80GB' kept."""
    text = name.strip().rstrip(".…").strip()
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if text.startswith(prefix):
                text, changed = text[len(prefix):], True
    return dashed(text) if text else ""


def _cuda(value: str | None) -> dict[str, str]:
    value = clean(value)
    return {"cuda": value} if value else {}


def _yes(value: str | None) -> bool:
    return (value or "").strip().lower() == "yes"


def kind(capture: Capture) -> str:
    """Which nvidia-smi output this is, from its arguments first and its text second."""
    text = capture.text.lstrip()
    if capture.has("topo") or (re.search(r"^\s*GPU0\s", capture.text, re.MULTILINE) and "Legend" in text):
        return "topo"
    if capture.has("--query-compute-apps"):
        return "apps"
    if capture.has("--query-gpu"):
        return "csv"
    if capture.has("-x", "--xml-format") or text.startswith("<?xml") or "<nvidia_smi_log" in text[:500]:
        return "xml"
    if capture.has("-q", "--query", "-a") or "NVSMI LOG" in text[:300]:
        return "q"
    if capture.has("-L", "--list-gpus") or re.match(r"GPU \d+: .*\(UUID:", text):
        return "list"
    return "table"


# ---------------------------------------------------------------- GPUs the tool cannot reach

# 'Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error', also written
# 'GPU0000:07:00.0: …' and, by recent drivers, 'GPU1: 0000:34:00.0: …' (index, then bus id).
_UNREACHABLE_RE = re.compile(
    r"Unable to (?:determine|detect) the device handle for GPU\s*(?:(\d+):\s+)?"
    r"([0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)?\s*:?\s*(.*)$")


def parse_unreachable(capture: Capture, col: Collector) -> str:
    """One unhealthy device per GPU the tool could not open, with the tool's own words quoted.

    Returns the capture's text without those lines (what is left for the format's own parser).
    """
    kept: list[str] = []
    found = 0
    for line in capture.text.splitlines(keepends=True):
        match = _UNREACHABLE_RE.search(line)
        if not match:
            kept.append(line)
            continue
        found += 1
        index = to_int(match.group(1))
        if index is None and found == 1:
            index = to_int(capture.option("-i", "--id"))  # 'nvidia-smi -i 0' names the GPU it asked for
        words = line.strip()[:300]
        where = pci(match.group(2)) or (f"index {index}" if index is not None else "?")
        record = col.add(index=index, pci_bus_id=pci(match.group(2)), health=Health.UNHEALTHY,
                         extra={"error": words})
        record["_model_note"] = True  # the warning says why no model is known
        col.warn(f"{capture.label}: GPU {where} cannot be reached, reported unhealthy (nvidia-smi: {words!r})")
    return "".join(kept)


# ---------------------------------------------------------------- default table


def parse_table(capture: Capture, col: Collector) -> None:
    table = parse_smi_table(capture.text)
    if not table.found:
        col.warn(f"{capture.label}: no nvidia-smi device table found")
        return
    col.set_common(driver_version=table.header.get("driver"), runtimes=_cuda(table.header.get("cuda")))
    if table.elided:
        col.warn(f"{capture.label}: rows elided with '...'; only {len(table.rows)} GPU(s) could be read")
    if not table.rows:
        col.warn(f"{capture.label}: the device table has no GPU rows")
    for row in table.rows:
        record = col.add(index=row.index, model=nvidia_model(row.name), pci_bus_id=row.bus_id,
                         memory_mib=row.memory_total_mib, temperature_c=row.temperature_c, power_w=row.power_w,
                         memory_used_mib=row.memory_used_mib, utilization_pct=row.utilization_pct,
                         health=Health.UNHEALTHY if row.errors else None,
                         extra={"mig_mode": clean(row.third[2]) if len(row.third) > 2 else None,
                                "mig_devices": table.mig_devices.get(row.index)})
        if row.truncated:
            record["_model_note"] = True
            col.warn(f"{capture.label}: GPU {row.index} name truncated by nvidia-smi ('{row.name}'); "
                     f"model reported as '{nvidia_model(row.name)}' (run 'nvidia-smi -q' for the full name)")
        if row.errors:
            col.warn(f"{capture.label}: GPU {row.index} shows ERR! ({', '.join(row.errors)}); marked unhealthy")


# ---------------------------------------------------------------- -q text


def parse_q(capture: Capture, col: Collector) -> None:
    lines = capture.text.splitlines()
    top = indented_kv(line for line in lines if not line.startswith((" ", "\t")) and " : " in line)
    col.set_common(driver_version=_version(top, "Driver Version", "KMD Version"),
                   runtimes=_cuda(_version(top, "CUDA Version", "CUDA UMD Version")))
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        header = re.match(r"^GPU\s+([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)\s*$", line)
        if header:
            sections.append((header.group(1), []))
        elif sections and line.startswith((" ", "\t")):
            sections[-1][1].append(line)
    for position, (bus, body) in enumerate(sections):
        kv = indented_kv(body)
        mig_count = sum(1 for line in body if line.strip() == "MIG Device")
        _add(col, position, {
            "name": kv.get("Product Name"), "uuid": kv.get("GPU UUID"), "serial": kv.get("Serial Number"),
            "bus": kv.get("PCI/Bus Id") or bus, "total": kv.get("FB Memory Usage/Total"),
            "used": kv.get("FB Memory Usage/Used"), "vbios": kv.get("VBIOS Version"),
            "minor": kv.get("Minor Number"), "mig": kv.get("MIG Mode/Current"), "mig_count": mig_count,
            "arch": kv.get("Product Architecture"), "temp": kv.get("Temperature/GPU Current Temp"),
            "power": kv.get("GPU Power Readings/Power Draw") or kv.get("Power Readings/Power Draw"),
            "util": kv.get("Utilization/Gpu"), "reset": kv.get("GPU Reset Status/Reset Required"),
            "remap_failure": kv.get("Remapped Rows/Remapping Failure Occurred"),
        })
    _check_count(capture, col, to_int(top.get("Attached GPUs")), len(sections))


def _version(top: dict[str, str], *labels: str) -> str | None:
    """First readable value among labels ('Driver Version' became 'KMD Version' in the 610 branch)."""
    for label in labels:
        value = clean((top.get(label) or "").split("[")[0])  # '13.3 [Deprecated; …]' keeps its version
        if value:
            return value
    return None


def _check_count(capture: Capture, col: Collector, attached: int | None, seen: int) -> None:
    if seen == 0:
        col.warn(f"{capture.label}: no GPU section found")
    elif attached is not None and attached != seen:
        col.warn(f"{capture.label}: reports {attached} attached GPUs but only {seen} GPU section(s) "
                 "are present (output trimmed?)")


def _add(col: Collector, position: int, v: dict[str, Any]) -> None:
    unhealthy = _yes(v.get("reset")) or _yes(v.get("remap_failure"))
    mig_count = v.get("mig_count")
    col.add(index=position, model=nvidia_model(v["name"]) if clean(v.get("name")) else None,
            uuid=clean(v.get("uuid")), pci_bus_id=pci(v.get("bus")), memory_mib=mib(v.get("total")),
            firmware_version=clean(v.get("vbios")), health=Health.UNHEALTHY if unhealthy else None,
            memory_used_mib=mib(v.get("used")), temperature_c=num(clean(v.get("temp"))),
            power_w=num(clean(v.get("power"))), utilization_pct=num(clean(v.get("util"))),
            extra={"serial": clean(v.get("serial")), "minor_number": clean(v.get("minor")),
                   "mig_mode": clean(v.get("mig")), "mig_devices": mig_count or None,
                   "architecture": clean(v.get("arch")), "compute_cap": clean(v.get("compute_cap"))})
    if unhealthy:
        col.warn(f"GPU {position}: reset required or row remapping failed; marked unhealthy")


# ---------------------------------------------------------------- -q -x

_XML_TOP = {"driver_version": "driver_version", "kmd_version": "kmd_version", "cuda_version": "cuda_version",
            "cuda_umd_version": "cuda_umd_version", "attached_gpus": "attached_gpus"}


def parse_xml(capture: Capture, col: Collector) -> None:
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    gpus: list[ET.Element] = []
    top: dict[str, str] = {}
    try:
        parser.feed(capture.text[capture.text.find("<"):] if "<" in capture.text else capture.text)
        parser.close()
    except ET.ParseError as exc:
        col.warn(f"{capture.label}: XML not well-formed ({exc}); read what came before the error")
    try:
        for event in parser.read_events():
            kind_of_event, element = (event[0], event[-1]) if isinstance(event, tuple) else ("", None)
            if not isinstance(element, ET.Element):
                continue
            if kind_of_event == "start":
                if element.tag == "gpu":
                    gpus.append(element)  # kept from its start, so a cut document still shows what it has
            elif element.tag in _XML_TOP:
                top.setdefault(_XML_TOP[element.tag], (element.text or "").strip())
    except ET.ParseError:
        pass
    col.set_common(driver_version=_version(top, "driver_version", "kmd_version"),
                   runtimes=_cuda(_version(top, "cuda_version", "cuda_umd_version")))
    for position, gpu in enumerate(gpus):
        power = gpu.findtext("gpu_power_readings/power_draw") or gpu.findtext("power_readings/power_draw")
        _add(col, position, {
            "name": gpu.findtext("product_name"), "uuid": gpu.findtext("uuid"), "serial": gpu.findtext("serial"),
            "bus": gpu.findtext("pci/pci_bus_id") or gpu.get("id"), "total": gpu.findtext("fb_memory_usage/total"),
            "used": gpu.findtext("fb_memory_usage/used"), "vbios": gpu.findtext("vbios_version"),
            "minor": gpu.findtext("minor_number"), "mig": gpu.findtext("mig_mode/current_mig"),
            "mig_count": len(gpu.findall("mig_devices/mig_device")), "arch": gpu.findtext("product_architecture"),
            "temp": gpu.findtext("temperature/gpu_temp"), "power": power,
            "util": gpu.findtext("utilization/gpu_util"), "reset": gpu.findtext("gpu_reset_status/reset_required"),
            "remap_failure": gpu.findtext("remapped_rows/remapping_failure_occurred"),
        })
    _check_count(capture, col, to_int(top.get("attached_gpus")), len(gpus))


# ---------------------------------------------------------------- CSV queries


def csv_rows(capture: Capture, query_option: str, col: Collector) -> list[dict[str, str]]:
    body = [line for line in capture.text.splitlines() if line.strip()]
    rows = list(csv.reader(body, skipinitialspace=True))
    queried = [f.strip() for f in (capture.option(query_option) or "").split(",") if f.strip()]
    if "noheader" in (capture.option("--format") or ""):
        if not queried:
            col.warn(f"{capture.label}: CSV without header and no {query_option} field list")
            return []
        names, data = queried, rows
    else:
        names = [re.sub(r"\s*\[.*\]$", "", f.strip()) for f in rows[0]] if rows else []
        if not names or (queried and names != queried) or not all(re.fullmatch(r"[\w.]+", n) for n in names):
            col.warn(f"{capture.label}: no CSV header line naming the queried fields")
            return []
        data = rows[1:]
    return [dict(zip(names, (value.strip() for value in row), strict=False)) for row in data if len(row) == len(names)]


def parse_csv(capture: Capture, col: Collector) -> None:
    rows = csv_rows(capture, "--query-gpu", col)
    if not rows:
        col.warn(f"{capture.label}: no GPU rows in the CSV")
        return
    for position, row in enumerate(rows):
        if "name" not in row and "uuid" not in row and "pci.bus_id" not in row:
            col.warn(f"{capture.label}: row {position + 1} has no name, uuid or pci.bus_id column; skipped")
            continue
        index = to_int(row.get("index"))
        col.set_common(driver_version=clean(row.get("driver_version")))
        _add(col, index if index is not None else position, {
            "name": row.get("name"), "uuid": row.get("uuid"), "serial": row.get("serial"),
            "bus": row.get("pci.bus_id"), "total": row.get("memory.total"), "used": row.get("memory.used"),
            "vbios": row.get("vbios_version"), "mig": row.get("mig.mode.current"),
            "temp": row.get("temperature.gpu"), "power": row.get("power.draw"),
            "util": row.get("utilization.gpu"), "compute_cap": row.get("compute_cap"),
        })


def parse_apps(capture: Capture, col: Collector) -> None:
    rows = csv_rows(capture, "--query-compute-apps", col)
    seen: list[str] = []
    for row in rows:
        key = clean(row.get("gpu_uuid")) or pci(row.get("gpu_bus_id")) or ""
        if not key or key in seen:
            continue
        seen.append(key)
        col.add(model=nvidia_model(row["gpu_name"]) if clean(row.get("gpu_name")) else None,
                uuid=clean(row.get("gpu_uuid")), pci_bus_id=pci(row.get("gpu_bus_id")),
                extra={"serial": clean(row.get("gpu_serial"))})
    if rows:
        col.warn(f"{capture.label}: a per-process list; only GPUs running compute processes appear "
                 f"({len(seen)} found), idle GPUs and memory sizes are not shown")
    elif not col.warnings:
        col.warn(f"{capture.label}: no compute process listed, so no GPU can be read from it")


# ---------------------------------------------------------------- -L and topo -m


def parse_list(capture: Capture, col: Collector) -> None:
    current: dict[str, Any] | None = None
    found = 0
    for line in capture.text.splitlines():
        gpu = re.match(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)", line)
        if gpu:
            found += 1
            current = col.add(index=int(gpu.group(1)), model=nvidia_model(gpu.group(2)), uuid=gpu.group(3).strip())
            continue
        mig = re.match(r"^\s+MIG (\S+)\s+Device\s+\d+:(?:.*\(UUID: (MIG-[^)\s]+)\))?", line)
        if current is not None and mig:
            extra = current.setdefault("extra", {})
            extra["mig_mode"] = "Enabled"
            extra["mig_devices"] = str(int(extra.get("mig_devices", "0")) + 1)
            if mig.group(2):  # the instance's profile and UUID, for a share handed over as a MIG instance
                extra["mig_instances"] = ";".join(filter(None, (extra.get("mig_instances"),
                                                                f"{mig.group(1)}={mig.group(2)}")))
    if not found:
        col.warn(f"{capture.label}: no 'GPU N: name (UUID: …)' line found")


def parse_topo(capture: Capture, col: Collector) -> None:
    matrix = topo_matrix(capture.text, "GPU")
    if not matrix:
        col.warn(f"{capture.label}: no GPU topology matrix found")
    for index, row in matrix.items():
        col.add(index=index, links=row["links"], numa_node=row["numa"],
                extra={"cpu_affinity": row["cpu_affinity"]})


PARSERS = {"table": parse_table, "q": parse_q, "xml": parse_xml, "csv": parse_csv,
           "apps": parse_apps, "list": parse_list, "topo": parse_topo}
PRIORITY = {"xml": 0, "q": 1, "csv": 2, "table": 3, "list": 4, "apps": 5, "topo": 6}
