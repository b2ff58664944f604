"""Alert rules: each fires and resolves as a durable event with a stable id.

A device's health is the inventory's decision (metrics follows its device events), so the
unhealthy-device tests run the inventory beside metrics."""

from __future__ import annotations

from typing import Any

from agent.publisher import HostPublisher
from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from libs.schemas.metrics import AlertList, AlertQuery, AlertState, DeviceDetail, DeviceRef
from services.inventory.api import app as inventory_app
from services.metrics.api import app as metrics_app
from services.registry.api import app as registry_app
from tests.integration.test_metrics_kit import (
    announce,
    capability,
    devices,
    events_of,
    eventually,
    fast_settings,
    registered,
    rpc,
    telemetry,
)


async def _alert_events(bus: Bus, etype: str, rule: str) -> list[CloudEvent]:
    return [e for e in await events_of(bus, etype) if e.data.get("rule") == rule]


def _having(bus: Bus, etype: str, rule: str, n: int = 1) -> Any:
    async def check() -> list[CloudEvent] | None:
        found = await _alert_events(bus, etype, rule)
        return found if len(found) >= n else None
    return check


async def _firing(bus: Bus) -> AlertList:
    result: AlertList = await rpc(bus, "alerts.list", AlertQuery(), AlertList)
    return result


async def test_alert_hot_device_fires_then_resolves_when_it_cools(settings, running_service, bus: Bus) -> None:
    await running_service(metrics_app, fast_settings(settings, temperature_c=85.0, temperature_clear_c=80.0))
    pub = await announce(bus, "h-7", "taizhou", devices("gpu", 2))
    await pub.telemetry(telemetry("h-7", "taizhou", [(0, 50, 100, 91.5, 300, 1), (1, 50, 100, 60, 300, 1)]))
    fired = await eventually(_having(bus, EventTypes.ALERT_FIRING, "device_hot"), message="device_hot fired")
    alert = fired[0].data
    assert alert["id"] == "device_hot/h-7/0" and alert["severity"] == "warning" and alert["state"] == "firing"
    assert (alert["site"], alert["host_id"], alert["device"]) == ("taizhou", "h-7", "h-7/0")
    assert "91" in alert["summary"] and alert["value"] == 91.5
    assert [a.id for a in (await _firing(bus)).items] == ["device_hot/h-7/0"]

    await pub.telemetry(telemetry("h-7", "taizhou", [(0, 50, 100, 83, 300, 1), (1, 50, 100, 60, 300, 1)]))
    await pub.telemetry(telemetry("h-7", "taizhou", [(0, 50, 100, 79, 300, 1), (1, 50, 100, 60, 300, 1)]))
    resolved = await eventually(_having(bus, EventTypes.ALERT_RESOLVED, "device_hot"), message="device_hot resolved")
    assert resolved[0].data["id"] == "device_hot/h-7/0" and resolved[0].data["resolved_at"]
    assert resolved[0].id != fired[0].id
    assert (await _firing(bus)).items == []
    history: AlertList = await rpc(bus, "alerts.list", AlertQuery(state=AlertState.RESOLVED), AlertList)
    assert [a.id for a in history.items] == ["device_hot/h-7/0"]
    assert len(await _alert_events(bus, EventTypes.ALERT_FIRING, "device_hot")) == 1  # 83 °C did not re-fire


async def test_alert_silent_host_fires_host_down_and_resolves_on_return(settings, running_service, bus: Bus) -> None:
    await running_service(registry_app)
    await running_service(metrics_app, fast_settings(settings))
    pub = HostPublisher(bus, "h-9", "zhoushan", "h-9", interval_s=settings.heartbeat_interval_s)
    await pub.heartbeat()
    fired = await eventually(_having(bus, EventTypes.ALERT_FIRING, "host_down"), timeout=15, message="host_down fired")
    data = fired[0].data
    assert (data["id"], data["severity"], data["site"], data["host_id"]) == ("host_down/h-9", "critical", "zhoushan", "h-9")
    await pub.heartbeat()
    await eventually(_having(bus, EventTypes.ALERT_RESOLVED, "host_down"), timeout=10, message="host_down resolved")


async def test_alert_unhealthy_device_and_missing_telemetry(settings, running_service, bus: Bus) -> None:
    await running_service(inventory_app)
    await running_service(metrics_app, fast_settings(settings))
    pub = await announce(bus, "h-3", "quzhou", devices("npu", 2))
    await registered(bus, "h-3")
    await pub.telemetry(telemetry("h-3", "quzhou", [(0, 10, 10, 40, 100, 1), (1, 10, 10, 40, 100, 0)]))
    fired = await eventually(_having(bus, EventTypes.ALERT_FIRING, "device_unhealthy"))
    assert fired[0].data["id"] == "device_unhealthy/h-3/1" and fired[0].data["severity"] == "critical"
    missing = await eventually(_having(bus, EventTypes.ALERT_FIRING, "telemetry_missing"), timeout=10)
    assert missing[0].data["id"] == "telemetry_missing/h-3"
    await pub.telemetry(telemetry("h-3", "quzhou", [(0, 10, 10, 40, 100, 1), (1, 10, 10, 40, 100, 1)]))
    await eventually(_having(bus, EventTypes.ALERT_RESOLVED, "telemetry_missing"))
    await eventually(_having(bus, EventTypes.ALERT_RESOLVED, "device_unhealthy"))


async def test_alert_site_utilization_high_for_a_duration(settings, running_service, bus: Bus) -> None:
    await running_service(metrics_app, fast_settings(settings, site_utilization_pct=80.0))
    pub = await announce(bus, "h-5", "jinhua", devices("gpu", 2))

    async def busy() -> list[CloudEvent] | None:
        await pub.telemetry(telemetry("h-5", "jinhua", [(0, 95, 10, 40, 100, 1), (1, 85, 10, 40, 100, 1)]))
        return await _having(bus, EventTypes.ALERT_FIRING, "site_utilization_high")()

    fired = await eventually(busy, message="site alert fired")
    assert fired[0].data["id"] == "site_utilization_high/jinhua" and fired[0].data["value"] == 90.0
    await pub.telemetry(telemetry("h-5", "jinhua", [(0, 50, 10, 40, 100, 1), (1, 50, 10, 40, 100, 1)]))
    await eventually(_having(bus, EventTypes.ALERT_RESOLVED, "site_utilization_high"))


async def test_alert_firing_survives_restart_without_a_second_event(settings, running_service, bus: Bus) -> None:
    s = fast_settings(settings)
    await running_service(inventory_app)
    svc = await running_service(metrics_app, s)
    pub = await announce(bus, "h-1", "shaoxing", devices("gpu", 1, unhealthy=(0,)))
    await eventually(_having(bus, EventTypes.ALERT_FIRING, "device_unhealthy"))
    await svc.stop()
    await running_service(metrics_app, s)
    await pub.capability(capability("h-1", "shaoxing", devices("gpu", 1, unhealthy=(0,)), generation=2))
    listed = await eventually(lambda: _firing(bus))
    assert [a.id for a in listed.items] == ["device_unhealthy/h-1/0"]
    await eventually(lambda: _generation_seen(bus))
    assert len(await _alert_events(bus, EventTypes.ALERT_FIRING, "device_unhealthy")) == 1


async def _generation_seen(bus: Bus) -> bool:
    detail: DeviceDetail = await rpc(bus, "device.get", DeviceRef(host_id="h-1", slot=0), DeviceDetail)
    return detail.device.healthy is False
