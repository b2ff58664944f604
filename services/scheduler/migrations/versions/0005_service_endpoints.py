"""Service workloads: their kind, and per replica its readiness and the URL it answers on.

Why: a service's replicas take requests through the gateway only while ready, at the address
their agent reported; the scheduler is the record of both, so a restarted scheduler (and a
gateway reading the endpoint sets at start) knows them without waiting for every agent's next
report. ``endpoint_version`` orders the ``endpoint.changed`` events of one service, so a
gateway holding a newer set ignores an older one. A rolling update is a new workload that
``replaces`` the running one: the old one is ``draining_since`` (out of rotation, still running)
once the new one is ready, and stopped after the drain, so no request finds a replica gone.

Revision ID: scheduler_0005
Revises: scheduler_0004
Create Date: 2026-12-07
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0005"
down_revision: str | None = "scheduler_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"


def upgrade() -> None:
    op.add_column("workloads", sa.Column("kind", sa.String(16), nullable=False, server_default="job"), schema=S)
    op.add_column("workloads", sa.Column("endpoint_version", sa.BigInteger, nullable=False, server_default="0"),
                  schema=S)
    op.add_column("workloads", sa.Column("replaces", sa.String(64)), schema=S)
    op.add_column("workloads", sa.Column("draining_since", sa.DateTime(timezone=True)), schema=S)
    op.create_index("ix_workloads_rollouts", "workloads", ["id"], schema=S,
                    postgresql_where=sa.text("replaces IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'stopped')"))
    op.create_index("ix_workloads_services", "workloads", ["id"], schema=S,
                    postgresql_where=sa.text("kind = 'service' AND state NOT IN ('succeeded', 'failed', 'stopped')"))
    op.add_column("replicas", sa.Column("ready", sa.Boolean), schema=S)
    op.add_column("replicas", sa.Column("endpoint", sa.Text), schema=S)
    op.add_column("replicas", sa.Column("simulated", sa.Boolean, nullable=False, server_default="false"), schema=S)


def downgrade() -> None:
    for column in ("simulated", "endpoint", "ready"):
        op.drop_column("replicas", column, schema=S)
    op.drop_index("ix_workloads_services", "workloads", schema=S)
    op.drop_index("ix_workloads_rollouts", "workloads", schema=S)
    op.drop_column("workloads", "draining_since", schema=S)
    op.drop_column("workloads", "replaces", schema=S)
    op.drop_column("workloads", "endpoint_version", schema=S)
    op.drop_column("workloads", "kind", schema=S)
