"""FPGAs found by PCI vendor/device id (sysfs ``/sys/bus/pci/devices/*``, ``lspci -Dn`` otherwise), joined with
what the vendors' tools say of each card (``xbutil``/``xbmgmt examine``, ``fpgainfo fme``; see fpga_tools).

The sysfs root is a parameter so tests (and ``--probe-dir`` captures, under ``DIR/sys``)
can point it at a fake tree. ``available`` is true only when an FPGA was found: sysfs
itself is always there and says nothing about FPGA drivers.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.probes.base import Capture, ProbeRun, ToolProbe
from agent.probes.fpga_tools import CardFacts, parse_fpgainfo, parse_xbutil
from agent.probes.readings import DeviceReading
from agent.probes.records import Collector
from agent.probes.util import pci
from libs.schemas.devices import HardwareType, Health, ProbeReport

XILINX, ALTERA, INTEL = 0x10EE, 0x1172, 0x8086
# Intel's FPGA cards are Altera parts; 'intel' is the key of Intel GPUs, so two devices never share an id.
VENDOR_KEYS = {XILINX: "xilinx", ALTERA: "altera", INTEL: "altera"}
VENDOR_TOOLS = ("xbutil", "xbmgmt", "fpgainfo")

# Alveo/Versal cards expose a management and a user function: both ids map to the card.
XILINX_MODELS = {
    0x5000: "Alveo-U200", 0x5001: "Alveo-U200", 0x5004: "Alveo-U250", 0x5005: "Alveo-U250",
    0x500C: "Alveo-U280", 0x500D: "Alveo-U280", 0x5020: "Alveo-U50", 0x5021: "Alveo-U50",
    0x505C: "Alveo-U55C", 0x505D: "Alveo-U55C",
}
# Intel FPGA Programmable Acceleration Cards (OPAE device ids); other Intel devices are not FPGAs.
INTEL_FPGA_MODELS = {
    0x09C4: "PAC-A10", 0x09C5: "PAC-A10", 0x0B2B: "PAC-D5005", 0x0B2C: "PAC-D5005",
    0x0B30: "PAC-N3000", 0x0B31: "PAC-N3000", 0xBCCE: "IPU-N6000", 0xBCCF: "IPU-N6000",
}


@dataclass(frozen=True)
class PciFunction:
    address: str
    vendor: int
    device: int
    pci_class: int | None = None
    numa_node: int | None = None
    virtual: bool = False


def fpga_model(vendor: int, device: int) -> str | None:
    """Model of an FPGA function, or None when the ids are not an FPGA's."""
    if vendor == XILINX:
        return XILINX_MODELS.get(device, f"xilinx-{device:04x}")
    if vendor == ALTERA:
        return f"altera-{device:04x}"
    if vendor == INTEL:
        return INTEL_FPGA_MODELS.get(device)
    return None


def scan_sysfs(root: Path) -> list[PciFunction] | None:
    """PCI functions under ``root/bus/pci/devices``; None when that folder does not exist."""
    devices = root / "bus" / "pci" / "devices"
    if not devices.is_dir():
        return None
    functions = []
    for entry in sorted(devices.iterdir()):
        vendor, device = _hex(entry / "vendor"), _hex(entry / "device")
        if vendor is None or device is None:
            continue
        numa = _hex(entry / "numa_node", base=10)
        functions.append(PciFunction(address=pci(entry.name) or entry.name, vendor=vendor, device=device,
                                     pci_class=_hex(entry / "class"),
                                     numa_node=numa if numa is not None and numa >= 0 else None,
                                     virtual=(entry / "physfn").exists()))
    return functions


def _hex(path: Path, base: int = 16) -> int | None:
    try:
        return int(path.read_text().strip(), base)
    except (OSError, ValueError):
        return None


def add_fpgas(functions: Sequence[PciFunction], collector: Collector, tool_cards: Sequence[CardFacts] = ()) -> int:
    """Group FPGA functions into cards (one per PCI slot), join the vendor tools' facts by slot, add them.

    Returns the number of cards. A card only a tool shows (no sysfs or lspci entry) is added too.
    """
    cards: dict[tuple[str, str], list[PciFunction]] = {}
    for function in functions:
        if function.virtual or fpga_model(function.vendor, function.device) is None:
            continue
        slot = function.address.rsplit(".", 1)[0]
        cards.setdefault((VENDOR_KEYS[function.vendor], slot), []).append(function)
    facts: dict[tuple[str, str], CardFacts] = {}
    for card in sorted(tool_cards, key=lambda c: c.address):
        facts.setdefault((card.vendor, card.slot), card)
    keys = sorted(set(cards) | set(facts))
    counters: dict[str, int] = {}
    for vendor, slot in keys:
        members = cards.get((vendor, slot), [])
        told = facts.get((vendor, slot))
        first = min(members, key=lambda f: f.address) if members else None
        index = counters.get(vendor, 0)
        counters[vendor] = index + 1
        model = fpga_model(first.vendor, first.device) if first else None
        if told and (model is None or model.startswith(("xilinx-", "altera-"))):
            model = told.model or (INTEL_FPGA_MODELS.get(told.device_id) if told.device_id is not None else None) \
                or model
        record = collector.add(
            index=index, vendor=vendor, model=model, pci_bus_id=first.address if first else told.address if told else None,
            numa_node=first.numa_node if first else None, health=told.health if told else None,
            driver_version=told.driver_version if told else None, firmware_version=told.firmware_version if told else None,
            runtimes=told.runtimes if told else {},
            extra={"pci_ids": ",".join(f"{f.vendor:04x}:{f.device:04x}" for f in members) or None,
                   "functions": len(members) or None,
                   "pci_class": f"0x{first.pci_class:06x}" if first and first.pci_class is not None else None,
                   **({k: v for k, v in told.extra.items() if v} if told else {})})
        if told and told.health is Health.UNHEALTHY and model is None:
            record["_model_note"] = True  # the tool's warning says the card is not ready
    return len(keys)


class FpgaProbe(ToolProbe):
    name = "fpga"
    vendor = "xilinx"
    hardware_type = HardwareType.FPGA
    tools = ("lspci", *VENDOR_TOOLS)

    def __init__(self, sysfs_root: Path | str = Path("/sys")) -> None:
        self.sysfs_root = Path(sysfs_root)

    def commands(self) -> list[list[str]]:
        return [["lspci", "-Dn"], ["xbutil", "examine"], ["xbmgmt", "examine"], ["fpgainfo", "fme"]]

    def collect_live(self) -> ProbeRun | None:
        if any(shutil.which(tool) for tool in VENDOR_TOOLS):
            return None  # run the vendor tools; parse_all joins them with sysfs
        return self._from_sysfs(self.sysfs_root)

    def collect_dir(self, probe_dir: Path, captures: Sequence[Capture] = ()) -> ProbeRun | None:
        if any(capture.tool in VENDOR_TOOLS for capture in captures):
            return None  # parse_all joins the captured tool outputs with DIR/sys
        return self._from_sysfs(probe_dir / "sys")

    def parse_all(self, outputs: Sequence[Capture]) -> tuple[ProbeReport, list[DeviceReading]]:
        collector = Collector(self.name, self.vendor, self.hardware_type)
        functions = scan_sysfs(self.sysfs_root) or []
        tool_cards: list[CardFacts] = []
        warnings: list[str] = []
        for capture in outputs:
            if not capture.text.strip():
                warnings.append(f"{capture.label}: empty output")
            elif capture.tool == "lspci":
                functions += _lspci(capture, warnings)
            elif capture.tool in ("xbutil", "xbmgmt"):
                tool_cards += parse_xbutil(capture, warnings)
            elif capture.tool == "fpgainfo":
                tool_cards += parse_fpgainfo(capture, warnings)
        add_fpgas(functions, collector, tool_cards)
        for warning in warnings:
            collector.warn(warning)
        return collector.finish(available=bool(collector.records))

    def _from_sysfs(self, root: Path) -> ProbeRun | None:
        functions = scan_sysfs(root)
        if functions is None:
            return None
        collector = Collector(self.name, self.vendor, self.hardware_type)
        found = add_fpgas(functions, collector)
        report, readings = collector.finish(available=found > 0)
        return ProbeRun(report=report, readings=readings)



def _lspci(capture: Capture, warnings: list[str]) -> list[PciFunction]:
    functions = []
    for line in capture.text.splitlines():
        match = re.match(r"^(\S+)\s+(?:[^:]*\[)?([0-9a-fA-F]{4})\]?:\s+(?:.*\[)?([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]?",
                         line.strip())
        if match and pci(match.group(1)):
            functions.append(PciFunction(address=pci(match.group(1)) or "", vendor=int(match.group(3), 16),
                                         device=int(match.group(4), 16), pci_class=int(match.group(2), 16) << 8))
    if not functions:
        warnings.append(f"{capture.label}: no 'BUS CLASS: VENDOR:DEVICE' line found")
    return functions
