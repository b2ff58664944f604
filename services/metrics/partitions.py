"""Time partitions: created ahead of the clock, dropped whole once past retention.

Each partitioned table has a fixed partition width aligned to the Unix epoch (UTC), so
every process computes the same bounds. ``Coverage`` remembers which time range has
partitions, and the ingest path drops (and counts) samples outside it instead of letting
one stray timestamp fail a whole COPY.

DDL through asyncpg, like every database call of the service; the caller owns the transaction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from libs.config import MetricsSettings
from services.metrics.orm import SCHEMA

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class PartitionSpec:
    table: str
    width: timedelta
    retention: timedelta
    fmt: str

    def floor(self, t: datetime) -> datetime:
        step = int(self.width.total_seconds())
        return EPOCH + timedelta(seconds=(int((t - EPOCH).total_seconds()) // step) * step)

    def name(self, start: datetime) -> str:
        return f"{self.table}_p{start.strftime(self.fmt)}"


def specs(settings: MetricsSettings) -> list[PartitionSpec]:
    return [
        PartitionSpec("samples", timedelta(hours=settings.raw_partition_hours),
                      timedelta(hours=settings.raw_retention_hours), "%Y%m%d%H"),
        PartitionSpec("rollup_1m", timedelta(days=1), timedelta(days=settings.rollup_1m_retention_days), "%Y%m%d"),
        PartitionSpec("rollup_1h", timedelta(days=30), timedelta(days=settings.rollup_1h_retention_days), "%Y%m%d"),
    ]


@dataclass
class Coverage:
    """The time range every partitioned table can take rows for: [start, end)."""

    start: datetime = EPOCH
    end: datetime = EPOCH

    def contains(self, t: datetime) -> bool:
        return self.start <= t < self.end


async def _existing(conn: asyncpg.Connection, table: str) -> list[tuple[str, datetime, datetime]]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST($1::text AS regclass)", f"{SCHEMA}.{table}")
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound or "")
        if m:
            out.append((name, datetime.fromisoformat(m.group(1)), datetime.fromisoformat(m.group(2))))
    return out


async def maintain(conn: asyncpg.Connection, settings: MetricsSettings, now: datetime | None = None) -> Coverage:
    """Create missing partitions from ``now - max_sample_age`` to ``partitions_ahead`` widths ahead; drop expired ones.

    Returns the range covered by every table (the intersection), for the ingest filter. Caller's transaction.
    """
    now = now or datetime.now(UTC)
    coverage: Coverage | None = None
    for spec in specs(settings):
        existing = await _existing(conn, spec.table)
        have = {start for _, start, _ in existing}
        first = spec.floor(now - timedelta(seconds=settings.max_sample_age_s))
        last = spec.floor(now) + spec.width * settings.partitions_ahead
        start = first
        while start <= last:
            if start not in have and start + spec.width > now - spec.retention:
                end = start + spec.width
                await conn.execute(
                    f'CREATE TABLE IF NOT EXISTS {SCHEMA}."{spec.name(start)}" PARTITION OF {SCHEMA}.{spec.table} '
                    f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
                existing.append((spec.name(start), start, end))
            start += spec.width
        for name, _, end in existing:
            if end <= now - spec.retention:
                await conn.execute(f'DROP TABLE IF EXISTS {SCHEMA}."{name}"')
                log.info("dropped partition %s.%s (past retention)", SCHEMA, name)
        covered = _contiguous([(s, e) for n, s, e in existing if e > now - spec.retention], now)
        coverage = covered if coverage is None else Coverage(max(coverage.start, covered.start),
                                                              min(coverage.end, covered.end))
    return coverage or Coverage()


def _contiguous(ranges: list[tuple[datetime, datetime]], now: datetime) -> Coverage:
    """The contiguous run of partitions around ``now``."""
    ranges.sort()
    run: Coverage | None = None
    for s, e in ranges:
        if run is not None and s == run.end:
            run.end = e
        elif run is None or run.end <= now:
            run = Coverage(s, e)
        else:
            break
    if run is None or not run.contains(now):
        return Coverage()
    return run


BRIN_INDEXES = ("ix_samples_device_ts_brin",)  # ix_samples_batch summarizes itself (autosummarize, 128 pages a range)


async def summarize_recent(conn: asyncpg.Connection, settings: MetricsSettings, now: datetime | None = None) -> int:
    """Summarize the BRIN ranges written since the last call, in the raw-sample partitions that take rows now
    (this one, the one before, the next); returns how many ranges. Until summarized a range is read whole by
    every query that uses the index. Takes no lock that a COPY waits for."""
    now = now or datetime.now(UTC)
    spec = specs(settings)[0]
    cur = spec.floor(now)
    names = [spec.name(cur + spec.width * k) for k in (-1, 0, 1)]
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '200ms'")  # a vacuum of the partition summarizes anyway
            n = await conn.fetchval(
                "SELECT coalesce(sum(brin_summarize_new_values(i.inhrelid)), 0) FROM pg_inherits i "
                "JOIN pg_index x ON x.indexrelid = i.inhrelid JOIN pg_class t ON t.oid = x.indrelid "
                "WHERE i.inhparent = ANY($1::regclass[]) AND t.relname = ANY($2::text[])",
                [f"{SCHEMA}.{name}" for name in BRIN_INDEXES], names)
    except asyncpg.LockNotAvailableError:
        return 0
    return int(n)
