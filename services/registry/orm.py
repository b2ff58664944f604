"""The registry's tables, in schema ``registry``."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, Index, MetaData, String, Table
from sqlalchemy.dialects.postgresql import JSONB

from libs.db.outbox import outbox_table

metadata = MetaData(schema="registry")

members = Table(
    "members", metadata,
    Column("id", String(160), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(128), nullable=False),
    Column("site", String(64)),
    Column("version", String(64), nullable=False, server_default=""),
    Column("status", String(8), nullable=False),
    Column("interval_s", Float, nullable=False),
    Column("address", String(256)),
    Column("meta", JSONB, nullable=False, server_default="{}"),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("status_changed_at", DateTime(timezone=True), nullable=False),
    Index("ix_members_kind_status", "kind", "status"),
)

outbox = outbox_table(metadata)
