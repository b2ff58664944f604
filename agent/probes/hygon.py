"""Hygon DCUs: hy-smi, rocm-smi on DCU hosts, and the DTK version file."""

from __future__ import annotations

from agent.probes import rocm_smi
from agent.probes.amd import ROCM_SMI_QUERY
from agent.probes.base import READ_FILE, Capture, ToolProbe
from agent.probes.records import Collector
from libs.schemas.devices import HardwareType

DTK_VERSION_FILES = ["/opt/dtk/.info/version", "/opt/dtk-*/.info/version"]


class HygonProbe(ToolProbe):
    name = "hygon"
    vendor = "hygon"
    hardware_type = HardwareType.DCU
    tools = ("hy-smi", "rocm-smi")

    def commands(self) -> list[list[str]]:
        return [["hy-smi"], ["hy-smi", "--showproductname"], ["hy-smi", "--showmeminfo", "vram"],
                ["hy-smi", "--showbus"], ROCM_SMI_QUERY, [READ_FILE, *DTK_VERSION_FILES]]

    def accepts(self, capture: Capture) -> bool:
        return capture.tool in self.tools or (
            capture.tool == READ_FILE and any("/dtk" in a for a in capture.args))

    def priority(self, capture: Capture) -> int:
        return {"rocm-smi": 0, "hy-smi": 1}.get(capture.tool, 2)

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        if capture.tool == READ_FILE:
            rocm_smi.read_version_file(capture, collector, "dtk")
            return
        hint = rocm_smi.HYGON if capture.tool == "hy-smi" else rocm_smi.vendor_hint(collector.outputs, capture)
        rocm_smi.parse_rocm(capture, collector, rocm_smi.HYGON, hint)
