"""Losing one node of a 3-node NATS cluster (JetStream replicas 3) under a submit burst through the gateway.

Real nats-servers (``EmbeddedNatsCluster``), a real gateway and two real schedulers. The node killed -9 is the
one that leads the lease bucket's stream, the hardest one to lose: the leases live there, so the election goes
on only once the two nodes left elected a new leader of that stream. ``-s`` shows the figures.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.config import Settings
from libs.embedded import EmbeddedNatsCluster
from tests.conftest import assert_eventually, stream_events
from tests.integration.test_api_kit import ADMIN, base_url
from tests.integration.test_failover import FAST_SCHEDULER, _gateway_up, _leads, db_rows, leader_and_standby

REPLICATED = {"XPUMESH_BUS__REPLICAS": "3"}
REFUSED_BUDGET_S = 5.0  # no submit may wait (or be refused) longer than this
WATCH_AFTER_KILL_S = 12.0  # past nats-server's stream leader election and any leader change that follows


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    cluster = EmbeddedNatsCluster(tmp_path, password=secrets.token_urlsafe(16)).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nats_url(nats_cluster: EmbeddedNatsCluster) -> str:
    return nats_cluster.url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"bus": settings.bus.model_copy(update={"replicas": 3})})


async def _stream_leader(bus: Bus, stream: str) -> str:
    info = await bus.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader, f"{stream} has no leader"
    assert info.config.num_replicas == 3
    return info.cluster.leader


async def test_failover_nats_node_killed_under_a_submit_burst_loses_nothing_refuses_nothing_past_5s(
        settings, spawn_service, bus: Bus, nats_cluster: EmbeddedNatsCluster, database_url: str) -> None:
    # one admin key drives all 8 clients: above the default 50/s per key a 429 would be the rate limit, not a refusal
    spawn_service("gateway", XPUMESH_GATEWAY__RATE_PER_S="10000", XPUMESH_GATEWAY__RATE_BURST="10000", **REPLICATED)

    def scheduler(name: str) -> subprocess.Popen[bytes]:
        return spawn_service("scheduler", XPUMESH_INSTANCE_ID=name, **FAST_SCHEDULER, **REPLICATED)
    procs = {n: scheduler(n) for n in ("sched-a", "sched-b")}
    restarts: list[str] = []
    leader, _ = await leader_and_standby(bus, set(procs))
    lease_leader = await _stream_leader(bus, subjects.LEASE_STREAM)
    victim = next(n for n in nats_cluster.nodes if n.cluster and f"{n.cluster.name}-{n.cluster.index}" == lease_leader)
    led = [s for s in ("XPUMESH_EVENTS", "XPUMESH_HOSTS", "XPUMESH_TELEMETRY", "XPUMESH_COMMANDS")
           if await _stream_leader(bus, s) == lease_leader]
    answers: list[tuple[int, float, float]] = []  # status, sent at, answered at
    accepted: list[str] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=base_url(settings), timeout=30, headers=ADMIN) as c:
        await assert_eventually(lambda: _gateway_up(c), timeout=30, interval=0.2, message="gateway up")

        async def client(k: int) -> None:
            i = 0
            while not stop.is_set():
                sent = time.monotonic()
                r = await c.post("/v1/workloads", json={"name": f"c{k}-{i}", "hardware": {"type": "gpu"}})
                answers.append((r.status_code, sent, time.monotonic()))
                if r.status_code == 201:
                    accepted.append(r.json()["id"])
                i += 1
                await asyncio.sleep(0.05)

        async def supervise() -> None:  # as xpumesh up does: a scheduler that exits is started again
            while not stop.is_set():
                for name, p in list(procs.items()):
                    if p.poll() is not None:
                        del procs[name]
                        procs[f"{name}-again"] = scheduler(f"{name}-again")
                        restarts.append(f"{name} (exit {p.returncode})")
                await asyncio.sleep(0.5)

        clients = [asyncio.create_task(client(k)) for k in range(8)] + [asyncio.create_task(supervise())]
        try:
            await assert_eventually(lambda: len(accepted) >= 30, timeout=30, message="burst under way")
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.sleep(WATCH_AFTER_KILL_S)
            n = len(accepted)
            await assert_eventually(lambda: len(accepted) >= n + 30, timeout=30, message="accepted after the kill")
        finally:
            stop.set()
            await asyncio.gather(*clients)
    statuses = [a[0] for a in answers]
    slowest = max(a[2] - a[1] for a in answers)
    after = sorted(a[2] for a in answers if a[0] == 201 and a[2] > killed)
    gap = max((b - a for a, b in zip([killed, *after], after, strict=False)), default=0.0)
    print(f"\nNATS node {lease_leader} (leader of the lease stream{', ' + ', '.join(led) if led else ''}) killed -9 "
          f"under 8 clients: {len(answers)} submits, answered { {s: statuses.count(s) for s in set(statuses)} }, "
          f"slowest {slowest:.2f} s, longest time without an accepted submit after the kill {gap:.2f} s; "
          f"scheduler leader {leader} -> {[i for i in procs if await _leads(bus, i)]}, restarted: {restarts}")
    assert set(statuses) == {201}, "no submit refused"
    assert slowest < REFUSED_BUDGET_S and gap < REFUSED_BUDGET_S
    stored = {r["id"] for r in await db_rows(database_url, "SELECT id FROM scheduler.workloads")}
    assert set(accepted) <= stored, "no accepted workload lost"
    assert len(stored) == len(set(accepted)), "no workload stored twice"

    async def every_event_on_the_cluster() -> bool:  # each accepted workload's first event, on the nodes left
        got = {ev.subject for _, ev in await stream_events(bus, subjects.WORKLOAD_EVENTS_ALL, stream=STREAM_EVENTS)}
        missing = set(accepted) - got
        unsent = await db_rows(database_url, "SELECT count(*) AS n FROM scheduler.outbox WHERE sent_at IS NULL")
        assert not missing, (f"{len(missing)} workloads without an event yet, e.g. {sorted(missing)[:3]}; "
                             f"{got and len(got)} workloads with one; outbox rows unsent: {unsent[0]['n']}")
        return True
    await assert_eventually(every_event_on_the_cluster, timeout=20, interval=0.5, message="no event lost")
