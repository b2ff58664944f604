"""Submitting workloads: one workload per Idempotency-Key, also for concurrent twins; submits are answered
while placement builds its view of the fleet."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from libs.bus.errors import Conflict
from libs.config import Settings
from libs.db import make_engine, make_sessionmaker, session_scope
from libs.schemas.scheduler import WorkloadState
from libs.schemas.workload import WorkloadSpec
from services.scheduler import fleet as fleet_module
from services.scheduler import store
from services.scheduler.api import app as scheduler_app
from services.scheduler.lifecycle import Workload, utcnow
from services.scheduler.orm import outbox, replicas, workloads
from tests.conftest import assert_eventually
from tests.integration.test_scheduler_kit import TestHost, fast, gpu, submit, wait_state

Maker = async_sessionmaker[AsyncSession]


@pytest.fixture
async def sessions(settings: Settings, running_service: Any) -> AsyncIterator[Maker]:
    await running_service(scheduler_app, settings)  # migrates the scheduler's schema
    engine = make_engine(settings.database_dsn(), settings.db)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def _create(sessions: Maker, spec: WorkloadSpec, tenant: str | None,
                  key: str | None) -> tuple[Workload, bool]:
    async with session_scope(sessions) as session:
        return await store.create_workload(session, spec, tenant, key, utcnow())


async def _count(sessions: Maker, table: Table, **where: str) -> int:
    async with session_scope(sessions) as session:
        q = select(func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return int(await session.scalar(q) or 0)


async def test_scheduler_submit_concurrent_twins_with_one_key_create_one_workload(sessions: Maker) -> None:
    spec = WorkloadSpec.model_validate({"name": "twin", "tenant": "acme", "replicas": 2, "hardware": {"type": "gpu"}})
    results = await asyncio.gather(*(_create(sessions, spec, "acme", "k-twin") for _ in range(8)))
    ids = {wl.id for wl, _ in results}
    assert len(ids) == 1 and sum(created for _, created in results) == 1
    (wid,) = ids
    assert await _count(sessions, workloads, idempotency_key="k-twin") == 1
    assert await _count(sessions, replicas, workload_id=wid) == 2
    assert await _count(sessions, outbox) == 1  # one "pending" event, from the one that was created
    again, created = await _create(sessions, spec, "acme", "k-twin")
    assert again.id == wid and not created and [r.replica for r in again.replicas] == [0, 1]
    with pytest.raises(Conflict):
        await _create(sessions, spec.model_copy(update={"name": "other"}), "acme", "k-twin")


async def test_scheduler_submit_without_tenant_or_key_still_deduplicates_by_key(sessions: Maker) -> None:
    spec = WorkloadSpec.model_validate({"name": "plain", "hardware": {"type": "gpu"}})
    first, created = await _create(sessions, spec, None, "k-none")
    again, created_again = await _create(sessions, spec, None, "k-none")
    assert created and not created_again and again.id == first.id
    a, _ = await _create(sessions, spec, None, None)
    b, _ = await _create(sessions, spec, None, None)
    assert len({first.id, a.id, b.id}) == 3


async def test_scheduler_submit_is_answered_while_the_fleet_snapshot_is_built(
        settings: Settings, running_service: Any, bus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = threading.Event(), threading.Event()
    released: list[bool] = []  # per build: let go by the test (True) or by the timeout (False)
    real = fleet_module.build_snapshot

    def held_build(*args: Any, **kwargs: Any) -> Any:  # the fleet's column model, held until the test says so
        started.set()
        released.append(release.wait(timeout=10))  # on the event loop, this would hold the test's loop too
        return real(*args, **kwargs)

    monkeypatch.setattr(fleet_module, "build_snapshot", held_build)
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-gpu-1", [gpu(i) for i in range(4)], tmp_path, driver="sim").start()
    try:
        spec = {"hardware": {"type": "gpu"}, "duration_s": 30.0}
        first = await submit(bus, {**spec, "name": "first"})
        await assert_eventually(started.is_set, message="placement did not start building the fleet snapshot")
        later = [await submit(bus, {**spec, "name": f"later-{i}"}) for i in range(3)]  # answered meanwhile
        assert not release.is_set() and all(v.created and v.state == WorkloadState.PENDING for v in later)
        release.set()
        for view in [first, *later]:
            await wait_state(bus, view.id, WorkloadState.PLACED, WorkloadState.STARTING, WorkloadState.RUNNING)
        assert released and all(released)
    finally:
        release.set()
        await host.stop()
