"""The webhook engine: one durable JetStream consumer per subscription, a delivery worker.

Intake: each active subscription has a durable pull consumer on ``STREAM_EVENTS``
(created with the subscription, so nothing published after the 201 is missed). Matching
events become delivery rows in PostgreSQL, and only then are their messages acked: a
gateway killed at any point loses nothing (JetStream hands unacked messages out again
after ``webhook_ack_wait_s``; a redelivered event id is ignored by the unique key). At
most one batch is outstanding per consumer, so rows are written in stream order even with
several gateway instances.

Delivery: the worker leases due rows (``SKIP LOCKED``, so instances share the work) and
POSTs each event in CloudEvents structured mode, signed per Standard Webhooks with the
event id as ``webhook-id`` (stable across retries). 2xx: done; 410: the subscription is
disabled; anything else: retried on ``webhook_retry_schedule_s`` with ±20 % jitter, then
dead-lettered. A crash mid-attempt leaves the lease to expire and the same event is sent
again under the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import UTC, datetime, timedelta

import httpx
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from libs.aio import wait_event
from libs.bus.connection import STREAM_EVENTS
from libs.db import session_scope
from libs.events import CloudEvent, InvalidEnvelope
from libs.metrics import BUS_REJECTED
from libs.schemas.subscriptions import DeliveryStatus
from libs.service import Context
from services.gateway.webhooks import signing, store
from services.gateway.webhooks.filters import EventFilter
from services.gateway.webhooks.ssrf import GuardedTransport, UnsafeTarget

log = logging.getLogger(__name__)
FETCH_BATCH = 64
DELIVERIES = Counter("xpumesh_webhook_deliveries_total", "Webhook delivery attempts, by outcome.", ["outcome"])
PING_TYPE = "io.xpumesh.webhook.ping"
ORPHAN_AGE_S = 60.0


def event_filter(sub: store.SubscriptionRow) -> EventFilter:
    return EventFilter(types=sub.types, site=sub.filters.site,
                       hardware_type=str(sub.filters.hardware_type) if sub.filters.hardware_type else None,
                       tenant=sub.scope_tenant)


class WebhookEngine:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.gateway
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.resync = asyncio.Event()
        limits = httpx.Limits(max_connections=self.settings.webhook_concurrency)
        self.client = httpx.AsyncClient(follow_redirects=False, timeout=self.settings.webhook_timeout_s,
                                        transport=GuardedTransport(self.settings.webhook_allow_hosts, limits=limits))

    async def close(self) -> None:
        for task in self.loops.values():
            task.cancel()
        await asyncio.gather(*self.loops.values(), return_exceptions=True)
        self.loops.clear()
        await self.client.aclose()

    # --- consumers --------------------------------------------------------------------------
    async def create_consumer(self, sub: store.SubscriptionRow) -> None:
        """The subscription's durable consumer, starting at the next event published."""
        config = ConsumerConfig(
            durable_name=store.consumer_name(sub.id), filter_subject=event_filter(sub).nats_filter(),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.webhook_ack_wait_s, max_deliver=-1,
            max_ack_pending=FETCH_BATCH, deliver_policy=DeliverPolicy.NEW,
            description=f"webhook subscription {sub.id}")
        await self.ctx.bus.js.add_consumer(STREAM_EVENTS, config)

    async def delete_consumer(self, sid: str) -> None:
        self.stop(sid)
        with contextlib.suppress(NotFoundError):
            await self.ctx.bus.js.delete_consumer(STREAM_EVENTS, store.consumer_name(sid))

    def start(self, sub: store.SubscriptionRow) -> None:
        task = self.loops.get(sub.id)
        if task is None or task.done():
            self.loops[sub.id] = asyncio.create_task(self._intake(sub), name=f"webhook-intake:{sub.id}")

    def stop(self, sid: str) -> None:
        task = self.loops.pop(sid, None)
        if task is not None:
            task.cancel()

    async def reconcile(self) -> None:
        """Run an intake loop for every active subscription and none for the rest."""
        async with session_scope(self.ctx.db) as session:
            subs = {s.id: s for s in await store.active(session)}
        await self._drop_orphans(set(subs))
        for sid in [sid for sid in self.loops if sid not in subs]:
            self.stop(sid)
        for sub in subs.values():
            if sub.id not in self.loops or self.loops[sub.id].done():
                try:
                    await self.ctx.bus.js.consumer_info(STREAM_EVENTS, store.consumer_name(sub.id))
                except NotFoundError:
                    log.warning("subscription %s had no consumer; recreating it from the next event", sub.id)
                    await self.create_consumer(sub)
                self.start(sub)

    async def _drop_orphans(self, active: set[str]) -> None:
        """Delete subscription consumers whose subscription is gone or disabled (left by a crash mid-delete).

        Only consumers older than a minute: a subscription being created right now has its consumer
        before its row is committed.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=ORPHAN_AGE_S)
        for info in await self.ctx.bus.js.consumers_info(STREAM_EVENTS):
            name = info.name or ""
            sid = name.removeprefix("gw_")
            if not name.startswith("gw_sub_") or sid in active:
                continue
            created = info.created if info.created.tzinfo else info.created.replace(tzinfo=UTC)
            if created > cutoff:
                continue
            log.info("dropping the consumer of subscription %s: it is no longer active", sid)
            await self.delete_consumer(sid)

    async def sync_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("subscription reconcile failed; retrying")
            self.resync.clear()
            await wait_event(self.resync, self.settings.sync_interval_s)

    async def _intake(self, sub: store.SubscriptionRow) -> None:
        flt = event_filter(sub)
        psub = None
        while True:
            try:
                if psub is None:
                    psub = await self.ctx.bus.js.pull_subscribe_bind(durable=store.consumer_name(sub.id),
                                                                     stream=STREAM_EVENTS)
                msgs = await psub.fetch(FETCH_BATCH, timeout=1.0)
            except TimeoutError:  # nats raises both its own and asyncio's
                continue
            except asyncio.CancelledError:
                if psub is not None:
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                raise
            except Exception as exc:
                log.warning("subscription %s: fetch failed (%s); retrying", sub.id, type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            await self._record(sub, flt, msgs)

    async def _record(self, sub: store.SubscriptionRow, flt: EventFilter, msgs: list[Msg]) -> None:
        rows = []
        for m in msgs:
            try:
                event = CloudEvent.from_bytes(m.data)
            except InvalidEnvelope:
                BUS_REJECTED.labels("gateway", "webhook_intake", "malformed_envelope").inc()
                continue
            if flt.matches(event, m.subject):
                rows.append({"subscription_id": sub.id, "event_id": event.id, "event_type": event.type,
                             "event_subject": (event.subject or "")[:256], "stream_seq": m.metadata.sequence.stream,
                             "payload": m.data})
        try:
            async with session_scope(self.ctx.db) as session:
                await store.add_deliveries(session, rows)
        except Exception:
            log.exception("subscription %s: deliveries not recorded; JetStream will hand them out again", sub.id)
            for m in msgs:
                with contextlib.suppress(Exception):
                    await m.nak(delay=1.0)
            await asyncio.sleep(1.0)
            return
        for m in msgs:
            await m.ack()
        if rows:
            self.wake.set()

    # --- delivery ---------------------------------------------------------------------------
    async def worker(self) -> None:
        inflight: set[asyncio.Task[None]] = set()
        lease_s = self.settings.webhook_timeout_s + 5.0
        while True:
            free = self.settings.webhook_concurrency - len(inflight)
            due: list[store.DueDelivery] = []
            self.wake.clear()
            if free > 0:
                try:
                    async with session_scope(self.ctx.db) as session:
                        due = await store.lease_due(session, limit=free, lease_s=lease_s)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook worker: leasing failed; retrying")
            for d in due:
                task = asyncio.create_task(self._attempt(d))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if due and len(due) == free:
                continue
            await wait_event(self.wake, self.settings.webhook_poll_s)

    async def send(self, url: str, secret: str, event_id: str, payload: bytes) -> tuple[int | None, str | None]:
        """One POST: (status code, error text) — exactly one of them is set."""
        try:
            resp = await self.client.post(url, content=payload,
                                          headers=signing.headers(secret, event_id, int(time.time()), payload))
        except httpx.TimeoutException:
            return None, "timeout"
        except UnsafeTarget as exc:  # checked at every connect (GuardedTransport): the name may have been re-pointed
            return None, str(exc)
        except httpx.HTTPError as exc:
            return None, f"connection failed ({type(exc).__name__})"
        return resp.status_code, None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"

    async def _attempt(self, d: store.DueDelivery) -> None:
        try:
            code, error = await self.send(d.url, d.secret, d.event_id, d.payload)
            attempts = d.attempts + 1
            schedule = self.settings.webhook_retry_schedule_s
            next_at = None
            if code is not None and 200 <= code < 300:
                status = DeliveryStatus.SUCCEEDED
            elif code == 410:
                status = DeliveryStatus.FAILED
            elif attempts > len(schedule):
                status = DeliveryStatus.DEAD
            else:
                status = DeliveryStatus.PENDING
                delay = schedule[attempts - 1] * random.uniform(0.8, 1.2)
                next_at = datetime.now(UTC) + timedelta(seconds=delay)
            DELIVERIES.labels(str(status) if status != DeliveryStatus.PENDING else "retry").inc()
            async with session_scope(self.ctx.db) as session:
                await store.finish(session, d.id, status=status, attempts=attempts, code=code, error=error,
                                   next_attempt_at=next_at)
                if code == 410:
                    await store.disable(session, d.subscription_id, "the target answered 410 Gone")
            if code == 410:
                await self.delete_consumer(d.subscription_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery %s failed to record; its lease will expire and it is sent again", d.id)
        finally:
            self.wake.set()

    async def ping(self, sub: store.SubscriptionRow) -> int:
        """Send a ping event now, once; record it as a delivery (no retries). Return the delivery id."""
        event = CloudEvent.new(PING_TYPE, f"/gateway/{self.ctx.instance}", {"subscription_id": sub.id},
                               subject=sub.id)
        payload = event.to_bytes()
        async with session_scope(self.ctx.db) as session:
            did = await store.add_ping(session, subscription_id=sub.id, event_id=event.id, event_type=event.type,
                                       payload=payload)
        code, error = await self.send(sub.url, sub.secret, event.id, payload)
        ok = code is not None and 200 <= code < 300
        async with session_scope(self.ctx.db) as session:
            await store.finish(session, did, status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
                               attempts=1, code=code, error=error)
        return did
