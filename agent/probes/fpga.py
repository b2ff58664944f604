"""FPGAs found by PCI vendor/device id: sysfs (``/sys/bus/pci/devices/*``) first, ``lspci -Dn`` text otherwise.

The sysfs root is a parameter so tests (and ``--probe-dir`` captures, under ``DIR/sys``)
can point it at a fake tree. ``available`` is true only when an FPGA was found: sysfs
itself is always there and says nothing about FPGA drivers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.probes.base import Capture, ProbeRun, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import pci
from libs.schemas.devices import HardwareType

XILINX, ALTERA, INTEL = 0x10EE, 0x1172, 0x8086
VENDOR_KEYS = {XILINX: "xilinx", ALTERA: "intel", INTEL: "intel"}

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


def add_fpgas(functions: Sequence[PciFunction], collector: Collector) -> int:
    """Group FPGA functions into cards (one per PCI slot) and add them; returns the number of cards."""
    cards: dict[tuple[str, str], list[PciFunction]] = {}
    for function in functions:
        if function.virtual or fpga_model(function.vendor, function.device) is None:
            continue
        slot = function.address.rsplit(".", 1)[0]
        cards.setdefault((VENDOR_KEYS[function.vendor], slot), []).append(function)
    counters: dict[str, int] = {}
    for (vendor, _), members in sorted(cards.items()):
        first = min(members, key=lambda f: f.address)
        index = counters.get(vendor, 0)
        counters[vendor] = index + 1
        collector.add(index=index, vendor=vendor, model=fpga_model(first.vendor, first.device),
                      pci_bus_id=first.address, numa_node=first.numa_node,
                      extra={"pci_ids": ",".join(f"{f.vendor:04x}:{f.device:04x}" for f in members),
                             "functions": len(members),
                             "pci_class": f"0x{first.pci_class:06x}" if first.pci_class is not None else None})
    return len(cards)


class FpgaProbe(ToolProbe):
    name = "fpga"
    vendor = "xilinx"
    hardware_type = HardwareType.FPGA
    tools = ("lspci",)

    def __init__(self, sysfs_root: Path | str = Path("/sys")) -> None:
        self.sysfs_root = Path(sysfs_root)

    def commands(self) -> list[list[str]]:
        return [["lspci", "-Dn"]]

    def collect_live(self) -> ProbeRun | None:
        return self._from_sysfs(self.sysfs_root)

    def collect_dir(self, probe_dir: Path) -> ProbeRun | None:
        return self._from_sysfs(probe_dir / "sys")

    def _from_sysfs(self, root: Path) -> ProbeRun | None:
        functions = scan_sysfs(root)
        if functions is None:
            return None
        collector = Collector(self.name, self.vendor, self.hardware_type)
        found = add_fpgas(functions, collector)
        report, readings = collector.finish(available=found > 0)
        return ProbeRun(report=report, readings=readings)

    def is_available(self, collector: Collector) -> bool:
        return bool(collector.records)

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        functions = []
        for line in capture.text.splitlines():
            match = re.match(r"^(\S+)\s+(?:[^:]*\[)?([0-9a-fA-F]{4})\]?:\s+(?:.*\[)?([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]?",
                             line.strip())
            if match and pci(match.group(1)):
                functions.append(PciFunction(address=pci(match.group(1)) or "", vendor=int(match.group(3), 16),
                                             device=int(match.group(4), 16), pci_class=int(match.group(2), 16) << 8))
        if not functions:
            collector.warn(f"{capture.label}: no 'BUS CLASS: VENDOR:DEVICE' line found")
        add_fpgas(functions, collector)
