"""The nvidia-smi style device table, shared by nvidia-smi, Iluvatar ixsmi, Kunlunxin xpu-smi and Gaudi hl-smi.

    | GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
    | Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
    |===============================+======================+======================|
    |   0  NVIDIA A100-SXM4-80GB On | 00000000:07:00.0 Off |                    0 |
    | N/A   33C    P0    61W / 400W |      4MiB / 81920MiB |      0%      Default |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.probes.util import after_header_rule, box_rows, find_line, num, pci

_INDEX_RE = re.compile(r"^(\d+)\s+(.*?)\s*$")
_MEM_RE = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB", re.IGNORECASE)
_POWER_RE = re.compile(r"(\d+(?:\.\d+)?)\s*W\s*/\s*(\d+(?:\.\d+)?)\s*W", re.IGNORECASE)
_TEMP_RE = re.compile(r"(?<![\w.])(-?\d+)\s*C\b")
_PERSISTENCE = ("On", "Off", "N/A")


@dataclass
class SmiRow:
    index: int
    name: str
    bus_id: str | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_cap_w: float | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    utilization_pct: float | None = None
    perf: str | None = None
    third: list[str] = field(default_factory=list)  # third row (MIG M. / L3 / SR-IOV)
    errors: list[str] = field(default_factory=list)  # columns that show ERR!

    @property
    def truncated(self) -> bool:
        return self.name.endswith("...") or self.name.endswith("…")


@dataclass
class SmiTable:
    header: dict[str, str]
    rows: list[SmiRow]
    elided: bool = False
    found: bool = False
    mig_devices: dict[int, int] = field(default_factory=dict)


_HEADER_PATTERNS = {
    "nvidia-smi": r"NVIDIA-SMI\s+([\w.\-]+)",
    "driver": r"(?:Driver|KMD) Version:\s*([\w.\-]+)",  # 610-branch drivers say 'KMD Version'
    "cuda": r"CUDA (?:UMD )?Version:\s*([\w.\-/]+)",  # ... and 'CUDA UMD Version'
    "hl-smi": r"HL-SMI Version:\s*([\w.\-]+)",
    "ixml": r"IX-ML:\s*([\w.\-]+)",
    "xpu-rt": r"XPU-RT Version:\s*([\w.\-]+)",
}

_COLUMNS_ROW2 = ["Fan", "Temp", "Perf", "Pwr"]


def parse_smi_table(text: str) -> SmiTable:
    lines = text.splitlines()
    header: dict[str, str] = {}
    for key, pattern in _HEADER_PATTERNS.items():
        match = re.search(pattern, text)
        if match and match.group(1).upper() != "N/A":
            header[key] = match.group(1)
    head = find_line(lines, lambda line: "|" in line and "Name" in line and re.search(r"\b(GPU|XPU|AIP)\b", line))
    if head < 0:
        return SmiTable(header=header, rows=[])
    persistence = "Persistence-M" in lines[head]
    rows, elided, end = box_rows(lines, after_header_rule(lines, head))
    table = SmiTable(header=header, rows=[], elided=elided, found=True)
    current: SmiRow | None = None
    position = 0
    for row in rows:
        first = row[0] if row else ""
        if "Processes" in first:
            break  # hl-smi keeps its process list inside the same box
        match = _INDEX_RE.match(first)
        if match and len(row) >= 2:
            current = _first_row(int(match.group(1)), match.group(2), row, persistence)
            table.rows.append(current)
            position = 1
            continue
        if current is None:
            continue
        position += 1
        if position == 2:
            _second_row(current, row)
        else:
            current.third = row
            current.errors += [f"row {position} column {n + 1}" for n, cell in enumerate(row) if "ERR!" in cell]
    table.mig_devices = _mig_devices(lines[end:])
    return table


def _first_row(index: int, rest: str, row: list[str], persistence: bool) -> SmiRow:
    name = rest
    if persistence:
        parts = rest.rsplit(None, 1)
        if len(parts) == 2 and parts[1] in _PERSISTENCE:
            name = parts[0]
    result = SmiRow(index=index, name=name.strip())
    result.bus_id = pci(row[1]) if len(row) > 1 else None
    result.errors += [f"row 1 column {n + 1}" for n, cell in enumerate(row) if "ERR!" in cell]
    return result


def _second_row(target: SmiRow, row: list[str]) -> None:
    first = row[0] if row else ""
    if "ERR!" in first:
        tokens = first.split()
        labels = [_COLUMNS_ROW2[n] for n, token in enumerate(tokens[:4]) if "ERR!" in token]
        target.errors += labels or ["Fan/Temp/Perf/Power"]
    temp = _TEMP_RE.search(first.replace("℃", "C"))
    target.temperature_c = float(temp.group(1)) if temp else None
    power = _POWER_RE.search(first)
    if power:
        target.power_w, target.power_cap_w = float(power.group(1)), float(power.group(2))
    perf = re.search(r"\bP\d{1,2}\b", first)
    target.perf = perf.group() if perf else None
    if len(row) > 1:
        memory = _MEM_RE.search(row[1])
        if memory:
            target.memory_used_mib, target.memory_total_mib = int(memory.group(1)), int(memory.group(2))
        if "ERR!" in row[1]:
            target.errors.append("Memory-Usage")
    if len(row) > 2:
        util = re.search(r"(\d+(?:\.\d+)?)\s*%", row[2])
        target.utilization_pct = num(util.group(1)) if util else None
        if "ERR!" in row[2]:
            target.errors.append("Util/Compute M.")


def _mig_devices(lines: list[str]) -> dict[int, int]:
    """Count MIG instances per GPU in the 'MIG devices:' table that follows the device table."""
    start = find_line(lines, lambda line: "MIG devices" in line)
    if start < 0:
        return {}
    head = find_line(lines, lambda line: "GPU" in line and "GI" in line, start)
    if head < 0:
        return {}
    rows, _, _ = box_rows(lines, after_header_rule(lines, head))
    counts: dict[int, int] = {}
    for row in rows:
        match = re.match(r"^(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", row[0] if row else "")
        if match:
            gpu = int(match.group(1))
            counts[gpu] = counts.get(gpu, 0) + 1
    return counts
