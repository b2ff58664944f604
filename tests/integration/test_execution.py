"""Execution under failure: lost hosts, unhealthy devices, lost commands, agent restarts, stray commands."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from agent.sim.main import simulate
from libs.bus import subjects
from libs.bus.connection import STREAM_COMMANDS, Bus
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.commands import CommandDevice, LaunchCommand
from libs.schemas.devices import HardwareType, Health
from libs.schemas.hostevents import host_id_for
from libs.schemas.inventory import DeviceEvent
from libs.schemas.scheduler import LogsQuery, LogsView, WorkloadRef, WorkloadState, WorkloadView
from libs.schemas.workload import WorkloadSpec
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import REPO, assert_eventually, service_env, stream_events
from tests.integration.test_scheduler_kit import TestHost, fast, get, gpu, submit, wait_state, workload_events

SLEEPER = {"default": {"command": ["sleep", "60"]}}


def _live(host: TestHost, wid: str) -> list[int]:
    return [r.attempt for r in host.executor.runs.values() if r.workload_id == wid and r.state.live]


async def test_execution_host_down_reschedules_to_another_host(settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(registry_app, s)
    await running_service(scheduler_app, s)
    hosts = {h: await TestHost(bus, s, h, [gpu(0)], tmp_path).start() for h in ("hz-a", "hz-b")}
    beating = set(hosts)

    async def heartbeats() -> None:
        while True:
            for h in list(beating):
                await hosts[h].publisher.heartbeat()
            await asyncio.sleep(s.heartbeat_interval_s)

    beat = asyncio.create_task(heartbeats())
    try:
        view = await submit(bus, {"name": "survivor", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        first = (await wait_state(bus, view.id, WorkloadState.RUNNING)).placement[0]
        lost, other = first.host_id or "", ({"hz-a", "hz-b"} - {first.host_id}).pop()
        beating.discard(lost)  # the host goes silent; the registry declares it down
        await assert_eventually(lambda: _moved(bus, view.id, other), timeout=20)
        moved = await get(bus, view.id)
        assert moved.placement[0].host_id == other and moved.placement[0].attempt == 2
        states = [h.to_state for h in moved.history if h.replica is None]
        assert states.index("lost") < states.index("rescheduled") < len(states) - 1
        assert any(h.to_state == "lost" and f"host {lost} down" in h.reason for h in moved.history)
        # the silent host still ran the old attempt: it is told to stop it
        await assert_eventually(lambda: not _live(hosts[lost], view.id), timeout=10)
        # nothing new lands on the down host
        again = await submit(bus, {"name": "second", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        await assert_eventually(lambda: _explained(bus, again.id), timeout=10)
        assert all(r.host_id is None for r in (await get(bus, again.id)).placement)
        types = [e.type.rsplit(".", 1)[1] for e in await workload_events(bus, view.id)]
        assert "lost" in types and "rescheduled" in types
    finally:
        beat.cancel()
        for h in hosts.values():
            await h.stop()


async def _device_unhealthy(bus: Bus, dev_id: str, index: int) -> None:
    event = CloudEvent.new(EventTypes.DEVICE_UNHEALTHY, "/inventory", DeviceEvent(
        id=dev_id, host_id="hz-1", site="hangzhou", slot=index, index=index, hardware_type=HardwareType.GPU,
        vendor="nvidia", model="A100-SXM4-80GB", health="unhealthy", reason="telemetry"), subject=dev_id)
    await bus.publish_event(event, site="hangzhou")


async def _moved(bus: Bus, wid: str, host: str) -> bool:
    view = await get(bus, wid)
    return view.state == WorkloadState.RUNNING and view.placement[0].host_id == host


async def _explained(bus: Bus, wid: str) -> bool:
    return (await get(bus, wid)).explanation is not None


@pytest.mark.parametrize("told_by", ["inventory event", "agent capability"])
async def test_execution_unhealthy_device_moves_work_off_it(told_by: str, settings, running_service, bus,
                                                            tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0), gpu(1)], tmp_path).start()
    try:
        view = await submit(bus, {"name": "mover", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        first = (await wait_state(bus, view.id, WorkloadState.RUNNING)).placement[0]
        bad = first.devices[0]
        if told_by == "agent capability":
            host.devices[bad.index] = gpu(bad.index, health=Health.UNHEALTHY)
            await host.publish_capability()
        else:
            await _device_unhealthy(bus, bad.id, bad.index)

        async def elsewhere() -> bool:
            v = await get(bus, view.id)
            r = v.placement[0]
            return v.state == WorkloadState.RUNNING and r.attempt == 2 and r.devices[0].id != bad.id

        await assert_eventually(elsewhere, timeout=15, message="rescheduled onto the healthy device")
        await assert_eventually(lambda: _live(host, view.id) == [2], timeout=10, message="old attempt stopped")
        # nothing is placed on the unhealthy device
        blocked = await submit(bus, {"name": "blocked", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        await assert_eventually(lambda: _explained(bus, blocked.id), timeout=10)
        assert (await get(bus, blocked.id)).state == WorkloadState.PENDING
    finally:
        await host.stop()


async def test_execution_lost_launch_is_sent_again_by_reconciliation(settings, running_service, bus,
                                                                     tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start(commands=False)  # reports, but hears nothing
    try:
        view = await submit(bus, {"name": "retry", "hardware": {"type": "gpu"}, "variants": SLEEPER})
        await wait_state(bus, view.id, WorkloadState.PLACED)
        await asyncio.sleep(1.0)  # launches are being sent into the void meanwhile
        assert (await get(bus, view.id)).state == WorkloadState.PLACED and not host.executor.runs
        await host.listen_for_commands()
        running = await wait_state(bus, view.id, WorkloadState.RUNNING, timeout=10)
        assert running.placement[0].attempt == 1  # the same attempt, sent again, not a new placement
        launches = await _launch_ids(bus, view.id)
        assert len(launches) >= 2 and len(set(launches)) == len(launches)
    finally:
        await host.stop()


async def _launch_ids(bus: Bus, wid: str) -> list[str]:
    return [e.id for _, e in await stream_events(bus, subjects.AGENT_COMMAND_ALL, stream=STREAM_COMMANDS)
            if e.type == EventTypes.AGENT_LAUNCH and e.data["workload_id"] == wid]


async def test_execution_agent_restart_adopts_what_still_runs(settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    view = await submit(bus, {"name": "steady", "hardware": {"type": "gpu"}, "variants": SLEEPER})
    await wait_state(bus, view.id, WorkloadState.RUNNING)
    run = next(iter(host.executor.runs.values()))
    assert run.handle is not None and run.handle.pid is not None
    pid, boot = run.handle.pid, host.executor.boot_id
    await host.stop(kill=False)  # the agent dies; its replica does not
    assert psutil.pid_exists(pid)
    restarted = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    try:
        assert restarted.executor.boot_id != boot
        await assert_eventually(lambda: _live(restarted, view.id) == [1], timeout=5, message="adopted")
        await asyncio.sleep(4 * s.agent.state_interval_s)  # several reports of the new boot reconciled
        after = await get(bus, view.id)
        assert after.state == WorkloadState.RUNNING and after.placement[0].attempt == 1
        assert not any(h.to_state in ("lost", "rescheduled") for h in after.history)
        stopped = await bus.request(subjects.rpc_subject("scheduler", "workloads.stop"), WorkloadRef(id=view.id),
                                    WorkloadView)
        assert stopped.state == WorkloadState.STOPPED
        await assert_eventually(lambda: not _alive(pid), timeout=10, message="the adopted process was stopped")
    finally:
        await restarted.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_execution_commands_for_another_host_are_rejected_and_counted(settings, bus, tmp_path: Path) -> None:
    s = fast(settings)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    try:
        before = BUS_REJECTED.labels("agent", "commands", "wrong_host")._value.get()
        now = datetime.now(UTC)
        cmd = LaunchCommand(command_id="launch-stray", host_id="hz-2", site="hangzhou", workload_id="wl_stray",
                            replica=0, attempt=1, replicas=1, devices=[CommandDevice(
                                id="hz-2:nvidia:0", index=0, vendor="nvidia", hardware_type=HardwareType.GPU)],
                            spec=WorkloadSpec(name="stray", hardware={"type": "gpu"}, variants=SLEEPER),
                            issued_at=now, expires_at=now + timedelta(seconds=60))
        event = CloudEvent.new(EventTypes.AGENT_LAUNCH, "/somewhere", cmd, id=cmd.command_id)
        await bus.publish_event(event, subject=subjects.agent_command_subject("hangzhou", "hz-1"))
        await assert_eventually(
            lambda: BUS_REJECTED.labels("agent", "commands", "wrong_host")._value.get() >= before + 1, timeout=5)
        assert not host.executor.runs
    finally:
        await host.stop()


async def test_execution_malformed_commands_are_dropped_and_counted(settings, bus, tmp_path: Path) -> None:
    host = await TestHost(bus, fast(settings), "hz-1", [gpu(0)], tmp_path).start()
    try:
        before = BUS_REJECTED.labels("agent", "commands", "malformed_envelope")._value.get()
        assert host.execution is not None and await host.execution.command(b"not an event") == "rejected"
        await bus.nc.publish(subjects.agent_command_subject("hangzhou", "hz-1"), b'{"specversion":"1.0"}')
        await assert_eventually(
            lambda: BUS_REJECTED.labels("agent", "commands", "malformed_envelope")._value.get() >= before + 2, timeout=5)
        assert not host.executor.runs
    finally:
        await host.stop()


async def test_execution_simulated_fleet_runs_work_as_simulated_replicas(settings, running_service, bus) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    stop, ready = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(simulate(s, 11, 7, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), timeout=20)
    try:
        view = await submit(bus, {"name": "simulated", "hardware": {"type": "gpu"}, "replicas": 2,
                                  "duration_s": 1.0})
        running = await wait_state(bus, view.id, WorkloadState.RUNNING, timeout=20)
        assert all(r.host_id and r.site for r in running.placement)
        done = await wait_state(bus, view.id, WorkloadState.SUCCEEDED, timeout=15)
        assert all(r.exit_code == 0 for r in done.placement)
    finally:
        stop.set()
        await asyncio.wait_for(sim, timeout=15)


async def test_execution_real_agent_process_runs_work_on_this_machine(settings, running_service, bus,
                                                                      tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    probes = tmp_path / "probes"
    shutil.copytree(REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8", probes)
    env = service_env(s, XPUMESH_SITE="hangzhou", XPUMESH_AGENT__STATE_INTERVAL_S="0.3")
    log = tmp_path / "agent.log"
    proc = subprocess.Popen([sys.executable, "-m", "xpumesh", "agent", "run", "--probe-dir", str(probes)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)
    host_id = host_id_for(socket.gethostname())
    try:
        view = await submit(bus, {"name": "on-agent", "hardware": {"type": "gpu", "vendor": "nvidia", "count": 2},
                                  "variants": {"nvidia": {"command": [
                                      "/bin/sh", "-c", "echo visible=$CUDA_VISIBLE_DEVICES host=$XPUMESH_HOST"]}}})
        done = await wait_state(bus, view.id, WorkloadState.SUCCEEDED, timeout=30)
        assert done.placement[0].host_id == host_id
        indices = sorted(d.index for d in done.placement[0].devices)
        logs = await bus.request(subjects.rpc_subject("scheduler", "workloads.logs"), LogsQuery(id=view.id), LogsView)
        assert logs.text == f"visible={','.join(map(str, indices))} host={host_id}\n" and logs.exit_code == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0, log.read_text()[-2000:]
