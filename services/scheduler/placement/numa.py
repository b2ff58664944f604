"""``placement.numa: single``: each replica's devices and CPUs from one NUMA node of its host (as
Kubernetes' Topology Manager ``single-numa-node`` policy).

A host's nodes come from its report (``HostInfo.numa_cpus``: allocatable CPUs per node) and its
devices' ``numa_node``; the free CPUs per node from ``FleetSnapshot.numa_free`` (replicas placed
with a node hold their CPUs there). A host that reports one node (or none) is one node. A device
whose node is unknown is on no node, so it never serves a single-node replica on a multi-node
host. The whole of an item (its replicas on that host) goes to one node.

The greedy pass and the model consider a pool only where some node fits at batch start
(``fitting_nodes``); ``select_devices`` then picks the node for real, counting what the batch
has already taken on each node, and an item no node can hold any more waits for the next batch.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from services.scheduler.placement.snapshot import EPS, FleetSnapshot
from services.scheduler.placement.workloads import Item


def node_count(snap: FleetSnapshot, host: int) -> int:
    return len(snap.hosts[host].numa_cpus)


def free_devices_by_node(snap: FleetSnapshot, pool: int, taken: Collection[int] = ()) -> dict[int, list[int]]:
    """The pool's whole free usable devices per NUMA node (unknown node: left out)."""
    out: dict[int, list[int]] = {}
    if snap.is_cpu_pool(pool):
        return out
    for d in snap.pool_devices(pool):
        node = int(snap.dev_numa[d])
        if node < 0 or d in taken or not snap.dev_usable[d]:
            continue
        if snap.dev_free_share[d] >= 1 - EPS and snap.dev_free_mem[d] >= snap.dev_mem[d]:
            out.setdefault(node, []).append(d)
    return out


def fitting_nodes(snap: FleetSnapshot, item: Item, pool: int, cpu_used: Mapping[tuple[int, int], int] | None = None,
                  taken: Collection[int] = ()) -> list[int]:
    """Nodes of the pool's host with the item's CPUs free (less ``cpu_used`` by the batch so far) and, for a
    device pool, its devices free (not in ``taken``), fullest first. A host with one node or none: ``[0]``
    when the host as a whole fits (that is ``HostResources``' to say), never a reason to refuse."""
    host = int(snap.pool_host[pool])
    if node_count(snap, host) <= 1:
        return [0]
    cpu = item.n if item.cpu_only else item.cpu
    used = cpu_used or {}
    devs = free_devices_by_node(snap, pool, taken) if not item.cpu_only else {}
    out = []
    for node in range(node_count(snap, host)):
        free_cpu = snap.numa_free.get((host, node), 0) - used.get((host, node), 0)
        if free_cpu < cpu:
            continue
        if not item.cpu_only and len(devs.get(node, ())) < item.n:
            continue
        out.append((free_cpu, node))
    return [node for _, node in sorted(out)]
