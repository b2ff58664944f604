"""The scheduler's tables, in schema ``scheduler``."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import outbox_table

metadata = MetaData(schema="scheduler")

workloads = Table(
    "workloads", metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(64)),
    Column("name", String(128), nullable=False),
    Column("spec", JSONB, nullable=False),
    Column("state", String(16), nullable=False),
    Column("hardware_type", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("replicas", Integer, nullable=False),
    Column("restarts", Integer, nullable=False, server_default="0"),
    Column("reschedules", Integer, nullable=False, server_default="0"),
    Column("sites", ARRAY(String(64)), nullable=False, server_default="{}"),
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64), nullable=False),
    Column("explanation", JSONB),
    Column("message", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    Column("kind", String(16), nullable=False, server_default="job"),
    Column("endpoint_version", BigInteger, nullable=False, server_default="0"),
    Column("replaces", String(64)),
    Column("draining_since", DateTime(timezone=True)),
    Index("ix_workloads_state", "state"),
    Index("ix_workloads_tenant_id", "tenant", "id"),
    Index("ux_workloads_idempotency", "tenant", "idempotency_key", unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL")),
    Index("ix_workloads_rollouts", "id",
          postgresql_where=text("replaces IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'stopped')")),
    Index("ix_workloads_services", "id",
          postgresql_where=text("kind = 'service' AND state NOT IN ('succeeded', 'failed', 'stopped')")),
)

replicas = Table(
    "replicas", metadata,
    Column("workload_id", String(64), ForeignKey("scheduler.workloads.id", ondelete="CASCADE"), primary_key=True),
    Column("replica", Integer, primary_key=True),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False),
    Column("host_id", String(64)),
    Column("site", String(64)),
    Column("devices", JSONB, nullable=False, server_default="[]"),
    Column("resources", JSONB, nullable=False, server_default="{}"),  # ReplicaResources: CPUs, memory, alternative
    Column("decision_id", BigInteger),
    Column("exit_code", Integer),
    Column("message", Text),
    Column("sends", Integer, nullable=False, server_default="0"),
    Column("sent_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("ready", Boolean),
    Column("endpoint", Text),
    Column("simulated", Boolean, nullable=False, server_default="false"),
    Index("ix_replicas_host_active", "host_id",
          postgresql_where=text("state IN ('placed', 'starting', 'running')")),
)

history = Table(
    "history", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("workload_id", String(64), ForeignKey("scheduler.workloads.id", ondelete="CASCADE"), nullable=False),
    Column("replica", Integer),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False, server_default=""),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_history_workload", "workload_id", "id"),
)

decisions = Table(
    "decisions", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("placer", String(32), nullable=False),
    Column("solver_status", String(32), nullable=False),
    Column("objective", Float, nullable=False),
    Column("batch", JSONB, nullable=False),
    Column("assignments", JSONB, nullable=False),
    Column("preemptions", JSONB, nullable=False),
    Column("pending", JSONB, nullable=False),
    Column("timings", JSONB, nullable=False),
    Index("ix_decisions_created", "created_at"),
)

hosts = Table(
    "hosts", metadata,
    Column("id", String(64), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("report", JSONB, nullable=False),
    Column("reported_at", DateTime(timezone=True), nullable=False),
    Column("up", Boolean, nullable=False, server_default="true"),
    Column("liveness_at", DateTime(timezone=True)),
    Column("device_health", JSONB, nullable=False, server_default="{}"),
)

tenant_quotas = Table(
    "tenant_quotas", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("limits", JSONB, nullable=False, server_default="{}"),  # resource → {"min": .., "max": ..}
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

outbox = outbox_table(metadata)
