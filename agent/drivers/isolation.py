"""Keeping tenants on one host apart: a uid per replica, a directory only it can read, a cgroup.

``UidPool`` hands each live replica its own uid (and a gid of the same number; its only
supplementary groups are the device groups named in ``agent.replica_groups``, e.g. ``video``
and ``render`` for AMD's ``/dev/kfd`` and ``/dev/dri``) from the range the operator configured (``agent.replica_uid_start``,
``agent.replica_uid_count``), like a kubelet's user namespaces or Slurm's per-job users. The
uid is recorded in the replica's ``RunHandle`` (persisted by the executor), and a restarted
agent ``claim``s it again when it adopts the run. A uid is never handed out while it is
claimed or while any process on the host still runs under it (a replica that escaped its
process group keeps its uid out of the pool until it ends).

``prepare_workdir`` makes the replica's directory owned by its uid with mode 0700: another
replica's uid can neither list nor read it; the agent, as root, still reads ``output.log``.
``seal_workdir`` gives it back to root when the replica ends, so a later replica handed the
same uid cannot read what an earlier tenant left there.

``Cgroups`` puts each replica in its own cgroup v2 group under ``agent.replica_cgroup_parent``
when that is a writable cgroup v2 hierarchy (else it logs once why not and goes on without).
The launcher (``launcher_argv``: a few lines of Python run as root) moves itself into the
group, drops to the replica's uid and gid and only then execs the command, so nothing the
replica starts is ever outside its group or runs as root. Stopping a replica also writes
``cgroup.kill``, which ends processes that left the process group. A replica that holds CPUs
and host memory gets them as its group's ``cpuset.cpus`` and ``memory.max`` where the parent
delegates the ``cpuset`` and ``memory`` controllers; its CPUs are also its affinity
(``pin_argv``, as ``taskset -c``), with or without a cgroup.

Without root none of this is possible: the agent logs a warning once and runs replicas
under its own uid (``isolation_status`` says so for ``xpumesh agent discover``).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

# argv: cgroup dir ("" for none), uid, gid, supplementary gids ("1,2"), then the command. Runs as root.
LAUNCHER = """import os, sys
cg, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
groups = [int(g) for g in sys.argv[4].split(",") if g]
if cg:
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
os.execv(sys.argv[5], sys.argv[5:])
"""


def can_switch_uid() -> bool:
    return os.geteuid() == 0


def isolation_status(uid_start: int, uid_count: int, cgroup_parent: Path | None) -> str:
    """One line on how replicas are kept apart on this host (for discovery output)."""
    if not can_switch_uid():
        return ("replicas run as the agent's own uid (the agent is not root): tenants on this host "
                "can read each other's output and signal each other's processes")
    root = None if cgroup_parent is None else cgroup_parent if cgroup_parent.exists() else cgroup_parent.parent
    v2 = root is not None and (root / "cgroup.controllers").exists() and os.access(root, os.W_OK)
    where = f"a cgroup each under {cgroup_parent}" if v2 else "no cgroups (cgroup v2 not writable here)"
    return f"replicas run as uids {uid_start}-{uid_start + uid_count - 1}, 0700 directories, {where}"


class UidPool:
    """Uids for replicas: one per live replica, never two live replicas on one uid.

    Each held uid names its owner (the replica's directory, unique per attempt), so releasing
    twice, or late, never frees a uid that has since gone to another replica."""

    def __init__(self, start: int, count: int) -> None:
        self.start, self.count = start, count
        self._held: dict[int, str] = {}

    def __contains__(self, uid: int) -> bool:
        return self.start <= uid < self.start + self.count

    def allocate(self, owner: str) -> int:
        """A uid of the range that no live replica holds and no live process runs under."""
        busy = set(self._held)
        for p in psutil.process_iter(["uids", "status"]):
            with contextlib.suppress(psutil.Error, TypeError, AttributeError):
                if p.info["status"] != psutil.STATUS_ZOMBIE:  # a zombie holds nothing; its parent reaps it
                    busy.add(p.info["uids"].real)
        for uid in range(self.start, self.start + self.count):
            if uid not in busy:
                self._held[uid] = owner
                return uid
        raise PoolExhausted(f"all {self.count} replica uids from {self.start} are in use")

    def claim(self, uid: int, owner: str) -> None:
        """Hold ``uid`` for an adopted replica (recorded in its handle by an earlier agent)."""
        if uid in self:
            self._held.setdefault(uid, owner)

    def release(self, uid: int, owner: str) -> None:
        if self._held.get(uid) == owner:
            del self._held[uid]


class PoolExhausted(Exception):
    pass


def prepare_workdir(workdir: Path, uid: int) -> None:
    """The replica's directory: its parents searchable (0711: no listing), itself 0700 and the uid's."""
    workdir.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir.parent, 0o711)
    workdir.mkdir(mode=0o700, exist_ok=True)
    os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)


def seal_workdir(workdir: Path) -> None:
    """A finished replica's directory back to root (only the agent reads it from now on)."""
    with contextlib.suppress(OSError):
        os.chown(workdir, 0, 0)
        os.chmod(workdir, 0o700)


# argv: a Linux CPU list, then the command. Pins itself (inherited by all it starts), then execs.
PINNER = """import os, sys
cpus = set()
for part in sys.argv[1].split(","):
    lo, _, hi = part.partition("-")
    cpus.update(range(int(lo), int(hi or lo) + 1))
os.sched_setaffinity(0, cpus)
os.execv(sys.argv[2], sys.argv[2:])
"""


def pin_argv(cpus: str, argv: list[str]) -> list[str]:
    """``argv`` run pinned to ``cpus`` (a Linux CPU list), as ``taskset -c`` does, without needing util-linux."""
    return [sys.executable, "-I", "-S", "-c", PINNER, cpus, *argv]


def launcher_argv(cgroup: Path | None, uid: int, argv: list[str], groups: Sequence[int] = ()) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, str(cgroup or ""), str(uid), str(uid),
            ",".join(str(g) for g in groups), *argv]


def group_ids(names: Iterable[str]) -> list[int]:
    """The gids of the named groups this host has (device groups such as ``video`` and ``render``)."""
    gids = []
    for name in names:
        with contextlib.suppress(KeyError):
            gids.append(grp.getgrnam(name).gr_gid)
    return gids


class Cgroups:
    """One cgroup v2 group per replica under ``parent``, where that hierarchy is writable."""

    _explained: set[str] = set()

    def __init__(self, parent: Path | None) -> None:
        self.parent = parent

    def available(self) -> bool:
        if self.parent is None:
            return False
        root = self.parent if self.parent.exists() else self.parent.parent
        if not (root / "cgroup.controllers").exists():
            self._once(f"no cgroup for replicas: {root} is not a cgroup v2 hierarchy")
            return False
        try:
            self.parent.mkdir(exist_ok=True)
        except OSError as exc:
            self._once(f"no cgroup for replicas: cannot create {self.parent} ({exc.strerror})")
            return False
        if not os.access(self.parent, os.W_OK):
            self._once(f"no cgroup for replicas: {self.parent} is not writable")
            return False
        return True

    def _once(self, line: str) -> None:
        if line not in self._explained:
            self._explained.add(line)
            log.warning("%s; replicas run in their own process group and uid only", line)

    def create(self, name: str) -> Path | None:
        if not self.available():
            return None
        assert self.parent is not None
        group = self.parent / name
        try:
            group.mkdir(exist_ok=True)
        except OSError as exc:
            self._once(f"no cgroup for replicas: cannot create {group} ({exc.strerror})")
            return None
        return group

    @staticmethod
    def limit(group: Path, cpus: str | None, memory_mib: int | None) -> list[str]:
        """Pin the group to ``cpus`` (``cpuset.cpus``) and cap its memory (``memory.max``) where the parent
        delegates those controllers (enabled here in its ``cgroup.subtree_control`` when it can be); returns what
        was set, e.g. ``["cpuset.cpus=0-3", "memory.max=8589934592"]``."""
        wanted = [("cpuset", "cpuset.cpus", cpus), ("memory", "memory.max",
                                                      None if not memory_mib else str(memory_mib * 1024 * 1024))]
        done = []
        for controller, name, value in wanted:
            if value is None:
                continue
            with contextlib.suppress(OSError):
                if controller not in (group.parent / "cgroup.subtree_control").read_text().split():
                    (group.parent / "cgroup.subtree_control").write_text(f"+{controller}")
            try:
                (group / name).write_text(value)
                done.append(f"{name}={value}")
            except OSError:
                pass
        return done

    @staticmethod
    def kill(group: str | None) -> None:
        if group:
            with contextlib.suppress(OSError):
                (Path(group) / "cgroup.kill").write_text("1")

    @staticmethod
    async def empty(group: str | None, timeout_s: float = 2.0) -> None:
        """Kill whatever is left in the group and wait (bounded) until the kernel says it is empty."""
        if not group:
            return
        Cgroups.kill(group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                if "populated 0" in (Path(group) / "cgroup.events").read_text():
                    return
            except OSError:
                return
            await asyncio.sleep(0.02)

    @staticmethod
    def remove(group: str | None) -> None:
        if group:
            with contextlib.suppress(OSError):
                os.rmdir(group)
