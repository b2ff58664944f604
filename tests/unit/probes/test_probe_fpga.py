"""FPGAs by PCI vendor/device id from a fake sysfs tree, and from lspci text."""

from __future__ import annotations

from pathlib import Path

from agent.discover import discover
from agent.probes.base import Capture
from agent.probes.fpga import FpgaProbe


def _pci(root: Path, address: str, vendor: str, device: str, pci_class: str = "0x120000", numa: str = "-1",
         virtual: bool = False) -> None:
    entry = root / "bus" / "pci" / "devices" / address
    entry.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", pci_class), ("numa_node", numa)):
        (entry / name).write_text(value + "\n")
    if virtual:
        (entry / "physfn").mkdir()


def test_fpga_sysfs_finds_xilinx_and_altera_cards(tmp_path: Path) -> None:
    _pci(tmp_path, "0000:3b:00.0", "0x10ee", "0x500c", numa="0")  # Alveo U280, management function
    _pci(tmp_path, "0000:3b:00.1", "0x10ee", "0x500d", numa="0")  # ... and its user function
    _pci(tmp_path, "0000:af:00.0", "0x8086", "0x0b30", numa="1")  # Intel PAC N3000
    _pci(tmp_path, "0000:d8:00.0", "0x1172", "0x5052")  # Altera device, no NUMA affinity
    _pci(tmp_path, "0000:af:00.2", "0x8086", "0x0b31", virtual=True)  # a VF: not a card of its own
    _pci(tmp_path, "0000:00:00.0", "0x8086", "0x09a2", pci_class="0x060000")  # Intel host bridge: not an FPGA
    _pci(tmp_path, "0000:17:00.0", "0x10de", "0x26b9", pci_class="0x030200")  # a GPU
    run = FpgaProbe(sysfs_root=tmp_path).collect_live()
    assert run is not None
    report = run.report
    assert report.available is True
    assert [(d.vendor, d.index, d.model, d.pci_bus_id, d.numa_node) for d in report.devices] == [
        ("altera", 0, "PAC-N3000", "0000:af:00.0", 1),
        ("altera", 1, "altera-5052", "0000:d8:00.0", None),
        ("xilinx", 0, "Alveo-U280", "0000:3b:00.0", 0),
    ]
    assert all(d.hardware_type.value == "fpga" for d in report.devices)
    assert report.devices[2].extra["pci_ids"] == "10ee:500c,10ee:500d"


def test_fpga_sysfs_without_fpga_is_not_available(tmp_path: Path) -> None:
    _pci(tmp_path, "0000:00:00.0", "0x8086", "0x09a2", pci_class="0x060000")
    run = FpgaProbe(sysfs_root=tmp_path).collect_live()
    assert run is not None
    assert run.report.available is False
    assert run.report.devices == []


def test_fpga_sysfs_missing_tree_defers_to_lspci(tmp_path: Path) -> None:
    assert FpgaProbe(sysfs_root=tmp_path / "absent").collect_live() is None


def test_fpga_sysfs_tolerates_unreadable_entries(tmp_path: Path) -> None:
    broken = tmp_path / "bus" / "pci" / "devices" / "0000:01:00.0"
    broken.mkdir(parents=True)
    (broken / "vendor").write_text("not-hex\n")
    _pci(tmp_path, "0000:02:00.0", "0x10ee", "0x5005")
    run = FpgaProbe(sysfs_root=tmp_path).collect_live()
    assert run is not None
    assert [d.model for d in run.report.devices] == ["Alveo-U250"]


def test_fpga_lspci_text_is_read() -> None:
    text = ("0000:00:00.0 0600: 8086:09a2 (rev 04)\n"
            "0000:3b:00.0 Processing accelerators [1200]: Xilinx Corporation Device [10ee:5004]\n"
            "0000:3b:00.1 Processing accelerators [1200]: Xilinx Corporation Device [10ee:5005]\n")
    report = FpgaProbe().parse([Capture(argv=("lspci", "-Dnn"), text=text)])
    assert [(d.vendor, d.model, d.pci_bus_id) for d in report.devices] == [("xilinx", "Alveo-U250", "0000:3b:00.0")]


async def test_fpga_discover_uses_the_given_sysfs_root(tmp_path: Path) -> None:
    _pci(tmp_path, "0000:3b:00.0", "0x10ee", "0x5020", numa="0")
    result = await discover(probes=[FpgaProbe(sysfs_root=tmp_path)], sysfs_root=tmp_path)
    assert [(d.vendor, d.model) for d in result.devices] == [("xilinx", "Alveo-U50")]
    assert result.labels["xpumesh.io/fpga.count"] == "1"
