"""Leader election: of a singleton service's instances, exactly one acts, and it carries a fencing token.

The registry, scheduler and metrics keep state that one instance must own (the member table's
transitions, placements, alert state). Any number of their instances may run; each campaigns
for its service's lease, the winner starts its work (``ServiceApp(singleton=True)``), the
others stand by, connected, and take over when the lease is free.

**Why a JetStream KV lease, not a PostgreSQL advisory lock.**

- An advisory lock lives as long as one PostgreSQL session. A holder cut off from the database
  keeps it until the server notices the dead TCP connection (keepalives: minutes to hours by
  default), so failover waits on TCP; and the lock yields no number to fence writes with.
- The lease lives in NATS, which every instance needs to receive any work at all. It expires
  on its own ``ttl_s`` after the last renewal (the bucket's max age), so a dead or cut-off
  leader loses it within a bounded time whatever the failure.
- The KV revision of the key the winner created is the stream sequence of that write: strictly
  greater for every later holder. With the bucket's creation time before it (a bucket made anew
  after NATS lost its data counts from 1 again, in a higher epoch) it is the fencing token
  (``libs/db/fencing.py``): each
  transaction of the leader checks it against the highest one written to its schema, so a
  deposed leader that has not yet noticed cannot commit after its successor took over.

A lease is held by renewing it every ``renew_s`` with a compare-and-set on the revision; a
renewal that fails because the key changed means someone else holds it, or that it expired
(lost at once). A renewal that gets no answer at all (the lease bucket's stream has no leader:
the NATS node that led it died, and the others elect a new one, which takes nats-server
seconds) does not depose the leader before ``unreachable_s``: no standby can take the lease
while the bucket does not answer either, and the fence, not the clock, keeps a leader that was
cut off from committing after a successor (so the service goes on serving through the loss of a
NATS node). A standby tries to create the key every ``campaign_s``. A graceful
stop deletes the key, so a standby takes over within ``campaign_s``; a killed leader's key
expires ``ttl_s`` after its last renewal.

Timing alone never makes it safe (a paused process wakes up believing it leads): the fence row
does. A deposed leader's transactions fail (``Fenced``) from the moment its successor claimed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import ElectionSettings
from libs.db.fencing import FenceToken
from libs.metrics import LEADER

log = logging.getLogger(__name__)

BUCKET = subjects.LEASE_BUCKET


class Election(Protocol):
    """How a singleton instance becomes, stays and stops being its service's leader."""

    token: FenceToken | None  # the fencing token while leading

    async def campaign(self, stop: asyncio.Event, standing_by: asyncio.Event | None = None) -> FenceToken | None:
        """Wait until this instance leads (its fencing token) or ``stop`` is set (None); ``standing_by`` is
        set once the lease was found held by another instance."""

    async def hold(self, stop: asyncio.Event) -> None:
        """Keep the lease until ``stop`` is set or it is lost; return then."""

    async def resign(self) -> None:
        """Give the lease up now, so a standby need not wait for it to expire."""


class KvLease:
    """An :class:`Election` on a JetStream KV bucket (key = service name, value = instance id)."""

    def __init__(self, bus: Bus, service: str, instance: str, settings: ElectionSettings, replicas: int = 1) -> None:
        self.replicas = replicas  # of the bucket's stream, when this instance creates it
        self.bus = bus
        self.service = subjects.check_token(service, "service")
        self.instance = instance
        self.settings = settings
        self.token: FenceToken | None = None
        self._revision: int | None = None
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.bus.js.key_value(BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self._kv = await self.bus.js.create_key_value(bucket=BUCKET, ttl=self.settings.ttl_s, history=1,
                                                              replicas=self.replicas,
                                                              description="xpumesh singleton leases")
        return self._kv

    async def holder(self) -> str | None:
        """The instance that holds the lease now, if any."""
        try:
            entry = await (await self._bucket()).get(self.service)
        except (NotFoundError, KeyError):
            return None
        return entry.value.decode() if entry.value else None

    async def campaign(self, stop: asyncio.Event, standing_by: asyncio.Event | None = None) -> FenceToken | None:
        value = self.instance.encode()
        waited = False
        while not stop.is_set():
            try:
                revision = await (await self._bucket()).create(self.service, value)
                info = await self.bus.js.stream_info(subjects.LEASE_STREAM)
            except KeyWrongLastSequenceError:  # held by another instance
                if not waited:
                    log.info("%s %s stands by: the lease is held by %s", self.service, self.instance,
                             await self.holder())
                    waited = True
                    if standing_by is not None:
                        standing_by.set()
            except (TimeoutError, NatsError) as exc:
                log.warning("%s %s cannot campaign now: %s", self.service, self.instance, type(exc).__name__)
            else:
                self._revision = revision
                self.token = FenceToken(int(info.created.timestamp() * 1000) if info.created else 0, revision)
                LEADER.labels(self.service, self.instance).set(1)
                log.info("%s %s leads (fencing token %s)", self.service, self.instance, tuple(self.token))
                return self.token
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.campaign_s)
            except TimeoutError:
                pass
        return None

    async def hold(self, stop: asyncio.Event) -> None:
        kv = await self._bucket()
        value = self.instance.encode()
        last_ok = time.monotonic()
        give_up = self.settings.unreachable_s
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.renew_s)
                    return
                except TimeoutError:
                    pass
                try:
                    self._revision = await asyncio.wait_for(kv.update(self.service, value, last=self._revision),
                                                            timeout=self.settings.renew_s)
                    last_ok = time.monotonic()
                except KeyWrongLastSequenceError:
                    log.error("%s %s lost its lease: another instance holds it now", self.service, self.instance)
                    return
                except (NatsError, TimeoutError) as exc:
                    log.warning("%s %s cannot renew its lease now (%s, %.1f s since the last renewal)", self.service,
                                self.instance, type(exc).__name__, time.monotonic() - last_ok)
                    if time.monotonic() - last_ok >= give_up:
                        log.error("%s %s could not renew its lease for %.1f s (%s): it steps down", self.service,
                                  self.instance, time.monotonic() - last_ok, type(exc).__name__)
                        return
        finally:
            LEADER.labels(self.service, self.instance).set(0)

    async def resign(self) -> None:
        if self._revision is None:
            return
        try:
            await asyncio.wait_for((await self._bucket()).delete(self.service, last=self._revision),
                                   timeout=self.settings.renew_s)
        except (NatsError, TimeoutError, KeyWrongLastSequenceError) as exc:  # expires on its own
            log.debug("lease not released: %s", type(exc).__name__)
        self._revision = None
        LEADER.labels(self.service, self.instance).set(0)
