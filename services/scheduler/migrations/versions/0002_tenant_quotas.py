"""Tenant quotas, kept where usage is known.

Why: a submission is checked against the tenant's quota and what the tenant holds now.
The scheduler knows what is held (its replicas) and places within the quotas, so the
quotas live here and the check is made once, in the submit handler. Rows the gateway kept
(``gateway.tenant_quotas``, from before this revision) are copied when that table exists;
that table is left in place, unused.

Revision ID: scheduler_0002
Revises: scheduler_0001
Create Date: 2026-12-01
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "scheduler_0002"
down_revision: str | None = "scheduler_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"


def upgrade() -> None:
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("devices", JSONB, nullable=False, server_default="{}"),
        sa.Column("compute_units", sa.Float),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.execute("""
        DO $$
        BEGIN
            IF to_regclass('gateway.tenant_quotas') IS NOT NULL THEN
                INSERT INTO scheduler.tenant_quotas (tenant, devices, compute_units, updated_at)
                SELECT tenant, devices, compute_units, updated_at FROM gateway.tenant_quotas
                ON CONFLICT (tenant) DO NOTHING;
            END IF;
        END $$;
    """)


def downgrade() -> None:
    op.drop_table("tenant_quotas", schema=S)
