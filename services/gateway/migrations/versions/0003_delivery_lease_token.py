"""Webhook deliveries: a lease token.

Why: a delivery attempt that overran its lease (a slow target, a paused process) could come
back after another gateway worker had leased the same delivery again, and its result then
overwrote the newer attempt's. Each lease now writes a fresh random token with
``leased_until``, and an attempt's result is recorded only while the row still carries the
token its lease wrote: a late finisher changes nothing. Rows leased before this revision
have no token; they are leased again once their lease expires.

Revision ID: gateway_0003
Revises: gateway_0002
Create Date: 2026-12-06
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gateway_0003"
down_revision: str | None = "gateway_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "gateway"


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("lease_token", sa.String(48)), schema=S)


def downgrade() -> None:
    op.drop_column("deliveries", "lease_token", schema=S)
