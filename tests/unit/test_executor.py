"""The executor: own-host commands only, idempotent launches, variants, reports, adoption after restart."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.drivers import ProcessDriver, SimDriver
from agent.executor import Executor
from libs.config import AgentSettings
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.commands import (
    ActualStateReport,
    CommandDevice,
    LaunchCommand,
    LogsRequest,
    ReplicaState,
    StopCommand,
)
from libs.schemas.devices import HardwareType, device_id
from libs.schemas.workload import WorkloadSpec
from tests.conftest import assert_eventually

SETTINGS = AgentSettings(state_interval_s=0.1, stop_grace_s=1.0, finished_keep=4)
_n = iter(range(1_000_000))


def _launch(command: list[str] | None = None, *, host: str = "h1", site: str = "hz", attempt: int = 1,
            replica: int = 0, wid: str = "wl_a", vendor: str = "nvidia", variants: dict[str, Any] | None = None,
            expires_in: float = 60.0, devices: list[int] | None = None) -> LaunchCommand:
    spec = WorkloadSpec(name="job", hardware={"type": "gpu", "count": 1},
                        variants=variants if variants is not None else {"default": {"command": command or ["true"]}})
    now = datetime.now(UTC)
    return LaunchCommand(command_id=f"launch-{next(_n)}", host_id=host, site=site, workload_id=wid, replica=replica,
                         attempt=attempt, replicas=1, devices=[
                             CommandDevice(id=device_id(host, vendor, i), index=i, vendor=vendor,
                                           hardware_type=HardwareType.GPU) for i in (devices or [0])],
                         spec=spec, issued_at=now, expires_at=now + timedelta(seconds=expires_in))


def _stop(wid: str = "wl_a", replica: int = 0, attempt: int | None = None) -> StopCommand:
    now = datetime.now(UTC)
    return StopCommand(command_id=f"stop-{next(_n)}", host_id="h1", site="hz", workload_id=wid, replica=replica,
                       attempt=attempt, issued_at=now, expires_at=now + timedelta(seconds=60))


class Reports:
    def __init__(self) -> None:
        self.items: list[ActualStateReport] = []

    async def __call__(self, report: ActualStateReport) -> None:
        self.items.append(report)

    def state(self, wid: str = "wl_a", replica: int = 0, attempt: int = 1) -> tuple[ReplicaState, int | None] | None:
        if not self.items:
            return None
        for r in self.items[-1].replicas:
            if (r.workload_id, r.replica, r.attempt) == (wid, replica, attempt):
                return r.state, r.exit_code
        return None


_made: list[Executor] = []


def _executor(tmp: Path, reports: Reports, *, state_dir: bool = False, **kw: Any) -> Executor:
    ex = Executor("h1", "hz", drivers={"process": ProcessDriver(poll_s=0.05), "sim": SimDriver()},
                  settings=SETTINGS, state_dir=tmp / "state" if state_dir else None, publish=reports, **kw)
    _made.append(ex)
    return ex


@pytest.fixture(autouse=True)
async def _stop_leftovers() -> AsyncIterator[None]:
    """No replica outlives its test, whatever the test's outcome."""
    yield
    while _made:
        ex = _made.pop()
        await ex.stop_all("test over")
        await ex.close()


def _rejected(reason: str) -> float:
    return BUS_REJECTED.labels("agent", "commands", reason)._value.get()


async def test_executor_rejects_and_counts_commands_for_another_host(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    before = _rejected("wrong_host")
    assert await ex.handle(_launch(host="h2")) == "rejected"
    assert await ex.handle(_launch(site="other")) == "rejected"
    assert _rejected("wrong_host") == before + 2
    assert ex.runs == {}
    bad = CloudEvent.new(EventTypes.AGENT_LAUNCH, "/scheduler", {"kind": "launch", "host_id": "h1"})
    before_bad = _rejected("invalid_command")
    assert await ex.handle_event(bad) == "rejected"
    assert _rejected("invalid_command") == before_bad + 1
    await ex.close()


async def test_executor_runs_a_replica_to_its_exit_code_and_reports_it(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    cmd = _launch([sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES']); raise SystemExit(5)"],
                  devices=[2])
    event = CloudEvent.new(EventTypes.AGENT_LAUNCH, "/scheduler", cmd, id=cmd.command_id)
    assert await ex.handle_event(event) == "launched"
    assert await ex.handle_event(event) == "duplicate"  # the same command twice
    again = cmd.model_copy(update={"command_id": "launch-resent"})
    assert await ex.handle(again) == "duplicate"  # a re-send of the same attempt
    await assert_eventually(lambda: reports.state() == (ReplicaState.FAILED, 5), timeout=10)
    logs = await ex.logs(LogsRequest(workload_id="wl_a", replica=0))
    assert logs.text.strip() == "2" and logs.exit_code == 5
    await ex.close()


async def test_executor_picks_the_vendor_variant_and_fails_without_one(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    variants = {"nvidia": {"command": ["/bin/sh", "-c", "echo nvidia"]},
                "default": {"command": ["/bin/sh", "-c", "echo default"]}}
    await ex.handle(_launch(variants=variants))
    await assert_eventually(lambda: reports.state() == (ReplicaState.SUCCEEDED, 0), timeout=10)
    assert (await ex.logs(LogsRequest(workload_id="wl_a", replica=0))).text == "nvidia\n"
    await ex.handle(_launch(variants={"huawei": {"command": ["true"]}}, wid="wl_b"))
    await assert_eventually(lambda: (reports.state("wl_b") or (None,))[0] == ReplicaState.FAILED, timeout=5)
    assert "no variant" in next(r.message for r in reports.items[-1].replicas if r.workload_id == "wl_b")
    await ex.close()


async def test_executor_newer_attempt_replaces_older_and_stop_stops(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    await ex.handle(_launch(["sleep", "30"], attempt=1))
    await assert_eventually(lambda: reports.state(attempt=1) == (ReplicaState.RUNNING, None), timeout=5)
    assert await ex.handle(_launch(["sleep", "30"], attempt=2)) == "launched"
    assert await ex.handle(_launch(["sleep", "30"], attempt=1)) == "stale"
    await assert_eventually(lambda: reports.state(attempt=1) is not None
                            and reports.state(attempt=1)[0] == ReplicaState.STOPPED  # type: ignore[index]
                            and reports.state(attempt=2) == (ReplicaState.RUNNING, None), timeout=5)
    assert await ex.handle(_stop(attempt=2)) == "stopped"
    await assert_eventually(lambda: (reports.state(attempt=2) or (None,))[0] == ReplicaState.STOPPED, timeout=5)
    assert await ex.handle(_stop(wid="wl_unknown")) == "nothing_to_stop"
    await ex.close()


async def test_executor_drops_expired_commands_and_unknown_devices(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports, known_devices=lambda: {"h1:nvidia:0"})
    await ex.start()
    assert await ex.handle(_launch(expires_in=-1)) == "expired"
    assert await ex.handle(_launch(devices=[7])) == "failed"
    await assert_eventually(lambda: (reports.state() or (None,))[0] == ReplicaState.FAILED, timeout=5)
    assert "not on this host" in reports.items[-1].replicas[0].message
    await ex.close()


async def test_executor_restarted_adopts_what_still_runs_and_collects_its_exit_code(tmp_path: Path) -> None:
    reports = Reports()
    first = _executor(tmp_path, reports, state_dir=True)
    await first.start()
    await first.handle(_launch(["/bin/sh", "-c", "sleep 1.5; exit 4"]))
    await assert_eventually(lambda: reports.state() == (ReplicaState.RUNNING, None), timeout=5)
    await first.close()  # the agent goes away; the replica keeps running
    after = Reports()
    second = _executor(tmp_path, after, state_dir=True)
    await second.start()
    assert second.boot_id != first.boot_id
    await assert_eventually(lambda: after.state() == (ReplicaState.RUNNING, None), timeout=5,
                            message="adopted as running")
    await assert_eventually(lambda: after.state() == (ReplicaState.FAILED, 4), timeout=10,
                            message="exit code collected after adoption")
    await second.close()


async def test_executor_sim_driver_keeps_finished_replicas_bounded(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports, default_driver="sim")
    await ex.start()
    for i in range(8):
        cmd = _launch(wid=f"wl_{i}")
        cmd = cmd.model_copy(update={"spec": cmd.spec.model_copy(update={"duration_s": 0.05})})
        assert await ex.handle(cmd) == "launched"
        await asyncio.sleep(0.1)
    await assert_eventually(lambda: all(not r.state.live for r in ex.runs.values()), timeout=5)
    assert await ex.handle(_launch(wid="wl_last")) == "launched"  # pruning happens on launch
    assert len([r for r in ex.runs.values() if not r.state.live]) <= SETTINGS.finished_keep
    await ex.close()


async def test_executor_stop_event_envelope_is_accepted(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    await ex.handle(_launch(["sleep", "30"]))
    cmd = _stop()
    assert await ex.handle_event(CloudEvent.new(EventTypes.AGENT_STOP, "/scheduler", cmd, id=cmd.command_id)) == "stopped"
    await ex.close()


async def test_executor_pins_cpu_replicas_to_cpus_no_other_live_replica_holds(tmp_path: Path) -> None:
    from agent.cpusets import CpuAllocator
    from libs.schemas.commands import ReplicaResources

    reports = Reports()
    ex = _executor(tmp_path, reports, cpus=CpuAllocator(range(8), {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}))
    await ex.start()
    spec = WorkloadSpec(name="etl", hardware={"type": "cpu"}, resources={"cpu": 3},
                        variants={"cpu": {"command": ["sleep", "30"]}, "default": {"command": ["false"]}})

    def cmd(replica: int, cpu: int, node: int | None = None) -> LaunchCommand:
        now = datetime.now(UTC)
        return LaunchCommand(command_id=f"launch-{next(_n)}", host_id="h1", site="hz", workload_id="wl_c",
                             replica=replica, attempt=1, replicas=3, devices=[],
                             resources=ReplicaResources(cpu=cpu, memory_mib=512, numa_node=node), spec=spec,
                             issued_at=now, expires_at=now + timedelta(seconds=60))

    assert await ex.handle(cmd(0, 3)) == "launched"
    assert await ex.handle(cmd(1, 3)) == "launched"
    assert await ex.handle(cmd(2, 2, node=0)) == "launched"
    held = {r.replica: r.handle.cpus for r in ex.runs.values() if r.handle is not None}
    # the first fills most of node 0, the second cannot fit there and takes node 1, the third the rest of node 0
    assert held == {0: "0-2", 1: "4-6", 2: None}  # node 0 has one CPU left: the third runs unpinned
    await ex.handle(_stop("wl_c", 0))
    assert await ex.handle(cmd(2, 2, node=0).model_copy(update={"attempt": 2})) == "launched"
    assert next(r.handle.cpus for r in ex.runs.values() if (r.replica, r.attempt) == (2, 2) and r.handle) == "0-1"


async def test_executor_hands_a_share_its_mig_instance_once_and_reports_the_enforcement(tmp_path: Path) -> None:
    from agent.shares import DeviceFacts, MigInstance

    mig = "MIG-6e95ef19-5145-571b-b040-7e731f1c1af3"
    gpu = device_id("h1", "nvidia", 0)
    reports = Reports()
    ex = _executor(tmp_path, reports, share_facts=lambda: {gpu: DeviceFacts(memory_mib=40960,
                                                                            mig=(MigInstance(mig, "3g.20gb"),))})
    await ex.start()
    spec = WorkloadSpec(name="infer", hardware={"type": "gpu", "share": 0.25},
                        variants={"default": {"command": [sys.executable, "-c",
                                                          "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], "
                                                          "flush=True); time.sleep(30)"]}})

    def cmd(wid: str, attempt: int = 1) -> LaunchCommand:
        now = datetime.now(UTC)
        return LaunchCommand(command_id=f"launch-{next(_n)}", host_id="h1", site="hz", workload_id=wid, replica=0,
                             attempt=attempt, replicas=1, devices=[CommandDevice(
                                 id=gpu, index=0, vendor="nvidia", hardware_type=HardwareType.GPU, share=0.25,
                                 memory_mib=10240)], spec=spec, issued_at=now, expires_at=now + timedelta(seconds=60))

    assert await ex.handle(cmd("wl_m1")) == "launched"
    assert await ex.handle(cmd("wl_m2")) == "launched"  # the one instance is held: the second is advisory here

    def enforcement() -> dict[str, str | None] | None:
        if not reports.items:
            return None
        got = {r.workload_id: str(r.share_enforcement) if r.share_enforcement else None
               for r in reports.items[-1].replicas}
        return got if len(got) == 2 else None

    got = await assert_eventually(enforcement, timeout=10)
    assert got == {"wl_m1": "mig", "wl_m2": "advisory"}
    logs = await assert_eventually(lambda: _logged(ex, "wl_m1"), timeout=10)
    assert logs.strip() == mig
    await ex.handle(_stop("wl_m1"))
    assert await ex.handle(cmd("wl_m3")) == "launched"  # freed with its replica
    assert next(r.handle.mig_uuid for r in ex.runs.values() if r.workload_id == "wl_m3" and r.handle) == mig


async def _logged(ex: Executor, wid: str) -> str | None:
    text = (await ex.logs(LogsRequest(workload_id=wid, replica=0))).text
    return text or None
