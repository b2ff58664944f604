"""Telemetry: last readings per host in one narrow row, health flips as events.

The hot path. A batch of telemetry messages becomes one upsert of ``host_telemetry``
(newest report per host, older rows left alone) and, only for devices whose health differs
from what this instance last saw, one guarded update of ``devices`` whose returned rows are
the real flips; those become outbox events in the same transaction. The per-instance health
cache only filters; PostgreSQL decides.

A device's health from telemetry is the sample's healthy flag (its sixth value): true is
``healthy``, false ``unhealthy``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.bus.outcomes import each_valid, reject
from libs.db.batches import apply_batch
from libs.events import CloudEvent, EventTypes
from libs.schemas.devices import Health
from libs.schemas.hostevents import ReportBounds, TelemetryReport
from services.inventory import store
from services.inventory.batches import count
from services.inventory.events import device_event
from services.inventory.state import SERVICE, HealthCache, InventoryState

HANDLER = "on_telemetry"


@dataclass
class TelemetryOutcome:
    written: int = 0
    unknown_host: int = 0
    too_old: int = 0
    superseded: int = 0
    flips: int = 0
    invalid: int = 0
    cache_updates: list[tuple[str, int, Health]] = field(default_factory=list)


def _latest(reports: Sequence[TelemetryReport], oldest: datetime, out: TelemetryOutcome) -> dict[str, TelemetryReport]:
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
    return latest


async def apply_telemetry(session: AsyncSession, reports: Sequence[TelemetryReport], cache: HealthCache, *,
                          max_age_s: float, now: datetime | None = None) -> TelemetryOutcome:
    """Write the newest readings of each host and record health flips, in the caller's transaction."""
    out = TelemetryOutcome()
    now = now or datetime.now(UTC)
    latest = _latest(reports, now - timedelta(seconds=max_age_s), out)
    missing = [h for h in latest if h not in cache.health]
    if missing:
        await cache.load(session, missing)
    readings: list[tuple[str, datetime, float, int, int, str]] = []
    changes: list[tuple[str, int, Health]] = []
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
                changes.append((host_id, slot, health))
        readings.append((host_id, r.ts, r.cpu_pct, r.mem_used_mib, r.mem_total_mib, encoded))
    await store.update_telemetry(session, readings)
    out.written = len(readings)
    if changes:
        events = []
        for row in await store.update_device_health(session, changes):
            etype = EventTypes.DEVICE_UNHEALTHY if row["health"] == Health.UNHEALTHY.value else EventTypes.DEVICE_HEALTHY
            events.append(device_event(etype, row, "telemetry"))
        await store.create_events(session, events)
        out.flips = len(events)
        # Whether PostgreSQL flipped it or it already was so, this is the device's health once committed.
        out.cache_updates = changes
    return out


def accept(events: Sequence[CloudEvent], *, max_age_s: float, max_skew_s: float) -> list[TelemetryReport]:
    """The batch's well-formed telemetry reports about the hosts their subjects name; the rest are counted and
    dropped. A report further in the future than ``max_skew_s`` or ``max_age_s`` (a clock far off) is refused too."""
    reports = []
    latest_ok = datetime.now(UTC) + timedelta(seconds=max_age_s)
    for _, report in each_valid(events, TelemetryReport, service=SERVICE, handler=HANDLER,
                                event_type=EventTypes.HOST_TELEMETRY, context=ReportBounds(max_skew_s).context()):
        # Non-finite readings are refused where the samples are serialized (apply_telemetry).
        if report.ts > latest_ok or any(s[0] < 0 for s in report.devices):
            reject(SERVICE, HANDLER, "invalid_data")
            continue
        reports.append(report)
    return reports


async def ingest(sessions: async_sessionmaker[AsyncSession], state: InventoryState, events: Sequence[CloudEvent], *,
                 max_age_s: float, max_skew_s: float) -> None:
    """A batch of telemetry events, end to end: accepted, applied, the health cache and relay told."""
    reports = accept(events, max_age_s=max_age_s, max_skew_s=max_skew_s)
    if not reports:
        return
    cache = state.health

    async def apply(session: AsyncSession, batch: Sequence[TelemetryReport]) -> TelemetryOutcome:
        return await apply_telemetry(session, batch, cache, max_age_s=max_age_s)

    flips = 0
    for out in await apply_batch(sessions, SERVICE, HANDLER, reports, apply):
        cache.apply(out.cache_updates)
        flips += out.flips
        count(HANDLER, "unknown_host", out.unknown_host)
        count(HANDLER, "too_old", out.too_old)
        if out.invalid:
            reject(SERVICE, HANDLER, "invalid_data", out.invalid)
    if flips:
        state.relay.poke()
