"""Fencing tokens in PostgreSQL: a deposed leader cannot commit after its successor took over.

A singleton service's schema holds one row, ``<schema>.leader_fence``, with the highest
fencing token (``libs/election.py``) any of its leaders has claimed. On taking the lead an
instance raises it to its own token (``claim_fence``: ``GREATEST``, so it never goes down).
Every transaction of a leader's sessions (``fenced_sessionmaker``) first reads that row
``FOR SHARE`` and aborts with :class:`Fenced` if a higher token is there.

The share lock is what makes it safe: a successor's ``claim_fence`` waits until every
transaction that passed the check has ended, and every transaction that starts after the
claim sees the higher token. So no write of the old leader commits after the new one leads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from libs.metrics import FENCED

TABLE = "leader_fence"


class Fenced(RuntimeError):
    """This instance is no longer the leader: a newer one has claimed the fence."""


def _check_token(schema: str) -> str:
    if not schema.isidentifier():
        raise ValueError(f"not a schema name: {schema!r}")
    return schema


async def claim_fence(engine: AsyncEngine, schema: str, token: int) -> int:
    """Raise the fence to ``token``; return the token that was there before (0 if none)."""
    s = _check_token(schema)
    async with engine.begin() as conn:
        before = (await conn.execute(text(f"SELECT token FROM {s}.{TABLE} WHERE id = 1 FOR UPDATE"))).scalar()
        await conn.execute(text(f"INSERT INTO {s}.{TABLE} (id, token) VALUES (1, :t) ON CONFLICT (id) DO UPDATE "
                                f"SET token = GREATEST({s}.{TABLE}.token, EXCLUDED.token), claimed_at = now()"),
                           {"t": token})
    return int(before or 0)


async def read_fence(engine: AsyncEngine, schema: str) -> int:
    s = _check_token(schema)
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT token FROM {s}.{TABLE} WHERE id = 1"))).scalar() or 0)


def fenced_sessionmaker(engine: AsyncEngine, schema: str, service: str, token: int,
                        on_fenced: Callable[[], None] | None = None) -> async_sessionmaker[AsyncSession]:
    """Sessions whose every transaction first checks that ``token`` is still the highest claimed;
    ``on_fenced`` is called when one finds it is not (the instance then stops acting at once)."""
    s = _check_token(schema)
    check = text(f"SELECT token FROM {s}.{TABLE} WHERE id = 1 FOR SHARE")

    class FencedSession(Session):
        """A session bound to one leader's token (a class of its own, so the check is this maker's only)."""

    @event.listens_for(FencedSession, "after_begin")
    def _fence(session: Session, transaction: Any, connection: Any) -> None:
        current = connection.execute(check).scalar()
        if current is not None and int(current) > token:
            FENCED.labels(service).inc()
            if on_fenced is not None:
                on_fenced()
            raise Fenced(f"{service}: fencing token {token} is stale (a newer leader holds {current})")

    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=FencedSession)
