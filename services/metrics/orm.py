"""The metrics service's tables, in schema ``metrics``.

``samples`` and the two rollup tables are partitioned by time (declarative range
partitioning); their partitions are created ahead and dropped past retention by
``services.metrics.partitions``, never by a migration.
"""

from __future__ import annotations

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import outbox_table

SCHEMA = "metrics"
metadata = MetaData(schema=SCHEMA)

hosts = Table(
    "hosts", metadata,
    Column("host_id", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("hostname", String(256)),
    Column("generation", BigInteger, nullable=False, server_default="-1"),
    Column("status", String(8), nullable=False, server_default="unknown"),
    Column("labels", JSONB, nullable=False, server_default="{}"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

devices = Table(
    "devices", metadata,
    Column("id", Integer, Identity(), primary_key=True),
    Column("host_id", String(64), nullable=False),
    Column("slot", Integer, nullable=False),
    Column("vendor_index", Integer),
    Column("site", String(64), nullable=False),
    Column("hardware_type", String(16), nullable=False, server_default="unknown"),
    Column("vendor", String(32), nullable=False, server_default="unknown"),
    Column("model", String(128), nullable=False, server_default="unknown"),
    Column("memory_mib", BigInteger),
    Column("driver_version", String(64)),
    Column("runtimes", JSONB, nullable=False, server_default="{}"),
    Column("firmware_version", String(64)),
    Column("uuid", String(128)),
    Column("health", String(16), nullable=False, server_default="unknown"),
    Column("present", Boolean, nullable=False, server_default="true"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("host_id", "slot", name="uq_devices_host_slot"),
)

# Partitioned (RANGE on ts); partitions are named samples_pYYYYMMDDHH.
samples = Table(
    "samples", metadata,
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("device_id", Integer, nullable=False),
    Column("util", REAL, nullable=False),
    Column("mem_mib", Integer, nullable=False),
    Column("temp", REAL, nullable=False),
    Column("power", REAL, nullable=False),
    Column("healthy", Boolean, nullable=False),
    Column("batch", BigInteger, nullable=False),
    postgresql_partition_by="RANGE (ts)",
)


def _rollup(name: str) -> Table:
    return Table(
        name, metadata,
        Column("scope", SmallInteger, primary_key=True),
        Column("key", String(140), primary_key=True),
        Column("bucket", DateTime(timezone=True), primary_key=True),
        Column("n", Integer, nullable=False),
        Column("util_sum", Float, nullable=False),
        Column("util_max", REAL, nullable=False),
        Column("mem_sum", Float, nullable=False),
        Column("temp_sum", Float, nullable=False),
        Column("temp_max", REAL, nullable=False),
        Column("power_sum", Float, nullable=False),
        Column("unhealthy", Integer, nullable=False),
        postgresql_partition_by="RANGE (bucket)",
    )


rollup_1m = _rollup("rollup_1m")
rollup_1h = _rollup("rollup_1h")

checkpoint = Table(
    "checkpoint", metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("batch", BigInteger, nullable=False),
    Column("open_from", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("id", String(200), primary_key=True),
    Column("rule", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("site", String(64), nullable=False),
    Column("host_id", String(64)),
    Column("device", String(140)),
    Column("summary", String(512), nullable=False),
    Column("value", Float),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    Index("ix_alerts_state", "state"),
)

workloads = Table(
    "workloads", metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(128)),
    Column("tenant", String(128)),
    Column("state", String(32), nullable=False),
    Column("placements", JSONB, nullable=False, server_default="[]"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_workloads_state", "state"),
)

outbox = outbox_table(metadata)
