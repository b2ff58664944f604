"""Scheduler under faults: a failed write, a lost ``host.down``, on real NATS and PostgreSQL.

A write fails by a real PostgreSQL error: a trigger on the table raises for the next N writes
(its counter is a sequence, which a rolled-back transaction does not roll back).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import asyncpg

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.config import Settings
from libs.schemas.commands import ActualStateReport
from libs.schemas.devices import Health
from libs.schemas.scheduler import WorkloadState, WorkloadView
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually, stream_events
from tests.integration.test_scheduler_kit import TestHost, fast, get, gpu, submit, wait_state

SLEEPER = {"default": {"command": ["sleep", "60"]}}
STUBBORN = {"default": {"command": ["sh", "-c", "trap '' TERM; sleep 60"]}}  # stops only when killed


async def fail_writes(database_url: str, table: str, n: int) -> None:
    """The next ``n`` inserts or updates of ``table`` (schema-qualified) fail with a PostgreSQL error."""
    conn = await asyncpg.connect(database_url)
    try:
        name = table.replace(".", "_")
        await conn.execute(f"""
            DROP SEQUENCE IF EXISTS public.{name}_faults;
            CREATE SEQUENCE public.{name}_faults;
            CREATE OR REPLACE FUNCTION public.{name}_fail() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('public.{name}_faults') <= {n} THEN RAISE EXCEPTION 'injected fault'; END IF;
              RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS {name}_fail ON {table};
            CREATE TRIGGER {name}_fail BEFORE INSERT OR UPDATE ON {table}
              FOR EACH ROW EXECUTE FUNCTION public.{name}_fail();""")
    finally:
        await conn.close()


async def faults_left(database_url: str, table: str, n: int) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        name = table.replace(".", "_")
        used = await conn.fetchval(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.{name}_faults")
        return max(0, n - int(used))
    finally:
        await conn.close()


async def host_row(database_url: str, host_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow("SELECT generation, device_health FROM scheduler.hosts WHERE id = $1", host_id)
    finally:
        await conn.close()


def _settings(settings: Settings, **scheduler: object) -> Settings:
    s = fast(settings, **scheduler)
    return s.model_copy(update={"bus": s.bus.model_copy(update={"redelivery_base_s": 0.1, "redelivery_max_s": 0.3})})


async def test_scheduler_faults_capability_whose_write_failed_is_stored_on_redelivery(
        settings, running_service, bus: Bus, database_url: str, tmp_path: Path) -> None:
    """Before: the first delivery changed memory, the write failed, and the redelivery matched the generation
    already in memory and was skipped: ``scheduler.hosts`` never got the host (a restart forgot it)."""
    await running_service(scheduler_app, _settings(settings, lost_sweep_interval_s=3600))
    await fail_writes(database_url, "scheduler.hosts", 2)
    host = TestHost(bus, settings, "hz-1", [gpu(0), gpu(1)], tmp_path)
    await host.publish_capability()
    row = await assert_eventually(lambda: host_row(database_url, "hz-1"), timeout=10,
                                  message="the host stored after the failed writes")
    assert row["generation"] == host.generation
    assert await faults_left(database_url, "scheduler.hosts", 2) == 0


async def test_scheduler_faults_device_gone_while_the_write_fails_still_moves_its_work(
        settings, running_service, bus: Bus, database_url: str, tmp_path: Path) -> None:
    """Before: the report marking the device unhealthy changed memory first; its write failed, the redelivery
    was skipped as already applied, and the work stayed on the unhealthy device for good."""
    s = _settings(settings, lost_sweep_interval_s=3600)  # the event path alone, not the sweep
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0), gpu(1)], tmp_path).start()
    try:
        view = await submit(bus, {"name": "w", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        running = await wait_state(bus, view.id, WorkloadState.RUNNING)
        dev = running.placement[0].devices[0].id
        index = int(dev.rsplit(":", 1)[1])
        await fail_writes(database_url, "scheduler.hosts", 1)
        host.devices = [gpu(i, health=Health.UNHEALTHY if i == index else Health.HEALTHY) for i in range(2)]
        await host.publish_capability()
        await assert_eventually(lambda: _lost(bus, view.id, dev), timeout=10, message="the replica lost with its device")
        assert await faults_left(database_url, "scheduler.hosts", 1) == 0
        assert (await host_row(database_url, "hz-1"))["generation"] == host.generation  # type: ignore[index]
        await assert_eventually(lambda: _on_other_device(bus, view.id, dev), timeout=15)
    finally:
        await host.stop()


async def _lost(bus: Bus, wid: str, reason: str) -> bool:
    return any(h.to_state == "lost" and reason in h.reason for h in (await get(bus, wid)).history)


async def _on_other_device(bus: Bus, wid: str, dev: str) -> bool:
    v = await get(bus, wid)
    return v.state == WorkloadState.RUNNING and v.placement[0].devices[0].id != dev


async def _heartbeats(pub: HostPublisher, interval_s: float, beating: asyncio.Event) -> None:
    while True:
        if beating.is_set():
            await pub.heartbeat()
        await asyncio.sleep(interval_s)


async def test_scheduler_faults_sweep_moves_work_off_a_host_whose_down_event_it_never_got(
        settings, running_service, bus: Bus, tmp_path: Path) -> None:
    """The registry declared the host down, but the scheduler never handled the ``host.down`` (here: the
    scheduler was away and its consumer's message was acknowledged by someone else, as a dropped message
    is). Before: nothing looked again, and the replica stayed "running" on the dead host forever."""
    s = _settings(settings, lost_sweep_interval_s=0.5)
    await running_service(registry_app, s)
    sched = await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    beating = asyncio.Event()
    beating.set()
    beat = asyncio.create_task(_heartbeats(host.publisher, s.heartbeat_interval_s, beating))
    try:
        view = await submit(bus, {"name": "w", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        await wait_state(bus, view.id, WorkloadState.RUNNING)
        await sched.stop()
        beating.clear()
        await assert_eventually(lambda: _has_down(bus, "hz-1"), timeout=10, message="the registry's host.down")
        psub = await bus.js.pull_subscribe(subjects.HOST_EVENTS_ALL, durable="scheduler-hosts", stream=STREAM_EVENTS)
        for msg in await psub.fetch(100, timeout=2):
            await msg.ack()  # the scheduler's consumer will not see it: as if it had been dropped
        await psub.unsubscribe()
        await running_service(scheduler_app, s)
        await assert_eventually(lambda: _lost(bus, view.id, "host hz-1 down"), timeout=10,
                                message="the replica lost with its host")
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await host.stop()


async def _has_down(bus: Bus, host_id: str) -> bool:
    return any(e.type == "io.xpumesh.host.down" and e.subject == host_id
               for _, e in await stream_events(bus, subjects.HOST_EVENTS_ALL))


async def test_scheduler_faults_restart_knows_unwanted_work_at_once_and_never_double_books_its_device(
        settings, running_service, bus: Bus, database_url: str, tmp_path: Path) -> None:
    """Work an agent runs that nobody wants (its stop was lost while the scheduler restarted) holds its device.
    Before: state reports lived only in memory, so the restarted scheduler saw the device free and placed new
    work on it next to the old, until the host's next periodic report (here an hour away)."""
    s = _settings(settings)
    s = s.model_copy(update={"agent": s.agent.model_copy(update={"state_interval_s": 3600.0})})
    sched = await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    try:
        old = await submit(bus, {"name": "old", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        await wait_state(bus, old.id, WorkloadState.RUNNING)
        await sched.stop()
        conn = await asyncpg.connect(database_url)
        try:  # stopped while the scheduler was away; the stop command never reached the host
            await conn.execute("UPDATE scheduler.replicas SET state = 'stopped' WHERE workload_id = $1", old.id)
            await conn.execute("UPDATE scheduler.workloads SET state = 'stopped' WHERE id = $1", old.id)
        finally:
            await conn.close()
        await running_service(scheduler_app, s)
        new = await submit(bus, {"name": "new", "hardware": {"type": "gpu"}, "variants": SLEEPER})

        await wait_state(bus, new.id, WorkloadState.RUNNING, timeout=15)
        runs = {r.workload_id: r for r in host.executor.runs.values()}
        old_run, new_run = runs[old.id], runs[new.id]
        assert old_run.finished_at is not None and new_run.started_at is not None, (old_run, new_run)
        assert old_run.finished_at <= new_run.started_at, "the new workload started beside the unwanted one"
    finally:
        await host.stop()


class Partition:
    """Cuts a ``TestHost`` off the bus while its work runs on: its heartbeats, state reports and the
    commands sent to it are lost until ``heal``."""

    def __init__(self, host: TestHost) -> None:
        self.host, self.cut = host, False
        execution = host.execution
        assert execution is not None
        command, report = execution.command, host.report_state

        async def gated_command(data: bytes) -> str:
            return "lost" if self.cut else await command(data)

        async def gated_report(rep: ActualStateReport) -> None:
            if not self.cut:
                await report(rep)

        execution.command = gated_command  # type: ignore[method-assign]
        host.report_state = gated_report  # type: ignore[method-assign,assignment]

    def heal(self) -> None:
        self.cut = False
        self.host.executor.report_soon()  # as the agent does after a reconnect


async def test_scheduler_faults_cut_off_host_stops_its_moved_replica_when_it_returns(
        settings, running_service, bus: Bus, tmp_path: Path) -> None:
    """A host cut off from the bus keeps running its replica; the registry declares it down and the replica
    runs again elsewhere. When the host comes back, its old copy must stop, and nothing new may be placed
    on the device it still holds in between."""
    s = _settings(settings, lost_sweep_interval_s=0.5)
    await running_service(registry_app, s)
    await running_service(scheduler_app, s)
    a = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    beating = asyncio.Event()
    beating.set()
    beat = asyncio.create_task(_heartbeats(a.publisher, s.heartbeat_interval_s, beating))
    b: TestHost | None = None
    try:
        view = await submit(bus, {"name": "w", "hardware": {"type": "gpu"}, "variants": STUBBORN})
        await wait_state(bus, view.id, WorkloadState.RUNNING)
        cut = Partition(a)
        cut.cut = True
        beating.clear()
        await assert_eventually(lambda: _has_down(bus, "hz-1"), timeout=10, message="the registry's host.down")
        b = await TestHost(bus, s, "hz-2", [gpu(0)], tmp_path).start()
        moved = await assert_eventually(lambda: _running_on(bus, view.id, "hz-2"), timeout=15,
                                        message="the replica running again on hz-2")
        old = [r for r in a.executor.runs.values() if r.workload_id == view.id]
        assert old and all(r.state.live for r in old), "the cut-off host's copy runs on while it is away"

        other = await submit(bus, {"name": "other", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        assert (await get(bus, other.id)).state == WorkloadState.PENDING  # hz-2 is full, hz-1 away

        beating.set()
        cut.heal()
        await assert_eventually(lambda: all(not r.state.live for r in a.executor.runs.values()
                                            if r.workload_id == view.id),
                                timeout=10, message="the returning host's old copy stopped")
        await wait_state(bus, other.id, WorkloadState.RUNNING, timeout=15)
        first = min(r.finished_at for r in old if r.finished_at is not None)
        started = [r.started_at for r in a.executor.runs.values() if r.workload_id == other.id]
        assert started and started[0] is not None and started[0] >= first, "placed beside the old copy"
        assert (await get(bus, view.id)).placement[0].host_id == moved.placement[0].host_id == "hz-2"
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        await a.stop()
        if b is not None:
            await b.stop()


async def _running_on(bus: Bus, wid: str, host_id: str) -> WorkloadView | None:
    v = await get(bus, wid)
    return v if v.state == WorkloadState.RUNNING and v.placement and v.placement[0].host_id == host_id else None
