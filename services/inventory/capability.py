"""Capability reports applied to hosts and devices.

Capability reports arrive in batches. One transaction applies a batch: hosts are locked,
reports older than (or as old as) the host's generation are skipped, the rest replace
the host's facts, discovered labels and devices in place. Device identity is
(vendor, index, uuid); a device that appears, disappears or flips health emits an event
through the outbox in the same transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.bus.outcomes import each_valid, reject
from libs.db.batches import apply_batch
from libs.events import CloudEvent, EventTypes
from libs.schemas.devices import Device, Health
from libs.schemas.hostevents import CapabilityReport, ReportBounds
from libs.schemas.inventory import HostStatus
from services.inventory import store
from services.inventory.batches import count
from services.inventory.checks import check_capability
from services.inventory.events import device_event
from services.inventory.state import SERVICE, Catalog, InventoryState
from services.inventory.store import sites

log = logging.getLogger(__name__)
HANDLER = "on_capability"


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


def _host_row(c: Capability, now: datetime) -> dict[str, Any]:
    r = c.report
    return {
        "id": r.host_id, "site": r.site, "hostname": r.facts.hostname, "status": HostStatus.UP.value,
        "generation": r.generation, "agent_version": r.agent_version, "facts": r.facts.model_dump(mode="json"),
        "discovered_labels": r.labels, "device_count": len(r.devices),
        "hardware_types": dict(Counter(d.hardware_type.value for d in r.devices)), "updated_at": now,
        "reported_at": c.reported_at, "status_changed_at": c.reported_at}


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
    current = await store.read_host_generations(session, [c.report.host_id for c in latest])
    fresh = [c for c in latest if c.report.host_id not in current or c.report.generation > current[c.report.host_id]]
    out.stale += len(latest) - len(fresh)
    if not fresh:
        return out
    now = datetime.now(UTC)
    await sites.create_reported_sites(session, sorted({c.report.site for c in fresh}))
    old = await store.list_device_rows(session, [c.report.host_id for c in fresh])
    host_rows, device_rows, events = [], [], []
    for c in fresh:
        r = c.report
        rows, evs = _diff(r, old.get(r.host_id, []), cat, now)
        device_rows += rows
        events += evs
        host_rows.append(_host_row(c, now))
        out.health[r.host_id] = [Health(row["health"]) for row in rows]
        out.sites[r.host_id] = r.site
    await store.update_hosts(session, host_rows)
    await store.delete_extra_devices(session, {c.report.host_id: len(c.report.devices) for c in fresh})
    await store.update_devices(session, device_rows)
    await store.create_events(session, events)
    out.applied, out.events = len(fresh), len(events)
    return out


def accept(events: Sequence[CloudEvent], *, max_skew_s: float) -> list[Capability]:
    """The batch's well-formed capability reports about the hosts their subjects name, with a generation at most
    ``max_skew_s`` ahead; the rest are counted and dropped."""
    caps = []
    for event, report in each_valid(events, CapabilityReport, service=SERVICE, handler=HANDLER,
                                    event_type=EventTypes.HOST_CAPABILITY,
                                    context=ReportBounds(max_skew_s).context()):
        try:
            check_capability(report)
        except ValueError as exc:
            reject(SERVICE, HANDLER, "invalid_data")
            log.warning("%s: rejected a report: %s", HANDLER, exc)
            continue
        caps.append(Capability(report, event.time))
    return caps


async def ingest(sessions: async_sessionmaker[AsyncSession], state: InventoryState, events: Sequence[CloudEvent], *,
                 max_skew_s: float) -> None:
    """A batch of capability events, end to end: accepted, applied, the health cache and relay told."""
    caps = accept(events, max_skew_s=max_skew_s)
    if not caps:
        return
    cat = state.catalog

    async def apply(session: AsyncSession, batch: Sequence[Capability]) -> Applied:
        return await apply_capabilities(session, batch, cat)

    started = time.perf_counter()
    events_out = 0
    for applied in await apply_batch(sessions, SERVICE, HANDLER, caps, apply):
        for host_id, health in applied.health.items():
            state.health.put(host_id, applied.sites[host_id], health)
        count(HANDLER, "stale", applied.stale)
        events_out += applied.events
    if events_out:
        state.relay.poke()
    log.debug("capability batch: %d reports, %d events, %.1f ms", len(caps), events_out,
              (time.perf_counter() - started) * 1000)
