"""Fencing tokens in PostgreSQL: a deposed leader cannot commit after its successor took over.

A singleton service's schema holds one row, ``<schema>.leader_fence``, with the highest
fencing token (``libs/election.py``) any of its leaders has claimed: the lease bucket's epoch
(when it was created; a bucket made anew after NATS lost its data starts a higher epoch, whose
revisions start again from 1) and the lease's KV revision, compared in that order. On taking
the lead an instance raises it to its own token (``claim_fence``: never lowered).
Every transaction of a leader's sessions (``fenced_sessionmaker``) first reads that row
``FOR SHARE`` and aborts with :class:`Fenced` if a higher token is there.

The share lock is what makes it safe: a successor's ``claim_fence`` waits until every
transaction that passed the check has ended, and every transaction that starts after the
claim sees the higher token. So no write of the old leader commits after the new one leads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from libs.metrics import FENCED

log = logging.getLogger(__name__)
TABLE = "leader_fence"
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout ran out


class FenceToken(NamedTuple):
    """A leader's fencing token; tuples compare as the fence does: epoch, then revision."""

    epoch: int
    revision: int


class Fenced(RuntimeError):
    """This instance is no longer the leader: a newer one has claimed the fence."""


# What a transaction ends in when its database session is terminated under it (a successor's claim_fence,
# a server restart) or its connection is unusable after that: asyncpg's own errors, which SQLAlchemy wraps.
_LOST = (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
         asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError, ConnectionError)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is (or was caused by) the loss of a database session mid-transaction: terminated
    ("terminating connection due to administrator command"), gone ("connection was closed in the middle of
    operation") or left unusable ("cannot switch to state 12; another operation is in progress")."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _LOST) or (isinstance(e, DBAPIError) and e.connection_invalidated):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return False


def _check_token(schema: str) -> str:
    if not schema.isidentifier():
        raise ValueError(f"not a schema name: {schema!r}")
    return schema


async def claim_fence(engine: AsyncEngine, schema: str, token: FenceToken, *, wait_s: float = 1.0) -> FenceToken:
    """Raise the fence to ``token`` unless a higher one is there; return the one that was there before
    ((0, 0) if none).

    It waits for every transaction that holds the row ``FOR SHARE`` (a predecessor's) to end, for up to
    ``wait_s``; a transaction still open then belongs to a predecessor that is paused or cut off (a leader's
    transactions are short), and its database session is terminated: PostgreSQL rolls it back, so nothing
    of it commits, and the claim goes through."""
    s = _check_token(schema)
    for attempt in (1, 2):
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"SET LOCAL lock_timeout = '{max(1, int(wait_s * 1000))}ms'"))
                row = (await conn.execute(text(f"SELECT epoch, token FROM {s}.{TABLE} WHERE id = 1 FOR UPDATE"))
                       ).one_or_none()
                before = FenceToken(int(row[0]), int(row[1])) if row is not None else FenceToken(0, 0)
                if token > before:
                    await conn.execute(text(f"INSERT INTO {s}.{TABLE} (id, epoch, token) VALUES (1, :e, :t) "
                                            f"ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, "
                                            f"token = EXCLUDED.token, claimed_at = now()"),
                                       {"e": token.epoch, "t": token.revision})
                return before
        except DBAPIError as exc:
            if attempt == 2 or getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
        async with engine.begin() as conn:
            ended = (await conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'relation' AND granted "
                "AND relation = CAST(:table AS regclass) AND mode = 'RowShareLock' AND pid <> pg_backend_pid()"),
                {"table": f"{s}.{TABLE}"})).scalar()
        log.warning("%s: the fence was held past %.1f s by %s session(s) of a former leader: terminated",
                    schema, wait_s, ended)
    raise AssertionError("unreachable")


async def read_fence(engine: AsyncEngine, schema: str) -> FenceToken:
    s = _check_token(schema)
    async with engine.connect() as conn:
        row = (await conn.execute(text(f"SELECT epoch, token FROM {s}.{TABLE} WHERE id = 1"))).one_or_none()
    return FenceToken(int(row[0]), int(row[1])) if row is not None else FenceToken(0, 0)


def fenced_sessionmaker(engine: AsyncEngine, schema: str, service: str, token: FenceToken,
                        on_fenced: Callable[[], None] | None = None) -> async_sessionmaker[AsyncSession]:
    """Sessions whose every transaction first checks that ``token`` is still the highest claimed;
    ``on_fenced`` is called when one finds it is not (the instance then stops acting at once)."""
    s = _check_token(schema)
    check = text(f"SELECT epoch, token FROM {s}.{TABLE} WHERE id = 1 FOR SHARE")

    class FencedSession(Session):
        """A session bound to one leader's token (a class of its own, so the check is this maker's only)."""

    @event.listens_for(FencedSession, "after_begin")
    def _fence(session: Session, transaction: Any, connection: Any) -> None:
        row = connection.execute(check).one_or_none()
        if row is not None and FenceToken(int(row[0]), int(row[1])) > token:
            FENCED.labels(service).inc()
            if on_fenced is not None:
                on_fenced()
            raise Fenced(f"{service}: fencing token {tuple(token)} is stale (a newer leader holds {tuple(row)})")

    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=FencedSession)


def create_fence_table(schema: str) -> None:
    """The leader fence of a schema, for its service's migration: one row, the highest token claimed."""
    import sqlalchemy as sa
    from alembic import op

    op.create_table(
        "leader_fence",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),  # the lease bucket's creation (epoch ms)
        sa.Column("token", sa.BigInteger, nullable=False),  # the lease's KV revision within that bucket
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="leader_fence_one_row"),
        schema=schema,
    )


def drop_fence_table(schema: str) -> None:
    from alembic import op

    op.drop_table("leader_fence", schema=schema)
