"""Elastic tenant quotas: a guaranteed ``min`` and a limit ``max`` per resource.

Why: a tenant is guaranteed part of the fleet (``min``) and may borrow idle capacity above it up
to ``max``; what others borrowed is reclaimed when a tenant below its guarantee needs it. The
resources are devices per hardware type, compute units, logical CPUs and host memory, so the
quota is one JSONB map ``limits``: resource → ``{"min": .., "max": ..}``. Rows from before this
revision keep their meaning: each device limit and the compute-unit limit become a ``max`` with
``min`` 0, and a device limit for type 'cpu' (CPU-only work counted its CPUs so) becomes the
'cpu' resource. The old columns are dropped; downgrading rebuilds them from the ``max`` values
(guarantees, memory limits and the CPUs of accelerator work are lost then).

Revision ID: scheduler_0004
Revises: scheduler_0003
Create Date: 2027-01-12
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "scheduler_0004"
down_revision: str | None = "scheduler_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"


def upgrade() -> None:
    op.add_column("tenant_quotas", sa.Column("limits", JSONB, nullable=False, server_default="{}"), schema=S)
    op.execute("""
        UPDATE scheduler.tenant_quotas SET limits = COALESCE((
            SELECT jsonb_object_agg(key, jsonb_build_object('min', 0, 'max', value))
            FROM jsonb_each(devices)), '{}'::jsonb)
          || CASE WHEN compute_units IS NULL THEN '{}'::jsonb
                  ELSE jsonb_build_object('compute_units', jsonb_build_object('min', 0, 'max', compute_units)) END
    """)
    op.drop_column("tenant_quotas", "devices", schema=S)
    op.drop_column("tenant_quotas", "compute_units", schema=S)


def downgrade() -> None:
    op.add_column("tenant_quotas", sa.Column("devices", JSONB, nullable=False, server_default="{}"), schema=S)
    op.add_column("tenant_quotas", sa.Column("compute_units", sa.Float), schema=S)
    op.execute("""
        UPDATE scheduler.tenant_quotas SET
          devices = COALESCE((SELECT jsonb_object_agg(key, value -> 'max') FROM jsonb_each(limits)
                              WHERE key NOT IN ('compute_units', 'memory_gib')
                                AND jsonb_typeof(value -> 'max') = 'number'), '{}'::jsonb),
          compute_units = (limits -> 'compute_units' ->> 'max')::float
    """)
    op.drop_column("tenant_quotas", "limits", schema=S)
