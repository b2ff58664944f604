"""Small text helpers shared by the vendor parsers.

Everything here is pure and forgiving: a helper that cannot read its input returns
``None`` (or an empty result) instead of raising, so parsers can report what they
could read and add a warning for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from libs.schemas.devices import Health, Link

UNKNOWN_MODEL = "unknown"

_NA = {"", "n/a", "[n/a]", "na", "-", "--", "none", "not supported", "[not supported]", "unknown"}
_MASK_RE = re.compile(r"(?i)(x{3,}|<redacted>|\*{3,})")

_HEALTHY = {"ok", "healthy", "normal", "available", "good", "pass", "passed", "operational"}
_UNHEALTHY = {
    "warning", "alarm", "critical", "err!", "error", "fail", "failed", "fault", "unhealthy",
    "general warning", "major alarm", "critical alarm", "minor alarm", "abnormal", "unavailable", "lost",
}


def clean(value: str | None) -> str | None:
    """Strip a value and turn the usual placeholders (N/A, NA, -, [N/A]) into None."""
    if value is None:
        return None
    text = value.strip()
    return None if text.lower() in _NA else text


def is_masked(value: str | None) -> bool:
    """True when a value was anonymised by whoever published it (xxx, <redacted>, ***)."""
    return bool(value and _MASK_RE.search(value))


def num(value: str | None) -> float | None:
    """First number in a string ('43.89 W' → 43.89, '45.0Â°C' → 45.0), or None."""
    if value is None:
        return None
    match = re.search(r"-?\d+(?:\.\d+)?", value)
    return float(match.group()) if match else None


def to_int(value: str | None) -> int | None:
    """Integer value of a decimal or 0x-hex string, or None."""
    text = clean(value)
    if text is None:
        return None
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(float(text))
    except ValueError:
        return None


_UNIT_MIB = {
    "b": 1 / (1024 * 1024), "kb": 1 / 1024, "kib": 1 / 1024, "mb": 1.0, "mib": 1.0,
    "gb": 1024.0, "gib": 1024.0, "tb": 1024.0 * 1024, "tib": 1024.0 * 1024,
}


def mib(value: str | None, default_unit: str = "mib") -> int | None:
    """Memory size in MiB. Vendor tools write MiB as 'MB' and GiB as 'GB'; both are read as binary."""
    text = clean(value)
    if text is None:
        return None
    match = re.search(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\b", text, re.IGNORECASE)
    if not match:
        return None
    unit = (match.group(2) or default_unit).lower()
    factor = _UNIT_MIB.get(unit)
    if factor is None:
        return None
    return int(float(match.group(1)) * factor)


_PCI_RE = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


def pci(value: str | None) -> str | None:
    """Normalise a PCI address to sysfs form: '00000000:19:00.0' or '00:01:00.0' → '0000:19:00.0'."""
    if not value:
        return None
    match = _PCI_RE.search(value)
    if not match:
        return None
    domain = int(match.group(1), 16) if match.group(1) else 0
    return f"{domain:04x}:{match.group(2)}:{match.group(3)}.{match.group(4)}".lower()


def looks_like_pci(value: str | None) -> bool:
    return bool(value and _PCI_RE.search(value))


def health(value: str | None) -> Health:
    """Map a vendor health/state string to Health (OK/Healthy → healthy, Warning/Alarm/ERR! → unhealthy)."""
    text = (value or "").strip().lower()
    if text in _HEALTHY:
        return Health.HEALTHY
    if text in _UNHEALTHY or "alarm" in text or "critical" in text or "err!" in text:
        return Health.UNHEALTHY
    return Health.UNKNOWN


def version(value: str | None) -> str | None:
    """A version string without a leading 'v' or 'V' ('v4.20.11' → '4.20.11')."""
    text = clean(value)
    if text is None:
        return None
    return text[1:] if len(text) > 1 and text[0] in "vV" and text[1].isdigit() else text


def dashed(name: str) -> str:
    """'H100 80GB HBM3' → 'H100-80GB-HBM3'."""
    return re.sub(r"[\s_]*-[\s_]*|\s+", "-", name.strip()).strip("-")


# ---------------------------------------------------------------- box tables


def is_separator(line: str) -> bool:
    """True for table rules: '+----+----+', '|====+====|', '|-----|', '-----'."""
    text = line.strip()
    return len(text) >= 3 and set(text) <= set("+-=|") and bool(set(text) & set("-="))


def cells(line: str) -> list[str]:
    """Cells of a '| a | b |' table row, stripped."""
    text = line.strip()
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|"):
        text = text[:-1]
    return [cell.strip() for cell in text.split("|")]


def box_rows(lines: list[str], start: int) -> tuple[list[list[str]], bool, int]:
    """Rows of a box table from ``start`` (after its header rule) to the first line that is not part of it.

    Returns (rows, elided, end): a ``None``-free list of rows (lists of cells), whether a literal
    '...' elision line was met, and the index of the line after the table.
    """
    rows: list[list[str]] = []
    elided = False
    index = start
    while index < len(lines):
        text = lines[index].strip()
        if is_separator(text):
            index += 1
            continue
        if text.startswith("|"):
            rows.append(cells(text))
        elif text in ("...", "…") or (text.startswith("...") and "|" not in text):
            elided = True
        else:
            break
        index += 1
    return rows, elided, index


def find_line(lines: list[str], predicate: Any, start: int = 0) -> int:
    """Index of the first line from ``start`` for which predicate(line) is true, or -1."""
    for index in range(start, len(lines)):
        if predicate(lines[index]):
            return index
    return -1


def after_header_rule(lines: list[str], header: int) -> int:
    """Index just after the rule that closes the table header starting at ``header``."""
    index = header
    while index < len(lines) and not is_separator(lines[index]):
        index += 1
    return index + 1


# ---------------------------------------------------------------- key: value text


def indented_kv(lines: Iterable[str], sep: str = ":") -> dict[str, str]:
    """Flatten indented 'Key : Value' text into {'Section/Sub/Key': 'Value'}; first occurrence wins."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for raw in lines:
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip())
        key, found, value = raw.strip().partition(sep)
        key = key.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value = value.strip()
        if found and value:
            path = "/".join([name for _, name in stack] + [key])
            out.setdefault(path, value)
        else:
            stack.append((indent, key))
    return out


def kv_pairs(text: str, sep: str = ":") -> list[tuple[str, str]]:
    """All 'Key : Value' pairs of flat text, in order (keys repeat across devices)."""
    pairs = []
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if found and key.strip():
            pairs.append((key.strip(), value.strip()))
    return pairs


def split_columns(line: str) -> list[str]:
    """Split a column-aligned line on tabs or runs of two or more spaces."""
    return [part.strip() for part in re.split(r"\t+|\s{2,}", line.strip()) if part.strip()]


def topo_matrix(text: str, prefix: str) -> dict[int, dict[str, Any]]:
    """Read a device topology matrix ('nvidia-smi topo -m', 'npu-smi info -t topo').

    Returns {index: {'links': [Link...], 'cpu_affinity': str | None, 'numa': int | None}}
    for rows labelled ``<prefix><index>`` (GPU0, NPU3…).
    """
    lines = [line for line in text.splitlines() if line.strip()]
    header_at = find_line(lines, lambda line: re.search(rf"\b{prefix}0\b", line) is not None)
    if header_at < 0:
        return {}
    header = split_columns(lines[header_at])
    if header and header[0] == "":
        header = header[1:]
    result: dict[int, dict[str, Any]] = {}
    for line in lines[header_at + 1:]:
        parts = split_columns(line)
        label = re.fullmatch(rf"{prefix}(\d+)", parts[0]) if parts else None
        if not label:
            if parts and parts[0].lower().startswith("legend"):
                break
            continue
        row: dict[str, Any] = {"links": [], "cpu_affinity": None, "numa": None}
        for column, value in zip(header, parts[1:], strict=False):
            peer = re.fullmatch(rf"{prefix}(\d+)", column)
            if peer and value.upper() != "X":
                row["links"].append(Link(peer_index=int(peer.group(1)), kind=value))
            elif column.lower() == "cpu affinity":
                row["cpu_affinity"] = clean(value)
            elif column.lower() == "numa affinity":
                row["numa"] = to_int(value)
        result[int(label.group(1))] = row
    return result
