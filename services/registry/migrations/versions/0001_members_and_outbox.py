"""Members and outbox.

Why: the registry must survive a restart without losing a registered host or service
instance, so membership lives in PostgreSQL; host/service up/down events must not be
lost, so they leave through an outbox written in the same transaction.

Revision ID: registry_0001
Revises:
Create Date: 2026-11-22
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import create_outbox

revision: str = "registry_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "registry"


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("site", sa.String(64)),
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("interval_s", sa.Float, nullable=False),
        sa.Column("address", sa.String(256)),
        sa.Column("meta", JSONB, nullable=False, server_default="{}"),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("ix_members_kind_status", "members", ["kind", "status"], schema=S)
    create_outbox(op, S)


def downgrade() -> None:
    op.drop_table("outbox", schema=S)
    op.drop_table("members", schema=S)

