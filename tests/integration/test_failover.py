"""Failover of the singleton services: two real processes on real NATS and PostgreSQL, the leader killed or
paused (the scheduler; kill -9 of the registry's and the metrics' leaders too).

Figures each test measures are printed (``-s`` shows them): the takeover time after a kill -9, the
submits the gateway answered during a leader change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import BusError
from libs.embedded import free_port
from libs.schemas.registry import MemberKind, MemberPage, MemberQuery, ServiceHealth
from libs.schemas.scheduler import WorkloadSubmit, WorkloadView
from tests.conftest import assert_eventually
from tests.integration.test_api_kit import ADMIN, base_url
from tests.integration.test_scheduler_kit import TestHost, gpu

Spawn = Callable[..., subprocess.Popen[bytes]]
FAST_SCHEDULER = {
    "XPUMESH_SCHEDULER__BATCH_DEBOUNCE_S": "0.05", "XPUMESH_SCHEDULER__RETRY_INTERVAL_S": "0.5",
    "XPUMESH_SCHEDULER__SOLVER_TIME_LIMIT_S": "0.5", "XPUMESH_SCHEDULER__RESEND_AFTER_S": "0.5",
    "XPUMESH_SCHEDULER__INVENTORY_TIMEOUT_S": "0.3", "XPUMESH_SCHEDULER__STATE_REPLAY_TIMEOUT_S": "0.5",
}
TAKEOVER_BUDGET_S = 5.0


async def roles(bus: Bus, service: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for msg in await bus.scatter(subjects.CTL_HEALTH, window_s=0.3):
        if not msg.data:  # no responders (a status message)
            continue
        h = ServiceHealth.model_validate_json(msg.data)
        if h.service == service:
            out[h.instance] = h.role
    return out


def spawn_schedulers(spawn_service: Spawn, *names: str, **env: str) -> dict[str, subprocess.Popen[bytes]]:
    return {n: spawn_service("scheduler", XPUMESH_INSTANCE_ID=n, **FAST_SCHEDULER, **env) for n in names}


async def leader_and_standby(bus: Bus, names: set[str], timeout: float = 30,
                             service: str = "scheduler") -> tuple[str, str]:
    async def settled() -> tuple[str, str] | None:
        got = await roles(bus, service)
        if set(got) != names or sorted(str(r) for r in got.values()) != ["leader", "standby"]:
            return None
        return (next(i for i, r in got.items() if r == "leader"), next(i for i, r in got.items() if r == "standby"))
    found = await assert_eventually(settled, timeout=timeout, interval=0.2, message=f"one of {names} leads")
    assert found is not None
    return found


async def submit_once(bus: Bus, name: str, timeout: float = 1.0) -> WorkloadView | None:
    try:
        return await bus.request(subjects.rpc_subject("scheduler", "workloads.submit"),
                                 WorkloadSubmit.model_validate({"spec": {"name": name, "hardware": {"type": "gpu"}}}),
                                 WorkloadView, timeout=timeout)
    except BusError:
        return None


async def double_booked(database_url: str) -> list[asyncpg.Record]:
    """Devices that the active replicas hold more than whole, or that two whole-device replicas share."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch("""
            SELECT d->>'id' AS device, count(*) AS holders, sum(coalesce((d->>'share')::float, 1.0)) AS share
              FROM scheduler.replicas r, jsonb_array_elements(r.devices) d
             WHERE r.state IN ('placed', 'starting', 'running')
             GROUP BY 1 HAVING sum(coalesce((d->>'share')::float, 1.0)) > 1.0001"""))
    finally:
        await conn.close()


async def db_rows(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_failover_scheduler_kill9_standby_takes_over_within_5s(settings, spawn_service, bus: Bus) -> None:
    procs = spawn_schedulers(spawn_service, "sched-a", "sched-b")
    leader, standby = await leader_and_standby(bus, set(procs))
    assert await submit_once(bus, "before", timeout=3) is not None
    await asyncio.sleep(1.5)  # mid-way between two renewals, on average
    procs[leader].send_signal(signal.SIGKILL)
    killed = time.monotonic()

    async def served() -> bool:
        return (await roles(bus, "scheduler")).get(standby) == "leader" and \
            await submit_once(bus, "after", timeout=0.5) is not None
    await assert_eventually(served, timeout=15, interval=0.05, message=f"{standby} leads and accepts work")
    took = time.monotonic() - killed
    print(f"\nscheduler takeover after kill -9 of the leader: {took:.2f} s (ttl {settings.election.ttl_s} s)")
    assert took < TAKEOVER_BUDGET_S
    assert procs[standby].poll() is None


async def test_failover_paused_leader_cannot_commit_after_the_standby_took_over(
        settings, spawn_service, bus: Bus, database_url: str, tmp_path: Path) -> None:
    """SIGSTOP the leader past its lease; the standby takes over; requests reach the paused one too (it is still
    in the queue group). After SIGCONT it must not commit any of them: its transactions fail with Fenced."""
    procs = spawn_schedulers(spawn_service, "sched-a", "sched-b")
    leader, standby = await leader_and_standby(bus, set(procs))
    procs[leader].send_signal(signal.SIGSTOP)
    try:
        await assert_eventually(lambda: _leads(bus, standby), timeout=10, interval=0.1, message="standby leads")
        answered = [v for v in await asyncio.gather(*(submit_once(bus, f"paused-{i}", timeout=2) for i in range(20)))
                    if v is not None]
        # the paused leader's subscription takes its share of the queue group's requests: they wait in its socket
        assert 0 < len(answered) < 20, "some requests were handed to the paused leader"
    finally:
        procs[leader].send_signal(signal.SIGCONT)
    code = await asyncio.to_thread(procs[leader].wait, 15)
    assert code != 0, "the deposed leader stops (its supervisor starts it again, as a standby)"
    stored = {r["name"] for r in await db_rows(database_url, "SELECT name FROM scheduler.workloads")}
    assert stored == {v.name for v in answered}, "nothing the paused leader was handed was committed"
    log = _log_of(tmp_path, leader)
    assert "is stale" in log or "no longer leads" in log, log[-3000:]  # its transactions were Fenced
    assert procs[standby].poll() is None and (await roles(bus, "scheduler")).get(standby) == "leader"


def _log_of(tmp_path: Path, instance: str) -> str:
    for p in sorted(tmp_path.glob("scheduler-*.log")):
        text = p.read_text(errors="replace")
        if f"scheduler {instance} leads" in text:  # its own log (a standby's names the leader it waits for)
            return text
    raise AssertionError(f"no log of {instance}")


async def _leads(bus: Bus, instance: str) -> bool:
    return (await roles(bus, "scheduler")).get(instance) == "leader"


async def test_failover_leader_killed_and_paused_during_a_submit_burst_refuses_none_loses_none_double_books_none(
        settings, spawn_service, bus: Bus, database_url: str, tmp_path: Path) -> None:
    """Through the gateway, 8 clients submit whole-device work onto 12 devices while the leader is paused past
    its lease and resumed, and then the new leader is killed -9: every submit is answered 201, every
    accepted workload is stored, and no device is ever held by two replicas at once."""
    spawn_service("gateway", XPUMESH_GATEWAY__SUBMIT_TIMEOUT_S="20")
    procs = spawn_schedulers(spawn_service, "sched-a", "sched-b")
    hosts = [await TestHost(bus, settings, f"hf-{i}", [gpu(0), gpu(1)], tmp_path, driver="sim").start()
             for i in range(6)]
    statuses: list[int] = []
    accepted: list[str] = []
    booked: list[list[asyncpg.Record]] = []
    stop = asyncio.Event()
    try:
        leader, standby = await leader_and_standby(bus, set(procs))
        async with httpx.AsyncClient(base_url=base_url(settings), timeout=30, headers=ADMIN) as c:
            await assert_eventually(lambda: _gateway_up(c), timeout=30, interval=0.2, message="gateway up")

            async def client(k: int) -> None:
                i = 0
                while not stop.is_set():
                    r = await c.post("/v1/workloads", json={"name": f"c{k}-{i}", "hardware": {"type": "gpu"}})
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        accepted.append(r.json()["id"])
                    i += 1
                    await asyncio.sleep(0.05)

            async def watch() -> None:  # the database, all along: never a device held twice
                while not stop.is_set():
                    booked.append(await double_booked(database_url))
                    await asyncio.sleep(0.1)

            clients = [asyncio.create_task(client(k)) for k in range(8)] + [asyncio.create_task(watch())]
            await assert_eventually(lambda: len(accepted) >= 20, timeout=20, message="burst under way")
            procs[leader].send_signal(signal.SIGSTOP)  # paused past its lease: the standby takes over
            await assert_eventually(lambda: _leads(bus, standby), timeout=10, interval=0.1)
            await asyncio.sleep(1.0)
            procs[leader].send_signal(signal.SIGCONT)  # wakes believing it leads, with work in hand
            await asyncio.to_thread(procs[leader].wait, 15)
            procs.update(spawn_schedulers(spawn_service, leader + "-again"))  # its supervisor's restart
            await leader_and_standby(bus, {standby, leader + "-again"})
            n = len(accepted)
            await assert_eventually(lambda: len(accepted) >= n + 20, timeout=20, message="burst goes on")
            procs[standby].send_signal(signal.SIGKILL)
            await assert_eventually(lambda: _leads(bus, leader + "-again"), timeout=10, interval=0.1)
            n = len(accepted)
            await assert_eventually(lambda: len(accepted) >= n + 20, timeout=20, message="accepted after the kill")
            stop.set()
            await asyncio.gather(*clients)
        print(f"\nsubmits during two leader changes: {len(statuses)}, answered "
              f"{ {s: statuses.count(s) for s in set(statuses)} }")
        assert set(statuses) == {201}, "no submit refused"
        stored = {r["id"] for r in await db_rows(database_url, "SELECT id FROM scheduler.workloads")}
        assert set(accepted) <= stored, "no accepted workload lost"
        assert len(stored) == len(set(accepted)), "no workload stored twice (a retried submit finds its first try)"

        async def settled() -> bool:  # placement catches up: every device held, the rest waiting
            rows = await db_rows(database_url, "SELECT count(*) AS n FROM scheduler.replicas "
                                               "WHERE state IN ('placed', 'starting', 'running')")
            return int(rows[0]["n"]) == 12
        await assert_eventually(settled, timeout=20, interval=0.2, message="all 12 devices in use")
        booked.append(await double_booked(database_url))
        assert not [b for b in booked if b], f"double-booked devices: {[b for b in booked if b][:3]}"
    finally:
        stop.set()
        for h in hosts:
            await h.stop()
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)


async def _gateway_up(c: httpx.AsyncClient) -> bool:
    try:
        return (await c.get("/v1/workloads")).status_code == 200
    except httpx.TransportError:
        return False



async def _health_from(bus: Bus, service: str, instance: str) -> bool:
    """Whether ``service``'s queue group (its leader alone subscribes) is answered by ``instance``."""
    try:
        h = await bus.request(subjects.rpc_subject(service, "health"), None, ServiceHealth, timeout=0.5)
    except BusError:
        return False
    return h.instance == instance and h.role == "leader"


async def _kill9_takeover(bus: Bus, procs: dict[str, subprocess.Popen[bytes]], service: str) -> tuple[float, str]:
    """Kill -9 the leader of ``service`` mid-way between two renewals; seconds until the standby answers, and
    the standby."""
    leader, standby = await leader_and_standby(bus, set(procs), service=service)
    assert await _health_from(bus, service, leader)
    await asyncio.sleep(1.5)
    procs[leader].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await assert_eventually(lambda: _health_from(bus, service, standby), timeout=15, interval=0.05,
                            message=f"{standby} leads {service}")
    took = time.monotonic() - killed
    assert procs[standby].poll() is None
    return took, standby


async def test_failover_registry_kill9_standby_takes_over_within_5s_and_keeps_the_members(
        settings, spawn_service, bus: Bus) -> None:
    procs = {n: spawn_service("registry", XPUMESH_INSTANCE_ID=n) for n in ("reg-a", "reg-b")}
    took, standby = await _kill9_takeover(bus, procs, "registry")
    print(f"\nregistry takeover after kill -9 of the leader: {took:.2f} s (ttl {settings.election.ttl_s} s)")
    assert took < TAKEOVER_BUDGET_S

    async def lists_itself() -> bool:  # the new leader takes heartbeats: it lists itself up, as the leader
        page = await bus.request(subjects.rpc_subject("registry", "members.list"),
                                 MemberQuery(kind=MemberKind.SERVICE), MemberPage, timeout=1)
        return any(m.id == f"registry.{standby}" and m.status == "up" and m.meta.get("role") == "leader"
                   for m in page.items)
    await assert_eventually(lists_itself, timeout=10, interval=0.2, message="the new registry leader answers lists")


async def test_failover_metrics_kill9_standby_takes_over_within_5s(settings, spawn_service, bus: Bus) -> None:
    procs = {n: spawn_service("metrics", XPUMESH_INSTANCE_ID=n, XPUMESH_METRICS_PORT=str(free_port()))
             for n in ("met-a", "met-b")}
    took, _ = await _kill9_takeover(bus, procs, "metrics")
    print(f"\nmetrics takeover after kill -9 of the leader: {took:.2f} s (ttl {settings.election.ttl_s} s)")
    assert took < TAKEOVER_BUDGET_S
