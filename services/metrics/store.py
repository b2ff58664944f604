"""The metrics service's database functions: fleet metadata, rollups, recovery reads, alerts, workloads.

asyncpg throughout: binary COPY needs it; the caller owns the transaction. Every function takes
an ``asyncpg.Connection`` (``async with pool.acquire() as conn, conn.transaction():``) and never
commits. JSONB values go in as JSON text with a ``::jsonb`` cast and come out through ``_json``,
so the functions work on any of the service's connections, with or without a JSON codec.
The outbox rows of alert events have exactly the columns ``libs.db.outbox.outbox_row`` gives;
the kit's ``OutboxRelay`` publishes them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.bus.subjects import event_subject
from libs.db.outbox import outbox_row
from libs.events import CloudEvent, EventTypes
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.metrics import Alert, AlertState, Placement, WorkloadNow
from services.metrics.fleet import DeviceMeta, Fleet, slots_for
from services.metrics.rollups import DEVICE_STAGE_COLUMNS

STATUS_CODES = {"up": 1, "down": 2}
ALERT_COLUMNS = ("id", "rule", "severity", "state", "site", "host_id", "device", "summary", "value", "started_at",
                 "resolved_at")


def _json(value: Any) -> Any:
    """A JSONB value as Python: decoded here when the connection has no JSON codec."""
    return json.loads(value) if isinstance(value, str) else value


# --- fleet metadata ----------------------------------------------------------------------
async def read_fleet(conn: asyncpg.Connection) -> Fleet:
    """The fleet as PostgreSQL has it: every host, and the devices still present."""
    fleet = Fleet()
    for row in await conn.fetch("SELECT host_id, site, hostname, generation, labels, status FROM metrics.hosts"):
        h = fleet.host(row["host_id"], row["site"])
        h.hostname, h.generation, h.labels = row["hostname"], row["generation"], dict(_json(row["labels"]) or {})
        h.status = STATUS_CODES.get(row["status"], 0)
    for row in await conn.fetch("SELECT * FROM metrics.devices WHERE present"):
        fleet.put_device(_meta(row))
        fleet.set_health(row["id"], row["health"])
    return fleet


def _meta(row: Mapping[str, Any]) -> DeviceMeta:
    return DeviceMeta(id=row["id"], host_id=row["host_id"], slot=row["slot"], site=row["site"],
                      vendor_index=row["vendor_index"],
                      hardware_type=row["hardware_type"], vendor=row["vendor"], model=row["model"],
                      memory_mib=row["memory_mib"], driver_version=row["driver_version"],
                      runtimes=dict(_json(row["runtimes"]) or {}), firmware_version=row["firmware_version"],
                      uuid=row["uuid"])


async def update_capabilities(conn: asyncpg.Connection,
                              reports: Sequence[CapabilityReport]) -> tuple[list[DeviceMeta], list[int]]:
    """Upsert hosts and their devices (one statement each, arrays through unnest); devices a host no longer
    reports are marked absent. Returns (present devices, removed device ids).

    A device's ``health`` is not the report's: the inventory decides it (``update_device_health``)."""
    await conn.execute(
        "INSERT INTO metrics.hosts AS t (host_id, site, hostname, generation, labels, updated_at) "
        "SELECT h, s, n, g, CAST(l AS jsonb), now() FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], "
        "$5::text[]) AS v(h, s, n, g, l) ON CONFLICT (host_id) DO UPDATE SET site = EXCLUDED.site, "
        "hostname = EXCLUDED.hostname, generation = EXCLUDED.generation, labels = EXCLUDED.labels, updated_at = now()",
        [r.host_id for r in reports], [r.site for r in reports], [r.facts.hostname[:256] for r in reports],
        [r.generation for r in reports], [json.dumps(r.labels) for r in reports])
    cols: dict[str, list[Any]] = {k: [] for k in ("h", "sl", "vi", "s", "hw", "ve", "mo", "mem", "dr", "rt", "fw", "uu")}
    for r in reports:
        for slot, d in zip(slots_for(r.devices), r.devices, strict=True):
            for k, v in (("h", r.host_id), ("sl", slot), ("vi", d.index), ("s", r.site), ("hw", d.hardware_type.value),
                         ("ve", d.vendor[:32]), ("mo", d.model[:128]), ("mem", d.memory_mib),
                         ("dr", (d.driver_version or None) and d.driver_version[:64]), ("rt", json.dumps(d.runtimes)),
                         ("fw", (d.firmware_version or None) and d.firmware_version[:64]),
                         ("uu", (d.uuid or None) and d.uuid[:128])):
                cols[k].append(v)
    rows = await conn.fetch(
        "INSERT INTO metrics.devices AS t (host_id, slot, vendor_index, site, hardware_type, vendor, model, memory_mib, "
        "driver_version, runtimes, firmware_version, uuid, present, updated_at) "
        "SELECT h, sl, vi, s, hw, ve, mo, mem, dr, CAST(rt AS jsonb), fw, uu, true, now() FROM unnest("
        "$1::text[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], "
        "$10::text[], $11::text[], $12::text[]) AS v(h, sl, vi, s, hw, ve, mo, mem, dr, rt, fw, uu) "
        "ON CONFLICT (host_id, slot) DO UPDATE SET vendor_index = EXCLUDED.vendor_index, site = EXCLUDED.site, "
        "hardware_type = EXCLUDED.hardware_type, vendor = EXCLUDED.vendor, model = EXCLUDED.model, "
        "memory_mib = EXCLUDED.memory_mib, driver_version = EXCLUDED.driver_version, runtimes = EXCLUDED.runtimes, "
        "firmware_version = EXCLUDED.firmware_version, uuid = EXCLUDED.uuid, present = true, "
        "updated_at = now() RETURNING *", *cols.values())
    gone = await conn.fetch(
        "UPDATE metrics.devices AS d SET present = false, updated_at = now() FROM unnest($1::text[], $2::int[]) AS v(h, n) "
        "WHERE d.host_id = v.h AND d.slot >= v.n AND d.present RETURNING d.id",
        [r.host_id for r in reports], [len(r.devices) for r in reports])
    return [_meta(r) for r in rows], [int(g["id"]) for g in gone]


async def update_host_status(conn: asyncpg.Connection, host_id: str, site: str, status: str) -> None:
    """Upsert a host's up/down status (a host first seen this way gets a bare row)."""
    await conn.execute(
        "INSERT INTO metrics.hosts (host_id, site, status, updated_at) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (host_id) DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        host_id, site, status, datetime.now(UTC))


async def _create_bare_hosts(conn: asyncpg.Connection, hosts: Sequence[str], sites: Sequence[str]) -> None:
    """Rows for hosts not known yet (the ones known keep theirs)."""
    await conn.execute(
        "INSERT INTO metrics.hosts (host_id, site, updated_at) SELECT DISTINCT h, s, now() "
        "FROM unnest($1::text[], $2::text[]) AS t(h, s) ORDER BY h ON CONFLICT (host_id) DO NOTHING",
        list(hosts), list(sites))


async def create_devices(conn: asyncpg.Connection, pairs: Sequence[tuple[str, int, str]]) -> list[DeviceMeta]:
    """Ids for devices seen in telemetry before any capability report: (host, slot, site) → bare rows."""
    await _create_bare_hosts(conn, [p[0] for p in pairs], [p[2] for p in pairs])
    rows = await conn.fetch(
        "INSERT INTO metrics.devices (host_id, slot, site, updated_at) "
        "SELECT h, sl, s, now() FROM unnest($1::text[], $2::int[], $3::text[]) AS t(h, sl, s) "
        "ON CONFLICT (host_id, slot) DO UPDATE SET present = true RETURNING *",
        [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs])
    return [_meta(r) for r in rows]


async def update_device_health(conn: asyncpg.Connection,
                               changes: Sequence[tuple[str, int, str, str]]) -> list[tuple[DeviceMeta, bool]]:
    """Store the inventory's health decisions: (host, slot, site, health), one per device.

    A device not known yet (its event came before its capability report or telemetry) gets a bare row,
    as telemetry-before-capability does; a known one keeps its metadata and whether it is present.
    Returns each device with its ``present`` flag."""
    if not changes:
        return []
    await _create_bare_hosts(conn, [c[0] for c in changes], [c[2] for c in changes])
    rows = await conn.fetch(
        "INSERT INTO metrics.devices AS t (host_id, slot, site, health, updated_at) "
        "SELECT h, sl, s, he, now() FROM unnest($1::text[], $2::int[], $3::text[], $4::text[]) AS v(h, sl, s, he) "
        "ORDER BY h, sl ON CONFLICT (host_id, slot) DO UPDATE SET health = EXCLUDED.health, updated_at = now() "
        "RETURNING *",
        [c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes], [c[3][:16] for c in changes])
    return [(_meta(r), bool(r["present"])) for r in rows]


# --- rollups ------------------------------------------------------------------------------
_MERGE = ("n = t.n + EXCLUDED.n, util_sum = t.util_sum + EXCLUDED.util_sum, "
          "util_max = GREATEST(t.util_max, EXCLUDED.util_max), mem_sum = t.mem_sum + EXCLUDED.mem_sum, "
          "temp_sum = t.temp_sum + EXCLUDED.temp_sum, temp_max = GREATEST(t.temp_max, EXCLUDED.temp_max), "
          "power_sum = t.power_sum + EXCLUDED.power_sum, unhealthy = t.unhealthy + EXCLUDED.unhealthy")


_SUMS = ("sum(s.n), sum(s.util_sum), max(s.util_max), sum(s.mem_sum), sum(s.temp_sum), max(s.temp_max), "
         "sum(s.power_sum), sum(s.unhealthy)")
_GROUPED = " UNION ALL ".join(
    f"SELECT {scope}::smallint, {key}, s.bucket, {_SUMS} FROM rollup_dev_stage s "
    f"JOIN metrics.devices d ON d.id = s.device_id GROUP BY {key}, s.bucket"
    for scope, key in ((1, "d.host_id"), (2, "d.site"), (3, "d.hardware_type"), (4, "d.site || '/' || d.hardware_type")))


async def update_rollups(conn: asyncpg.Connection, device_rows: bytes, batch: int, open_from: datetime | None) -> None:
    """Merge closed minutes (binary COPY of device rows) into rollup_1m and rollup_1h per device, host, site,
    hardware type and site/hardware type, and move the checkpoint."""
    if device_rows:
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS rollup_dev_stage (device_id integer, bucket timestamptz, n integer, "
            "util_sum double precision, util_max real, mem_sum double precision, temp_sum double precision, "
            "temp_max real, power_sum double precision, unhealthy integer) ON COMMIT DELETE ROWS; "
            "CREATE TEMP TABLE IF NOT EXISTS rollup_stage (LIKE metrics.rollup_1m) ON COMMIT DELETE ROWS")
        await conn.copy_to_table("rollup_dev_stage", source=memoryview(device_rows), columns=DEVICE_STAGE_COLUMNS,
                                 format="binary")
        await conn.execute(
            "INSERT INTO rollup_stage SELECT 0, s.device_id::text, s.bucket, s.n, s.util_sum, s.util_max, s.mem_sum, "
            f"s.temp_sum, s.temp_max, s.power_sum, s.unhealthy FROM rollup_dev_stage s UNION ALL {_GROUPED}")
        await conn.execute(f"INSERT INTO metrics.rollup_1m AS t SELECT * FROM rollup_stage "
                           f"ON CONFLICT (scope, key, bucket) DO UPDATE SET {_MERGE}")
        await conn.execute(
            "INSERT INTO metrics.rollup_1h AS t SELECT scope, key, date_trunc('hour', bucket), sum(n), sum(util_sum), "
            "max(util_max), sum(mem_sum), sum(temp_sum), max(temp_max), sum(power_sum), sum(unhealthy) "
            f"FROM rollup_stage GROUP BY 1, 2, 3 ON CONFLICT (scope, key, bucket) DO UPDATE SET {_MERGE}")
    await conn.execute(
        "INSERT INTO metrics.checkpoint (id, batch, open_from, updated_at) VALUES (1, $1, $2, now()) "
        "ON CONFLICT (id) DO UPDATE SET batch = EXCLUDED.batch, open_from = EXCLUDED.open_from, updated_at = now()",
        batch, open_from)


async def read_checkpoint(conn: asyncpg.Connection) -> tuple[int, datetime | None] | None:
    row = await conn.fetchrow("SELECT batch, open_from FROM metrics.checkpoint WHERE id = 1")
    return (int(row["batch"]), row["open_from"]) if row else None


async def list_open_minutes(conn: asyncpg.Connection, after_batch: int, since: datetime) -> list[asyncpg.Record]:
    """Per device and minute, the sums of samples written after the checkpoint (recovery after a crash)."""
    return await conn.fetch(
        "SELECT device_id, (floor(extract(epoch FROM ts) / 60) * 60)::bigint AS bucket, count(*) AS n, "
        "sum(util) AS util_sum, max(util) AS util_max, sum(mem_mib) AS mem_sum, sum(temp) AS temp_sum, "
        "max(temp) AS temp_max, sum(power) AS power_sum, count(*) FILTER (WHERE NOT healthy) AS unhealthy, "
        "min(batch) AS first_batch, max(batch) AS last_batch "
        "FROM metrics.samples WHERE batch > $1 AND ts >= $2 GROUP BY 1, 2", after_batch, since)


async def list_latest_samples(conn: asyncpg.Connection, since: datetime) -> list[asyncpg.Record]:
    """Each device's newest sample since ``since`` (the current state after a restart)."""
    return await conn.fetch(
        "SELECT DISTINCT ON (device_id) device_id, extract(epoch FROM ts)::float8 AS ts, util, mem_mib, temp, power, "
        "healthy FROM metrics.samples WHERE ts >= $1 ORDER BY device_id, ts DESC", since)


async def read_max_batch(conn: asyncpg.Connection, since: datetime, from_batch: int) -> int:
    """The highest batch number from ``from_batch`` on among samples since ``since`` (0: none).

    Batch numbers are the wall clock in microseconds when the clock is ahead of the last one, so only
    numbers at or above the clock now matter to the next batch: the BRIN index on ``batch`` finds
    them without reading the whole hour."""
    return int(await conn.fetchval("SELECT coalesce(max(batch), 0) FROM metrics.samples WHERE ts >= $1 AND batch >= $2",
                                   since, from_batch))


async def list_series_rows(conn: asyncpg.Connection, table: str, scope: int, key: str, start: datetime, end: datetime,
                           step_s: int) -> list[asyncpg.Record]:
    """Rollup rows of one scope/key in [start, end), summed per step (steps start at ``start``)."""
    assert table in ("rollup_1m", "rollup_1h")
    return await conn.fetch(
        "SELECT extract(epoch FROM date_bin(make_interval(secs => $5), bucket, $3))::float8 AS t, sum(n)::bigint AS n, "
        "sum(util_sum) AS util_sum, max(util_max) AS util_max, sum(mem_sum) AS mem_sum, sum(temp_sum) AS temp_sum, "
        "max(temp_max) AS temp_max, sum(power_sum) AS power_sum, sum(unhealthy)::bigint AS unhealthy "
        f"FROM metrics.{table} WHERE scope = $1 AND key = $2 AND bucket >= $3 AND bucket < $4 GROUP BY 1 ORDER BY 1",
        scope, key, start, end, float(step_s))


async def list_raw_series_rows(conn: asyncpg.Connection, device_id: int, start: datetime, end: datetime,
                               step_s: int) -> list[asyncpg.Record]:
    """One device's raw samples in [start, end), summed per step (steps start at ``start``)."""
    return await conn.fetch(
        "SELECT extract(epoch FROM date_bin(make_interval(secs => $4), ts, $2))::float8 AS t, count(*) AS n, "
        "sum(util) AS util_sum, max(util) AS util_max, sum(mem_mib) AS mem_sum, sum(temp) AS temp_sum, "
        "max(temp) AS temp_max, sum(power) AS power_sum, count(*) FILTER (WHERE NOT healthy) AS unhealthy "
        "FROM metrics.samples WHERE device_id = $1 AND ts >= $2 AND ts < $3 GROUP BY 1 ORDER BY 1",
        device_id, start, end, float(step_s))


# --- alerts ---------------------------------------------------------------------------------
_ALERT_SELECT = f"SELECT {', '.join(ALERT_COLUMNS)} FROM metrics.alerts"
# state $1; sites $2 (NULL: any site); severity $3 (NULL: any severity)
_ALERT_WHERE = " WHERE state = $1 AND ($2::text[] IS NULL OR site = ANY($2::text[])) AND ($3::text IS NULL OR severity = $3)"


async def list_firing_alerts(conn: asyncpg.Connection) -> list[Alert]:
    rows = await conn.fetch(f"{_ALERT_SELECT} WHERE state = $1", AlertState.FIRING.value)
    return [Alert.model_validate(dict(r)) for r in rows]


def alert_event(alert: Alert) -> CloudEvent:
    """The event for one alert transition; its id is fixed by the alert and the episode, so a retry dedupes."""
    digest = hashlib.sha1(alert.id.encode()).hexdigest()[:20]
    episode = int(alert.started_at.timestamp() * 1000)
    etype = EventTypes.ALERT_FIRING if alert.state == AlertState.FIRING else EventTypes.ALERT_RESOLVED
    return CloudEvent.new(etype, "/metrics/alerts", alert, subject=alert.id,
                          id=f"alert-{digest}-{episode}-{alert.state.value}")


async def update_alerts(conn: asyncpg.Connection, changed: Sequence[Alert]) -> None:
    """Upsert alert rows and add their firing/resolved events to the outbox.

    One statement each, arrays through unnest, so a storm of thousands of transitions stays cheap."""
    if not changed:
        return
    await conn.execute(
        f"INSERT INTO metrics.alerts ({', '.join(ALERT_COLUMNS)}) SELECT * FROM unnest($1::text[], $2::text[], "
        "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::float8[], $10::timestamptz[], "
        "$11::timestamptz[]) ON CONFLICT (id) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in ALERT_COLUMNS[1:]),
        [a.id for a in changed], [a.rule for a in changed], [a.severity.value for a in changed],
        [a.state.value for a in changed], [a.site for a in changed], [a.host_id for a in changed],
        [a.device for a in changed], [a.summary for a in changed], [a.value for a in changed],
        [a.started_at for a in changed], [a.resolved_at for a in changed])
    rows = [outbox_row(e, event_subject(e.type, a.site)) for a, e in ((a, alert_event(a)) for a in changed)]
    await conn.execute(
        "INSERT INTO metrics.outbox (event_id, subject, payload) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
        [r["event_id"] for r in rows], [r["subject"] for r in rows], [r["payload"] for r in rows])


async def list_alerts(conn: asyncpg.Connection, state: AlertState, sites: list[str] | None, severity: str | None,
                      limit: int) -> list[Alert]:
    """Alerts in a state, newest first (resolved ones are only here, not in memory)."""
    rows = await conn.fetch(f"{_ALERT_SELECT}{_ALERT_WHERE} ORDER BY resolved_at DESC NULLS LAST, started_at DESC "
                            "LIMIT $4", state.value, sites, severity, limit)
    return [Alert.model_validate(dict(r)) for r in rows]


async def count_alerts(conn: asyncpg.Connection, state: AlertState, sites: list[str] | None,
                       severity: str | None) -> int:
    """How many alerts ``list_alerts`` would give without a limit."""
    return int(await conn.fetchval(f"SELECT count(*) FROM metrics.alerts{_ALERT_WHERE}", state.value, sites, severity))


# --- workloads ------------------------------------------------------------------------------
async def list_workloads(conn: asyncpg.Connection, limit: int) -> list[WorkloadNow]:
    """The most recently updated workloads, newest first."""
    rows = await conn.fetch("SELECT id, name, tenant, state, placements, updated_at FROM metrics.workloads "
                            "ORDER BY updated_at DESC LIMIT $1", limit)
    return [WorkloadNow(id=r["id"], name=r["name"], tenant=r["tenant"], state=r["state"], updated_at=r["updated_at"],
                        placements=[Placement.model_validate(p) for p in _json(r["placements"])]) for r in rows]


async def update_workload(conn: asyncpg.Connection, w: WorkloadNow) -> None:
    await conn.execute(
        "INSERT INTO metrics.workloads (id, name, tenant, state, updated_at, placements) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
        "tenant = EXCLUDED.tenant, state = EXCLUDED.state, placements = EXCLUDED.placements, "
        "updated_at = EXCLUDED.updated_at",
        w.id, w.name, w.tenant, w.state, w.updated_at, json.dumps([p.model_dump(mode="json") for p in w.placements]))


async def delete_workloads(conn: asyncpg.Connection, ids: Sequence[str]) -> None:
    if ids:
        await conn.execute("DELETE FROM metrics.workloads WHERE id = ANY($1::text[])", list(ids))
