"""Leader election of the singleton services on real NATS (JetStream KV) and PostgreSQL (the fence row).

In-process instances here; killed and paused processes in ``test_failover``.
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import BusTimeout, Unavailable
from libs.config import Settings
from libs.db import make_engine, session_scope
from libs.db.fencing import Fenced, FenceToken, claim_fence, fenced_sessionmaker, read_fence
from libs.schemas.registry import ServiceHealth
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually
from tests.integration.test_api_kit import ADMIN, gateway_settings, start_gateway
from tests.integration.test_scheduler_kit import fast, submit


def _instance(settings: Settings, name: str) -> Settings:
    return settings.model_copy(update={"instance_id": name})


async def roles(bus: Bus, service: str) -> dict[str, str | None]:
    """Every instance of ``service`` that answers the health broadcast, with its role."""
    out: dict[str, str | None] = {}
    for msg in await bus.scatter(subjects.CTL_HEALTH, window_s=0.5):
        if not msg.data:  # no responders (a status message)
            continue
        h = ServiceHealth.model_validate_json(msg.data)
        if h.service == service:
            out[h.instance] = h.role
    return out


async def test_election_two_schedulers_one_leads_the_other_takes_over_when_it_stops(
        settings, running_service, bus: Bus) -> None:
    s = fast(settings)
    a = await running_service(scheduler_app, _instance(s, "sched-a"))
    b = await running_service(scheduler_app, _instance(s, "sched-b"))
    assert await roles(bus, "scheduler") == {"sched-a": "leader", "sched-b": "standby"}
    view = await submit(bus, {"name": "w", "hardware": {"type": "gpu"}})
    assert view.created
    await a.stop()  # a graceful stop gives the lease up: the standby need not wait for it to expire
    started = asyncio.get_running_loop().time()
    await assert_eventually(lambda: _leads(bus, "sched-b"), timeout=5, interval=0.1, message="sched-b leads")
    assert asyncio.get_running_loop().time() - started < s.election.campaign_s + 1.5
    assert (await submit(bus, {"name": "w2", "hardware": {"type": "gpu"}})).created
    assert not b.task.done()


async def _leads(bus: Bus, instance: str) -> bool:
    return (await roles(bus, "scheduler")).get(instance) == "leader"


async def test_election_registry_standby_does_not_answer_until_it_leads(settings, running_service, bus: Bus) -> None:
    await running_service(registry_app, _instance(settings, "reg-a"))
    await running_service(registry_app, _instance(settings, "reg-b"))
    got = await roles(bus, "registry")
    assert sorted(str(r) for r in got.values()) == ["leader", "standby"], got
    leader = next(i for i, r in got.items() if r == "leader")
    for _ in range(5):  # the queue group holds the leader alone
        h = await bus.request(subjects.rpc_subject("registry", "health"), None, ServiceHealth)
        assert h.instance == leader


async def test_election_fence_orders_the_old_leaders_last_commit_before_the_new_leaders_claim(
        settings, running_service, database_url: str) -> None:
    """A transaction of the old leader that passed its check holds the fence row FOR SHARE: the successor's
    claim waits for it to end, and every later transaction of the old leader fails with Fenced."""
    await running_service(scheduler_app, settings)  # migrates nothing, but proves the schema is at head
    engine = make_engine(settings.database_dsn(), settings.db)
    try:
        old = await read_fence(engine, "scheduler")
        assert old.epoch > 0 and old.revision > 0  # the running leader claimed it
        new = FenceToken(old.epoch, old.revision + 10)
        fenced: list[bool] = []
        sessions = fenced_sessionmaker(engine, "scheduler", "scheduler", old, on_fenced=lambda: fenced.append(True))
        inside, claimed = asyncio.Event(), asyncio.Event()

        async def old_leader_writes() -> None:
            async with session_scope(sessions) as session:
                await session.execute(text("UPDATE scheduler.leader_fence SET claimed_at = claimed_at"))
                inside.set()
                await asyncio.sleep(0.5)
                assert not claimed.is_set()  # the successor waits for this transaction

        async def successor_claims() -> None:
            await inside.wait()
            await claim_fence(engine, "scheduler", new)
            claimed.set()

        await asyncio.gather(old_leader_writes(), successor_claims())
        assert await read_fence(engine, "scheduler") == new
        with pytest.raises(Fenced, match="stale"):
            async with session_scope(sessions) as session:
                await session.execute(text("SELECT 1"))
        assert fenced == [True]
        assert await claim_fence(engine, "scheduler", old) == new  # a lower token never wins the fence back
        assert await read_fence(engine, "scheduler") == new
        # a lease bucket made anew (NATS lost its data) counts revisions from 1 again, in a later epoch
        reborn = FenceToken(old.epoch + 1, 1)
        assert await claim_fence(engine, "scheduler", reborn) == new
        assert await read_fence(engine, "scheduler") == reborn
    finally:
        await engine.dispose()


async def test_election_leader_whose_session_the_successor_terminated_answers_503_not_500(
        settings, running_service, bus: Bus, database_url: str) -> None:
    """A leader's submit is mid-transaction (past its fence check, waiting on a lock) when a successor claims the
    fence: the claim terminates the leader's database session. The request must answer a 503 (the
    gateway asks again and reaches the new leader), not a 500: asyncpg ends such a transaction in
    ConnectionDoesNotExistError, an admin-shutdown error or "cannot switch to state 12"."""
    s = fast(settings)
    leader = await running_service(scheduler_app, _instance(s, "sched-a"))
    engine = make_engine(settings.database_dsn(), settings.db)
    blocker = await asyncpg.connect(database_url)
    try:
        held = await read_fence(engine, "scheduler")
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE scheduler.workloads IN ACCESS EXCLUSIVE MODE")
        pending = asyncio.create_task(submit(bus, {"name": "w", "hardware": {"type": "gpu"}}))

        async def waits_on_the_lock() -> bool:  # the leader's transaction passed its check and waits
            return bool(await blocker.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'scheduler.workloads'::regclass"))
        await assert_eventually(waits_on_the_lock, timeout=10, message="the submit waits inside its transaction")
        await claim_fence(engine, "scheduler", FenceToken(held.epoch, held.revision + 1), wait_s=0.2)
        await tx.rollback()
        with pytest.raises(Unavailable) as refused:
            await pending
        assert not isinstance(refused.value, BusTimeout)
        # 'Leader changed' once the claim has committed; were it slower than the leader's look at the fence, the
        # leader's next transaction finds it raised: a 503 either way, and the leader stops
        assert refused.value.title in {"Leader changed", "Database connection lost"}, refused.value.title
        await assert_eventually(lambda: leader.task.done(), timeout=10, message="the deposed leader stops")
        with pytest.raises(RuntimeError, match="lost its lease"):
            leader.task.result()
    finally:
        await blocker.close()
        await engine.dispose()


async def test_election_gateway_submit_while_no_scheduler_answers_is_503_problem_with_retry_after(
        settings, running_service) -> None:
    """No scheduler leads for longer than gateway.submit_timeout_s: the gateway's retries run out and the client
    gets a 503 problem with Retry-After, so it knows to ask again."""
    url = await start_gateway(running_service, gateway_settings(settings, submit_timeout_s=0.6))
    async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=10) as c:
        r = await c.post("/v1/workloads", json={"name": "w", "hardware": {"type": "gpu"}})
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["retry-after"] == "1"
    assert r.json()["status"] == 503
