"""AWS Trainium and Inferentia: neuron-ls (``-j`` JSON first, the table for the instance type).

neuron-ls does not print a chip name: the model comes from its ``instance-type:`` line
(inf1, inf2, trn1, trn2 families) or, in JSON, from ``logical_neuroncore_config``, which
the Neuron docs say only trn2 instances report.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.probes.base import Capture, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import cells, clean, is_separator, mib, pci, to_int
from libs.schemas.devices import HardwareType, Link

FAMILIES = {"inf1": "Inferentia", "inf2": "Inferentia2", "trn1": "Trainium", "trn2": "Trainium2"}


def family_model(instance_type: str | None) -> str | None:
    match = re.match(r"(inf1|inf2|trn1|trn2)", (instance_type or "").strip().lower())
    return FAMILIES[match.group(1)] if match else None


class NeuronProbe(ToolProbe):
    name = "neuron"
    vendor = "aws"
    hardware_type = HardwareType.NPU
    tools = ("neuron-ls",)

    def commands(self) -> list[list[str]]:
        return [["neuron-ls", "-j"], ["neuron-ls"]]

    def priority(self, capture: Capture) -> int:
        return 0 if capture.has("-j", "--json-output") else 1

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        if capture.text.lstrip().startswith(("[", "{")):
            _json(capture, collector)
        else:
            _table(capture, collector)


def _links(value: Any) -> list[Link]:
    peers = value if isinstance(value, list) else re.findall(r"\d+", str(value or ""))
    return [Link(peer_index=int(peer), kind="NeuronLink") for peer in peers if str(peer).isdigit()]


def _add(col: Collector, index: int, model: str | None, memory: int | None, kv: dict[str, Any]) -> None:
    numa = to_int(str(kv.get("numa_node", "")))
    col.add(index=index, model=model, memory_mib=memory, pci_bus_id=pci(str(kv.get("bdf") or "")),
            numa_node=numa if numa is not None and numa >= 0 else None, links=_links(kv.get("connected_to")),
            extra={"neuron_cores": clean(str(kv.get("nc_count", ""))), "cpu_affinity": clean(str(kv.get("cpu_affinity", ""))),
                   "core_ids": clean(str(kv.get("core_ids", "")))})


def _json(capture: Capture, col: Collector) -> None:
    objects, elided = _objects(capture.text)
    if elided:
        col.warn(f"{capture.label}: devices elided with '...'; only {len(objects)} device(s) could be read")
    if not objects:
        col.warn(f"{capture.label}: no neuron device in the JSON")
    for entry in objects:
        index = to_int(str(entry.get("neuron_device", "")))
        if index is None:
            continue
        size = entry.get("memory_size")
        model = "Trainium2" if "logical_neuroncore_config" in entry else None
        _add(col, index, model, int(size) // (1024 * 1024) if isinstance(size, int) else None, entry)


def _objects(text: str) -> tuple[list[dict[str, Any]], bool]:
    """Device objects of a JSON list, reading past a '...' its publisher put between them."""
    decoder = json.JSONDecoder()
    body = text.strip()
    try:
        data = json.loads(body)
        return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else [], False
    except ValueError:
        pass
    found: list[dict[str, Any]] = []
    elided = False
    position = body.find("[") + 1
    while 0 < position < len(body):
        while position < len(body) and body[position] in " \t\r\n,":
            position += 1
        if body.startswith("...", position):
            elided, position = True, position + 3
            continue
        if position >= len(body) or body[position] != "{":
            break
        try:
            item, position = decoder.raw_decode(body, position)
        except ValueError:
            break
        if isinstance(item, dict):
            found.append(item)
    return found, elided


def _table(capture: Capture, col: Collector) -> None:
    text = capture.text
    instance = re.search(r"^instance-type:\s*(\S+)", text, re.MULTILINE)
    model = family_model(instance.group(1) if instance else None)
    lines = text.splitlines()
    head = next((n for n, line in enumerate(lines) if line.startswith("|") and "NEURON" in line), -1)
    if head < 0:
        col.warn(f"{capture.label}: no neuron-ls device table found")
        return
    first, second = cells(lines[head]), cells(lines[head + 1]) if head + 1 < len(lines) else []
    names = [f"{a} {b}".strip().lower() for a, b in zip(first, [*second, *[""] * len(first)], strict=False)]
    found = 0
    for line in lines[head + 2:]:
        if is_separator(line) or not line.startswith("|"):
            if not line.startswith(("|", "+")):
                break
            continue
        row = dict(zip(names, cells(line), strict=False))
        index = to_int(row.get("neuron device"))
        if index is None:
            continue  # a further process row of the device above
        found += 1
        _add(col, index, model, mib(row.get("neuron memory")),
             {"bdf": row.get("pci bdf"), "numa_node": row.get("numa node"), "connected_to": row.get("connected devices"),
              "nc_count": row.get("neuron cores"), "cpu_affinity": row.get("cpu affinity"),
              "core_ids": row.get("neuron core ids")})
    if not found:
        col.warn(f"{capture.label}: the neuron-ls table has no device rows")
