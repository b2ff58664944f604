"""Which of this host's CPUs a replica is pinned to.

The scheduler decides how many logical CPUs a replica holds (``LaunchCommand.resources.cpu``)
and, with ``placement.numa: single``, on which NUMA node; the agent picks which CPUs. The
CPUs it may give are the ones it may run on itself (its affinity) less the first
``agent.reserved_cpus`` of them (kept for the system and the agent, as kubelet's
``reservedSystemCPUs``). A pick never takes a CPU a live replica holds; it keeps a replica
on one NUMA node where one node has room (the node asked for, else the one with the most
free CPUs), and only spreads over nodes when none has.

When the host has fewer free CPUs than asked (its report was older than a change of its
affinity, or a replica started outside the agent's view), the replica runs unpinned and the
agent says so: the launch never fails for want of a pin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from agent.facts import numa_layout

log = logging.getLogger(__name__)


def usable_cpus(reserved: int) -> list[int]:
    """The CPUs replicas may take on this host: the agent's own affinity less the first ``reserved``."""
    try:
        mine = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = list(range(os.cpu_count() or 1))
    return mine[min(reserved, len(mine)):] if reserved < len(mine) else []


def host_numa(sys_root: Path = Path("/sys")) -> dict[int, list[int]]:
    """NUMA node → its CPUs, from /sys (one node holding everything when /sys has none)."""
    return {n.id: n.cpu_ids() for n in numa_layout(sys_root)}


class CpuAllocator:
    """Picks CPUs for replicas out of ``cpus``, NUMA node by node (``numa``: node → CPUs)."""

    def __init__(self, cpus: Sequence[int], numa: Mapping[int, Sequence[int]] | None = None) -> None:
        self.cpus = sorted(set(cpus))
        mine = set(self.cpus)
        nodes = {n: sorted(mine & set(c)) for n, c in (numa or {}).items()}
        covered = {c for cs in nodes.values() for c in cs}
        if not nodes or covered != mine:  # CPUs no node lists go to a node of their own
            nodes[max(nodes, default=-1) + 1] = sorted(mine - covered)
        self.nodes = {n: cs for n, cs in sorted(nodes.items()) if cs}

    def pick(self, n: int, busy: Collection[int], node: int | None = None) -> list[int] | None:
        """``n`` free CPUs (not in ``busy``): all from ``node`` when given (None if it lacks them), else from one
        node where one has room, else over nodes in order; None when fewer than ``n`` are free."""
        if n <= 0:
            return []
        taken = set(busy)
        free = {k: [c for c in cs if c not in taken] for k, cs in self.nodes.items()}
        if node is not None:
            on = free.get(node, [])
            return on[:n] if len(on) >= n else None
        fits = [k for k, cs in free.items() if len(cs) >= n]
        if fits:  # the fullest node that still fits keeps the others whole for bigger replicas
            best = min(fits, key=lambda k: (len(free[k]), k))
            return free[best][:n]
        pool = [c for cs in free.values() for c in cs]
        return pool[:n] if len(pool) >= n else None
