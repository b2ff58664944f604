"""Two tenants' replicas on one host, run by a real executor through the real process driver
(built as the agent builds it): each has its own uid from the configured range and a 0700
directory; neither can read the other's output nor signal the other's processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from agent.drivers import ProcessDriver
from agent.drivers.isolation import UidPool, group_ids, isolation_status
from agent.execution import host_drivers
from agent.executor import Executor, Run
from libs.config import AgentSettings
from libs.schemas.commands import LogsRequest, ReplicaState
from tests.conftest import assert_eventually
from tests.unit.test_executor import Reports, _launch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching uids needs root")

START, COUNT = 2_100_000_000, 8
SETTINGS = AgentSettings(state_interval_s=0.1, stop_grace_s=1.0, replica_uid_start=START, replica_uid_count=COUNT,
                         replica_cgroup_parent=None)
_made: list[Executor] = []


def _executor(tmp: Path, reports: Reports) -> Executor:
    ex = Executor("h1", "hz", drivers=host_drivers(SETTINGS), settings=SETTINGS, state_dir=tmp / "state",
                  publish=reports)
    _made.append(ex)
    return ex


@pytest.fixture(autouse=True)
async def _stop_leftovers() -> AsyncIterator[None]:
    yield
    while _made:
        ex = _made.pop()
        await ex.stop_all("test over")
        await ex.close()


def _run(ex: Executor, wid: str) -> Run:
    return next(r for r in ex.runs.values() if r.workload_id == wid)


async def test_tenant_isolation_replicas_cannot_read_or_signal_each_other(tmp_path: Path) -> None:
    reports = Reports()
    ex = _executor(tmp_path, reports)
    await ex.start()
    await ex.handle(_launch(["/bin/sh", "-c", "echo secret-of-a; cat output.log >/dev/null && echo own=ok; "
                                               "exec sleep 60"], wid="wl_a"))
    a = _run(ex, "wl_a")
    await assert_eventually(lambda: a.state == ReplicaState.RUNNING, timeout=5)

    async def a_wrote() -> bool:
        return "own=ok" in (await ex.logs(LogsRequest(workload_id="wl_a", replica=0))).text

    await assert_eventually(a_wrote, timeout=10, message="A reads its own log")
    assert a.handle is not None and a.handle.workdir and a.handle.pid
    a_log = Path(a.handle.workdir) / "output.log"
    probe = (f"id -u; id -G; cat {a_log}; echo cat=$?; kill -0 {a.handle.pid}; echo kill=$?; "
             f"ls {a.handle.workdir}; echo ls=$?; cat output.log >/dev/null && echo own=ok")
    await ex.handle(_launch(["/bin/sh", "-c", probe], wid="wl_b"))
    b = _run(ex, "wl_b")
    await assert_eventually(lambda: b.state == ReplicaState.SUCCEEDED, timeout=10)
    text = (await ex.logs(LogsRequest(workload_id="wl_b", replica=0))).text
    assert "secret-of-a" not in text, text
    assert "Permission denied" in text and "cat=1" in text and "ls=2" in text, text
    assert "kill=1" in text and "own=ok" in text, text
    assert a.handle.uid is not None and b.handle is not None and b.handle.uid is not None
    assert a.handle.uid != b.handle.uid and {a.handle.uid, b.handle.uid} <= set(range(START, START + COUNT))
    assert text.splitlines()[0] == str(b.handle.uid)  # it ran as the uid its handle records
    groups = {int(g) for g in text.splitlines()[1].split()}
    assert groups == {b.handle.uid, *group_ids(SETTINGS.replica_groups)}  # its own gid and the device groups only
    info = os.stat(a.handle.workdir)
    assert info.st_uid == a.handle.uid and stat.S_IMODE(info.st_mode) == 0o700
    assert os.stat(b.handle.workdir or "").st_uid == 0  # B ended: its directory went back to root
    assert "secret-of-a" in (await ex.logs(LogsRequest(workload_id="wl_a", replica=0))).text  # the agent reads


async def test_tenant_isolation_restarted_agent_keeps_an_adopted_replicas_uid(tmp_path: Path) -> None:
    first = _executor(tmp_path, Reports())
    await first.start()
    await first.handle(_launch(["sleep", "60"], wid="wl_a"))
    a = _run(first, "wl_a")
    await assert_eventually(lambda: a.state == ReplicaState.RUNNING, timeout=5)
    assert a.handle is not None and a.handle.uid is not None
    _made.remove(first)
    await first.close()  # the agent goes away; A keeps running under its uid
    second = _executor(tmp_path, Reports())
    await second.start()
    adopted = _run(second, "wl_a")
    assert adopted.state == ReplicaState.RUNNING and adopted.handle is not None
    assert adopted.handle.uid == a.handle.uid  # recorded with the run
    for i in range(COUNT - 1):
        outcome = await second.handle(_launch(["sleep", "60"], wid=f"wl_{i}"))
        assert outcome == "launched", _run(second, f"wl_{i}").message
    uids = [r.handle.uid for r in second.runs.values() if r.handle is not None]
    assert len(set(uids)) == COUNT  # every live replica its own uid, A's never handed out again
    assert await second.handle(_launch(["sleep", "60"], wid="wl_full")) == "failed"
    assert "in use" in _run(second, "wl_full").message


async def test_tenant_isolation_without_root_runs_as_the_agent_and_warns(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with caplog.at_level(logging.WARNING, logger="agent.drivers.process"):
        driver = ProcessDriver(uids=UidPool(START, COUNT))
    assert not driver.isolated
    assert "not root" in isolation_status(START, COUNT, None)  # and `xpumesh agent discover` says so
    assert any("not root" in r.getMessage() and "can read each other" in r.getMessage() for r in caplog.records)


def _cgroup_v2_parent() -> Path | None:
    """A writable cgroup v2 hierarchy on this machine, if any (the unified one of a hybrid host too)."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.controllers").exists() and os.access(root, os.W_OK):
            return root
    return None


async def test_tenant_isolation_replica_gets_its_own_cgroup_and_stop_ends_escapees(tmp_path: Path) -> None:
    root = _cgroup_v2_parent()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    parent = root / f"xpumesh-test-{os.getpid()}"
    settings = SETTINGS.model_copy(update={"replica_cgroup_parent": parent})
    ex = Executor("h1", "hz", drivers=host_drivers(settings), settings=settings, state_dir=tmp_path / "state",
                  publish=Reports())
    _made.append(ex)
    try:
        await ex.start()
        script = "cat /proc/self/cgroup; setsid sleep 60 & echo escapee=$!; exec sleep 60"
        await ex.handle(_launch(["/bin/sh", "-c", script], wid="wl_a"))
        a = _run(ex, "wl_a")

        async def escapee() -> int | None:
            text = (await ex.logs(LogsRequest(workload_id="wl_a", replica=0))).text
            return int(text.split("escapee=")[1].split()[0]) if "escapee=" in text else None

        pid = await assert_eventually(escapee, timeout=10)
        assert a.handle is not None and a.handle.cgroup == str(parent / Path(a.handle.workdir or "").name)
        text = (await ex.logs(LogsRequest(workload_id="wl_a", replica=0))).text
        assert f"0::/{parent.relative_to(root) / Path(a.handle.cgroup).name}" in text  # joined before it ran
        assert str(pid) in (Path(a.handle.cgroup) / "cgroup.procs").read_text()  # left its group, not its cgroup
        await ex.stop_all("test over")
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not await asyncio.to_thread(os.path.exists, a.handle.cgroup)  # removed once empty
    finally:
        await ex.close()
        _made.remove(ex)
        with contextlib.suppress(OSError):
            parent.rmdir()
