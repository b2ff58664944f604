"""Telemetry: last readings per host in one narrow row, health flips as events.

The hot path. A batch of telemetry messages becomes one UPSERT of ``host_telemetry``
(arrays through ``unnest``, newest report per host, older rows left alone) and, only for
devices whose health differs from what this instance last saw, one guarded UPDATE of
``devices`` whose RETURNING rows are the real flips; those become outbox events in the
same transaction. The per-instance health cache only filters; PostgreSQL decides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.events import EventTypes
from libs.schemas.devices import Health
from libs.schemas.hostevents import TelemetryReport
from services.inventory.models import device_event
from services.inventory.orm import devices, outbox

UPSERT_TELEMETRY = text("""
INSERT INTO inventory.host_telemetry AS t (host_id, ts, cpu_pct, mem_used_mib, mem_total_mib, samples)
SELECT v.host_id, v.ts, v.cpu_pct, v.mem_used_mib, v.mem_total_mib, CAST(v.samples AS jsonb)
FROM unnest(CAST(:host_ids AS text[]), CAST(:ts AS timestamptz[]), CAST(:cpu AS float8[]),
            CAST(:mem_used AS bigint[]), CAST(:mem_total AS bigint[]), CAST(:samples AS text[]))
     AS v(host_id, ts, cpu_pct, mem_used_mib, mem_total_mib, samples)
ON CONFLICT (host_id) DO UPDATE SET ts = excluded.ts, cpu_pct = excluded.cpu_pct,
    mem_used_mib = excluded.mem_used_mib, mem_total_mib = excluded.mem_total_mib, samples = excluded.samples
WHERE t.ts < excluded.ts
""")

FLIP_HEALTH = text("""
UPDATE inventory.devices AS d SET health = v.health, health_changed_at = now()
FROM unnest(CAST(:host_ids AS text[]), CAST(:slots AS int[]), CAST(:healths AS text[])) AS v(host_id, slot, health)
WHERE d.host_id = v.host_id AND d.slot = v.slot AND d.health <> v.health
RETURNING d.host_id, d.slot, d.site, d.vendor, d.vendor_index, d.hardware_type, d.model, d.uuid, d.health
""")


@dataclass
class HealthCache:
    """What this instance last knew of each host's devices: health by slot, and the host's site."""

    health: dict[str, list[Health]] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)

    def put(self, host_id: str, site: str, health: list[Health]) -> None:
        self.health[host_id] = health
        self.sites[host_id] = site

    def apply(self, updates: Sequence[tuple[str, int, Health]]) -> None:
        """Record health values after the transaction that wrote them committed."""
        for host_id, slot, health in updates:
            known = self.health.get(host_id)
            if known is not None and slot < len(known):
                known[slot] = health


async def load_cache(session: AsyncSession, cache: HealthCache, host_ids: Sequence[str] | None = None) -> None:
    """Fill the cache from PostgreSQL (every host, or only those named)."""
    stmt = select(devices.c.host_id, devices.c.site, devices.c.slot, devices.c.health).order_by(
        devices.c.host_id, devices.c.slot)
    if host_ids is not None:
        stmt = stmt.where(devices.c.host_id.in_(list(host_ids)))
    grouped: dict[str, list[Health]] = {}
    for host_id, site, slot, health in (await session.execute(stmt)).all():
        slots = grouped.setdefault(host_id, [])
        slots.extend([Health.UNKNOWN] * (slot + 1 - len(slots)))
        slots[slot] = Health(health)
        cache.sites[host_id] = site
    cache.health.update(grouped)
    if host_ids is not None:  # known hosts without devices (CPU-only)
        rows = await session.execute(text("SELECT id, site FROM inventory.hosts WHERE id = ANY(CAST(:ids AS text[]))"),
                                     {"ids": [h for h in host_ids if h not in grouped]})
        for host_id, site in rows.all():
            cache.put(host_id, site, [])


@dataclass
class TelemetryOutcome:
    written: int = 0
    unknown_host: int = 0
    too_old: int = 0
    superseded: int = 0
    flips: int = 0
    invalid: int = 0
    cache_updates: list[tuple[str, int, Health]] = field(default_factory=list)


async def apply_telemetry(session: AsyncSession, reports: Sequence[TelemetryReport], cache: HealthCache, *,
                          max_age_s: float, now: datetime | None = None) -> TelemetryOutcome:
    """Write the newest readings of each host and record health flips, in the caller's transaction."""
    out = TelemetryOutcome()
    now = now or datetime.now(UTC)
    oldest = now - timedelta(seconds=max_age_s)
    latest: dict[str, TelemetryReport] = {}
    for r in reports:
        if r.ts < oldest:
            out.too_old += 1
            continue
        cur = latest.get(r.host_id)
        if cur is not None:
            out.superseded += 1
        if cur is None or r.ts > cur.ts:
            latest[r.host_id] = r
    missing = [h for h in latest if h not in cache.health]
    if missing:
        await load_cache(session, cache, missing)
    ids, ts, cpu, used, total, samples = [], [], [], [], [], []
    flip_hosts, flip_slots, flip_health = [], [], []
    for host_id, r in latest.items():
        known = cache.health.get(host_id)
        if known is None:
            out.unknown_host += 1
            continue
        by_slot: list[list[float] | None] = [None] * len(known)
        for sample in r.devices:
            if sample[0] < len(known):
                by_slot[sample[0]] = list(sample)
        try:  # NaN or infinity cannot be stored as JSON: the whole report is refused
            encoded = json.dumps(by_slot, separators=(",", ":"), allow_nan=False)
        except ValueError:
            out.invalid += 1
            continue
        for sample in r.devices:
            slot = sample[0]
            health = Health.HEALTHY if sample[5] else Health.UNHEALTHY
            if slot < len(known) and known[slot] != health:
                flip_hosts.append(host_id)
                flip_slots.append(slot)
                flip_health.append(health.value)
        ids.append(host_id)
        ts.append(r.ts)
        cpu.append(r.cpu_pct)
        used.append(r.mem_used_mib)
        total.append(r.mem_total_mib)
        samples.append(encoded)
    if ids:
        await session.execute(UPSERT_TELEMETRY, {"host_ids": ids, "ts": ts, "cpu": cpu, "mem_used": used,
                                                 "mem_total": total, "samples": samples})
        out.written = len(ids)
    if flip_hosts:
        rows = (await session.execute(FLIP_HEALTH, {"host_ids": flip_hosts, "slots": flip_slots,
                                                    "healths": flip_health})).mappings().all()
        events = []
        for row in rows:
            etype = EventTypes.DEVICE_UNHEALTHY if row["health"] == Health.UNHEALTHY.value else EventTypes.DEVICE_HEALTHY
            events.append(device_event(etype, dict(row), "telemetry"))
        if events:
            await session.execute(outbox.insert(), events)
        out.flips = len(events)
        # Whether PostgreSQL flipped it or it already was so, this is the device's health once committed.
        out.cache_updates = [(h, s, Health(v)) for h, s, v in zip(flip_hosts, flip_slots, flip_health, strict=True)]
    return out
