"""Workloads, replicas, history, placement decisions, the fleet view and the outbox.

Why: accepted work must survive a scheduler restart, so a workload is committed before
the submit is answered; each replica's assignment (host, devices, attempt) is the desired
state the reconciler compares agents' reports against, so it is a row, not memory; every
state change is kept in ``history`` so a user can see what happened and why; every
placement decision is kept with its solver status and objective so a surprising
placement can be explained after the fact; the fleet view (last capability report,
liveness, device health per host) is kept so a restarted scheduler does not have to wait
for every agent to report again before it can place; workload events and agent commands
must not be lost between commit and publish, so they leave through an outbox.

Revision ID: scheduler_0001
Revises:
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import create_outbox

revision: str = "scheduler_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"
ACTIVE = sa.text("state IN ('placed', 'starting', 'running')")


def upgrade() -> None:
    op.create_table(
        "workloads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64)),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("hardware_type", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("restarts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reschedules", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sites", sa.ARRAY(sa.String(64)), nullable=False, server_default="{}"),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("explanation", JSONB),
        sa.Column("message", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("ix_workloads_state", "workloads", ["state"], schema=S)
    op.create_index("ix_workloads_tenant_id", "workloads", ["tenant", "id"], schema=S)
    op.create_index("ux_workloads_idempotency", "workloads", ["tenant", "idempotency_key"], unique=True, schema=S,
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.create_table(
        "replicas",
        sa.Column("workload_id", sa.String(64), sa.ForeignKey(f"{S}.workloads.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("replica", sa.Integer, primary_key=True),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("host_id", sa.String(64)),
        sa.Column("site", sa.String(64)),
        sa.Column("devices", JSONB, nullable=False, server_default="[]"),
        sa.Column("decision_id", sa.BigInteger),
        sa.Column("exit_code", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("sends", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("ix_replicas_host_active", "replicas", ["host_id"], schema=S, postgresql_where=ACTIVE)
    op.create_table(
        "history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("workload_id", sa.String(64), sa.ForeignKey(f"{S}.workloads.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("replica", sa.Integer),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("ix_history_workload", "history", ["workload_id", "id"], schema=S)
    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("placer", sa.String(32), nullable=False),
        sa.Column("solver_status", sa.String(32), nullable=False),
        sa.Column("objective", sa.Float, nullable=False),
        sa.Column("batch", JSONB, nullable=False),
        sa.Column("assignments", JSONB, nullable=False),
        sa.Column("preemptions", JSONB, nullable=False),
        sa.Column("pending", JSONB, nullable=False),
        sa.Column("timings", JSONB, nullable=False),
        schema=S,
    )
    op.create_index("ix_decisions_created", "decisions", ["created_at"], schema=S)
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("report", JSONB, nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("up", sa.Boolean, nullable=False, server_default="true"),
        sa.Column("liveness_at", sa.DateTime(timezone=True)),
        sa.Column("device_health", JSONB, nullable=False, server_default="{}"),
        schema=S,
    )
    create_outbox(op, S)


def downgrade() -> None:
    for table in ("outbox", "hosts", "decisions", "history", "replicas", "workloads"):
        op.drop_table(table, schema=S)
