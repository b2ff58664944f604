"""Batches written in one transaction, or one by one after the database refused one on bad data.

One bad item (a NUL that no PostgreSQL text can hold, a value past a column's bounds) must
cost only itself: ``apply_batch`` writes the batch in one transaction and, when PostgreSQL
refuses it for its data (SQLSTATE class 22, data exception, or 23, integrity constraint; the
driver reports some of them, a NUL among them, as a bare ``DBAPIError``), writes each item alone,
drops the ones it refuses again and counts them ``database_rejected``. Any other failure (the
database is away) is the caller's: the batch is not split for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.bus.outcomes import reject
from libs.db import session_scope

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def refused_data(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a statement for its data (which retrying cannot mend)."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None) if isinstance(exc, DBAPIError) else None
    return isinstance(state, str) and state[:2] in ("22", "23")


async def apply_batch(sessions: async_sessionmaker[AsyncSession], service: str, handler: str, items: Sequence[T],
                      apply: Callable[[AsyncSession, Sequence[T]], Awaitable[R]]) -> list[R]:
    """``apply`` the whole batch in one transaction; when the database refuses it on bad data, apply each item
    alone so that one bad item loses only itself (and is counted ``database_rejected``)."""
    try:
        async with session_scope(sessions) as session:
            return [await apply(session, items)]
    except DBAPIError as exc:
        if not refused_data(exc):
            raise
    results = []
    for item in items:
        try:
            async with session_scope(sessions) as session:
                results.append(await apply(session, [item]))
        except DBAPIError as exc:
            if not refused_data(exc):
                raise
            reject(service, handler, "database_rejected")
            log.warning("%s: the database rejected one item of a batch", handler)
    return results
