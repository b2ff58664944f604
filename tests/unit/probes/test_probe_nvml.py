"""The NVIDIA probe reads NVML first (here a fake pynvml module) and falls back when it does not load."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

from agent.probes.nvidia import NvidiaProbe
from libs.schemas.devices import Link

MIB = 1024 * 1024


class NVMLError(Exception):
    pass


def fake_nvml(gpus: list[dict[str, Any]], nvlinks: dict[int, list[str]], init_error: bool = False) -> Any:
    """A pynvml stand-in: each GPU a dict of facts; nvlinks maps a GPU to the remote bus id of each link."""

    def handle(index: int) -> int:
        return index

    def init() -> None:
        if init_error:
            raise NVMLError("NVML Shared Library Not Found")

    def link_state(gpu: int, link: int) -> int:
        if link >= 6:
            raise NVMLError("Not Supported")
        return 1 if link < len(nvlinks.get(gpu, [])) else 0

    def serial(gpu: int) -> str:
        if "serial" not in gpus[gpu]:
            raise NVMLError("Not Supported")
        return str(gpus[gpu]["serial"])

    return SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, NVML_FEATURE_ENABLED=1, NVML_NVLINK_MAX_LINKS=18,
        nvmlInit=init, nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "550.90.07", nvmlSystemGetCudaDriverVersion=lambda: 12040,
        nvmlDeviceGetCount=lambda: len(gpus), nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda g: gpus[g]["name"], nvmlDeviceGetUUID=lambda g: gpus[g]["uuid"],
        nvmlDeviceGetSerial=serial, nvmlDeviceGetVbiosVersion=lambda g: b"96.00.74.00.0D",
        nvmlDeviceGetPciInfo=lambda g: SimpleNamespace(busId=gpus[g]["bus"].encode()),
        nvmlDeviceGetMemoryInfo=lambda g: SimpleNamespace(total=81559 * MIB, used=7 * MIB),
        nvmlDeviceGetNumaNodeId=lambda g: gpus[g].get("numa", -1),
        nvmlDeviceGetMigMode=lambda g: (0, 0),
        nvmlDeviceGetTemperature=lambda g, sensor: 31, nvmlDeviceGetPowerUsage=lambda g: 69850,
        nvmlDeviceGetUtilizationRates=lambda g: SimpleNamespace(gpu=3, memory=0),
        nvmlDeviceGetNvLinkState=link_state,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda g, link: SimpleNamespace(busId=nvlinks[g][link].encode()),
    )


GPUS = [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa", "bus": "00000000:19:00.0", "numa": 0, "serial": 1},
        {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-bbbb", "bus": "00000000:3B:00.0", "numa": 1}]


def test_nvml_gives_devices_links_and_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    links = {0: ["00000000:3B:00.0"] * 4, 1: ["00000000:19:00.0"] * 4}
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(GPUS, links))
    run = NvidiaProbe().collect_live()
    assert run is not None
    devices = run.report.devices
    assert [(d.index, d.model, d.memory_mib, d.driver_version, d.runtimes, d.pci_bus_id, d.numa_node)
            for d in devices] == [
        (0, "H100-80GB-HBM3", 81559, "550.90.07", {"cuda": "12.4"}, "0000:19:00.0", 0),
        (1, "H100-80GB-HBM3", 81559, "550.90.07", {"cuda": "12.4"}, "0000:3b:00.0", 1),
    ]
    assert devices[0].links == [Link(peer_index=1, kind="NV4")]
    assert devices[0].extra == {"serial": "1", "mig_mode": "Disabled", "source": "nvml"}
    assert "serial" not in devices[1].extra  # not supported on that board: left out, no crash
    assert [(r.utilization_pct, r.memory_used_mib, r.temperature_c, r.power_w) for r in run.readings] == [
        (3, 7, 31, 69.85), (3, 7, 31, 69.85)]


def test_nvml_gpus_behind_nvswitches_are_linked_pairwise(monkeypatch: pytest.MonkeyPatch) -> None:
    switch = "00000000:C3:00.0"
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(GPUS, {0: [switch] * 6, 1: [switch] * 6}))
    run = NvidiaProbe().collect_live()
    assert run is not None
    assert [d.links for d in run.report.devices] == [[Link(peer_index=1, kind="NV6")], [Link(peer_index=0, kind="NV6")]]


def test_nvml_that_does_not_load_falls_back_to_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(GPUS, {}, init_error=True))
    assert NvidiaProbe().collect_live() is None
    assert NvidiaProbe(use_nvml=False).collect_live() is None
