"""Helpers for the metrics and alert tests (no tests here): fleets, reports and readers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import NotFound
from libs.config import AlertSettings, MetricsSettings, Settings
from libs.events import CloudEvent
from libs.schemas.devices import Device, HardwareType, Health, HostFacts
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.inventory import HostDetail, HostRef
from libs.schemas.metrics import DeviceDetail, DeviceRef
from tests.conftest import assert_eventually, stream_events

MODELS = {
    "gpu": ("nvidia", "A100-SXM4-80GB", 81920, "550.54.14", {"cuda": "12.4"}),
    "npu": ("huawei", "Ascend910B3", 65536, "24.1.rc2", {"cann": "8.0.RC1"}),
    "dcu": ("hygon", "K100_AI", 65536, "6.3.8", {"dtk": "24.04"}),
}


def fast_settings(settings: Settings, **alerts: Any) -> Settings:
    """Short intervals so rollups close and alerts fire within a test."""
    a = AlertSettings(eval_interval_s=0.1, site_utilization_for_s=0.5, **alerts)
    m = MetricsSettings(rollup_grace_s=0.0, rollup_flush_interval_s=0.2, summary_cache_s=0.0, scrape_cache_s=0.0,
                        scrape_window_s=0.3, alerts=a)
    return settings.model_copy(update={"metrics": m})


def devices(kind: str, n: int, *, unhealthy: tuple[int, ...] = ()) -> list[Device]:
    vendor, model, mem, driver, runtimes = MODELS[kind]
    return [Device(index=i, hardware_type=HardwareType(kind), vendor=vendor, model=model, memory_mib=mem,
                   driver_version=driver, runtimes=runtimes, uuid=f"{kind}-{i}",
                   health=Health.UNHEALTHY if i in unhealthy else Health.HEALTHY) for i in range(n)]


def capability(host: str, site: str, devs: list[Device], generation: int = 1) -> CapabilityReport:
    facts = HostFacts(hostname=host, arch="x86_64", os="Ubuntu 22.04.4 LTS", kernel="5.15.0", cpu_model="Xeon",
                      cpu_sockets=2, cpu_cores=64, cpu_threads=128, memory_mib=1048576)
    return CapabilityReport(host_id=host, site=site, generation=generation, facts=facts, devices=devs)


def telemetry(host: str, site: str, samples: list[tuple[int, float, int, float, float, int]],
              ts: datetime | None = None) -> TelemetryReport:
    return TelemetryReport(host_id=host, site=site, ts=ts or datetime.now(UTC), cpu_pct=10.0, mem_used_mib=1000,
                           mem_total_mib=2000, devices=samples)


async def announce(bus: Bus, host: str, site: str, devs: list[Device], interval_s: float = 0.5) -> HostPublisher:
    pub = HostPublisher(bus, host, site, host, interval_s=interval_s)
    await pub.capability(capability(host, site, devs))
    return pub


async def inventory_host(bus: Bus, host: str) -> HostDetail | None:
    """The inventory's view of a host (None: not registered yet)."""
    try:
        detail: HostDetail = await bus.request(subjects.rpc_subject("inventory", "hosts.get"), HostRef(id=host),
                                               HostDetail)
    except NotFound:
        return None
    return detail


async def registered(bus: Bus, host: str, generation: int = 1) -> HostDetail:
    """Once the inventory applied a host's capability report: its telemetry from then on decides health there
    (the inventory drops telemetry of hosts it does not know yet)."""
    async def applied() -> HostDetail | None:
        h = await inventory_host(bus, host)
        return h if h is not None and h.generation >= generation else None

    found: HostDetail = await assert_eventually(applied, message=f"inventory applied {host} generation {generation}")
    return found


async def health_in_both(bus: Bus, host: str, slot: int) -> tuple[str | None, bool | None]:
    """A device's health as the inventory (``hosts.get``) and metrics (``device.get``) answer it."""
    h = await inventory_host(bus, host)
    inventory = next((d.health.value for d in h.devices if d.slot == slot), None) if h else None
    try:
        detail: DeviceDetail = await rpc(bus, "device.get", DeviceRef(host_id=host, slot=slot), DeviceDetail)
    except NotFound:
        return inventory, None
    return inventory, detail.device.healthy


async def events_of(bus: Bus, etype: str) -> list[CloudEvent]:
    """Every event of a type in the durable stream so far."""
    return [e for _, e in await stream_events(bus, subjects.event_subject(etype, "*"))]


async def rpc(bus: Bus, endpoint: str, payload: Any, response: type[Any]) -> Any:
    return await bus.request(subjects.rpc_subject("metrics", endpoint), payload, response)


eventually = assert_eventually  # the name these tests use
