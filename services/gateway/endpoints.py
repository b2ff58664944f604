"""Which replicas answer each service endpoint, as this gateway instance knows it, and which one takes a request.

``EndpointTable`` holds every running service's set of ready replicas (``EndpointSet``) by
(tenant, name): several services of one tenant with one name (a new version beside the old)
share one endpoint, their ready replicas pooled. It is filled without asking anything per
request: ``EndpointFollower`` reads every set from the scheduler at start (``endpoints.list``)
and again every ``gateway.endpoint_resync_s``, and in between follows the scheduler's
``io.xpumesh.endpoint.changed`` events through an ephemeral consumer of its own (every gateway
instance needs every event, so the consumer is not shared). A set replaces the one held only
when its ``version`` is newer, so a snapshot and an event crossing each other settle on the newest.

``pick`` chooses the ready replica with the fewest requests this instance has in flight to it;
among equals it rotates, so an idle endpoint's requests spread over every replica. ``LoadMeter``
averages those requests in flight per service for the scheduler's autoscaler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.bus.consumer import Batch, PullConsumer, envelope
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.endpoints import (
    EndpointList,
    EndpointLoad,
    EndpointReplica,
    EndpointSet,
    EndpointsQuery,
    WorkloadLoad,
)

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


class EndpointTable:
    def __init__(self) -> None:
        self.by_name: dict[tuple[str | None, str], Endpoint] = {}
        self.by_workload: dict[str, tuple[str | None, str]] = {}
        self.versions: dict[str, int] = {}  # workload → newest version seen (kept after it ended)
        self.seen_at: dict[str, float] = {}
        self.outstanding: dict[str, int] = {}  # replica URL → requests in flight from this instance

    def apply(self, s: EndpointSet) -> bool:
        """Take a set if it is newer than the one held; an inactive one removes its service."""
        if s.version <= self.versions.get(s.workload_id, -1):
            return False
        self.versions[s.workload_id] = s.version
        self.seen_at[s.workload_id] = time.monotonic()
        self._remove(s.workload_id)
        if s.active:
            key = (s.tenant, s.name)
            ep = self.by_name.get(key)
            if ep is None:
                ep = self.by_name[key] = Endpoint(s.tenant, s.name)
            ep.sets[s.workload_id] = s
            self.by_workload[s.workload_id] = key
        return True

    def _remove(self, workload_id: str) -> None:
        key = self.by_workload.pop(workload_id, None)
        if key is None:
            return
        ep = self.by_name.get(key)
        if ep is not None:
            ep.sets.pop(workload_id, None)
            if not ep.sets:
                del self.by_name[key]

    def replace(self, sets: Collection[EndpointSet], asked_at: float) -> None:
        """A full snapshot: apply every set, and drop services it lacks that nothing told us about since
        ``asked_at`` (they ended while an event was missed)."""
        for s in sets:
            self.apply(s)
        present = {s.workload_id for s in sets}
        for wid in [w for w in self.by_workload if w not in present and self.seen_at.get(w, 0.0) < asked_at]:
            self._remove(wid)
        if len(self.versions) > 100_000:  # bounded: forget versions of services no longer held
            for wid in [w for w in self.versions if w not in self.by_workload][: len(self.versions) // 2]:
                self.versions.pop(wid, None)
                self.seen_at.pop(wid, None)

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


class EndpointFollower:
    """Keeps an ``EndpointTable`` current: the snapshot, then the events."""

    def __init__(self, bus: Bus, table: EndpointTable, *, request_timeout_s: float, drain_timeout_s: float) -> None:
        self.bus, self.table = bus, table
        self.request_timeout_s = request_timeout_s
        name = "gw_endpoints_" + secrets.token_hex(6)
        config = ConsumerConfig(name=name, ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.NEW,
                                filter_subject=subjects.ENDPOINT_EVENTS_ALL, inactive_threshold=60.0,
                                mem_storage=True, num_replicas=1, ack_wait=30.0)
        self.name = name
        self.consumer = PullConsumer(bus, stream=STREAM_EVENTS, durable=name, handle=self._take, decode=envelope,
                                     service="gateway", name="endpoints", config=config, batch=256, dedupe=10_000,
                                     drain_timeout_s=drain_timeout_s)
        self.synced = asyncio.Event()

    async def _take(self, batch: Batch[CloudEvent]) -> None:
        for d in batch:
            event = d.item
            if event.type != EventTypes.ENDPOINT_CHANGED:
                continue
            try:
                self.table.apply(EndpointSet.model_validate(event.data))
            except ValueError:
                BUS_REJECTED.labels("gateway", "endpoints", "invalid_data").inc()

    async def resync(self) -> None:
        """Read every set from the scheduler (at start, then every ``gateway.endpoint_resync_s``)."""
        asked_at = time.monotonic()
        page = await self.bus.request(subjects.rpc_subject("scheduler", "endpoints.list"), EndpointsQuery(),
                                      EndpointList, timeout=self.request_timeout_s)
        self.table.replace(page.items, asked_at)
        self.synced.set()

    async def run(self, resync_s: float) -> None:
        """Follow the events and re-read the snapshot every ``resync_s``. The consumer exists before the
        first snapshot is asked for, so no change falls between the two."""
        delay = 0.5
        while True:
            try:
                await self.consumer.start()
                break
            except Exception as exc:  # NATS not there yet: back off
                log.warning("endpoint events not followed yet: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        reader = asyncio.create_task(self.consumer.run(), name="endpoint-events")
        try:
            while True:
                try:
                    await self.resync()
                    wait = resync_s
                except Exception as exc:  # the scheduler does not answer: soon again
                    log.warning("service endpoints not read from the scheduler: %s", type(exc).__name__)
                    wait = min(resync_s, 2.0)
                await asyncio.sleep(wait)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self.consumer.close()
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(STREAM_EVENTS, self.name)
