"""NVIDIA GPUs: NVML (pynvml) when the library loads, nvidia-smi otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from agent.probes import nvidia_smi
from agent.probes.base import Capture, ProbeRun, ToolProbe
from agent.probes.records import Collector
from agent.probes.util import pci
from libs.schemas.devices import HardwareType, Health, Link

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class NvidiaProbe(ToolProbe):
    name = "nvidia"
    vendor = "nvidia"
    hardware_type = HardwareType.GPU
    tools = ("nvidia-smi",)

    def __init__(self, use_nvml: bool = True) -> None:
        self.use_nvml = use_nvml

    def commands(self) -> list[list[str]]:
        return [["nvidia-smi", "-q", "-x"], ["nvidia-smi", "topo", "-m"]]

    def priority(self, capture: Capture) -> int:
        return nvidia_smi.PRIORITY.get(nvidia_smi.kind(capture), 9)

    def parse_capture(self, capture: Capture, collector: Collector) -> None:
        rest = nvidia_smi.parse_unreachable(capture, collector)
        if rest != capture.text:
            if not rest.strip():
                return  # nothing but GPUs the tool could not reach
            capture = replace(capture, text=rest)
        nvidia_smi.PARSERS[nvidia_smi.kind(capture)](capture, collector)

    # -- NVML

    def collect_live(self) -> ProbeRun | None:
        """Devices from NVML; None when the library is missing or does not initialise."""
        if not self.use_nvml:
            return None
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded…
            log.debug("NVML not usable: %s", exc)
            return None
        try:
            return self.from_nvml(pynvml)
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)

    def from_nvml(self, nvml: Any) -> ProbeRun:
        collector = Collector(self.name, self.vendor, self.hardware_type)

        def attempt(function: Callable[..., Any], *args: Any) -> Any:
            try:
                return function(*args)
            except Exception:
                return None

        def handle_of(index: int) -> tuple[Any, str | None]:
            try:
                return nvml.nvmlDeviceGetHandleByIndex(index), None
            except Exception as exc:  # NVMLError_Unknown, GpuIsLost…
                return None, str(exc) or type(exc).__name__

        cuda = attempt(nvml.nvmlSystemGetCudaDriverVersion)
        collector.set_common(driver_version=_text(attempt(nvml.nvmlSystemGetDriverVersion)),
                             runtimes={"cuda": f"{cuda // 1000}.{(cuda % 1000) // 10}"} if cuda else None)
        count = attempt(nvml.nvmlDeviceGetCount) or 0
        nvlinks: dict[int, dict[str, int]] = {}
        for index in range(count):
            handle, error = handle_of(index)
            if handle is None:
                words = f"NVML: no handle for GPU {index}: {error or 'no handle returned'}"
                record = collector.add(index=index, health=Health.UNHEALTHY, extra={"error": words, "source": "nvml"})
                record["_model_note"] = True
                collector.warn(f"{words}; reported unhealthy")
                continue
            info = attempt(nvml.nvmlDeviceGetPciInfo, handle)
            memory = attempt(nvml.nvmlDeviceGetMemoryInfo, handle)
            util = attempt(nvml.nvmlDeviceGetUtilizationRates, handle)
            power = attempt(nvml.nvmlDeviceGetPowerUsage, handle)
            mig = attempt(nvml.nvmlDeviceGetMigMode, handle)
            name = _text(attempt(nvml.nvmlDeviceGetName, handle))
            collector.add(
                index=index, model=nvidia_smi.nvidia_model(name) if name else None,
                uuid=_text(attempt(nvml.nvmlDeviceGetUUID, handle)),
                pci_bus_id=pci(_text(getattr(info, "busId", None))),
                memory_mib=int(memory.total) // MIB if memory is not None else None,
                firmware_version=_text(attempt(nvml.nvmlDeviceGetVbiosVersion, handle)),
                numa_node=_numa(attempt(nvml.nvmlDeviceGetNumaNodeId, handle)),
                memory_used_mib=int(memory.used) // MIB if memory is not None else None,
                temperature_c=attempt(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
                power_w=power / 1000.0 if power is not None else None,
                utilization_pct=getattr(util, "gpu", None),
                extra={"serial": _text(attempt(nvml.nvmlDeviceGetSerial, handle)),
                       "mig_mode": None if not mig else ("Enabled" if mig[0] else "Disabled"),
                       "source": "nvml"},
            )
            nvlinks[index] = self._nvlinks(nvml, handle, attempt)
        _link(collector, nvlinks)
        report, readings = collector.finish(available=True)
        return ProbeRun(report=report, readings=readings)

    @staticmethod
    def _nvlinks(nvml: Any, handle: Any, attempt: Callable[..., Any]) -> dict[str, int]:
        """Active NVLinks of one GPU, counted per remote PCI address."""
        remote: dict[str, int] = {}
        for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
            state = attempt(nvml.nvmlDeviceGetNvLinkState, handle, link)
            if state is None:
                break
            if state != getattr(nvml, "NVML_FEATURE_ENABLED", 1):
                continue
            info = attempt(nvml.nvmlDeviceGetNvLinkRemotePciInfo, handle, link)
            address = pci(_text(getattr(info, "busId", None)))
            if address:
                remote[address] = remote.get(address, 0) + 1
        return remote


def _link(collector: Collector, nvlinks: dict[int, dict[str, int]]) -> None:
    """Turn per-GPU NVLink counts into Links; GPUs behind NVSwitches are all linked pairwise."""
    by_pci = {r.get("pci_bus_id"): r["index"] for r in collector.records if r.get("pci_bus_id")}
    switched = {gpu: sum(n for address, n in remote.items() if address not in by_pci)
                for gpu, remote in nvlinks.items()}
    for record in collector.records:
        gpu = record["index"]
        links = [Link(peer_index=by_pci[address], kind=f"NV{n}")
                 for address, n in sorted(nvlinks.get(gpu, {}).items()) if address in by_pci]
        if switched.get(gpu):
            direct = {link.peer_index for link in links}
            links += [Link(peer_index=peer, kind=f"NV{switched[gpu]}") for peer in sorted(switched)
                      if peer != gpu and peer not in direct and switched.get(peer)]
        if links:
            record["links"] = sorted(links, key=lambda link: link.peer_index)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    return text or None


def _numa(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
