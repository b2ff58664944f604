"""The scheduler's writers lock workload rows in id order, on real PostgreSQL.

Two transactions that lock overlapping rows in different orders can deadlock ("deadlock detected": one of
them is rolled back). Each test holds the lower id's row from another connection, starts a writer that
needs both rows, waits until the writer is blocked, and then looks whether the higher id's row is free:
a writer that goes in id order waits for the lower row before it takes the higher one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.config import DatabaseSettings
from libs.db import make_engine, make_sessionmaker, session_scope
from libs.schemas.workload import WorkloadSpec
from services.scheduler import lifecycle, store
from services.scheduler.reconcile import Loss, lose_replicas
from tests.conftest import assert_eventually

Maker = async_sessionmaker[AsyncSession]
Writer = Callable[[AsyncSession, list[str]], Awaitable[object]]


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[Maker]:
    engine = make_engine(database_url, DatabaseSettings())
    yield make_sessionmaker(engine)
    await engine.dispose()


async def _running(sessions: Maker, database_url: str) -> list[str]:
    """Two running workloads, ids ascending: the first on host h-2, the second on host h-1."""
    spec = WorkloadSpec.model_validate({"name": "w", "hardware": {"type": "gpu"}})
    ids = []
    for _ in range(2):
        async with session_scope(sessions) as session:
            wl, _ = await store.create_workload(session, spec, None, None, lifecycle.utcnow())
            ids.append(wl.id)
    ids.sort()
    conn = await asyncpg.connect(database_url)
    try:
        for wid, host in zip(ids, ("h-2", "h-1"), strict=True):
            await conn.execute("UPDATE scheduler.workloads SET state = 'running' WHERE id = $1", wid)
            await conn.execute("UPDATE scheduler.replicas SET state = 'running', attempt = 1, host_id = $2, "
                               "site = 's', devices = $3::jsonb WHERE workload_id = $1", wid, host,
                               json.dumps([{"id": f"{host}/gpu-0", "index": 0, "vendor": "nvidia",
                                                           "hardware_type": "gpu", "share": 1.0}]))
    finally:
        await conn.close()
    return ids


async def _lose_both_hosts(session: AsyncSession, ids: list[str]) -> object:
    # h-1 first: its workload has the higher id, so a lock per loss would take the higher id first
    return await lose_replicas(session, [Loss("h-1", "host h-1 down"), Loss("h-2", "host h-2 down")], ttl_s=30)


async def _update_higher_first(session: AsyncSession, ids: list[str]) -> object:
    wls = await store.read_workloads(session, ids, lock=False)
    now = lifecycle.utcnow()
    for wl in wls.values():
        lifecycle.stop(wl, "stopped by the test", now, 30)
    return await store.update_workloads(session, [wls[ids[1]], wls[ids[0]]], now)


@pytest.mark.parametrize("writer", [_lose_both_hosts, _update_higher_first], ids=["lose_replicas", "update_workloads"])
async def test_scheduler_locks_writer_takes_workload_rows_in_id_order(sessions: Maker, database_url: str,
                                                                      writer: Writer) -> None:
    ids = await _running(sessions, database_url)
    holder, probe = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    task: asyncio.Task[object] | None = None
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT id FROM scheduler.workloads WHERE id = $1 FOR UPDATE", ids[0])

        async def run() -> object:
            async with session_scope(sessions) as session:
                return await writer(session, ids)

        task = asyncio.create_task(run())

        async def blocked() -> bool:  # a row lock is waited for as the holder's transaction id
            return bool(await probe.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        await assert_eventually(blocked, message="the writer never waited for the held row")
        assert not task.done()
        async with probe.transaction():
            free = await probe.fetch("SELECT id FROM scheduler.workloads WHERE id = $1 FOR UPDATE SKIP LOCKED", ids[1])
        assert [r["id"] for r in free] == [ids[1]], "the writer locked the higher id before the lower one"
        await hold.rollback()
        await asyncio.wait_for(task, 10)
        rows = await probe.fetch("SELECT id, state FROM scheduler.workloads ORDER BY id")
        want = "rescheduled" if writer is _lose_both_hosts else "stopped"
        assert [(r["id"], r["state"]) for r in rows] == [(wid, want) for wid in ids]
    finally:
        if task is not None and not task.done():
            task.cancel()
        await holder.close()
        await probe.close()
