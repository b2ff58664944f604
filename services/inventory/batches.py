"""Batches of agents' reports: applied in one transaction, or one by one after the database refused one.

Also the counter of reports a batch handler skips for a reason that is not an error (rejections
are counted with the kit's ``libs.bus.consumer.reject``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.bus.outcomes import reject
from libs.db import session_scope
from libs.metrics import BUS_MESSAGES
from services.inventory.state import SERVICE

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def count(handler: str, outcome: str, n: int) -> None:
    """``n`` reports the handler skipped for a reason that is not an error (stale, too_old, unknown_host)."""
    if n:
        BUS_MESSAGES.labels(SERVICE, handler, outcome).inc(n)


async def apply_batch(sessions: async_sessionmaker[AsyncSession], handler: str, items: Sequence[T],
                      apply: Callable[[AsyncSession, Sequence[T]], Awaitable[R]]) -> list[R]:
    """``apply`` the whole batch in one transaction; when the database refuses it on bad data, apply each item
    alone so that one bad item loses only itself (and is counted ``database_rejected``)."""
    try:
        async with session_scope(sessions) as session:
            return [await apply(session, items)]
    except (DataError, IntegrityError):
        pass
    results = []
    for item in items:
        try:
            async with session_scope(sessions) as session:
                results.append(await apply(session, [item]))
        except (DataError, IntegrityError):
            reject(SERVICE, handler, "database_rejected")
            log.warning("%s: the database rejected one report", handler)
    return results
