"""The audit log: one row per admin action (keys, quotas, catalog, rules, labels, sites, subscriptions).

Why: who changed what, and when, must outlive the process that saw it and be readable
later by admins. The gateway sees every admin request with its authenticated key, so it
keeps the log; a row is written in the same transaction as a change the gateway makes
itself, and after the owning service answered for a change made elsewhere. Rows are only
ever inserted; listing is newest first by id, filtered by actor or action (indexed).

Revision ID: gateway_0002
Revises: gateway_0001
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "gateway_0002"
down_revision: str | None = "gateway_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "gateway"


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("actor_key_id", sa.String(32), nullable=False),
        sa.Column("actor_tenant", sa.String(64), nullable=False),
        sa.Column("actor_role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("changes", JSONB, nullable=False, server_default="{}"),
        sa.Column("status", sa.Integer, nullable=False),
        schema=S,
    )
    op.create_index("ix_audit_log_actor", "audit_log", ["actor_key_id", "id"], schema=S)
    op.create_index("ix_audit_log_action", "audit_log", ["action", "id"], schema=S)
    op.create_index("ix_audit_log_at", "audit_log", ["at"], schema=S)


def downgrade() -> None:
    op.drop_table("audit_log", schema=S)
