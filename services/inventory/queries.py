"""Read side of the inventory: host pages, host detail, device search."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String, cast, func, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from libs.schemas.devices import Health, HostFacts, device_id
from libs.schemas.inventory import (
    DeviceCursor,
    DevicePage,
    DeviceQuery,
    DeviceTelemetry,
    HostDetail,
    HostPage,
    HostQuery,
    HostSummary,
    HostTelemetry,
    InventoryDevice,
)
from services.inventory.orm import devices, host_telemetry, hosts

_LIKE_ESCAPE = "\\"


def glob_to_like(pattern: str) -> str:
    """A shell glob ('*910B*', 'A100-?XM4*') as an ILIKE pattern."""
    out = []
    for ch in pattern:
        if ch in "%_\\":
            out.append(_LIKE_ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _labels_match(labels: dict[str, str]) -> ColumnElement[bool]:
    merged = hosts.c.discovered_labels.op("||")(hosts.c.operator_labels)
    return merged.op("@>")(cast(literal(labels, JSONB), JSONB))  # type: ignore[no-any-return,unused-ignore]


def _summary_fields(row: Any) -> dict[str, Any]:
    facts = row["facts"]
    return {
        "id": row["id"], "site": row["site"], "hostname": row["hostname"], "status": row["status"],
        "generation": row["generation"], "arch": facts.get("arch", ""), "os": facts.get("os", ""),
        "cpu_model": facts.get("cpu_model", ""), "cpu_threads": facts.get("cpu_threads", 0),
        "memory_mib": facts.get("memory_mib", 0), "agent_version": row["agent_version"],
        "device_count": row["device_count"], "hardware_types": row["hardware_types"],
        "labels": {**row["discovered_labels"], **row["operator_labels"]}, "first_seen": row["first_seen"],
        "updated_at": row["updated_at"], "reported_at": row["reported_at"],
        "status_changed_at": row["status_changed_at"],
    }


async def list_hosts(session: AsyncSession, q: HostQuery) -> HostPage:
    stmt = select(hosts).order_by(hosts.c.id).limit(q.limit + 1)
    if q.site:
        stmt = stmt.where(hosts.c.site == q.site)
    if q.status:
        stmt = stmt.where(hosts.c.status == q.status.value)
    if q.labels:
        stmt = stmt.where(_labels_match(q.labels))
    if q.after:
        stmt = stmt.where(hosts.c.id > q.after)
    rows = (await session.execute(stmt)).mappings().all()
    items = [HostSummary.model_validate(_summary_fields(r)) for r in rows[: q.limit]]
    return HostPage(items=items, next_cursor=items[-1].id if len(rows) > q.limit else None)


def _reading(sample: Any, at: datetime | None) -> DeviceTelemetry | None:
    if not isinstance(sample, list) or len(sample) < 6 or at is None:
        return None
    return DeviceTelemetry(utilization_pct=sample[1], memory_used_mib=int(sample[2]), temperature_c=sample[3],
                           power_w=sample[4], at=at)


def _device(row: Any) -> InventoryDevice:
    reading = _reading(row["sample"], row["telemetry_at"])
    free = None
    if row["memory_mib"] is not None and reading is not None:
        free = max(0, int(row["memory_mib"]) - reading.memory_used_mib)
    return InventoryDevice(
        id=device_id(row["host_id"], row["vendor"], row["vendor_index"]), host_id=row["host_id"], site=row["site"],
        host_status=row["host_status"], slot=row["slot"], index=row["vendor_index"],
        hardware_type=row["hardware_type"], vendor=row["vendor"], model=row["model"],
        catalog_model=row["catalog_model"], compute_units=row["compute_units"], memory_mib=row["memory_mib"],
        memory_free_mib=free, driver_version=row["driver_version"], runtimes=row["runtimes"],
        firmware_version=row["firmware_version"], uuid=row["uuid"], pci_bus_id=row["pci_bus_id"],
        numa_node=row["numa_node"], links=row["links"], health=row["health"],
        health_changed_at=row["health_changed_at"], telemetry=reading)


def _device_select() -> Any:
    sample = host_telemetry.c.samples[devices.c.slot]
    return (select(*[c for c in devices.columns], hosts.c.status.label("host_status"),
                   sample.label("sample"), host_telemetry.c.ts.label("telemetry_at"))
            .select_from(devices.join(hosts, hosts.c.id == devices.c.host_id)
                         .outerjoin(host_telemetry, host_telemetry.c.host_id == devices.c.host_id)))


async def list_devices(session: AsyncSession, q: DeviceQuery) -> DevicePage:
    stmt = _device_select().order_by(devices.c.host_id, devices.c.slot).limit(q.limit + 1)
    if q.hardware_type:
        stmt = stmt.where(devices.c.hardware_type == q.hardware_type)
    if q.vendor:
        stmt = stmt.where(devices.c.vendor == q.vendor.strip().lower())
    if q.model:
        like = glob_to_like(q.model)
        stmt = stmt.where(or_(devices.c.model.ilike(like, escape=_LIKE_ESCAPE),
                              devices.c.catalog_model.ilike(like, escape=_LIKE_ESCAPE)))
    if q.site:
        stmt = stmt.where(devices.c.site == q.site)
    if q.host_id:
        stmt = stmt.where(devices.c.host_id == q.host_id)
    if q.status:
        stmt = stmt.where(hosts.c.status == q.status.value)
    if q.healthy is not None:
        stmt = stmt.where(devices.c.health == (Health.HEALTHY.value if q.healthy else Health.UNHEALTHY.value))
    if q.labels:
        stmt = stmt.where(_labels_match(q.labels))
    if q.min_free_memory_mib is not None:
        used = func.coalesce(cast(host_telemetry.c.samples[devices.c.slot][2].astext, BigInteger), 0)
        stmt = stmt.where(devices.c.memory_mib.is_not(None), devices.c.memory_mib - used >= q.min_free_memory_mib)
    if q.after:
        stmt = stmt.where(tuple_(devices.c.host_id, devices.c.slot) > tuple_(
            cast(literal(q.after.host_id), String), cast(literal(q.after.slot), Integer)))
    rows = (await session.execute(stmt)).mappings().all()
    items = [_device(r) for r in rows[: q.limit]]
    cursor = DeviceCursor(host_id=items[-1].host_id, slot=items[-1].slot) if len(rows) > q.limit else None
    return DevicePage(items=items, next_cursor=cursor)


async def get_host(session: AsyncSession, host_id: str) -> HostDetail | None:
    row = (await session.execute(select(hosts).where(hosts.c.id == host_id))).mappings().first()
    if row is None:
        return None
    devs = (await session.execute(_device_select().where(devices.c.host_id == host_id)
                                  .order_by(devices.c.slot))).mappings().all()
    tel = (await session.execute(select(host_telemetry).where(host_telemetry.c.host_id == host_id))).mappings().first()
    telemetry = None
    if tel is not None:
        telemetry = HostTelemetry(cpu_pct=tel["cpu_pct"], mem_used_mib=tel["mem_used_mib"],
                                  mem_total_mib=tel["mem_total_mib"], at=tel["ts"])
    return HostDetail(**_summary_fields(row), facts=HostFacts.model_validate(row["facts"]),
                      discovered_labels=row["discovered_labels"], operator_labels=row["operator_labels"],
                      devices=[_device(r) for r in devs], telemetry=telemetry)
