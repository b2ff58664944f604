"""Following the scheduler's service endpoint sets: the newest set of each service, kept from a snapshot and events.

The scheduler owns which replicas of each running service are in rotation (``EndpointSet``,
``libs.schemas.endpoints``). Whoever needs them without asking per use (each gateway instance, to
route; the registry, to mirror them into Consul) keeps a ``VersionedSets``: ``apply`` takes a set
only when its ``version`` is newer than the one held, so a snapshot and an event crossing each
other settle on the newest; ``replace`` applies a full snapshot and drops services it lacks that
no event told of since the snapshot was asked for (they ended while an event was missed).
Subclasses hear of each change through ``added`` and ``removed``.

``EndpointFollower`` keeps one current: ``endpoints.list`` from the scheduler at start and every
``resync_s``, and the ``io.xpumesh.endpoint.changed`` events in between through an ephemeral
consumer of its own (every holder needs every event, so the consumer is never shared). The
consumer exists before the first snapshot is asked for, so no change falls between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Collection

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.bus.consumer import Batch, PullConsumer, envelope
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.endpoints import EndpointList, EndpointSet, EndpointsQuery

log = logging.getLogger(__name__)

MAX_VERSIONS = 100_000  # versions of ended services remembered, at most (then the oldest half is forgotten)


class VersionedSets:
    """The newest ``EndpointSet`` of each running service, by workload id."""

    def __init__(self) -> None:
        self.sets: dict[str, EndpointSet] = {}
        self.versions: dict[str, int] = {}  # workload → newest version seen (kept after it ended)
        self.seen_at: dict[str, float] = {}

    def added(self, s: EndpointSet) -> None:
        """A service's set was taken (it replaces the one ``removed`` just before, if any)."""

    def removed(self, workload_id: str, s: EndpointSet) -> None:
        """A service's set was dropped: it ended, or a newer set is about to be ``added``."""

    def apply(self, s: EndpointSet) -> bool:
        """Take a set if it is newer than the one held; an inactive one removes its service."""
        if s.version <= self.versions.get(s.workload_id, -1):
            return False
        self.versions[s.workload_id] = s.version
        self.seen_at[s.workload_id] = time.monotonic()
        self._remove(s.workload_id)
        if s.active:
            self.sets[s.workload_id] = s
            self.added(s)
        return True

    def _remove(self, workload_id: str) -> None:
        old = self.sets.pop(workload_id, None)
        if old is not None:
            self.removed(workload_id, old)

    def replace(self, sets: Collection[EndpointSet], asked_at: float) -> None:
        """A full snapshot, asked for at ``asked_at`` (monotonic)."""
        for s in sets:
            self.apply(s)
        present = {s.workload_id for s in sets}
        for wid in [w for w in self.sets if w not in present and self.seen_at.get(w, 0.0) < asked_at]:
            self._remove(wid)
        if len(self.versions) > MAX_VERSIONS:  # bounded: forget versions of services no longer held
            for wid in [w for w in self.versions if w not in self.sets][: len(self.versions) // 2]:
                self.versions.pop(wid, None)
                self.seen_at.pop(wid, None)


class EndpointFollower:
    """Keeps a ``VersionedSets`` current: the snapshot, then the events (``service`` names the holder in
    metrics and in its consumer's name)."""

    def __init__(self, bus: Bus, sets: VersionedSets, *, service: str, request_timeout_s: float,
                 drain_timeout_s: float) -> None:
        self.bus, self.sets, self.service = bus, sets, service
        self.request_timeout_s = request_timeout_s
        name = f"{service}_endpoints_" + secrets.token_hex(6)
        config = ConsumerConfig(name=name, ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.NEW,
                                filter_subject=subjects.ENDPOINT_EVENTS_ALL, inactive_threshold=60.0,
                                mem_storage=True, num_replicas=1, ack_wait=30.0)
        self.name = name
        self.consumer = PullConsumer(bus, stream=STREAM_EVENTS, durable=name, handle=self._take, decode=envelope,
                                     service=service, name="endpoints", config=config, batch=256, dedupe=10_000,
                                     drain_timeout_s=drain_timeout_s)
        self.synced = asyncio.Event()

    async def _take(self, batch: Batch[CloudEvent]) -> None:
        for d in batch:
            event = d.item
            if event.type != EventTypes.ENDPOINT_CHANGED:
                continue
            try:
                self.sets.apply(EndpointSet.model_validate(event.data))
            except ValueError:
                BUS_REJECTED.labels(self.service, "endpoints", "invalid_data").inc()

    async def resync(self) -> None:
        """Read every set from the scheduler (at start, then every ``resync_s``)."""
        asked_at = time.monotonic()
        page = await self.bus.request(subjects.rpc_subject("scheduler", "endpoints.list"), EndpointsQuery(),
                                      EndpointList, timeout=self.request_timeout_s)
        self.sets.replace(page.items, asked_at)
        self.synced.set()

    async def run(self, resync_s: float) -> None:
        """Follow the events and re-read the snapshot every ``resync_s``."""
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
