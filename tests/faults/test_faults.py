"""Faults under load, one per scenario, on one mesh of real processes (started once for the module).

Each scenario lets the load run, injects its fault, ends it, and then asserts: services answer
again within ``RECOVERY_S`` of the fault's end; every accepted workload exists and is settled;
every committed workload event reached the webhook receiver and the SSE reader; no device is
double-booked; where hosts are lost, they are declared down within ``DETECTION_S`` and their work
placed elsewhere within ``RESCHEDULE_S`` after. The table of results is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from libs.aio import cancel_all
from tests.faults.checks import Row, host_loss, settle, unfenced, verify
from tests.faults.mesh import ACTIVE, B_PREFIX, B_SITE, SERVICES, SIM_B, EventLog, FaultMesh, Load, utc_now
from tests.faults.poison import every_subject, payloads
from tests.integration.test_api_kit import webhook_receiver

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(240)]

RECOVERY_S = 10.0
DETECTION_S = 15.0
RESCHEDULE_S = 5.0
WARMUP_S = 3.0
TABLE: list[Row] = []


class World:
    def __init__(self, mesh: FaultMesh, load: Load, events: EventLog) -> None:
        self.mesh, self.load, self.events = mesh, load, events

    async def settled(self, row: Row) -> Row:
        await verify(self.mesh, self.load, self.events, row)
        TABLE.append(row)
        return row


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    workdir: Path = tmp_path_factory.mktemp("faults")
    mesh = FaultMesh(workdir)
    tasks: list[asyncio.Task[None]] = []
    try:
        await mesh.start()
        async with webhook_receiver() as rx:
            import httpx

            from tests.faults.mesh import ADMIN
            async with httpx.AsyncClient(base_url=mesh.base_url, headers=ADMIN, timeout=10) as c:
                r = await c.post("/v1/subscriptions", json={"url": rx.url, "types": ["io.xpumesh.workload.*"]})
                assert r.status_code == 201, r.text
            events = EventLog(rx.ids)
            deadline = time.monotonic() + 60
            while await mesh.hosts_up() < mesh.hosts:
                assert time.monotonic() < deadline, f"{mesh.hosts} hosts not up; see {workdir / 'logs'}"
                await asyncio.sleep(0.3)
            shared = await mesh.sql("SELECT name FROM registry.members WHERE kind = 'host' AND site = $1 "
                                    "AND name NOT LIKE $2", B_SITE, B_PREFIX + "%")
            assert not shared, f"{B_SITE} is to hold only the {B_PREFIX}* hosts, not {[r['name'] for r in shared]}"
            load = Load(mesh.base_url, data_site=B_SITE)
            tasks = [asyncio.create_task(load.run()), asyncio.create_task(events.read_sse(mesh.base_url))]
            await asyncio.sleep(WARMUP_S)
            yield World(mesh, load, events)
    finally:
        await cancel_all(tasks)
        await mesh.stop()


def assert_row(row: Row) -> None:
    assert row.lost == 0, row
    assert row.missing_webhook == 0 and row.missing_sse == 0, row
    assert not [n for n in row.notes if n.startswith(("unsettled", "double-booked"))], row
    if row.recovery_s is not None:
        assert row.recovery_s <= RECOVERY_S, row
    if row.detection_s is not None:
        assert row.detection_s <= DETECTION_S, row
    if row.reschedule_s is not None:
        assert row.reschedule_s <= RESCHEDULE_S, row


@pytest.mark.parametrize("service", SERVICES)
async def test_faults_sigkill_of_a_service_loses_nothing(world: World, service: str) -> None:
    await asyncio.sleep(WARMUP_S)
    proc = world.mesh.procs[service]
    proc.kill()
    await asyncio.sleep(1.0)  # as a supervisor restarts it
    proc.start()
    end = time.monotonic()
    row = Row(f"SIGKILL {service}", recovery_s=round(await world.mesh.wait_recovered(end), 1))
    assert_row(await world.settled(row))


async def _active_on(mesh: FaultMesh, prefix: str) -> set[tuple[str, int]]:
    rows = await mesh.sql("SELECT workload_id, replica FROM scheduler.replicas WHERE state = ANY($1) "
                          "AND host_id LIKE $2", list(ACTIVE), prefix + "%")
    return {(r["workload_id"], r["replica"]) for r in rows}


async def settle_on(mesh: FaultMesh, prefix: str, timeout_s: float = 20.0) -> set[tuple[str, int]]:
    """The replicas active on the hosts starting with ``prefix``, once there are some."""
    deadline = time.monotonic() + timeout_s
    while not (on := await _active_on(mesh, prefix)) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.3)
    if not on:
        rows = await mesh.sql("SELECT host_id, state, count(*) AS n FROM scheduler.replicas GROUP BY 1, 2")
        hosts = await mesh.sql("SELECT id, up FROM scheduler.hosts WHERE id LIKE $1", prefix + "%")
        raise AssertionError(f"no work on the {prefix}* hosts within {timeout_s}s: the scenario would prove nothing; "
                             f"replicas: {[tuple(r) for r in rows]}; the scheduler's {prefix}* hosts: "
                             f"{[tuple(r) for r in hosts]}")
    return on


async def test_faults_2_s_delay_between_a_simulator_and_nats(world: World) -> None:
    """A slow link that stays up: the simulator's heartbeats, reports and commands all arrive 2 s late."""
    mesh = world.mesh
    await asyncio.sleep(WARMUP_S)
    on_b = await settle_on(mesh, B_PREFIX)
    mesh.proxies[SIM_B].delay(2.0)
    await asyncio.sleep(8)
    mesh.proxies[SIM_B].heal()
    end, healed = time.monotonic(), utc_now()
    row = Row("2 s delay simulator-NATS 8 s", recovery_s=round(await mesh.wait_recovered(end), 1),
              notes=[f"{len(on_b)} replicas on slowed hosts"])
    back = await settle(lambda: _hosts_down(mesh, B_PREFIX), 15)
    assert not back, f"hosts still down after the delay ended: {back}"
    left = await settle(lambda: unfenced(mesh, B_PREFIX, healed + 2), 15)
    assert not left, f"slowed hosts still run work placed elsewhere: {left}"
    assert_row(await world.settled(row))


async def _hosts_down(mesh: FaultMesh, prefix: str) -> list[str]:
    rows = await mesh.sql("SELECT name FROM registry.members WHERE kind = 'host' AND status <> 'up' AND name LIKE $1",
                          prefix + "%")
    return [r["name"] for r in rows]


async def test_faults_partition_of_a_simulator_fences_its_old_work_on_return(world: World) -> None:
    mesh = world.mesh
    await asyncio.sleep(WARMUP_S)
    on_b = await settle_on(mesh, B_PREFIX)
    cut = utc_now()
    await mesh.proxies[SIM_B].cut()
    detection, reschedule = await host_loss(mesh, B_PREFIX, cut, on_b)
    mesh.proxies[SIM_B].heal()
    end, healed = time.monotonic(), utc_now()
    row = Row("partition simulator from NATS", detection_s=round(detection, 1),
              reschedule_s=None if reschedule is None else round(reschedule, 1),
              recovery_s=round(await mesh.wait_recovered(end), 1), notes=[f"{len(on_b)} replicas on cut-off hosts"])
    left = await settle(lambda: unfenced(mesh, B_PREFIX, healed + 2), 15)
    assert not left, f"returning hosts still run work placed elsewhere: {left}"
    assert_row(await world.settled(row))


async def test_faults_sigkill_of_a_simulator_moves_its_hosts_work(world: World) -> None:
    mesh = world.mesh
    await asyncio.sleep(WARMUP_S)
    on_b = await settle_on(mesh, B_PREFIX)
    killed = utc_now()
    mesh.procs[SIM_B].kill()
    detection, reschedule = await host_loss(mesh, B_PREFIX, killed, on_b)
    mesh.procs[SIM_B].start()
    end = time.monotonic()
    row = Row("SIGKILL simulator (4 hosts)", detection_s=round(detection, 1),
              reschedule_s=None if reschedule is None else round(reschedule, 1),
              recovery_s=round(await mesh.wait_recovered(end), 1), notes=[f"{len(on_b)} replicas on lost hosts"])
    assert on_b, "the lost hosts ran nothing: the scenario proves nothing"
    assert reschedule is not None, f"work of the lost hosts not placed elsewhere: {on_b}"
    assert_row(await world.settled(row))


@pytest.mark.parametrize("service, how", [("scheduler", "cut"), ("registry", "cut"), ("gateway", "delay"),
                                          ("scheduler", "delay")])
async def test_faults_link_between_a_service_and_nats(world: World, service: str, how: str) -> None:
    await asyncio.sleep(WARMUP_S)
    proxy = world.mesh.proxies[service]
    if how == "cut":
        await proxy.cut()
        await asyncio.sleep(5)
    else:
        proxy.delay(2.0)
        await asyncio.sleep(8)
    proxy.heal()
    end = time.monotonic()
    label = f"partition {service} from NATS 5 s" if how == "cut" else f"2 s delay {service}-NATS 8 s"
    row = Row(label, recovery_s=round(await world.mesh.wait_recovered(end), 1))
    assert_row(await world.settled(row))


async def test_faults_nats_restart(world: World) -> None:
    await asyncio.sleep(WARMUP_S)
    nats = world.mesh.nats
    await asyncio.to_thread(nats.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(nats.start)
    end = time.monotonic()
    row = Row("NATS restart (2 s down)", recovery_s=round(await world.mesh.wait_recovered(end), 1))
    assert_row(await world.settled(row))


async def test_faults_postgres_crash_and_20_s_outage(world: World) -> None:
    import signal

    from libs.embedded import stop_process

    await asyncio.sleep(WARMUP_S)
    pg = world.mesh.pg
    await asyncio.to_thread(stop_process, pg.proc, signal.SIGQUIT, 5.0)  # immediate: as a crash, WAL replay next
    await asyncio.sleep(20)
    await asyncio.to_thread(pg.start)
    end = time.monotonic()
    row = Row("PostgreSQL crash, 20 s outage", recovery_s=round(await world.mesh.wait_recovered(end), 1))
    assert_row(await world.settled(row))


async def test_faults_poison_on_every_subject(world: World) -> None:
    mesh = world.mesh
    await asyncio.sleep(WARMUP_S)
    hosts = await mesh.sql("SELECT name, site FROM registry.members WHERE kind = 'host' AND status = 'up' LIMIT 1")
    host, site = hosts[0]["name"], hosts[0]["site"]
    sent = 0
    for subject in every_subject(site, host):
        for body in payloads(subject, host):
            await mesh.bus.nc.publish(subject, body)
            sent += 1
    await mesh.bus.nc.flush()
    end = time.monotonic()
    row = Row("poison on every subject", recovery_s=round(await mesh.wait_recovered(end), 1),
              notes=[f"{sent} messages on {sent // 4} subjects"])
    before = len(world.load.accepted)
    await asyncio.sleep(3)
    assert len(world.load.accepted) > before, "no submission accepted after the poison"
    assert all(mesh.procs[s].alive for s in SERVICES), "a service died of poison"
    assert_row(await world.settled(row))
