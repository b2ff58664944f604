"""Pinning replicas to CPUs: which CPUs the agent picks, and the drivers' arguments and limits for them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from agent.cpusets import CpuAllocator, usable_cpus
from agent.drivers import ProcessDriver
from agent.drivers.base import LaunchPlan, workload_env
from agent.drivers.docker import docker_run_args
from agent.drivers.isolation import Cgroups
from libs.schemas.workload import Variant, WorkloadSpec

NUMA = {0: list(range(0, 8)), 1: list(range(8, 16))}


def _plan(tmp: Path, *, cpus: tuple[int, ...] = (), memory_mib: int | None = None, command: list[str] | None = None,
          image: str | None = None) -> LaunchPlan:
    spec = WorkloadSpec(name="etl", hardware={"type": "cpu"}, resources={"cpu": max(1, len(cpus))})
    return LaunchPlan("wl_1", 0, 1, 1, "h1", "hz", [], Variant(command=command, image=image), spec, tmp / "run",
                      cpus=cpus, memory_mib=memory_mib)


def test_cpusets_pick_keeps_a_replica_on_one_numa_node_and_skips_busy_cpus():
    a = CpuAllocator(range(16), NUMA)
    assert a.pick(4, set()) == [0, 1, 2, 3]
    # node 0 has 3 free, node 1 all 8: a 4-CPU replica goes whole to node 1
    assert a.pick(4, {0, 1, 2, 3, 4}) == [8, 9, 10, 11]
    # the fullest node that still fits: node 0 (4 free) before node 1 (8 free)
    assert a.pick(2, {0, 1, 2, 3}) == [4, 5]
    assert a.pick(3, set(), node=1) == [8, 9, 10]
    assert a.pick(9, set(range(8, 16)), node=1) is None
    # no node has 10 free: spread in order
    assert a.pick(10, {0, 8}) == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11]
    assert a.pick(15, {0, 8}) is None and a.pick(0, set()) == []


def test_cpusets_cpus_no_node_lists_are_still_given():
    a = CpuAllocator([0, 1, 2, 3, 20], {0: [0, 1, 2, 3]})
    assert a.pick(5, set()) == [0, 1, 2, 3, 20]


def test_cpusets_usable_cpus_leave_the_reserve_out():
    mine = sorted(os.sched_getaffinity(0))
    assert usable_cpus(0) == mine
    assert usable_cpus(1) == mine[1:]
    assert usable_cpus(len(mine)) == []


def test_cpusets_docker_passes_cpuset_and_memory(tmp_path: Path):
    args = docker_run_args(_plan(tmp_path, cpus=(4, 5, 6, 7, 12), memory_mib=8192, image="etl:1"))
    i = args.index("--cpuset-cpus")
    assert args[i + 1] == "4-7,12"
    assert args[args.index("--memory") + 1] == "8192m"
    assert args.index("--memory") < args.index("etl:1")
    bare = docker_run_args(_plan(tmp_path, image="etl:1"))
    assert "--cpuset-cpus" not in bare and "--memory" not in bare


def test_cpusets_replica_env_names_its_cpus_and_memory(tmp_path: Path):
    env = workload_env(_plan(tmp_path, cpus=(0, 1, 2, 3), memory_mib=1024))
    assert env["XPUMESH_CPUS"] == "0-3" and env["XPUMESH_HOST_MEMORY_MIB"] == "1024"
    assert "XPUMESH_CPUS" not in workload_env(_plan(tmp_path))


def test_cpusets_process_argv_pins_before_everything_else(tmp_path: Path):
    argv = ProcessDriver().argv(_plan(tmp_path, cpus=(1, 3)), ["python", "etl.py"])
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"] and argv[5] == "1,3"
    assert argv[6:9] == ["/bin/sh", "-c", argv[8]] and argv[-2:] == ["python", "etl.py"]
    assert ProcessDriver().argv(_plan(tmp_path), ["x"])[0] == "/bin/sh"


async def test_cpusets_process_replica_runs_on_its_cpus_only(tmp_path: Path):
    cpu = max(os.sched_getaffinity(0))
    show = [sys.executable, "-c", "import os; print('cpus=' + ','.join(map(str, sorted(os.sched_getaffinity(0)))))"]
    # a child the command starts inherits the pin too
    driver = ProcessDriver(poll_s=0.05)
    handle = await driver.start(_plan(tmp_path, cpus=(cpu,), command=["/bin/sh", "-c", " ".join(
        [*show[:2], repr(show[2])])]))
    code, _ = await asyncio.wait_for(driver.wait(handle), timeout=10)
    text, _ = await driver.logs(handle, 4096)
    assert code == 0 and f"cpus={cpu}\n" in text, text


def test_cpusets_cgroup_limits_are_written_where_the_files_exist(tmp_path: Path):
    parent = tmp_path / "xpumesh.slice"
    group = parent / "wl_1-0-1"
    group.mkdir(parents=True)
    (parent / "cgroup.subtree_control").write_text("")
    (group / "cpuset.cpus").write_text("")
    (group / "memory.max").write_text("max")
    done = Cgroups.limit(group, "0-3", 2048)
    assert done == ["cpuset.cpus=0-3", f"memory.max={2048 * 1024 * 1024}"]
    assert (group / "cpuset.cpus").read_text() == "0-3" and (group / "memory.max").read_text() == str(2 << 30)
    assert (parent / "cgroup.subtree_control").read_text() == "+memory"  # last controller enabled
    missing = tmp_path / "other" / "g"
    missing.mkdir(parents=True)
    (missing / "memory.max").write_text("max")
    assert Cgroups.limit(missing / "nope", "0", 1) == []
