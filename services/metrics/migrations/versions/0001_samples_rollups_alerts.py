"""Raw samples, rollups, device metadata, alerts, workloads, outbox.

Why:
- Telemetry arrives at up to ~100,000 device samples/s. Raw samples go to ``samples``,
  range-partitioned by time, so that retention is ``DROP TABLE`` of a whole partition
  (no DELETE, no bloat) and a query over a window touches only its partitions. Rows are
  narrow (an integer device id, not text) because COPY throughput is bytes. Partitions
  are created ahead and dropped by the service itself; the migration creates none.
- ``(device_id, ts)`` serves a device's series at steps under a minute; the BRIN index on
  ``batch`` (monotonic per ingest batch) lets a restart find the samples written after
  the last rollup checkpoint without scanning whole partitions.
- Rollups (1 minute, 1 hour) per device, host, site and hardware type are kept
  incrementally in memory and written when a bucket closes, as sums, so that a late
  sample merges with ``ON CONFLICT … DO UPDATE`` and averages stay exact. ``checkpoint``
  records up to which ingest batch the open buckets are safe in PostgreSQL.
- Device metadata (site, host, hardware type, vendor, model, versions) comes from
  capability events; ``devices`` keeps it (and the integer ids) across restarts.
- Alerts and workloads survive a restart; alert events must not be lost, so they leave
  through the outbox in the same transaction as the alert row.

Revision ID: metrics_0001
Revises:
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import create_outbox

revision: str = "metrics_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "metrics"
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("host_id", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(256)),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="-1"),
        sa.Column("status", sa.String(8), nullable=False, server_default="unknown"),
        sa.Column("labels", JSONB, nullable=False, server_default="{}"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema=S,
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("host_id", sa.String(64), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("vendor_index", sa.Integer),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("hardware_type", sa.String(16), nullable=False, server_default="unknown"),
        sa.Column("vendor", sa.String(32), nullable=False, server_default="unknown"),
        sa.Column("model", sa.String(128), nullable=False, server_default="unknown"),
        sa.Column("memory_mib", sa.BigInteger),
        sa.Column("driver_version", sa.String(64)),
        sa.Column("runtimes", JSONB, nullable=False, server_default="{}"),
        sa.Column("firmware_version", sa.String(64)),
        sa.Column("uuid", sa.String(128)),
        sa.Column("health", sa.String(16), nullable=False, server_default="unknown"),
        sa.Column("present", sa.Boolean, nullable=False, server_default="true"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.UniqueConstraint("host_id", "slot", name="uq_devices_host_slot"),
        schema=S,
    )
    op.execute(
        f"CREATE TABLE {S}.samples (ts timestamptz NOT NULL, device_id integer NOT NULL, util real NOT NULL, "
        "mem_mib integer NOT NULL, temp real NOT NULL, power real NOT NULL, healthy boolean NOT NULL, "
        "batch bigint NOT NULL) PARTITION BY RANGE (ts)")
    op.execute(f"CREATE INDEX ix_samples_device_ts ON {S}.samples (device_id, ts)")
    op.execute(f"CREATE INDEX ix_samples_batch ON {S}.samples USING brin (batch) WITH (autosummarize = on)")
    for name in ("rollup_1m", "rollup_1h"):
        op.execute(
            f"CREATE TABLE {S}.{name} (scope smallint NOT NULL, key varchar(140) NOT NULL, bucket timestamptz NOT NULL, "
            "n integer NOT NULL, util_sum double precision NOT NULL, util_max real NOT NULL, "
            "mem_sum double precision NOT NULL, temp_sum double precision NOT NULL, temp_max real NOT NULL, "
            "power_sum double precision NOT NULL, unhealthy integer NOT NULL, "
            f"PRIMARY KEY (scope, key, bucket)) PARTITION BY RANGE (bucket)")
    op.create_table(
        "checkpoint",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("batch", sa.BigInteger, nullable=False),
        sa.Column("open_from", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema=S,
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("host_id", sa.String(64)),
        sa.Column("device", sa.String(140)),
        sa.Column("summary", sa.String(512), nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("ix_alerts_state", "alerts", ["state"], schema=S)
    op.create_table(
        "workloads",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128)),
        sa.Column("tenant", sa.String(128)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("placements", JSONB, nullable=False, server_default="[]"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        schema=S,
    )
    op.create_index("ix_workloads_state", "workloads", ["state"], schema=S)
    create_outbox(op, S)


def downgrade() -> None:
    for name in ("outbox", "workloads", "alerts", "checkpoint", "rollup_1h", "rollup_1m", "samples", "devices", "hosts"):
        op.execute(f"DROP TABLE IF EXISTS {S}.{name} CASCADE")
