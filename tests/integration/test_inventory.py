"""Inventory: capability and telemetry in, hosts and devices out, events on change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import NotFound
from libs.schemas.devices import Device, HardwareType, Health, HostFacts
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.inventory import HostDetail, HostRef, HostStatus
from services.inventory.api import app as inventory_app
from tests.conftest import assert_eventually

T = TypeVar("T")


def facts(hostname: str, arch: str = "x86_64") -> HostFacts:
    return HostFacts(hostname=hostname, arch=arch, os="Ubuntu 22.04.4 LTS", kernel="5.15.0-105-generic",
                     cpu_model="Intel(R) Xeon(R) Platinum 8480+", cpu_sockets=2, cpu_cores=112, cpu_threads=224,
                     memory_mib=2_064_000, numa_nodes=2)


def gpu(index: int, model: str = "H100-80GB-HBM3", *, vendor: str = "nvidia", hw: HardwareType = HardwareType.GPU,
        memory_mib: int = 81559, driver: str = "550.54.15", runtimes: dict[str, str] | None = None,
        health: Health = Health.HEALTHY, uuid: str | None = None) -> Device:
    return Device(index=index, hardware_type=hw, vendor=vendor, model=model, memory_mib=memory_mib,
                  driver_version=driver, runtimes=runtimes if runtimes is not None else {"cuda": "12.4"},
                  uuid=uuid or f"GPU-{vendor}-{index:04d}", health=health)


def capability(host_id: str, site: str, devices: list[Device], generation: int = 1,
               labels: dict[str, str] | None = None) -> CapabilityReport:
    return CapabilityReport(host_id=host_id, site=site, generation=generation, agent_version="test",
                            facts=facts(host_id), devices=devices, labels=labels or {})


def telemetry(host_id: str, site: str, healthy: list[int], *, used_mib: int = 1000) -> TelemetryReport:
    return TelemetryReport(host_id=host_id, site=site, ts=datetime.now(UTC), cpu_pct=12.5, mem_used_mib=1000,
                           mem_total_mib=2_064_000,
                           devices=[(i, 50.0, used_mib, 60.0, 300.0, h) for i, h in enumerate(healthy)])


def publisher(bus: Bus, host_id: str, site: str) -> HostPublisher:
    return HostPublisher(bus, host_id, site, host_id, interval_s=0.5)


async def ask(bus: Bus, endpoint: str, payload: BaseModel | dict[str, Any] | None, response: type[T]) -> T:
    return await bus.request(subjects.rpc_subject("inventory", endpoint), payload, response)


async def _host(bus: Bus, host_id: str) -> HostDetail:
    return await ask(bus, "hosts.get", HostRef(id=host_id), HostDetail)


async def test_inventory_capability_registers_host_with_catalog_match(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    pub = publisher(bus, "hz-gpu-0001", "hangzhou")
    await pub.capability(capability("hz-gpu-0001", "hangzhou", [gpu(0), gpu(1)]))

    async def registered() -> HostDetail | None:
        try:
            return await _host(bus, "hz-gpu-0001")
        except NotFound:
            return None

    host = await assert_eventually(registered, message="host registered")
    assert host.site == "hangzhou" and host.status == HostStatus.UP and host.generation == 1
    assert [d.slot for d in host.devices] == [0, 1]
    assert host.devices[0].catalog_model == "H100-80GB-HBM3"
    assert host.devices[0].compute_units and host.devices[0].compute_units > 900
