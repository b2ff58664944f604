"""FPGA cards as their vendors' tools print them: Xilinx/AMD ``xbutil``/``xbmgmt examine`` and OPAE ``fpgainfo fme``.

Each parser returns one :class:`CardFacts` per card it shows, keyed by PCI address; the
FPGA probe joins them with the cards sysfs or lspci found (by PCI slot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.probes.base import Capture
from agent.probes.util import clean, pci, to_int
from libs.schemas.devices import Health


@dataclass
class CardFacts:
    address: str
    vendor: str
    model: str | None = None
    health: Health | None = None
    driver_version: str | None = None
    firmware_version: str | None = None
    runtimes: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    device_id: int | None = None

    @property
    def slot(self) -> str:
        return self.address.rsplit(".", 1)[0]


_DEVICE_RE = re.compile(r"^\s*\[([0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d)\]\s*:\s*(.*?)\s*$")


def xilinx_model(shell: str | None) -> str | None:
    """'xilinx_u280_xdma_201920_3' → 'Alveo-U280'; 'xilinx_u250_GOLDEN_5' → 'Alveo-U250'."""
    match = re.search(r"(?i)xilinx_(u\d+[a-z]?)(?:_|$)", shell or "")
    return f"Alveo-{match.group(1).upper()}" if match else None


def parse_xbutil(capture: Capture, warnings: list[str]) -> list[CardFacts]:
    text = capture.text
    xrt = re.search(r"^XRT\s*\n\s+Version\s*:\s*(\S+)", text, re.MULTILINE)
    driver = re.search(r"^\s+(?:XOCL|XCLMGMT)\s*:\s*([\w.\-]+)", text, re.MULTILINE)
    lines = text.splitlines()
    start = next((n for n, line in enumerate(lines) if line.strip() == "Devices present"), -1)
    if start < 0:
        warnings.append(f"{capture.label}: no 'Devices present' list found")
        return []
    ready_column = any("Device Ready" in line for line in lines[start + 1:start + 3])
    cards: list[CardFacts] = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        match = _DEVICE_RE.match(line)
        if not match:
            continue
        address, rest = pci(match.group(1)) or match.group(1), match.group(2)
        card = CardFacts(address=address, vendor="xilinx", driver_version=driver.group(1) if driver else None,
                         runtimes={"xrt": xrt.group(1)} if xrt else {})
        tokens = rest.split()
        if "not ready" in rest.lower() or (ready_column and tokens and tokens[-1] == "No"):
            card.health = Health.UNHEALTHY
            card.extra["error"] = line.strip()
            warnings.append(f"{capture.label}: card {address} is not ready, reported unhealthy "
                            f"({capture.tool}: {line.strip()!r})")
        elif ready_column and tokens and tokens[-1] == "Yes":
            card.health = Health.HEALTHY
        if tokens and tokens[0].lower().startswith("xilinx_"):
            card.model = xilinx_model(tokens[0])
            card.extra["shell"] = tokens[0]
        cards.append(card)
    if not cards:
        warnings.append(f"{capture.label}: the 'Devices present' list names no card")
    return cards


def parse_fpgainfo(capture: Capture, warnings: list[str]) -> list[CardFacts]:
    """'fpgainfo fme': BMC versions, then '//****** FME ******//' and 'Key : Value' lines per card."""
    cards: list[CardFacts] = []
    firmware: str | None = None
    section: dict[str, str] | None = None
    sections: list[tuple[dict[str, str], str | None]] = []
    for line in capture.text.splitlines():
        bmc = re.match(r"Board Management Controller,?\s+(?:MAX10\s+)?NIOS FW version:\s*(\S+)", line.strip())
        if bmc:
            firmware = bmc.group(1)
        elif "//****** FME ******//" in line:
            section = {}
            sections.append((section, firmware))
            firmware = None
        elif section is not None and (pair := re.match(r"^\s*(.+?)\s+:\s*(.*)$", line)):
            section.setdefault(pair.group(1).strip(), pair.group(2).strip())  # 'PCIe s:b:d.f : 0000:08:00.0
    for values, bmc_version in sections:
        address = pci(values.get("PCIe s:b:d.f"))
        if not address:
            warnings.append(f"{capture.label}: an FME section without a 'PCIe s:b:d.f' line; skipped")
            continue
        cards.append(CardFacts(address=address, vendor="altera", device_id=to_int(values.get("Device Id")),
                               firmware_version=bmc_version,
                               extra={"bitstream_version": clean(values.get("Bitstream Version")) or "",
                                      "bitstream_id": clean(values.get("Bitstream Id")) or "",
                                      "boot_page": clean(values.get("Boot Page")) or ""}))
    if not sections:
        warnings.append(f"{capture.label}: no '//****** FME ******//' section found")
    return cards
