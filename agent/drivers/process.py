"""The process driver: run the variant's command on this host, with its devices made visible.

The command runs in its own session (process group) under ``/bin/sh``, which writes the
exit code to a file when the command ends. Its environment is allow-listed
(``agent.drivers.base.replica_env``): nothing of the agent's own but ``PATH`` and ``LANG``. So a replica outlives an agent restart: the
restarted agent finds it again by pid and start time, and still learns its exit code.
Output goes to ``output.log`` in the replica's directory (opened in append mode); when it
grows past half of ``log_max_bytes`` its tail moves to ``output.log.1``, so at most about
``log_max_bytes`` is kept. Stop sends SIGTERM to the whole group, then SIGKILL after the
grace period.

Given a ``UidPool`` and an agent running as root, each replica runs under its own uid from
the pool, in a 0700 directory owned by that uid, and in its own cgroup where cgroup v2 is
writable (``agent.drivers.isolation``): one tenant's replica can neither read another's
``output.log`` nor signal its processes. Without root it runs as today, after one warning.

A replica that holds CPUs is pinned to them (its affinity, as ``taskset -c``; also its
cgroup's ``cpuset.cpus`` where it has one); its host memory is its cgroup's ``memory.max``
where the ``memory`` controller is delegated, and only advisory (``XPUMESH_HOST_MEMORY_MIB``)
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

from agent.drivers.base import (
    Exit,
    LaunchError,
    LaunchPlan,
    RunHandle,
    device_env,
    host_base_env,
    read_tail,
    replica_env,
    visible_devices_env,
)
from agent.drivers.isolation import (
    Cgroups,
    PoolExhausted,
    UidPool,
    can_switch_uid,
    group_ids,
    launcher_argv,
    pin_argv,
    prepare_workdir,
    seal_workdir,
)
from libs.schemas.devices import format_cpu_list

LOG = "output.log"
EXIT = "exit_code"
DROPPED = "output.dropped"  # present once older output was rotated away
# "$0" is the exit file; the command and its arguments are "$@", never re-parsed by the shell.
WRAPPER = 'code=0; "$@" || code=$?; printf "%s" "$code" > "$0.tmp" && mv "$0.tmp" "$0"; exit "$code"'
log = logging.getLogger(__name__)


class ProcessDriver:
    name = "process"

    def __init__(self, *, log_max_bytes: int = 1024 * 1024, poll_s: float = 0.2, uids: UidPool | None = None,
                 cgroup_parent: Path | None = None, groups: Sequence[str] = ()) -> None:
        self.log_max_bytes = log_max_bytes
        self.poll_s = poll_s
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self.uids = uids
        self.cgroups = Cgroups(cgroup_parent)
        self.groups = group_ids(groups)
        self.isolated = uids is not None and can_switch_uid()
        if uids is not None and not self.isolated:
            log.warning("the agent is not root, so replicas run under its own uid %d: tenants on this host can read "
                        "each other's output and signal each other's processes (run the agent as root to give each "
                        "replica its own uid from %d-%d)", os.geteuid(), uids.start, uids.start + uids.count - 1)

    def environment(self, plan: LaunchPlan) -> dict[str, str]:
        """The replica's environment: allow-listed (``replica_env``), never the agent's own, which
        holds its credentials; only ``PATH`` and ``LANG`` come from the agent, ``HOME`` is the
        replica's directory."""
        return replica_env(plan, device_env(plan, visible_devices_env(plan.devices)), host_base_env(plan.workdir))

    def argv(self, plan: LaunchPlan, argv: list[str], uid: int | None = None, group: Path | None = None) -> list[str]:
        """What is executed: the exit-code wrapper, under the replica's uid and cgroup when isolated, pinned to its
        CPUs when it holds some (the pin comes first, so the launcher and all it starts inherit it)."""
        wrapped = ["/bin/sh", "-c", WRAPPER, EXIT, *argv]
        if uid is not None:
            wrapped = launcher_argv(group, uid, wrapped, self.groups)
        if plan.cpus:
            wrapped = pin_argv(format_cpu_list(plan.cpus), wrapped)
        return wrapped

    async def start(self, plan: LaunchPlan) -> RunHandle:
        argv = plan.variant.command
        if not argv:
            raise LaunchError("the variant has no command to run (the process driver needs 'command')")
        uid, group = self._isolate(plan)
        for stale in (EXIT, EXIT + ".tmp"):
            (plan.workdir / stale).unlink(missing_ok=True)
        # the exit file is named relative to the replica's directory, its cwd
        wrapped = self.argv(plan, argv, uid, group)
        fd = os.open(plan.workdir / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if uid is not None:
                os.fchown(fd, uid, uid)  # the replica reads its own output; the agent reads it as root
            proc = await asyncio.create_subprocess_exec(
                *wrapped, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, cwd=plan.workdir,
                env=self.environment(plan), start_new_session=True)
        except OSError as exc:
            self._release(uid, str(plan.workdir), group)
            raise LaunchError(f"could not start /bin/sh: {exc.strerror or type(exc).__name__}") from None
        finally:
            os.close(fd)
        self._children[proc.pid] = proc
        try:
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = None
        return RunHandle(workload_id=plan.workload_id, replica=plan.replica, attempt=plan.attempt, driver=self.name,
                         started_at=datetime.now(UTC), workdir=str(plan.workdir), pid=proc.pid, create_time=created,
                         uid=uid, cgroup=str(group) if group else None)

    def _isolate(self, plan: LaunchPlan) -> tuple[int | None, Path | None]:
        """The replica's uid and cgroup, and its directory made its own (without isolation: a plain directory)."""
        if not self.isolated or self.uids is None:
            plan.workdir.mkdir(parents=True, exist_ok=True)
            return None, None
        try:
            uid = self.uids.allocate(str(plan.workdir))
        except PoolExhausted as exc:
            raise LaunchError(str(exc)) from None
        try:
            prepare_workdir(plan.workdir, uid)
        except OSError as exc:
            self.uids.release(uid, str(plan.workdir))
            raise LaunchError(f"could not prepare the replica's directory: {exc.strerror}") from None
        group = self.cgroups.create(plan.workdir.name)
        if group is not None and (plan.cpus or plan.memory_mib):
            Cgroups.limit(group, format_cpu_list(plan.cpus) if plan.cpus else None, plan.memory_mib)
        return uid, group

    def _release(self, uid: int | None, owner: str, group: Path | str | None) -> None:
        if uid is not None and self.uids is not None:
            self.uids.release(uid, owner)
        Cgroups.remove(str(group) if group else None)

    async def _finished(self, handle: RunHandle) -> None:
        """The replica is gone: whatever it left in its cgroup killed, its directory back to root,
        its uid back to the pool, its cgroup removed."""
        if handle.uid is None or handle.workdir is None:
            return
        await Cgroups.empty(handle.cgroup)
        seal_workdir(Path(handle.workdir))
        self._release(handle.uid, handle.workdir, handle.cgroup)

    async def alive(self, handle: RunHandle) -> bool:
        """Whether it still runs; a live replica's uid is held (so a restarted agent adopts it)."""
        if handle.pid is None:
            return False
        try:
            p = psutil.Process(handle.pid)
            if handle.create_time is not None and abs(p.create_time() - handle.create_time) > 0.5:
                return False  # the pid was reused by another process
            running = p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
        if running and handle.uid is not None and handle.workdir and self.uids is not None:
            self.uids.claim(handle.uid, handle.workdir)
        return running

    def _exit_file(self, handle: RunHandle) -> int | None:
        if handle.workdir is None:
            return None
        try:
            return int((Path(handle.workdir) / EXIT).read_text().strip())
        except (OSError, ValueError):
            return None

    async def wait(self, handle: RunHandle) -> Exit:
        child = self._children.get(handle.pid or -1)
        if child is not None:
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        rc = await child.wait()
                    break
                except TimeoutError:
                    self.rotate(handle)
            self._children.pop(child.pid, None)
        else:  # adopted after an agent restart: not our child, so poll
            rc = None
            await self._gone(handle, None)
        self.rotate(handle)
        await self._finished(handle)
        code = self._exit_file(handle)
        if code is not None:
            return Exit(code)
        if rc is not None and rc < 0:
            return Exit(None, f"killed by signal {-rc}")
        if rc is not None:
            return Exit(rc)
        return Exit(None, "ended while the agent was not watching; exit code unknown")

    async def stop(self, handle: RunHandle, grace_s: float) -> None:
        if handle.pid is not None and await self.alive(handle):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGTERM)
            await self._gone(handle, grace_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)
        await self._finished(handle)  # the executor may cancel ``wait`` next

    async def _gone(self, handle: RunHandle, timeout_s: float | None) -> None:
        """Poll until the process is gone (there is no event for a process that is not our child)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            if not await self.alive(handle) or (deadline is not None and loop.time() >= deadline):
                return
            self.rotate(handle)
            await asyncio.sleep(min(self.poll_s, 0.05) if deadline is not None else self.poll_s)

    def rotate(self, handle: RunHandle) -> None:
        """Keep the log bounded: past half the budget, its tail becomes output.log.1 and it starts over."""
        if handle.workdir is None:
            return
        log = Path(handle.workdir) / LOG
        half = self.log_max_bytes // 2
        try:
            if log.stat().st_size <= half:
                return
            text, _ = read_tail([log], half)
            (Path(handle.workdir) / (LOG + ".1")).write_bytes(text.encode())
            os.truncate(log, 0)
            (Path(handle.workdir) / DROPPED).touch()
        except OSError:
            return

    async def logs(self, handle: RunHandle, tail_bytes: int) -> tuple[str, bool]:
        if handle.workdir is None:
            return "", False
        d = Path(handle.workdir)
        text, more = read_tail([d / (LOG + ".1"), d / LOG], tail_bytes)
        return text, more or (d / DROPPED).exists()
