"""Which replicas answer each service endpoint, as this gateway instance knows it, and which one takes a request.

``EndpointTable`` holds every running service's set of ready replicas (``EndpointSet``) by
(tenant, name): several services of one tenant with one name (a new version beside the old)
share one endpoint, their ready replicas pooled. It is filled without asking anything per
request: it is a ``libs.endpoints.VersionedSets`` (the newest set of each service wins) kept
current by a ``libs.endpoints.EndpointFollower`` (the scheduler's snapshot at start and every
``gateway.endpoint_resync_s``, its ``io.xpumesh.endpoint.changed`` events in between).

``pick`` chooses the ready replica with the fewest requests this instance has in flight to it;
among equals it rotates, so an idle endpoint's requests spread over every replica. ``LoadMeter``
averages those requests in flight per service for the scheduler's autoscaler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from libs.endpoints import VersionedSets
from libs.schemas.endpoints import EndpointLoad, EndpointReplica, EndpointSet, WorkloadLoad

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """One tenant's endpoint: the sets of the services behind it."""

    tenant: str | None
    name: str
    sets: dict[str, EndpointSet] = field(default_factory=dict)
    turn: int = 0

    def replicas(self) -> list[EndpointReplica]:
        return [r for s in sorted(self.sets.values(), key=lambda s: s.workload_id) for r in s.replicas]

    def callable_by(self, tenant: str) -> bool:
        """The owning tenant, or one every service behind the endpoint names (or opens to all with '*')."""
        if tenant == self.tenant:
            return True
        return bool(self.sets) and all(tenant in s.callers or "*" in s.callers for s in self.sets.values())


class EndpointTable(VersionedSets):
    def __init__(self) -> None:
        super().__init__()
        self.by_name: dict[tuple[str | None, str], Endpoint] = {}
        self.outstanding: dict[str, int] = {}  # replica URL → requests in flight from this instance

    def added(self, s: EndpointSet) -> None:
        key = (s.tenant, s.name)
        ep = self.by_name.get(key)
        if ep is None:
            ep = self.by_name[key] = Endpoint(s.tenant, s.name)
        ep.sets[s.workload_id] = s

    def removed(self, workload_id: str, s: EndpointSet) -> None:
        key = (s.tenant, s.name)
        ep = self.by_name.get(key)
        if ep is not None:
            ep.sets.pop(workload_id, None)
            if not ep.sets:
                del self.by_name[key]

    def get(self, tenant: str, name: str) -> Endpoint | None:
        return self.by_name.get((tenant, name))

    def pick(self, ep: Endpoint, exclude: Collection[str] = ()) -> EndpointReplica | None:
        """The ready replica with the fewest requests in flight (rotating among equals), not in ``exclude``."""
        candidates = [r for r in ep.replicas() if r.url not in exclude]
        if not candidates:
            return None
        ep.turn += 1
        n = len(candidates)
        order = [candidates[(ep.turn + i) % n] for i in range(n)]
        return min(order, key=lambda r: self.outstanding.get(r.url, 0))

    def in_flight(self) -> dict[str, int]:
        """Requests this instance has in flight now, per service (every service held, 0 included)."""
        return {wid: sum(self.outstanding.get(r.url, 0) for r in s.replicas)
                for ep in self.by_name.values() for wid, s in ep.sets.items()}

    def begin(self, url: str) -> None:
        self.outstanding[url] = self.outstanding.get(url, 0) + 1

    def end(self, url: str) -> None:
        left = self.outstanding.get(url, 0) - 1
        if left > 0:
            self.outstanding[url] = left
        else:
            self.outstanding.pop(url, None)


class LoadMeter:
    """Requests in flight per service, sampled every ``gateway.endpoint_load_sample_s`` and averaged over each
    report interval: what the scheduler's autoscaler reads (``EndpointLoad``)."""

    def __init__(self, table: EndpointTable) -> None:
        self.table = table
        self.sums: dict[str, float] = {}
        self.samples = 0
        self.since = time.monotonic()

    def sample(self) -> None:
        for wid, n in self.table.in_flight().items():
            self.sums[wid] = self.sums.get(wid, 0.0) + n
        self.samples += 1

    def report(self) -> EndpointLoad:
        """The means since the last report (every service held now, 0 included), and start over."""
        now = time.monotonic()
        current = self.table.in_flight()
        n = max(1, self.samples)
        items = [WorkloadLoad(workload_id=wid, in_flight=self.sums.get(wid, 0.0) / n) for wid in current]
        interval = max(1e-3, now - self.since)
        self.sums, self.samples, self.since = {}, 0, now
        return EndpointLoad(interval_s=min(interval, 3600.0), items=items)
