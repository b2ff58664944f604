"""The gateway's tables, in schema ``gateway``."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="gateway")

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("prefix", String(16), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("tenant", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("name", String(128), nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", String(32)),
    Column("revoked_at", DateTime(timezone=True)),
    Index("ix_api_keys_prefix", "prefix"),
    Index("ix_api_keys_tenant", "tenant"),
)

# ``tenant_quotas`` (revision gateway_0001) is no longer read or written: tenant quotas live in
# the scheduler, whose revision scheduler_0002 copied its rows. The table is kept, not dropped.

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("key_id", String(32), nullable=False),
    Column("idem_key", String(255), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(512), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer),
    Column("content_type", String(128)),
    Column("body", LargeBinary),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("key_id", "idem_key"),
    Index("ix_idempotency_created", "created_at"),
)

subscriptions = Table(
    "subscriptions", metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("created_by", String(32), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("types", JSONB, nullable=False),
    Column("filters", JSONB, nullable=False, server_default="{}"),
    Column("scope_tenant", String(64)),
    Column("description", String(256), nullable=False, server_default=""),
    Column("secret", String(128), nullable=False),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("disabled_reason", String(256)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_subscriptions_tenant", "tenant", "id"),
    Index("ix_subscriptions_status", "status"),
)

deliveries = Table(
    "deliveries", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("subscription_id", String(40), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("event_subject", String(256), nullable=False, server_default=""),
    Column("stream_seq", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("leased_until", DateTime(timezone=True)),
    Column("lease_token", String(48)),  # written with each lease; a result is recorded only under it
    Column("last_status_code", Integer),
    Column("last_error", String(256)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_subscription_event"),
    Index("ix_deliveries_due", "next_attempt_at", postgresql_where=Column("status") == "pending"),
    Index("ix_deliveries_order", "subscription_id", "event_subject", "stream_seq"),
    Index("ix_deliveries_list", "subscription_id", "id"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("request_id", String(128), nullable=False),
    Column("actor_key_id", String(32), nullable=False),
    Column("actor_tenant", String(64), nullable=False),
    Column("actor_role", String(16), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("changes", JSONB, nullable=False, server_default="{}"),
    Column("status", Integer, nullable=False),
    Index("ix_audit_log_actor", "actor_key_id", "id"),
    Index("ix_audit_log_action", "action", "id"),
    Index("ix_audit_log_at", "at"),
)

enrollment_tokens = Table(
    "enrollment_tokens", metadata,
    Column("id", String(32), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("site", String(64), nullable=False),
    Column("host", String(64), nullable=False),
    Column("created_by", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
)

host_credentials = Table(
    "host_credentials", metadata,
    Column("id", String(32), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("host", String(64), nullable=False),
    Column("public_key", String(56), nullable=False, unique=True),
    Column("token_id", String(32), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Index("ix_host_credentials_host", "site", "host"),
)
