"""Device interconnect topology: which devices of a host share a fast link, and the one union-find.

Vendor tools list each device's links by kind (``nvidia-smi topo -m``: ``NV12``, ``PIX``,
``SYS``…; ``npu-smi``: ``HCCS``; ``rocm-smi``: ``XGMI``…). A link of a kind in
``PCIE_LINK_KINDS`` only says the two devices meet through the PCIe tree or the CPU; any
other kind (NVLink, HCCS, xGMI, MLU-Link…) is a device interconnect, and devices joined by
such links, directly or through others, form one *link group*. Placement keeps a replica
that asks for ``same_link_group`` inside one group.
"""

from __future__ import annotations

from collections.abc import Sequence

from libs.schemas.devices import Device

#: Link kinds that are the PCIe tree or a CPU path, not a device interconnect.
PCIE_LINK_KINDS = frozenset({"X", "PIX", "PXB", "PHB", "NODE", "SYS", "PCIE", "PCI", "SOC", "QPI", "UPI"})


def is_fast_link(kind: str) -> bool:
    """Whether a link kind, as a vendor tool prints it, is a device interconnect."""
    return kind.strip().upper() not in PCIE_LINK_KINDS


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving; the smaller index is a set's root."""

    __slots__ = ("parent",)

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def link_groups(devices: Sequence[Device]) -> dict[int, str]:
    """Position in ``devices`` (one host's) → link-group name ``'<vendor>-lg<index>'``.

    Links join devices of the same vendor; a group is named after its first device in
    ``devices``. A device with no fast link to another belongs to no group and is left out."""
    by_key = {(d.vendor, d.index): i for i, d in enumerate(devices)}
    sets = UnionFind(len(devices))
    linked: set[int] = set()
    for i, d in enumerate(devices):
        for link in d.links:
            j = by_key.get((d.vendor, link.peer_index))
            if j is None or j == i or not is_fast_link(link.kind):
                continue
            linked.update((i, j))
            sets.union(i, j)
    return {i: f"{devices[root].vendor}-lg{devices[root].index}" for i in linked for root in (sets.find(i),)}
