"""The inventory's database functions: this module the reported state (hosts, devices, telemetry readings).

SQLAlchemy sessions throughout; each function takes the caller's session (the caller owns the
transaction) and only executes. Batch writes take lists and are one statement each (arrays
through ``unnest``): a fleet registering at once sends thousands of reports a second. The
operator-edited reference data is in this package's other modules, with the same verbs:
``store.sites`` (sites and links) and ``store.catalog`` (device models and rules).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from libs.schemas.devices import Health, HostFacts, device_id
from libs.schemas.inventory import (
    DeviceCursor,
    DevicePage,
    DeviceQuery,
    DeviceTelemetry,
    HostDetail,
    HostLabels,
    HostPage,
    HostQuery,
    HostStatus,
    HostSummary,
    HostTelemetry,
    InventoryDevice,
)
from services.inventory.orm import devices, host_telemetry, hosts, outbox

MAX_OPERATOR_LABELS = 64

# --------------------------------------------------------------------- writes

# (column, SQL array type); JSONB columns travel as text and are cast.
_DEVICE_COLUMNS = (
    ("host_id", "text"), ("slot", "int"), ("site", "text"), ("vendor", "text"), ("vendor_index", "int"),
    ("hardware_type", "text"), ("model", "text"), ("catalog_model", "text"), ("compute_units", "float8"),
    ("memory_mib", "bigint"), ("driver_version", "text"), ("runtimes", "jsonb"), ("firmware_version", "text"),
    ("uuid", "text"), ("pci_bus_id", "text"), ("numa_node", "int"), ("links", "jsonb"), ("extra", "jsonb"),
    ("health", "text"), ("health_changed_at", "timestamptz"),
)
_JSON_COLUMNS = frozenset(c for c, t in _DEVICE_COLUMNS if t == "jsonb")
UPDATE_DEVICES = text(
    "INSERT INTO inventory.devices (" + ", ".join(c for c, _ in _DEVICE_COLUMNS) + ", updated_at) "
    "SELECT " + ", ".join(f"CAST(v.{c} AS jsonb)" if t == "jsonb" else f"v.{c}" for c, t in _DEVICE_COLUMNS)
    + ", now() FROM unnest(" + ", ".join(f"CAST(:{c} AS {'text' if t == 'jsonb' else t}[])" for c, t in _DEVICE_COLUMNS)
    + ") AS v(" + ", ".join(c for c, _ in _DEVICE_COLUMNS) + ") "
    "ON CONFLICT (host_id, slot) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c, _ in _DEVICE_COLUMNS if c not in ("host_id", "slot"))
    + ", updated_at = now()")
DELETE_EXTRA_DEVICES = text(
    "DELETE FROM inventory.devices d USING (SELECT unnest(CAST(:ids AS text[])) AS host_id, "
    "unnest(CAST(:counts AS int[])) AS n) v WHERE d.host_id = v.host_id AND d.slot >= v.n")
UPDATE_TELEMETRY = text("""
INSERT INTO inventory.host_telemetry AS t (host_id, ts, cpu_pct, mem_used_mib, mem_total_mib, samples)
SELECT v.host_id, v.ts, v.cpu_pct, v.mem_used_mib, v.mem_total_mib, CAST(v.samples AS jsonb)
FROM unnest(CAST(:host_ids AS text[]), CAST(:ts AS timestamptz[]), CAST(:cpu AS float8[]),
            CAST(:mem_used AS bigint[]), CAST(:mem_total AS bigint[]), CAST(:samples AS text[]))
     AS v(host_id, ts, cpu_pct, mem_used_mib, mem_total_mib, samples)
ON CONFLICT (host_id) DO UPDATE SET ts = excluded.ts, cpu_pct = excluded.cpu_pct,
    mem_used_mib = excluded.mem_used_mib, mem_total_mib = excluded.mem_total_mib, samples = excluded.samples
WHERE t.ts < excluded.ts
""")
UPDATE_DEVICE_HEALTH = text("""
UPDATE inventory.devices AS d SET health = v.health, health_changed_at = now()
FROM unnest(CAST(:host_ids AS text[]), CAST(:slots AS int[]), CAST(:healths AS text[])) AS v(host_id, slot, health)
WHERE d.host_id = v.host_id AND d.slot = v.slot AND d.health <> v.health
RETURNING d.host_id, d.slot, d.site, d.vendor, d.vendor_index, d.hardware_type, d.model, d.uuid, d.health
""")


async def read_host_generations(session: AsyncSession, host_ids: Sequence[str]) -> dict[str, int]:
    """The generation of each known host among ``host_ids``, its row locked until the transaction ends."""
    rows = await session.execute(select(hosts.c.id, hosts.c.generation).where(hosts.c.id.in_(host_ids))
                                 .order_by(hosts.c.id).with_for_update())
    return {host_id: generation for host_id, generation in rows.all()}


async def update_hosts(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert hosts from capability reports (rows with every reported column and ``reported_at``)."""
    stmt = insert(hosts)
    ex = stmt.excluded
    newer = or_(hosts.c.status_changed_at.is_(None), hosts.c.status_changed_at < ex.reported_at)
    await session.execute(stmt.on_conflict_do_update(index_elements=[hosts.c.id], set_={
        "site": ex.site, "hostname": ex.hostname, "generation": ex.generation, "agent_version": ex.agent_version,
        "facts": ex.facts, "discovered_labels": ex.discovered_labels, "device_count": ex.device_count,
        "hardware_types": ex.hardware_types, "updated_at": ex.updated_at, "reported_at": ex.reported_at,
        # A report newer than the last status change is proof of life.
        "status": case((newer, HostStatus.UP.value), else_=hosts.c.status),
        "status_changed_at": case((and_(hosts.c.status != HostStatus.UP.value, newer), ex.reported_at),
                                  else_=hosts.c.status_changed_at),
    }), list(rows))


async def update_host_status(session: AsyncSession, host_id: str, status: HostStatus, at: datetime) -> bool:
    """Apply a registry up/down event unless a later change is already recorded."""
    result = await session.execute(
        update(hosts).where(hosts.c.id == host_id,
                            (hosts.c.status_changed_at.is_(None)) | (hosts.c.status_changed_at <= at))
        .values(status=status.value, status_changed_at=at))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def update_host_labels(session: AsyncSession, req: HostLabels) -> dict[str, str] | None:
    """Operator labels: set and remove keys; None when the host is unknown (ValueError: too many labels)."""
    current = (await session.execute(select(hosts.c.operator_labels).where(hosts.c.id == req.id).with_for_update())
               ).scalar_one_or_none()
    if current is None:
        return None
    labels = {k: v for k, v in dict(current).items() if k not in set(req.remove)}
    labels.update(req.set)
    if len(labels) > MAX_OPERATOR_LABELS:
        raise ValueError(f"a host may carry at most {MAX_OPERATOR_LABELS} operator labels")
    await session.execute(update(hosts).where(hosts.c.id == req.id).values(operator_labels=labels))
    return labels


async def list_device_rows(session: AsyncSession, host_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The stored device rows of each of ``host_ids`` that has any."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in (await session.execute(select(devices).where(devices.c.host_id.in_(host_ids)))).mappings():
        out.setdefault(row["host_id"], []).append(dict(row))
    return out


async def update_devices(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert device rows by (host, slot), the whole batch as one statement."""
    if not rows:
        return
    params: dict[str, list[Any]] = {}
    for column, _ in _DEVICE_COLUMNS:
        values = [r[column] for r in rows]
        params[column] = [json.dumps(v, separators=(",", ":")) for v in values] if column in _JSON_COLUMNS else values
    await session.execute(UPDATE_DEVICES, params)


async def delete_extra_devices(session: AsyncSession, device_counts: Mapping[str, int]) -> None:
    """Delete each host's devices in slots at or beyond its reported device count."""
    await session.execute(DELETE_EXTRA_DEVICES, {"ids": list(device_counts), "counts": list(device_counts.values())})


async def update_device_health(session: AsyncSession, changes: Sequence[tuple[str, int, Health]]) -> list[dict[str, Any]]:
    """Set (host, slot) devices to a health; returns the rows that really changed (the flips)."""
    if not changes:
        return []
    params = {"host_ids": [c[0] for c in changes], "slots": [c[1] for c in changes],
              "healths": [c[2].value for c in changes]}
    return [dict(r) for r in (await session.execute(UPDATE_DEVICE_HEALTH, params)).mappings().all()]


async def update_telemetry(session: AsyncSession, rows: Sequence[tuple[str, datetime, float, int, int, str]]) -> None:
    """Upsert each host's latest readings (host, ts, cpu %, memory used, memory total, samples as JSON);
    a row never replaces a newer one."""
    if rows:
        host_ids, ts, cpu, used, total, samples = (list(c) for c in zip(*rows, strict=True))
        await session.execute(UPDATE_TELEMETRY, {"host_ids": host_ids, "ts": ts, "cpu": cpu, "mem_used": used,
                                                 "mem_total": total, "samples": samples})


async def create_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Queue outbox rows (``events.device_event``) for the relay, in the caller's transaction."""
    if rows:
        await session.execute(outbox.insert(), list(rows))


# --------------------------------------------------------------------- reads


async def list_device_health(session: AsyncSession,
                             host_ids: Sequence[str] | None = None) -> list[tuple[str, str, int, Health]]:
    """(host, site, slot, health) of every device (or of the hosts named), by host and slot."""
    stmt = select(devices.c.host_id, devices.c.site, devices.c.slot, devices.c.health).order_by(
        devices.c.host_id, devices.c.slot)
    if host_ids is not None:
        stmt = stmt.where(devices.c.host_id.in_(list(host_ids)))
    return [(h, site, slot, Health(health)) for h, site, slot, health in (await session.execute(stmt)).all()]


async def list_host_sites(session: AsyncSession, host_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(host, site) of each known host among ``host_ids``."""
    rows = await session.execute(select(hosts.c.id, hosts.c.site).where(hosts.c.id.in_(list(host_ids))))
    return [(h, site) for h, site in rows.all()]


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


async def read_host(session: AsyncSession, host_id: str) -> HostDetail | None:
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
