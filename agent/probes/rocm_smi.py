"""rocm-smi (and hy-smi, its Hygon DCU fork) outputs: JSON, concise tables, 'GPU[N] : key: value' text.

The same tool runs on AMD GPUs and on Hygon DCUs. Each device is classified by what the
output shows (card vendor, 'DCU' columns, card series); legacy layouts that show neither
are classified by context: hy-smi or DTK outputs captured beside them, or a capture's
``# source:`` note naming Hygon/DCU. Without any of these they are taken as AMD.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from agent.probes.base import READ_FILE, Capture
from agent.probes.records import Collector
from agent.probes.util import clean, dashed, is_masked, mib, num, pci, to_int
from libs.schemas.devices import Link

HYGON, AMD = "hygon", "amd"

# PCI device id → canonical model; (name if VRAM ≥ threshold MiB, threshold, name otherwise)
AMD_DEVICE_IDS: dict[int, str | tuple[str, int, str]] = {
    0x66A1: "MI50", 0x738C: "MI100", 0x7408: "MI250X", 0x740C: "MI250X", 0x740F: "MI210",
    0x74A0: "MI300A", 0x74A1: "MI300X", 0x74A2: "MI308X", 0x74A5: "MI325X", 0x74B5: "MI300X",
    0x75A0: "MI350X", 0x75A3: "MI355X",
    0x73DF: ("Radeon-RX-6700-XT", 11000, "Radeon-RX-6700"), 0x73BF: "Radeon-RX-6900-XT",
    0x747E: ("Radeon-RX-7800-XT", 14000, "Radeon-RX-7700-XT"), 0x744C: "Radeon-RX-7900-XTX",
    0x7448: "Radeon-Pro-W7900", 0x7550: "Radeon-RX-9070",
}


def amd_model(name: str | None, device_id: int | None, memory_mib: int | None) -> str | None:
    """'Arcturus GL-XL [Instinct MI100]' → 'MI100'; 'Radeon Instinct MI50 32GB' → 'MI50-32GB'; by id otherwise."""
    text = clean(name) or ""
    instinct = re.search(r"\b(MI\d{2,3}[A-Z]{0,2})\b(?:\s+(\d+)\s*GB)?", text)
    if instinct:
        return instinct.group(1) + (f"-{instinct.group(2)}GB" if instinct.group(2) else "")
    known = AMD_DEVICE_IDS.get(device_id or -1)
    if isinstance(known, tuple):
        large, threshold, small = known
        return large if memory_mib is None or memory_mib >= threshold else small
    if known:
        return known
    bracket = re.search(r"\[(.+)\]", text)
    return dashed(bracket.group(1)) if bracket else (dashed(text) if text else None)


def hygon_model(series: str | None) -> str | None:
    text = clean(series)
    if not text or is_masked(text):
        return None
    text = re.sub(r"(?i)^(hygon\s+)?(dcu\s+)?", "", text).strip()
    return dashed(text).replace("-", "_") if text else None


def vendor_hint(outputs: Sequence[Capture], capture: Capture) -> str | None:
    """'hygon' when the host context says DCU: hy-smi or DTK outputs beside it, or its source note."""
    for other in outputs:
        if other.tool == "hy-smi" or (other.tool == READ_FILE and "/dtk" in " ".join(other.args)):
            return HYGON
    note = (capture.source or "").lower()
    if "hygon" in note or "dcu" in note or "海光" in note:
        return HYGON
    return None


def _vendor_of(card: dict[str, str], hint: str | None) -> str:
    vendor = card.get("card vendor", "").lower()
    series = card.get("card series", "")
    if any(word in vendor for word in ("haiguang", "hygon", "c-3000")) or series.upper().startswith("DCU"):
        return HYGON
    if any(key.startswith(("dcu", "hcu")) for key in card):
        return HYGON
    if "advanced micro devices" in vendor or "amd" in vendor:
        return AMD
    return hint or AMD


def parse_rocm(capture: Capture, col: Collector, keep: str, hint: str | None) -> None:
    """Add the devices of vendor ``keep`` that this rocm-smi/hy-smi output shows."""
    text = capture.text
    brace = text.find("{")
    understood = False
    if brace >= 0 and (capture.has("--json") or text[:brace].strip() == ""):
        understood = _json(capture, col, keep, hint)
    else:
        understood = _concise(capture, col, keep, hint) | _kv(capture, col, keep, hint)
        driver = re.search(r"Driver version:\s*([\w.\-+]+)", text)
        if driver:
            col.set_common(driver_version=driver.group(1))
            understood = True
    if not understood:
        col.warn(f"{capture.label}: no device found in this output")


# ---------------------------------------------------------------- JSON and key: value text


def _json(capture: Capture, col: Collector, keep: str, hint: str | None) -> bool:
    try:
        data, _ = json.JSONDecoder().raw_decode(capture.text[capture.text.find("{"):])
    except ValueError as exc:
        col.warn(f"{capture.label}: JSON not readable ({exc})")
        return False
    if not isinstance(data, dict):
        col.warn(f"{capture.label}: JSON is not an object of cards")
        return False
    cards = {int(m.group(1)): {str(k).strip().lower(): str(v) for k, v in value.items()}
             for key, value in data.items() if (m := re.fullmatch(r"card(\d+)", key)) and isinstance(value, dict)}
    raw_system = data.get("system")
    system = {str(k).lower(): str(v) for k, v in raw_system.items()} if isinstance(raw_system, dict) else {}
    if system.get("driver version"):
        col.set_common(driver_version=system["driver version"])
    vendors = {index: _vendor_of(card, hint) for index, card in cards.items()}
    for index, card in sorted(cards.items()):
        if vendors[index] == keep:
            _card(capture, col, index, card, keep)
    _topology(capture, col, system, vendors, keep)
    return bool(cards) or bool(system)


def _topology(capture: Capture, col: Collector, system: dict[str, str], vendors: dict[int, str], keep: str) -> None:
    peers: set[int] = set()
    for key, value in system.items():
        match = re.match(r"\(topology\) link type between drm devices (\d+) and (\d+)", key)
        if not match:
            continue
        a, b = int(match.group(1)), int(match.group(2))
        peers |= {a, b}
        for me, peer in ((a, b), (b, a)):
            if vendors.get(me, keep) == keep and me in vendors:
                col.add(index=me, keys=(("card", me),), links=[_link(peer, value)])
    missing = sorted(peers - set(vendors))
    if missing and keep in vendors.values():
        col.warn(f"{capture.label}: topology names {len(peers)} devices but only {len(vendors)} card(s) "
                 f"are listed (devices {', '.join(map(str, missing))} missing; output trimmed?)")


def _link(peer: int, kind: str) -> Link:
    return Link(peer_index=peer, kind=kind.strip().upper())


def _kv(capture: Capture, col: Collector, keep: str, hint: str | None) -> bool:
    cards: dict[int, dict[str, str]] = {}
    for line in capture.text.splitlines():
        match = re.match(r"^\s*(GPU|DCU|HCU)\[(\d+)\]\s*:\s*(.*)$", line)  # hy-smi of DTK 24/25 says HCU
        if not match:
            continue
        key, found, value = match.group(3).partition(":")
        if found:
            card = cards.setdefault(int(match.group(2)), {})
            if match.group(1) in ("DCU", "HCU"):
                card.setdefault(match.group(1).lower(), "yes")
            card.setdefault(key.strip().lower(), value.strip())
    for index, card in sorted(cards.items()):
        if _vendor_of(card, hint) == keep:
            _card(capture, col, index, card, keep)
    return bool(cards)


def _card(capture: Capture, col: Collector, index: int, card: dict[str, str], vendor: str) -> None:
    device_id = to_int(card.get("device id") or card.get("gpu id"))
    total = mib(card.get("vram total memory (b)"), "b") or mib(card.get("vram total memory (mib)"))
    used = mib(card.get("vram total used memory (b)"), "b") or mib(card.get("vram total used memory (mib)"))
    series = card.get("card series") or card.get("device name")
    serial = clean(card.get("serial number"))
    if vendor == HYGON:
        model = hygon_model(series)
    else:
        model = amd_model(series, device_id, total) or amd_model(card.get("device name"), device_id, total)
    masked = [name for name, value in (("card series", series), ("serial number", serial)) if is_masked(value)]
    if masked:
        col.warn(f"{capture.label}: card{index} {' and '.join(masked)} masked in this output "
                 f"({', '.join(repr(card.get(name)) for name in masked)})")
    unique = clean(card.get("unique id"))
    record = col.add(
        index=index, keys=(("card", index),), vendor=vendor, model=model, memory_mib=total,
        uuid=unique or (serial if not is_masked(serial) else None), pci_bus_id=pci(card.get("pci bus")),
        numa_node=_numa(card.get("(topology) numa node")), firmware_version=clean(card.get("vbios version")),
        memory_used_mib=used,
        temperature_c=num(clean(card.get("temperature (sensor edge) (c)") or card.get("temperature (sensor junction) (c)"))),
        power_w=num(clean(card.get("average graphics package power (w)")
                          or card.get("current socket graphics package power (w)"))),
        utilization_pct=num(clean(card.get("gpu use (%)") or card.get("dcu use (%)") or card.get("hcu use (%)"))),
        extra={"device_id": f"0x{device_id:04x}" if device_id is not None else None,
               "card_series": clean(series) if series and not is_masked(series) else None,
               "serial": serial if unique and not is_masked(serial) else None,
               "gfx_version": clean(card.get("gfx version")), "sku": clean(card.get("card sku"))},
    )
    if vendor == HYGON and model is None and is_masked(series):
        record["_model_note"] = True


def _numa(value: str | None) -> int | None:
    number = to_int(value)
    return number if number is not None and number >= 0 else None


# ---------------------------------------------------------------- concise tables


def _concise(capture: Capture, col: Collector, keep: str, hint: str | None) -> bool:
    lines = capture.text.splitlines()
    header: list[str] | None = None
    rows = 0
    for line in lines:
        tokens = line.split()
        if header is None:
            if tokens and tokens[0] in ("Device", "GPU", "DCU", "HCU") and "Temp" in tokens:
                header = [t for t in tokens if not t.startswith("(") and not t.endswith(")")]
            continue
        if not tokens or tokens[0].startswith("("):
            continue
        if line.strip().startswith("=") and rows:
            break
        if not tokens[0].isdigit():
            continue
        values = _merge_commas(tokens)
        if len(values) != len(header):
            col.warn(f"{capture.label}: row '{line.strip()[:40]}' has {len(values)} columns, "
                     f"header has {len(header)}; read by position")
        row = dict(zip(header, values, strict=False))
        vendor = HYGON if header[0] in ("DCU", "HCU") or {"DCU%", "HCU%"} & set(header) or capture.tool == "hy-smi" \
            else (hint or AMD)
        rows += 1
        if vendor == keep:
            _concise_row(col, row, vendor)
    return header is not None


def _merge_commas(tokens: list[str]) -> list[str]:
    merged: list[str] = []
    for token in tokens:
        if merged and merged[-1].endswith(","):
            merged[-1] += token
        else:
            merged.append(token)
    return merged


def _concise_row(col: Collector, row: dict[str, str], vendor: str) -> None:
    index = int(next(iter(row.values())))
    did_text, _, guid = row.get("IDs", "").partition(",")
    device_id = to_int(did_text) if did_text else None
    partitions = row.get("Partitions", "").split(",")
    col.add(index=index, keys=(("card", index),), vendor=vendor,
            model=amd_model(None, device_id, None) if vendor == AMD else None,
            temperature_c=num(row.get("Temp")), power_w=num(clean(row.get("Power") or row.get("AvgPwr"))),
            utilization_pct=num(row.get("GPU%") or row.get("DCU%") or row.get("HCU%")),
            extra={"device_id": did_text or None, "guid": clean(guid), "node_id": row.get("Node"),
                   "power_cap": clean(row.get("PwrCap")), "mode": row.get("Mode"),
                   "memory_partition": clean(partitions[0]) if len(partitions) == 3 else None,
                   "compute_partition": clean(partitions[1]) if len(partitions) == 3 else None})


def version_file(text: str) -> str | None:
    """'6.0.2-115' (from /opt/rocm/.info/version) → '6.0.2'; None unless the file holds just a version."""
    match = re.fullmatch(r"\s*(?:\w+-)?(\d+\.\d+(?:\.\d+)?)[\w.\-+]*\s*", text)
    return match.group(1) if match else None


def read_version_file(capture: Capture, col: Collector, runtime: str) -> None:
    found = version_file(capture.text)
    if found:
        col.set_common(runtimes={runtime: found})
    else:
        col.warn(f"{capture.label}: not a version file ({capture.text.strip()[:40]!r})")
