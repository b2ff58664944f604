"""Inventory: capability and telemetry in, hosts and devices out, events on change."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import InvalidRequest, NotFound
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_MESSAGES, BUS_REJECTED
from libs.schemas.devices import Device, HardwareType, Health, HostFacts
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.inventory import (
    DeviceEvent,
    DevicePage,
    DeviceQuery,
    HostDetail,
    HostPage,
    HostQuery,
    HostRef,
    HostStatus,
)
from services.inventory.api import app as inventory_app
from tests.conftest import assert_eventually, stream_events

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


async def host(bus: Bus, host_id: str) -> HostDetail | None:
    try:
        return await ask(bus, "hosts.get", HostRef(id=host_id), HostDetail)
    except NotFound:
        return None


async def register(bus: Bus, report: CapabilityReport) -> HostDetail:
    await publisher(bus, report.host_id, report.site).capability(report)

    async def applied() -> HostDetail | None:
        h = await host(bus, report.host_id)
        return h if h is not None and h.generation == report.generation else None

    return await assert_eventually(applied, message=f"{report.host_id} generation {report.generation} applied")


def counter(metric: Any, *labels: str) -> float:
    value: float = metric.labels(*labels)._value.get()
    return value


async def test_inventory_capability_registers_host_with_catalog_match(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    detail = await register(bus, capability("hz-gpu-0001", "hangzhou", [gpu(0), gpu(1)],
                                            labels={"xpumesh.io/gpu.model": "H100-80GB-HBM3"}))
    assert detail.site == "hangzhou" and detail.status == HostStatus.UP and detail.generation == 1
    assert [d.slot for d in detail.devices] == [0, 1]
    assert detail.devices[0].catalog_model == "H100-80GB-HBM3"
    assert detail.devices[0].compute_units is not None and detail.devices[0].compute_units > 900
    assert detail.hardware_types == {"gpu": 2} and detail.labels["xpumesh.io/gpu.model"] == "H100-80GB-HBM3"
    added = await assert_eventually(
        lambda: _of_type(bus, EventTypes.DEVICE_ADDED, 2), message="two device.added events")
    assert {subj for subj, _ in added} == {"xpumesh.events.device.added.hangzhou"}
    assert {DeviceEvent.model_validate(e.data).id for _, e in added} == {"hz-gpu-0001:nvidia:0", "hz-gpu-0001:nvidia:1"}


async def _of_type(bus: Bus, etype: str, n: int) -> list[tuple[str, CloudEvent]]:
    found = [(s, e) for s, e in await stream_events(bus) if e.type == etype]
    return found if len(found) >= n else []


async def test_inventory_unhealthy_telemetry_flips_health_and_emits_event(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    await register(bus, capability("nb-npu-0001", "ningbo", [
        gpu(i, "Ascend910B3", vendor="huawei", hw=HardwareType.NPU, memory_mib=65536, driver="24.1.rc2",
            runtimes={"cann": "8.0.RC3"}) for i in range(4)]))
    pub = publisher(bus, "nb-npu-0001", "ningbo")
    await pub.telemetry(telemetry("nb-npu-0001", "ningbo", [1, 1, 0, 1], used_mib=5000))

    async def flipped() -> HostDetail | None:
        h = await host(bus, "nb-npu-0001")
        return h if h is not None and h.devices[2].health == Health.UNHEALTHY else None

    detail = await assert_eventually(flipped, message="device 2 unhealthy")
    assert [d.health for d in detail.devices] == [Health.HEALTHY, Health.HEALTHY, Health.UNHEALTHY, Health.HEALTHY]
    assert detail.devices[0].telemetry is not None and detail.devices[0].telemetry.memory_used_mib == 5000
    assert detail.devices[0].memory_free_mib == 65536 - 5000
    events = await assert_eventually(lambda: _of_type(bus, EventTypes.DEVICE_UNHEALTHY, 1))
    subject, event = events[0]
    assert subject == "xpumesh.events.device.unhealthy.ningbo"
    assert event.data["host_id"] == "nb-npu-0001" and event.data["slot"] == 2 and event.data["reason"] == "telemetry"

    # The same reading again changes nothing; recovery emits device.healthy once.
    await pub.telemetry(telemetry("nb-npu-0001", "ningbo", [1, 1, 0, 1]))
    await pub.telemetry(telemetry("nb-npu-0001", "ningbo", [1, 1, 1, 1]))
    await assert_eventually(lambda: _of_type(bus, EventTypes.DEVICE_HEALTHY, 1), message="device.healthy")
    await asyncio.sleep(0.5)
    assert len([e for _, e in await stream_events(bus) if e.type == EventTypes.DEVICE_UNHEALTHY]) == 1
    assert len([e for _, e in await stream_events(bus) if e.type == EventTypes.DEVICE_HEALTHY]) == 1


async def test_inventory_reregistration_updates_in_place_and_ignores_older_generation(
        settings, running_service, bus) -> None:
    await running_service(inventory_app)
    await register(bus, capability("wz-gpu-0001", "wenzhou", [gpu(i, driver="535.161.08",
                                                                  runtimes={"cuda": "12.2"}) for i in range(4)],
                                   generation=10))
    # Driver upgrade and one device gone: same host, updated in place.
    upgraded = await register(bus, capability("wz-gpu-0001", "wenzhou", [gpu(i) for i in range(3)], generation=11))
    assert len(upgraded.devices) == 3 and {d.driver_version for d in upgraded.devices} == {"550.54.15"}
    stale_before = counter(BUS_MESSAGES, "inventory", "on_capability", "stale")
    await publisher(bus, "wz-gpu-0001", "wenzhou").capability(
        capability("wz-gpu-0001", "wenzhou", [gpu(i, driver="470.239.06") for i in range(8)], generation=9))
    await assert_eventually(lambda: counter(BUS_MESSAGES, "inventory", "on_capability", "stale") > stale_before,
                            message="older generation counted as stale")
    now = await host(bus, "wz-gpu-0001")
    assert now is not None and now.generation == 11 and len(now.devices) == 3
    page = await ask(bus, "hosts.list", HostQuery(site="wenzhou"), HostPage)
    assert [h.id for h in page.items] == ["wz-gpu-0001"]
    removed = await assert_eventually(lambda: _of_type(bus, EventTypes.DEVICE_REMOVED, 1))
    assert removed[0][1].data["index"] == 3


async def test_inventory_malformed_reports_are_counted_and_service_keeps_answering(
        settings, running_service, bus) -> None:
    await running_service(inventory_app)
    cap_subject = subjects.host_subject("hangzhou", "bad-0001", "capability")
    tel_subject = subjects.host_subject("hangzhou", "bad-0001", "telemetry")
    cap_before = counter(BUS_REJECTED, "inventory", "on_capability", "invalid_data")
    tel_before = counter(BUS_REJECTED, "inventory", "on_telemetry", "invalid_data")
    env_before = counter(BUS_REJECTED, "inventory", "on_capability", "malformed_envelope")
    await bus.js.publish(cap_subject, b"{not json")
    bad_caps = [
        {"host_id": "bad-0001"},  # missing everything
        {**capability("bad-0001", "hangzhou", [gpu(0)]).model_dump(mode="json"), "generation": -1},
        {**capability("bad-0001", "hangzhou", [gpu(0), gpu(0)]).model_dump(mode="json")},  # duplicate index
        {**capability("bad-0001", "hangzhou", [gpu(0, "x" * 500)]).model_dump(mode="json")},  # too long
    ]
    for data in bad_caps:
        await bus.publish_event(CloudEvent.new(EventTypes.HOST_CAPABILITY, "/test", data), subject=cap_subject)
    bad_tel = [
        {"host_id": "bad-0001", "site": "hangzhou"},
        {**telemetry("bad-0001", "hangzhou", [1]).model_dump(mode="json"), "cpu_pct": 400},
        {**telemetry("bad-0001", "hangzhou", [1]).model_dump(mode="json"),
         "ts": (datetime.now(UTC) + timedelta(days=30)).isoformat()},
    ]
    for data in bad_tel:
        await bus.publish(tel_subject, CloudEvent.new(EventTypes.HOST_TELEMETRY, "/test", data).to_bytes())
    await assert_eventually(
        lambda: counter(BUS_REJECTED, "inventory", "on_capability", "invalid_data") - cap_before >= len(bad_caps)
        and counter(BUS_REJECTED, "inventory", "on_telemetry", "invalid_data") - tel_before >= len(bad_tel)
        and counter(BUS_REJECTED, "inventory", "on_capability", "malformed_envelope") - env_before >= 1,
        message="every bad report counted")
    assert await host(bus, "bad-0001") is None
    # Good reports after the garbage are still applied.
    await register(bus, capability("hz-gpu-0002", "hangzhou", [gpu(0)]))
    # NaN parses as JSON and passes the schema, but cannot be stored: refused and counted.
    before_nan = counter(BUS_REJECTED, "inventory", "on_telemetry", "invalid_data")
    nan = telemetry("hz-gpu-0002", "hangzhou", [1]).model_dump_json().replace('"devices":[[0,50.0', '"devices":[[0,NaN')
    assert "NaN" in nan
    raw = CloudEvent.new(EventTypes.HOST_TELEMETRY, "/test", {}).to_bytes().replace(b'"data":{}', b'"data":' + nan.encode())
    await bus.publish(subjects.host_subject("hangzhou", "hz-gpu-0002", "telemetry"), raw)
    await assert_eventually(lambda: counter(BUS_REJECTED, "inventory", "on_telemetry", "invalid_data") > before_nan,
                            message="NaN telemetry refused")
    refused = await host(bus, "hz-gpu-0002")
    assert refused is not None and refused.devices[0].telemetry is None
    with_bad_filter = ask(bus, "devices.list", {"hardware_type": "tpu"}, DevicePage)
    try:
        await with_bad_filter
    except InvalidRequest as exc:
        assert exc.errors and "hardware_type" in exc.errors[0]["loc"]
        assert "gpu" in exc.errors[0]["msg"] and "npu" in exc.errors[0]["msg"]
    else:
        raise AssertionError("an unknown hardware type was accepted")


async def _fleet(bus: Bus) -> None:
    reports = [
        capability("hz-gpu-0001", "hangzhou", [gpu(i) for i in range(2)], labels={"team": "vision"}),
        capability("hz-gpu-0002", "hangzhou", [gpu(i, "A100-SXM4-80GB", memory_mib=81920,
                                                   driver="535.129.03", runtimes={"cuda": "12.2"}) for i in range(2)]),
        capability("nb-npu-0001", "ningbo", [gpu(i, "Ascend910B3", vendor="huawei", hw=HardwareType.NPU,
                                                 memory_mib=65536, runtimes={"cann": "8.0.RC3"}) for i in range(3)]),
        capability("nb-dcu-0001", "ningbo", [gpu(i, "K100_AI", vendor="hygon", hw=HardwareType.DCU, memory_mib=65536,
                                                 driver="6.2.17a", runtimes={"dtk": "24.04.1"}) for i in range(2)]),
    ]
    for r in reports:
        await register(bus, r)


async def _devices(bus: Bus, **q: Any) -> list[str]:
    page = await ask(bus, "devices.list", DeviceQuery(**q), DevicePage)
    return [d.id for d in page.items]


async def test_inventory_device_filters_return_the_right_devices(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    await _fleet(bus)
    await publisher(bus, "nb-npu-0001", "ningbo").telemetry(telemetry("nb-npu-0001", "ningbo", [1, 0, 1],
                                                                      used_mib=60000))
    await assert_eventually(lambda: _devices(bus, healthy=False), message="one unhealthy device")
    assert await _devices(bus, hardware_type="npu") == [f"nb-npu-0001:huawei:{i}" for i in range(3)]
    assert await _devices(bus, hardware_type="GPU", site="hangzhou") == [
        "hz-gpu-0001:nvidia:0", "hz-gpu-0001:nvidia:1", "hz-gpu-0002:nvidia:0", "hz-gpu-0002:nvidia:1"]
    assert await _devices(bus, vendor="hygon") == ["nb-dcu-0001:hygon:0", "nb-dcu-0001:hygon:1"]
    assert await _devices(bus, model="A100*") == ["hz-gpu-0002:nvidia:0", "hz-gpu-0002:nvidia:1"]
    assert await _devices(bus, model="*910b?") == [f"nb-npu-0001:huawei:{i}" for i in range(3)]
    assert await _devices(bus, site="ningbo", healthy=False) == ["nb-npu-0001:huawei:1"]
    assert "nb-npu-0001:huawei:1" not in await _devices(bus, site="ningbo", healthy=True)
    assert await _devices(bus, labels={"team": "vision"}) == ["hz-gpu-0001:nvidia:0", "hz-gpu-0001:nvidia:1"]
    # 65536 - 60000 MiB free on the NPUs with readings; the others report no usage yet.
    assert "nb-npu-0001:huawei:0" not in await _devices(bus, min_free_memory_mib=10000)
    assert "nb-npu-0001:huawei:0" in await _devices(bus, min_free_memory_mib=5000)
    assert await _devices(bus, vendor="amd") == []


async def test_inventory_device_and_host_cursors_page_through_everything(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    await _fleet(bus)
    seen, cursor, pages = [], None, 0
    while True:
        page = await ask(bus, "devices.list", DeviceQuery(limit=3, after=cursor), DevicePage)
        seen += [d.id for d in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 9 == len(set(seen)) and seen == sorted(seen, key=lambda i: (i.split(":")[0], int(i.split(":")[2])))
    first = await ask(bus, "hosts.list", HostQuery(limit=2), HostPage)
    second = await ask(bus, "hosts.list", HostQuery(limit=2, after=first.next_cursor), HostPage)
    assert [h.id for h in first.items + second.items] == ["hz-gpu-0001", "hz-gpu-0002", "nb-dcu-0001", "nb-npu-0001"]
    assert second.next_cursor is None
