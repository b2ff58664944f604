"""Sites, hosts, devices, telemetry, catalog, rules and outbox.

Why: the inventory is the fleet's source of truth and must survive restarts, so what
agents report lives in PostgreSQL. Hosts keep discovered and operator labels in separate
columns so that a re-registration never overwrites what an operator set. Device facts
(rarely changing) and the last telemetry readings (every few seconds) are split: readings
go to ``host_telemetry``, one narrow row per host rewritten in place (a low fillfactor
keeps those updates HOT), so 10,000 hosts reporting every 5 s cost 2,000 row updates a
second instead of 16,000 device-row updates. Device added/removed/health events must not
be lost, so they leave through the outbox in the same transaction as the change.

Revision ID: inventory_0001
Revises:
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import create_outbox

revision: str = "inventory_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "inventory"


def _ts(name: str, nullable: bool = False, default: bool = True) -> sa.Column:  # type: ignore[type-arg,unused-ignore]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=sa.func.now() if default else None)


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("city", sa.String(128), nullable=False),
        sa.Column("region", sa.String(128), nullable=False, server_default=""),
        sa.Column("lat", sa.Float),
        sa.Column("lon", sa.Float),
        sa.Column("origin", sa.String(8), nullable=False, server_default="config"),
        _ts("updated_at"),
        schema=S,
    )
    op.create_table(
        "site_links",
        sa.Column("a", sa.String(64), nullable=False),
        sa.Column("b", sa.String(64), nullable=False),
        sa.Column("bandwidth_gbps", sa.Float, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("a", "b"),
        schema=S,
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("hostname", sa.String(256), nullable=False),
        sa.Column("status", sa.String(8), nullable=False, server_default="unknown"),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=False, server_default=""),
        sa.Column("facts", JSONB, nullable=False),
        sa.Column("discovered_labels", JSONB, nullable=False, server_default="{}"),
        sa.Column("operator_labels", JSONB, nullable=False, server_default="{}"),
        sa.Column("device_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("hardware_types", JSONB, nullable=False, server_default="{}"),
        _ts("first_seen"),
        _ts("updated_at"),
        _ts("reported_at", default=False),
        _ts("status_changed_at", nullable=True, default=False),
        schema=S,
    )
    op.create_index("ix_hosts_site", "hosts", ["site", "id"], schema=S)
    op.create_index("ix_hosts_status", "hosts", ["status"], schema=S)
    op.execute(f"CREATE INDEX ix_hosts_labels ON {S}.hosts USING gin ((discovered_labels || operator_labels) jsonb_path_ops)")
    op.create_table(
        "devices",
        sa.Column("host_id", sa.String(64), sa.ForeignKey(f"{S}.hosts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(40), nullable=False),
        sa.Column("vendor_index", sa.Integer, nullable=False),
        sa.Column("hardware_type", sa.String(8), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("catalog_model", sa.String(128)),
        sa.Column("compute_units", sa.Float),
        sa.Column("memory_mib", sa.BigInteger),
        sa.Column("driver_version", sa.String(64)),
        sa.Column("runtimes", JSONB, nullable=False, server_default="{}"),
        sa.Column("firmware_version", sa.String(64)),
        sa.Column("uuid", sa.String(128)),
        sa.Column("pci_bus_id", sa.String(64)),
        sa.Column("numa_node", sa.Integer),
        sa.Column("links", JSONB, nullable=False, server_default="[]"),
        sa.Column("extra", JSONB, nullable=False, server_default="{}"),
        sa.Column("health", sa.String(9), nullable=False, server_default="unknown"),
        _ts("health_changed_at", nullable=True, default=False),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("host_id", "slot"),
        schema=S,
    )
    op.create_index("ix_devices_type_vendor", "devices", ["hardware_type", "vendor"], schema=S)
    op.create_index("ix_devices_site", "devices", ["site"], schema=S)
    op.create_table(
        "host_telemetry",
        sa.Column("host_id", sa.String(64), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_pct", sa.Float, nullable=False),
        sa.Column("mem_used_mib", sa.BigInteger, nullable=False),
        sa.Column("mem_total_mib", sa.BigInteger, nullable=False),
        sa.Column("samples", JSONB, nullable=False,
                  comment="Array by slot: [index, util %, mem used MiB, temp C, power W, healthy]."),
        schema=S,
    )
    # Rewritten every few seconds per host: leave room in each page for HOT updates and
    # vacuum often, so the table stays the size of the fleet.
    op.execute(f"ALTER TABLE {S}.host_telemetry SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, "
               "autovacuum_vacuum_cost_delay = 0)")
    op.create_table(
        "catalog",
        sa.Column("vendor", sa.String(40), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("hardware_type", sa.String(8), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("origin", sa.String(8), nullable=False, server_default="seed"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("vendor", "model"),
        schema=S,
    )
    op.create_table(
        "rules",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("vendor", sa.String(40), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("origin", sa.String(8), nullable=False, server_default="seed"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("kind", "id"),
        schema=S,
    )
    create_outbox(op, S)


def downgrade() -> None:
    for table in ("outbox", "rules", "catalog", "host_telemetry", "devices", "hosts", "site_links", "sites"):
        op.drop_table(table, schema=S)
