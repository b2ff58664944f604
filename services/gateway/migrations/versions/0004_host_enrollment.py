"""Host enrollment: single-use enrollment tokens and the NATS credentials issued for them.

Why: hosts got their NATS passwords from whoever provisioned them, shared and never
revocable one by one. An admin now creates a short-lived token for one host; the host
exchanges it once for a user JWT limited to its own subjects. Only token digests are stored;
a credential row keeps the public key, so revoking it puts that key on the NATS account's
revocation list.

Revision ID: gateway_0004
Revises: gateway_0003
Create Date: 2026-12-07
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gateway_0004"
down_revision: str | None = "gateway_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "gateway"


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        schema=S)
    op.create_table(
        "host_credentials",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("public_key", sa.String(56), nullable=False, unique=True),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema=S)
    op.create_index("ix_host_credentials_host", "host_credentials", ["site", "host"], schema=S)


def downgrade() -> None:
    op.drop_table("host_credentials", schema=S)
    op.drop_table("enrollment_tokens", schema=S)
