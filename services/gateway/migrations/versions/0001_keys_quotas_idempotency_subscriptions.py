"""API keys, tenant quotas, idempotency records, event subscriptions and webhook deliveries.

Why: every route needs a key, and keys must survive restarts and be revocable, so they
live here, hashed (sha256 of a high-entropy secret; the short prefix is for lookup only).
Quotas are tenant policy the gateway enforces at submit. A retried POST with the same
Idempotency-Key must get the first answer even after a restart, so responses are kept
here for a day. Webhook deliveries are retried for more than 24 h and must survive a
gateway crash, so each accepted event becomes a delivery row before its JetStream
message is acknowledged.

Revision ID: gateway_0001
Revises:
Create Date: 2026-11-23
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "gateway_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "gateway"


def _ts(name: str, *, nullable: bool = False, now: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable,
                     server_default=sa.func.now() if now else None)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False, server_default=""),
        _ts("created_at"),
        sa.Column("created_by", sa.String(32)),
        _ts("revoked_at", nullable=True, now=False),
        schema=S,
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"], schema=S)
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"], schema=S)

    op.create_table(
        "tenant_quotas",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("devices", JSONB, nullable=False, server_default="{}"),
        sa.Column("compute_units", sa.Float),
        _ts("updated_at"),
        schema=S,
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("idem_key", sa.String(255), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("content_type", sa.String(128)),
        sa.Column("body", sa.LargeBinary),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("key_id", "idem_key"),
        schema=S,
    )
    op.create_index("ix_idempotency_created", "idempotency_keys", ["created_at"], schema=S)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("types", JSONB, nullable=False),
        sa.Column("filters", JSONB, nullable=False, server_default="{}"),
        sa.Column("scope_tenant", sa.String(64)),
        sa.Column("description", sa.String(256), nullable=False, server_default=""),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("disabled_reason", sa.String(256)),
        _ts("created_at"),
        _ts("updated_at"),
        schema=S,
    )
    op.create_index("ix_subscriptions_tenant", "subscriptions", ["tenant", "id"], schema=S)
    op.create_index("ix_subscriptions_status", "subscriptions", ["status"], schema=S)

    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("subscription_id", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("event_subject", sa.String(256), nullable=False, server_default=""),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        _ts("next_attempt_at"),
        _ts("leased_until", nullable=True, now=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.String(256)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_subscription_event"),
        schema=S,
    )
    op.create_index("ix_deliveries_due", "deliveries", ["next_attempt_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_deliveries_order", "deliveries", ["subscription_id", "event_subject", "stream_seq"], schema=S)
    op.create_index("ix_deliveries_list", "deliveries", ["subscription_id", "id"], schema=S)


def downgrade() -> None:
    for table in ("deliveries", "subscriptions", "idempotency_keys", "tenant_quotas", "api_keys"):
        op.drop_table(table, schema=S)
