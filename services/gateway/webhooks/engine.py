"""The webhook engine: one durable JetStream consumer per subscription, a delivery worker.

Intake: each active subscription has a durable pull consumer on ``STREAM_EVENTS``
(created with the subscription, so nothing published after the 201 is missed), read by a
``libs.bus.consumer.PullConsumer`` bound to it. Matching events become delivery rows in
PostgreSQL, and only then are their messages acked: a gateway killed at any point loses
nothing (JetStream hands unacked messages out again after ``webhook_ack_wait_s``; a
redelivered event id is ignored by the unique key; a batch the database refused is nak'ed
and comes back). Rows are not always written in stream order: a killed gateway's unacked
messages come back only after ``webhook_ack_wait_s`` while a new instance records later
ones, a nak'ed batch waits out its back-off, and several instances record at once. So each
intake follows its consumer's ack floor (``_follow_floor``): every event up to that stream
sequence has been recorded (rows are committed before their messages are acked), and a
delivery is leased only at or below it. With the per-subject gate of ``store`` this keeps
the first delivery of each subject's events in stream order through crashes.

Delivery: ``deliver_due`` (run by the gateway's periodic loop, woken when rows land or an
attempt ends) leases due rows (``SKIP LOCKED``, so instances share the work) and
POSTs each event in CloudEvents structured mode, signed per Standard Webhooks with the
event id as ``webhook-id`` (stable across retries). 2xx: done; 410: the subscription is
disabled; anything else: retried on ``webhook_retry_schedule_s`` with ±20 % jitter, then
dead-lettered. A crash mid-attempt leaves the lease to expire and the same event is sent
again under the same id.

A target cannot hold the gateway: the whole attempt (connect, send, answer) runs under one
deadline (``webhook_timeout_s``) shorter than its lease (``LEASE_MARGIN_S`` more), so a
target trickling bytes is cut off before anyone else may lease the delivery; at most
``webhook_max_response_bytes`` of an answer are read, raw (never decompressed); a result
is recorded only under the attempt's own lease token; and a tenant has at most
``webhook_tenant_concurrency`` deliveries leased at once, so its slow targets leave the
other slots to other tenants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from libs.aio import wait_event
from libs.bus.connection import STREAM_EVENTS
from libs.bus.consumer import Batch, PullConsumer, envelope
from libs.bus.outcomes import Redelivery, reject
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.schemas.subscriptions import DeliveryStatus
from libs.service import Context
from services.gateway.webhooks import signing, store
from services.gateway.webhooks.filters import EventFilter
from services.gateway.webhooks.ssrf import GuardedTransport, UnsafeTarget

log = logging.getLogger(__name__)
FETCH_BATCH = 64
DELIVERIES = Counter("xpumesh_webhook_deliveries_total", "Webhook delivery attempts, by outcome.", ["outcome"])
ORPHAN_AGE_S = 60.0
LEASE_MARGIN_S = 5.0  # a lease outlives its attempt's deadline by this much: time to record the result


FLOOR_RETRY_S = (0.02, 1.0)  # first and longest wait before asking again while the ack floor is behind the rows


@dataclass(frozen=True)
class _Intake:
    consumer: PullConsumer[CloudEvent]
    task: asyncio.Task[None]
    floor: asyncio.Task[None]
    recorded: asyncio.Event  # rows were written: the ack floor moves once their messages are acked


def event_filter(sub: store.SubscriptionRow) -> EventFilter:
    return EventFilter(types=sub.types, site=sub.filters.site,
                       hardware_type=str(sub.filters.hardware_type) if sub.filters.hardware_type else None,
                       tenant=sub.scope_tenant)


class WebhookEngine:
    """The webhook intake consumers and delivery attempts of one gateway instance (``GatewayState.webhooks``)."""

    def __init__(self, ctx: Context[Any]) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.gateway
        self.intakes: dict[str, _Intake] = {}
        # per subscription: the stream sequence up to which every event is recorded (the consumer's ack floor),
        # and the highest sequence this instance recorded
        self.floors: dict[str, int] = {}
        self.recorded: dict[str, int] = {}
        self.attempts: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()  # deliveries were recorded or an attempt ended: look for due ones now
        self.resync = asyncio.Event()  # a subscription changed on some instance: reconcile now
        self.closed = False
        limits = httpx.Limits(max_connections=self.settings.webhook_concurrency)
        self.client = httpx.AsyncClient(follow_redirects=False, timeout=self.settings.webhook_timeout_s,
                                        transport=GuardedTransport(self.settings.webhook_allow_hosts, limits=limits))

    async def close(self) -> None:
        """Stop every intake (a batch being recorded finishes first), end the attempts in flight (their leases
        expire and they are sent again), close the HTTP client."""
        self.closed = True
        for sid in list(self.intakes):
            await self.stop_intake(sid)
        for task in self.attempts:
            task.cancel()
        await asyncio.gather(*self.attempts, return_exceptions=True)
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
        await self.stop_intake(sid)
        with contextlib.suppress(NotFoundError):
            await self.ctx.bus.js.delete_consumer(STREAM_EVENTS, store.consumer_name(sid))

    async def start_intake(self, sub: store.SubscriptionRow) -> None:
        """Read the subscription's consumer (which must exist) unless this instance reads it already."""
        running = self.intakes.get(sub.id)
        if running is not None and not running.task.done():
            return
        flt = event_filter(sub)
        recorded = asyncio.Event()

        async def record(batch: Batch[CloudEvent]) -> None:
            await self._record(sub.id, flt, batch)
            recorded.set()

        b = self.ctx.settings.bus
        consumer = PullConsumer(self.ctx.bus, stream=STREAM_EVENTS, durable=store.consumer_name(sub.id), handle=record,
                                decode=envelope, service="gateway", name="webhook_intake", batch=FETCH_BATCH,
                                dedupe=0, redelivery=Redelivery(b.redelivery_base_s, 2.0, b.redelivery_max_s),
                                drain_timeout_s=b.drain_timeout_s)
        await consumer.start()
        self.intakes[sub.id] = _Intake(
            consumer, asyncio.create_task(consumer.run(), name=f"webhook-intake:{sub.id}"),
            asyncio.create_task(self._follow_floor(sub.id, recorded), name=f"webhook-floor:{sub.id}"), recorded)

    async def stop_intake(self, sid: str) -> None:
        intake = self.intakes.pop(sid, None)
        if intake is not None:
            await intake.consumer.stop()
            intake.task.cancel()
            intake.floor.cancel()
            await asyncio.gather(intake.task, intake.floor, return_exceptions=True)
        self.floors.pop(sid, None)
        self.recorded.pop(sid, None)

    async def _follow_floor(self, sid: str, recorded: asyncio.Event) -> None:
        """Keep ``floors[sid]`` at the subscription consumer's ack floor: asked after rows are recorded, again
        (backing off) while it is behind them, and every ``sync_interval_s`` for rows other instances record."""
        wait = FLOOR_RETRY_S[0]
        while True:
            recorded.clear()
            floor: int | None = None
            try:
                info = await self.ctx.bus.js.consumer_info(STREAM_EVENTS, store.consumer_name(sid))
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, the consumer being recreated: ask again
                log.debug("webhook intake %s: no consumer info (%s)", sid, type(exc).__name__)
            if floor is not None and floor > self.floors.get(sid, -1):
                self.floors[sid] = floor
                self.wake.set()
            if floor is None or floor < self.recorded.get(sid, 0):
                await asyncio.sleep(wait)  # the acks are on their way, or an earlier event is not recorded yet
                wait = min(wait * 2, FLOOR_RETRY_S[1])
            else:
                wait = FLOOR_RETRY_S[0]
                await wait_event(recorded, self.settings.sync_interval_s)

    async def reconcile(self) -> None:
        """Run an intake for every active subscription and none for the rest."""
        async with session_scope(self.ctx.db) as session:
            subs = {s.id: s for s in await store.list_active_subscriptions(session)}
        await self._drop_orphans(set(subs))
        for sid in [sid for sid in self.intakes if sid not in subs]:
            await self.stop_intake(sid)
        for sub in subs.values():
            running = self.intakes.get(sub.id)
            if running is None or running.task.done():
                try:
                    await self.ctx.bus.js.consumer_info(STREAM_EVENTS, store.consumer_name(sub.id))
                except NotFoundError:
                    log.warning("subscription %s had no consumer; recreating it from the next event", sub.id)
                    await self.create_consumer(sub)
                await self.start_intake(sub)

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

    async def _record(self, sid: str, flt: EventFilter, batch: Batch[CloudEvent]) -> None:
        """Write the matching events of a batch as pending deliveries; the consumer acks the batch only after
        this returns (a database failure raises: the batch is nak'ed and handed out again)."""
        rows: list[dict[str, Any]] = []
        top = 0
        for d in batch:
            if not flt.matches(d.item, d.msg.subject):
                continue
            if "\x00" in d.id or "\x00" in d.item.type or "\x00" in (d.item.subject or ""):
                reject("gateway", "webhook_intake", "nul")  # PostgreSQL stores no NUL: it would refuse the batch for good
                continue
            seq = d.msg.metadata.sequence.stream
            top = max(top, seq)
            rows.append({"subscription_id": sid, "event_id": d.id, "event_type": d.item.type,
                         "event_subject": (d.item.subject or "")[:256], "stream_seq": seq, "payload": d.msg.data})
        if not rows:
            return
        async with session_scope(self.ctx.db) as session:
            await store.create_deliveries(session, rows)
        self.recorded[sid] = max(self.recorded.get(sid, 0), top)
        self.wake.set()

    # --- delivery ---------------------------------------------------------------------------
    async def deliver_due(self) -> float | None:
        """Lease due deliveries for the free attempt slots and start their attempts. Returns 0 (look again at
        once) when every free slot got one: more may be due."""
        free = self.settings.webhook_concurrency - len(self.attempts)
        if free <= 0 or self.closed:
            return None
        async with session_scope(self.ctx.db) as session:
            due = await store.update_due_leases(session, limit=free, lease_s=self.settings.webhook_timeout_s + LEASE_MARGIN_S,
                                                tenant_cap=self.settings.webhook_tenant_concurrency, floors=self.floors)
        for d in due:
            task = asyncio.create_task(self._attempt(d), name=f"webhook-attempt:{d.id}")
            self.attempts.add(task)
            task.add_done_callback(self.attempts.discard)
        return 0.0 if due and len(due) == free else None

    async def send(self, url: str, secret: str, event_id: str, payload: bytes) -> tuple[int | None, str | None]:
        """One POST under one deadline, at most ``webhook_max_response_bytes`` of the answer read: (status code,
        error text) — exactly one of them is set."""
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                async with self.client.stream("POST", url, content=payload, headers=signing.headers(
                        secret, event_id, int(time.time()), payload)) as resp:
                    await self._read_capped(resp)
        except (TimeoutError, httpx.TimeoutException):
            return None, "timeout"
        except UnsafeTarget as exc:  # checked at every connect (GuardedTransport): the name may have been re-pointed
            return None, str(exc)
        except httpx.HTTPError as exc:
            return None, f"connection failed ({type(exc).__name__})"
        return resp.status_code, None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"

    async def _read_capped(self, resp: httpx.Response) -> None:
        """Read the answer's raw bytes up to the cap; past it, stop (leaving the stream closes the connection)."""
        left = self.settings.webhook_max_response_bytes
        if left <= 0:
            return
        async for chunk in resp.aiter_raw():
            left -= len(chunk)
            if left <= 0:
                return

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
            async with session_scope(self.ctx.db) as session:
                recorded = await store.update_delivery(session, d.id, status=status, attempts=attempts, code=code,
                                                       error=error, next_attempt_at=next_at, lease_token=d.lease_token)
                if recorded and code == 410:
                    await store.update_subscription_disabled(session, d.subscription_id, "the target answered 410 Gone")
            if not recorded:  # our lease expired and another worker holds the delivery now: its result counts
                DELIVERIES.labels("lease_lost").inc()
                log.warning("webhook delivery %s: the lease expired before the result was recorded; dropped", d.id)
                return
            DELIVERIES.labels(str(status) if status != DeliveryStatus.PENDING else "retry").inc()
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
        event = CloudEvent.new(EventTypes.WEBHOOK_PING, f"/gateway/{self.ctx.instance}", {"subscription_id": sub.id},
                               subject=sub.id)
        payload = event.to_bytes()
        async with session_scope(self.ctx.db) as session:
            did = await store.create_ping_delivery(session, subscription_id=sub.id, event_id=event.id, event_type=event.type,
                                       payload=payload)
        code, error = await self.send(sub.url, sub.secret, event.id, payload)
        ok = code is not None and 200 <= code < 300
        async with session_scope(self.ctx.db) as session:
            await store.update_delivery(session, did, status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
                               attempts=1, code=code, error=error)
        return did
