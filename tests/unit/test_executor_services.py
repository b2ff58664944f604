"""Service replicas on the executor: a free port passed to the replica, readiness probed over HTTP and
reported, out of rotation when stopped; simulated service replicas point at the simulator's responder."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

import xpumesh.examples.echo as echo
from agent.drivers import ProcessDriver, SimDriver
from agent.executor import Executor
from libs.config import AgentSettings
from libs.schemas.commands import ActualStateReport, LaunchCommand, ReplicaReport, StopCommand
from libs.schemas.workload import WorkloadSpec
from tests.conftest import assert_eventually

SETTINGS = AgentSettings(state_interval_s=0.1, stop_grace_s=1.0, readiness_interval_s=0.1, readiness_timeout_s=0.5)
ECHO = [sys.executable, echo.__file__]


def _launch(command: list[str], *, replica: int = 0, readiness_path: str = "/healthz") -> LaunchCommand:
    spec = WorkloadSpec(name="echo", kind="service", hardware={"type": "cpu"},
                        service={"port": 8000, "readiness_path": readiness_path},
                        variants={"default": {"command": command}})
    now = datetime.now(UTC)
    return LaunchCommand(command_id=f"launch-{replica}-{now.timestamp()}", host_id="h1", site="hz",
                         workload_id="wl_svc", replica=replica, attempt=1, replicas=2,
                         devices=[],
                         spec=spec, issued_at=now, expires_at=now + timedelta(seconds=60))


class Reports:
    def __init__(self) -> None:
        self.items: list[ActualStateReport] = []

    async def __call__(self, report: ActualStateReport) -> None:
        self.items.append(report)

    def replica(self, replica: int = 0) -> ReplicaReport | None:
        for r in self.items[-1].replicas if self.items else []:
            if r.replica == replica:
                return r
        return None


def _executor(tmp: Path, reports: Reports, **kw: Any) -> Executor:
    return Executor("h1", "hz", drivers={"process": ProcessDriver(poll_s=0.05), "sim": SimDriver()},
                    settings=SETTINGS, publish=reports, **kw)


async def test_executor_service_replicas_get_their_own_port_and_are_ready_only_while_the_probe_passes(
        tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    try:
        assert await ex.handle(_launch(ECHO, replica=0)) == "launched"
        assert await ex.handle(_launch(ECHO, replica=1)) == "launched"

        def both_ready() -> list[ReplicaReport] | None:
            reps = [reports.replica(0), reports.replica(1)]
            return [r for r in reps if r is not None] if all(r is not None and r.ready for r in reps) else None

        ready = await assert_eventually(both_ready, timeout=10, message="both replicas ready")
        urls = [r.endpoint for r in ready]
        assert all(u and u.startswith("http://127.0.0.1:") for u in urls) and urls[0] != urls[1]
        async with httpx.AsyncClient(trust_env=False) as client:
            answers = [(await client.get(f"{u}/hello")).json() for u in urls if u]
        assert [a["replica"] for a in answers] == ["0", "1"]  # each replica on its own port, knowing its index
        now = datetime.now(UTC)
        assert await ex.handle(StopCommand(command_id="stop-1", host_id="h1", site="hz", workload_id="wl_svc",
                                           replica=1, attempt=1, issued_at=now,
                                           expires_at=now + timedelta(seconds=60))) == "stopped"
        await assert_eventually(lambda: (r := reports.replica(1)) is not None and not r.state.live
                                and r.ready is None and r.endpoint is None, timeout=10, message="replica 1 gone")
        assert reports.replica(0) is not None and reports.replica(0).ready  # type: ignore[union-attr]
    finally:
        await ex.stop_all("test over")
        await ex.close()


async def test_executor_service_replica_whose_probe_fails_is_reported_not_ready(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    try:
        assert await ex.handle(_launch(ECHO, readiness_path="/missing")) == "launched"  # echo answers 200 there
        await assert_eventually(lambda: (r := reports.replica()) is not None and r.ready, timeout=10)
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]  # never listens on its port
        cmd = _launch(sleeper, replica=3)
        assert await ex.handle(cmd) == "launched"
        await assert_eventually(lambda: (r := reports.replica(3)) is not None and r.state.live, timeout=10)
        await assert_eventually(lambda: len(reports.items) > 5, timeout=10)
        rep = reports.replica(3)
        assert rep is not None and rep.ready is False and rep.endpoint is not None
    finally:
        await ex.stop_all("test over")
        await ex.close()


async def test_executor_simulated_service_replica_points_at_the_responder(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports, default_driver="sim", responder="http://127.0.0.1:9/sim")
    await ex.start()
    try:
        assert await ex.handle(_launch(["unused"])) == "launched"
        rep = await assert_eventually(lambda: reports.replica(), timeout=5)
        assert rep.ready is True and rep.simulated
        assert rep.endpoint == "http://127.0.0.1:9/sim/h1/wl_svc/0/1"
    finally:
        await ex.stop_all("test over")
        await ex.close()
