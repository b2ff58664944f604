"""Inventory domain logic: capability reports applied to hosts and devices, host status, labels.

Capability reports arrive in batches. One transaction applies a batch: hosts are locked,
reports older than (or as old as) the host's generation are skipped, the rest replace
the host's facts, discovered labels and devices in place. Device identity is
(vendor, index, uuid); a device that appears, disappears or flips health emits an event
through the outbox in the same transaction.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.bus.subjects import event_subject
from libs.events import EventTypes
from libs.schemas.devices import Device, Health, device_id
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.inventory import HostLabels, HostStatus
from services.inventory.catalog import Catalog
from services.inventory.orm import devices, hosts, outbox, sites

SOURCE = "/inventory"


@dataclass(frozen=True)
class Capability:
    report: CapabilityReport
    reported_at: datetime


@dataclass
class Applied:
    """What a batch changed: counts, and each applied host's device health by slot (for caches)."""

    applied: int = 0
    stale: int = 0
    events: int = 0
    health: dict[str, list[Health]] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)


def device_event(etype: str, row: dict[str, Any], reason: str) -> dict[str, Any]:
    """An outbox row carrying a device event (a CloudEvent whose data is a ``DeviceEvent``).

    Built as JSON directly: a fleet registering emits one event per device, and these are
    made from rows this service wrote itself, so pydantic validation would only cost time.
    """
    did = device_id(row["host_id"], row["vendor"], row["vendor_index"])
    event_id = str(uuidlib.uuid4())
    data = {"id": did, "host_id": row["host_id"], "site": row["site"], "slot": row["slot"],
            "index": row["vendor_index"], "hardware_type": row["hardware_type"], "vendor": row["vendor"],
            "model": row["model"], "uuid": row.get("uuid"), "health": row["health"], "reason": reason}
    envelope = {"specversion": "1.0", "id": event_id, "source": SOURCE, "type": etype,
                "time": datetime.now(UTC).isoformat(), "subject": did, "datacontenttype": "application/json",
                "data": data}
    return {"event_id": event_id, "subject": event_subject(etype, row["site"]),
            "payload": json.dumps(envelope, separators=(",", ":")).encode()}


def _device_row(report: CapabilityReport, slot: int, d: Device, cat: Catalog) -> dict[str, Any]:
    match = cat.match(d.vendor, d.model)
    return {
        "host_id": report.host_id, "slot": slot, "site": report.site, "vendor": d.vendor, "vendor_index": d.index,
        "hardware_type": d.hardware_type.value, "model": d.model,
        "catalog_model": match.model if match else None, "compute_units": match.device_compute_units if match else None,
        "memory_mib": d.memory_mib, "driver_version": d.driver_version, "runtimes": d.runtimes,
        "firmware_version": d.firmware_version, "uuid": d.uuid, "pci_bus_id": d.pci_bus_id, "numa_node": d.numa_node,
        "links": [{"peer_index": lk.peer_index, "kind": lk.kind} for lk in d.links], "extra": d.extra,
        "health": d.health.value,
        "health_changed_at": None,
    }


def _diff(report: CapabilityReport, old: Sequence[dict[str, Any]], cat: Catalog,
          now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """New device rows for the host and the events the change implies."""
    old_by_key = {(r["vendor"], r["vendor_index"]): r for r in old}
    rows, events = [], []
    seen = set()
    for slot, d in enumerate(report.devices):
        row = _device_row(report, slot, d, cat)
        key = (d.vendor, d.index)
        seen.add(key)
        prev = old_by_key.get(key)
        if prev is None or (prev["uuid"] or "") != (d.uuid or ""):
            if prev is not None:
                events.append(device_event(EventTypes.DEVICE_REMOVED, prev, "capability"))
            row["health_changed_at"] = now
            events.append(device_event(EventTypes.DEVICE_ADDED, row, "capability"))
        else:
            row["health_changed_at"] = prev["health_changed_at"]
            if d.health == Health.UNKNOWN:  # the probe could not tell: keep what telemetry said
                row["health"] = prev["health"]
            elif row["health"] != prev["health"]:
                row["health_changed_at"] = now
                etype = EventTypes.DEVICE_UNHEALTHY if d.health == Health.UNHEALTHY else EventTypes.DEVICE_HEALTHY
                events.append(device_event(etype, row, "capability"))
        rows.append(row)
    for key, prev in old_by_key.items():
        if key not in seen:
            events.append(device_event(EventTypes.DEVICE_REMOVED, prev, "capability"))
    return rows, events


# (column, SQL array type); JSONB columns travel as text and are cast.
_DEVICE_COLUMNS = (
    ("host_id", "text"), ("slot", "int"), ("site", "text"), ("vendor", "text"), ("vendor_index", "int"),
    ("hardware_type", "text"), ("model", "text"), ("catalog_model", "text"), ("compute_units", "float8"),
    ("memory_mib", "bigint"), ("driver_version", "text"), ("runtimes", "jsonb"), ("firmware_version", "text"),
    ("uuid", "text"), ("pci_bus_id", "text"), ("numa_node", "int"), ("links", "jsonb"), ("extra", "jsonb"),
    ("health", "text"), ("health_changed_at", "timestamptz"),
)
_JSON_COLUMNS = frozenset(c for c, t in _DEVICE_COLUMNS if t == "jsonb")
UPSERT_DEVICES = text(
    "INSERT INTO inventory.devices (" + ", ".join(c for c, _ in _DEVICE_COLUMNS) + ", updated_at) "
    "SELECT " + ", ".join(f"CAST(v.{c} AS jsonb)" if t == "jsonb" else f"v.{c}" for c, t in _DEVICE_COLUMNS)
    + ", now() FROM unnest(" + ", ".join(f"CAST(:{c} AS {'text' if t == 'jsonb' else t}[])" for c, t in _DEVICE_COLUMNS)
    + ") AS v(" + ", ".join(c for c, _ in _DEVICE_COLUMNS) + ") "
    "ON CONFLICT (host_id, slot) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c, _ in _DEVICE_COLUMNS if c not in ("host_id", "slot"))
    + ", updated_at = now()")


def _device_arrays(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as one array per column: the whole batch is one statement, not one per device."""
    out: dict[str, list[Any]] = {}
    for column, _ in _DEVICE_COLUMNS:
        values = [r[column] for r in rows]
        if column in _JSON_COLUMNS:
            values = [json.dumps(v, separators=(",", ":")) for v in values]
        out[column] = values
    return out


def latest_per_host(caps: Iterable[Capability]) -> list[Capability]:
    best: dict[str, Capability] = {}
    for c in caps:
        cur = best.get(c.report.host_id)
        if cur is None or c.report.generation > cur.report.generation:
            best[c.report.host_id] = c
    return list(best.values())


async def apply_capabilities(session: AsyncSession, caps: Sequence[Capability], cat: Catalog) -> Applied:
    """Apply a batch of capability reports in the caller's transaction."""
    out = Applied()
    latest = latest_per_host(caps)
    out.stale = len(caps) - len(latest)
    ids = [c.report.host_id for c in latest]
    current = dict((await session.execute(
        select(hosts.c.id, hosts.c.generation).where(hosts.c.id.in_(ids)).order_by(hosts.c.id).with_for_update())).all())
    fresh = [c for c in latest if c.report.host_id not in current or c.report.generation > current[c.report.host_id]]
    out.stale += len(latest) - len(fresh)
    if not fresh:
        return out
    now = datetime.now(UTC)
    site_ids = sorted({c.report.site for c in fresh})
    await session.execute(insert(sites).values([{"id": s, "city": s, "origin": "auto"} for s in site_ids])
                          .on_conflict_do_nothing())
    old: dict[str, list[dict[str, Any]]] = {}
    fresh_ids = [c.report.host_id for c in fresh]
    for row in (await session.execute(select(devices).where(devices.c.host_id.in_(fresh_ids)))).mappings():
        old.setdefault(row["host_id"], []).append(dict(row))
    host_rows, device_rows, events = [], [], []
    for c in fresh:
        r = c.report
        rows, evs = _diff(r, old.get(r.host_id, []), cat, now)
        device_rows += rows
        events += evs
        host_rows.append({
            "id": r.host_id, "site": r.site, "hostname": r.facts.hostname, "status": HostStatus.UP.value,
            "generation": r.generation, "agent_version": r.agent_version, "facts": r.facts.model_dump(mode="json"),
            "discovered_labels": r.labels, "device_count": len(r.devices),
            "hardware_types": dict(Counter(d.hardware_type.value for d in r.devices)), "updated_at": now,
            "reported_at": c.reported_at, "status_changed_at": c.reported_at})
        out.health[r.host_id] = [Health(row["health"]) for row in rows]
        out.sites[r.host_id] = r.site
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
    }), host_rows)
    await session.execute(text(
        "DELETE FROM inventory.devices d USING (SELECT unnest(CAST(:ids AS text[])) AS host_id, "
        "unnest(CAST(:counts AS int[])) AS n) v WHERE d.host_id = v.host_id AND d.slot >= v.n"),
        {"ids": fresh_ids, "counts": [len(c.report.devices) for c in fresh]})
    if device_rows:
        await session.execute(UPSERT_DEVICES, _device_arrays(device_rows))
    if events:
        await session.execute(outbox.insert(), events)
    out.applied, out.events = len(fresh), len(events)
    return out


async def set_host_status(session: AsyncSession, host_id: str, status: HostStatus, at: datetime) -> bool:
    """Apply a registry up/down event unless a later change is already recorded."""
    result = await session.execute(
        update(hosts).where(hosts.c.id == host_id,
                            (hosts.c.status_changed_at.is_(None)) | (hosts.c.status_changed_at <= at))
        .values(status=status.value, status_changed_at=at))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_labels(session: AsyncSession, req: HostLabels) -> dict[str, str] | None:
    """Operator labels: set and remove keys; None when the host is unknown."""
    current = (await session.execute(select(hosts.c.operator_labels).where(hosts.c.id == req.id).with_for_update())
               ).scalar_one_or_none()
    if current is None:
        return None
    labels = {k: v for k, v in dict(current).items() if k not in set(req.remove)}
    labels.update(req.set)
    if len(labels) > 64:
        raise ValueError("a host may carry at most 64 operator labels")
    await session.execute(update(hosts).where(hosts.c.id == req.id).values(operator_labels=labels))
    return labels
