"""Workloads as seen from ``io.xpumesh.workload.*`` events: their state and where their replicas run.

The scheduler owns workloads; this is a read model for allocation counts and the dashboard.
Parsing is tolerant of the payload's exact shape (``placements`` or ``assignments``,
``host_id`` or ``host``, ``devices`` or ``device_ids``) because the scheduler's events are
still being written; what cannot be understood is rejected and counted, never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import ValidationError

from libs.bus.errors import InvalidRequest
from libs.events import CloudEvent, EventTypes
from libs.schemas.metrics import Placement, WorkloadNow
from services.metrics.fleet import Fleet

HOLDING = frozenset({"placed", "scheduled", "starting", "launching", "launched", "running", "preempting", "stopping"})
TERMINAL = frozenset({"succeeded", "completed", "failed", "stopped", "cancelled", "canceled", "preempted", "deleted",
                      "evicted", "lost", "rejected"})
RUNNING = "running"


def _first(d: dict[str, Any], *names: str) -> Any:
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return None


def parse_event(event: CloudEvent) -> WorkloadNow:
    """A workload event → its current view; raises InvalidRequest when it names no workload or state."""
    data = event.data
    nested = data.get("workload")
    wl: dict[str, Any] = nested if isinstance(nested, dict) else {}
    wid = _first(data, "workload_id", "id") or _first(wl, "id") or event.subject
    state = _first(data, "state", "status") or event.type.removeprefix(EventTypes.WORKLOAD_PREFIX)
    if not isinstance(wid, str) or not wid or len(wid) > 128 or not isinstance(state, str) or not state:
        raise InvalidRequest("workload event names no workload id or state")
    raw = _first(data, "placements", "assignments", "placement")
    if raw is None:
        raw = _first(wl, "placements", "assignments")
    if isinstance(raw, dict):
        raw = raw.get("assignments") or raw.get("placements") or []
    placements: list[Placement] = []
    try:
        for i, p in enumerate(raw or []):
            if not isinstance(p, dict):
                raise InvalidRequest("a placement is not an object")
            placements.append(Placement(
                replica=_first(p, "replica") or i, host_id=_first(p, "host_id", "host"), site=_first(p, "site"),
                devices=[str(d) for d in (_first(p, "devices", "device_ids") or [])],
                shares=[float(s) for s in (_first(p, "shares") or [])]))
    except (ValidationError, TypeError, ValueError):
        raise InvalidRequest("workload event has an unreadable placement") from None
    name = _first(data, "name") or _first(wl, "name") or (wl["spec"].get("name") if isinstance(wl.get("spec"), dict) else None)
    tenant = _first(data, "tenant") or _first(wl, "tenant")
    return WorkloadNow(id=wid, name=str(name)[:128] if name else None, tenant=str(tenant)[:128] if tenant else None,
                       state=state.lower()[:32], updated_at=event.time, placements=placements)


class Workloads:
    """Every tracked workload, and the device shares held by those that hold devices."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[str, WorkloadNow] = {}
        self._held: dict[str, float] | None = None  # device key → share, rebuilt lazily
        self._array: tuple[int, int, np.ndarray] | None = None  # (fleet version, workloads version, allocated)
        self.version = 0

    def load(self, items: Iterable[WorkloadNow]) -> None:
        for w in items:
            self.items[w.id] = w
        self.version += 1

    def apply(self, new: WorkloadNow) -> tuple[WorkloadNow | None, list[str]]:
        """Merge an event's view; returns (the stored view or None if the event was stale, ids evicted)."""
        cur = self.items.get(new.id)
        if cur is not None and new.updated_at < cur.updated_at:
            return None, []
        if cur is not None:
            new = new.model_copy(update={
                "name": new.name or cur.name, "tenant": new.tenant or cur.tenant,
                "placements": new.placements if new.placements or new.state in TERMINAL else cur.placements})
        self.items[new.id] = new
        self.version += 1
        evicted = self._evict()
        return new, evicted

    def _evict(self) -> list[str]:
        if len(self.items) <= self.limit:
            return []
        done = sorted((w for w in self.items.values() if w.state in TERMINAL), key=lambda w: w.updated_at)
        over = len(self.items) - self.limit
        gone = [w.id for w in done[:over]]
        if len(gone) < over:  # nothing terminal left to drop: drop the oldest of all
            rest = sorted((w for w in self.items.values() if w.id not in set(gone)), key=lambda w: w.updated_at)
            gone += [w.id for w in rest[: over - len(gone)]]
        for wid in gone:
            del self.items[wid]
        return gone

    @staticmethod
    def device_keys(p: Placement, fleet: Fleet) -> list[tuple[str, float]]:
        """Placement devices → device keys with their share (matched as key, inventory id or uuid; else unresolved)."""
        out = []
        shares = p.shares if len(p.shares) == len(p.devices) else [1.0] * len(p.devices)
        host = fleet.hosts.get(p.host_id)
        for dev, share in zip(p.devices, shares, strict=True):
            key = dev if dev in fleet.by_key else None
            if key is None and dev in fleet.aliases:
                key = fleet.devices[fleet.aliases[dev]].key
            if key is None and host is not None:
                for dev_id in host.slots.values():
                    m = fleet.devices[dev_id]
                    if m.uuid and m.uuid == dev:
                        key = m.key
                        break
            out.append((key or f"{p.host_id}/?{dev}", share))
        return out

    def allocated(self, fleet: Fleet) -> np.ndarray:
        """Share of each device (by id) held by workloads that hold devices."""
        if self._array and self._array[0] == fleet.version and self._array[1] == self.version:
            return self._array[2]
        arr = np.zeros(fleet.cap, np.float32)
        for w in self.items.values():
            if w.state not in HOLDING:
                continue
            for p in w.placements:
                for key, share in self.device_keys(p, fleet):
                    dev = fleet.by_key.get(key)
                    if dev is not None:
                        arr[dev] = min(1.0, arr[dev] + share)
        self._array = (fleet.version, self.version, arr)
        return arr

    def running_by_site(self, fleet: Fleet) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.items.values():
            if w.state != RUNNING:
                continue
            sites = set()
            for p in w.placements:
                h = fleet.hosts.get(p.host_id)
                site = p.site or (h.site if h else None)
                if site:
                    sites.add(site)
            for s in sites:
                out[s] = out.get(s, 0) + 1
        return out

    def on_device(self, key: str, fleet: Fleet) -> list[WorkloadNow]:
        host = key.split("/", 1)[0]
        return [w for w in self.items.values() if w.state in HOLDING
                and any(p.host_id == host and key in dict(self.device_keys(p, fleet)) for p in w.placements)]

    def page(self, *, sites: set[str] | None, tenant: str | None, state: str | None, after: str | None,
             limit: int, fleet: Fleet) -> tuple[list[WorkloadNow], str | None]:
        def site_ok(w: WorkloadNow) -> bool:
            if sites is None:
                return True
            for p in w.placements:
                h = fleet.hosts.get(p.host_id)
                if (p.site or (h.site if h else None)) in sites:
                    return True
            return False

        items = sorted((w for w in self.items.values()
                        if (tenant is None or w.tenant == tenant) and (state is None or w.state == state)
                        and (after is None or w.id > after) and site_ok(w)), key=lambda w: w.id)
        page = items[:limit]
        return page, (page[-1].id if len(items) > limit else None)

