"""The inventory's tables, in schema ``inventory``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import outbox_table

metadata = MetaData(schema="inventory")

sites = Table(
    "sites", metadata,
    Column("id", String(64), primary_key=True),
    Column("city", String(128), nullable=False),
    Column("region", String(128), nullable=False, server_default=""),
    Column("lat", Float),
    Column("lon", Float),
    Column("origin", String(8), nullable=False, server_default="config"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

site_links = Table(
    "site_links", metadata,
    Column("a", String(64), nullable=False),
    Column("b", String(64), nullable=False),
    Column("bandwidth_gbps", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("a", "b"),
)

hosts = Table(
    "hosts", metadata,
    Column("id", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("hostname", String(256), nullable=False),
    Column("status", String(8), nullable=False, server_default="unknown"),
    Column("generation", BigInteger, nullable=False),
    Column("agent_version", String(64), nullable=False, server_default=""),
    Column("facts", JSONB, nullable=False),
    Column("discovered_labels", JSONB, nullable=False, server_default="{}"),
    Column("operator_labels", JSONB, nullable=False, server_default="{}"),
    Column("device_count", Integer, nullable=False, server_default="0"),
    Column("hardware_types", JSONB, nullable=False, server_default="{}"),
    Column("first_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    Column("status_changed_at", DateTime(timezone=True)),
    Index("ix_hosts_site", "site", "id"),
    Index("ix_hosts_status", "status"),
)

devices = Table(
    "devices", metadata,
    Column("host_id", String(64), ForeignKey("inventory.hosts.id", ondelete="CASCADE"), nullable=False),
    Column("slot", Integer, nullable=False),
    Column("site", String(64), nullable=False),
    Column("vendor", String(40), nullable=False),
    Column("vendor_index", Integer, nullable=False),
    Column("hardware_type", String(8), nullable=False),
    Column("model", String(128), nullable=False),
    Column("catalog_model", String(128)),
    Column("compute_units", Float),
    Column("memory_mib", BigInteger),
    Column("driver_version", String(64)),
    Column("runtimes", JSONB, nullable=False, server_default="{}"),
    Column("firmware_version", String(64)),
    Column("uuid", String(128)),
    Column("pci_bus_id", String(64)),
    Column("numa_node", Integer),
    Column("links", JSONB, nullable=False, server_default="[]"),
    Column("extra", JSONB, nullable=False, server_default="{}"),
    Column("health", String(9), nullable=False, server_default="unknown"),
    Column("health_changed_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("host_id", "slot"),
    Index("ix_devices_type_vendor", "hardware_type", "vendor"),
    Index("ix_devices_site", "site"),
)

host_telemetry = Table(
    "host_telemetry", metadata,
    Column("host_id", String(64), primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("cpu_pct", Float, nullable=False),
    Column("mem_used_mib", BigInteger, nullable=False),
    Column("mem_total_mib", BigInteger, nullable=False),
    Column("samples", JSONB, nullable=False, comment="Array by slot: [index, util %, mem used MiB, temp C, power W, healthy]."),
)

catalog = Table(
    "catalog", metadata,
    Column("vendor", String(40), nullable=False),
    Column("model", String(128), nullable=False),
    Column("hardware_type", String(8), nullable=False),
    Column("data", JSONB, nullable=False),
    Column("origin", String(8), nullable=False, server_default="seed"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("vendor", "model"),
)

rules = Table(
    "rules", metadata,
    Column("kind", String(8), nullable=False),
    Column("id", String(128), nullable=False),
    Column("vendor", String(40), nullable=False),
    Column("data", JSONB, nullable=False),
    Column("origin", String(8), nullable=False, server_default="seed"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("kind", "id"),
)

outbox = outbox_table(metadata)
