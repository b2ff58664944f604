"""The transactional outbox: events that must not be lost leave through PostgreSQL.

A model function writes the event into its service's ``outbox`` table in the same
transaction as the state change (``enqueue``); the relay publishes committed rows to
JetStream with the event id as ``Nats-Msg-Id`` and marks them sent. JetStream dedupes
a re-publish after a crash inside its window, and consumers dedupe by id beyond it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.aio import wait_event
from libs.bus.connection import Bus
from libs.bus.subjects import event_subject
from libs.events import CloudEvent
from libs.metrics import OUTBOX_PENDING

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData) -> Table:
    """Each service declares its own outbox in its own schema (metadata.schema)."""
    return Table(
        "outbox", metadata,
        Column("seq", BigInteger, Identity(), primary_key=True),
        Column("event_id", String(128), nullable=False, unique=True),
        Column("subject", String(256), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True)),
        Index("ix_outbox_unsent", "seq", postgresql_where=Column("sent_at").is_(None)),
    )


def create_outbox(op: Any, schema: str) -> None:
    """Create a service's outbox from its Alembic migration (``op`` is ``alembic.op``)."""
    import sqlalchemy as sa

    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_index("ix_outbox_unsent", "outbox", ["seq"], schema=schema, postgresql_where=sa.text("sent_at IS NULL"))


def outbox_row(event: CloudEvent, subject: str) -> dict[str, Any]:
    """The outbox row that publishes ``event`` on ``subject`` (for inserting many rows at once)."""
    return {"event_id": event.id, "subject": subject, "payload": event.to_bytes()}


async def enqueue(session: AsyncSession, table: Table, event: CloudEvent, *, site: str | None = None) -> None:
    """Add an event to the outbox inside the caller's transaction (flush only)."""
    await session.execute(table.insert().values(**outbox_row(event, event_subject(event.type, site))))


class OutboxRelay:
    """Publishes committed outbox rows in order; one per service process (SKIP LOCKED lets replicas share)."""

    def __init__(self, service: str, maker: async_sessionmaker[AsyncSession], table: Table, bus: Bus, *,
                 batch: int = 256, poll_s: float = 0.5, keep_sent: timedelta = timedelta(hours=24)) -> None:
        self.service, self.maker, self.table, self.bus = service, maker, table, bus
        self.batch, self.poll_s, self.keep_sent = batch, poll_s, keep_sent
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Call after committing a transaction that enqueued events: relay now, not at the next poll."""
        self._wake.set()

    async def relay_once(self) -> int:
        t = self.table
        async with self.maker() as session, session.begin():
            rows = (await session.execute(
                select(t.c.seq, t.c.event_id, t.c.subject, t.c.payload)
                .where(t.c.sent_at.is_(None)).order_by(t.c.seq).limit(self.batch)
                .with_for_update(skip_locked=True))).all()
            if not rows:
                return 0
            # Publishes are written to the connection in order, so stream order follows seq.
            await asyncio.gather(*(self.bus.js.publish(r.subject, r.payload, headers={"Nats-Msg-Id": r.event_id})
                                   for r in rows))
            await session.execute(update(t).where(t.c.seq.in_([r.seq for r in rows])).values(sent_at=datetime.now(UTC)))
            return len(rows)

    async def prune(self) -> None:
        async with self.maker() as session, session.begin():
            cutoff = datetime.now(UTC) - self.keep_sent
            await session.execute(delete(self.table).where(self.table.c.sent_at < cutoff))
            pending = await session.scalar(select(func.count()).select_from(self.table).where(self.table.c.sent_at.is_(None)))
            OUTBOX_PENDING.labels(self.service).set(pending or 0)

    async def run(self) -> None:
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                sent = await self.relay_once()
                if loop.time() - last_prune > 60:
                    await self.prune()
                    last_prune = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay of %s failed; retrying", self.service)
                sent = 0
            if sent < self.batch:
                self._wake.clear()
                await wait_event(self._wake, self.poll_s)
