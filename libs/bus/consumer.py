"""The one JetStream pull consumer: every reader of a stream in the mesh runs through ``PullConsumer``.

Service consumers (``ServiceApp.consumer``), the metrics service's telemetry ingest, the
gateway's webhook intake and its Server-Sent Events reader differ only in how they decode a
message, what they do with a batch and how many batches they work on at once. The contract
is written here once:

- **Pull requests are pipelined** on a private inbox: up to ``batch`` messages are always
  requested, so the next batch streams in while the current one is handled, and a message
  costs no task and no timer (nats-py's ``fetch`` spends both per message).
- **Decoding** is the caller's ``decode(data, subject) -> (event id, item)``, given the
  NATS subject (``envelope`` makes it the event's ``received_on``); an ``InvalidEnvelope``
  is counted (``malformed_envelope``), logged without the content and terminated: a
  redelivery cannot mend it; an ``IdentityMismatch`` (``libs.bus.identity``) is acked.
- **Dedupe** by event id in a bounded ``SeenIds``: a first delivery of an id already seen is
  acked unprocessed and counted ``duplicate``; a redelivery (of something that failed) is let
  through.
- **Outcome** of the handler: returning acks every message it was given; raising
  ``InvalidRequest`` or a ``ValidationError`` acks them too and counts ``invalid_data``
  (``identity_mismatch`` for an ``IdentityMismatch``: retrying cannot fix data); any other
  exception naks them with ``redelivery.delay(n)`` for the n-th delivery (doubling up to a cap);
  after ``stuck_after`` failures a message is counted stuck (``outcomes.Stuck``) and still retried.
- **Batches or messages**: the handler gets a batch; with ``each`` it is called once per
  message, in stream order, and each message's outcome is its own.
- **Concurrency**: ``in_flight`` handler calls at once (each with its own batch); arrivals
  meanwhile accumulate into the next batch, so batches grow under load instead of calls
  multiplying. ``linger_s`` lets a partial batch wait that long for more.
- **Trouble**: a refused pull request (a deleted consumer, no JetStream) backs off and, when
  the consumer owns its declaration, declares it again; a lost connection backs off.
- **Stop** ends the loop, lets handler calls in flight finish (bounded) and drops the inbox,
  so what was fetched but not taken is redelivered to another instance.

Counters are the mesh's ``xpumesh_bus_messages_total`` / ``xpumesh_bus_rejected_total`` /
``xpumesh_handler_seconds`` under the consumer's service and handler names, and the
consumer's own ``stats`` (as nats.py's ``micro`` endpoints keep theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, Header

from libs.aio import wait_event
from libs.bus.connection import Bus
from libs.bus.identity import REASON as IDENTITY_MISMATCH
from libs.bus.identity import IdentityMismatch
from libs.bus.outcomes import Redelivery, Stuck, reject, run_handler
from libs.events import CloudEvent, InvalidEnvelope
from libs.metrics import BUS_MESSAGES
from libs.tracing import tracer

log = logging.getLogger(__name__)
T = TypeVar("T")
EXPIRES_S = 1.0  # each pull request's lifetime on the server
HEARTBEAT = "100"  # the only status that does not end a pull request
ROUTINE = ("404", "408")  # no messages, request expired: anything else (409, 503) is trouble
YIELD_EVERY = 512  # messages decoded or acknowledged between two turns of the event loop
_LIVE: weakref.WeakSet[PullConsumer[Any]] = weakref.WeakSet()


def live_consumers() -> list[tuple[str, str]]:
    """(stream, consumer name) of every PullConsumer of this process between its start and its close."""
    return sorted((c.stream, c.durable) for c in list(_LIVE))


class SeenIds:
    """A bounded set of recently processed event ids (first line of dedupe; DB checks are the second)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        # An OrderedDict, not a dict: dropping the oldest of a plain dict (``next(iter(d))``) walks past every
        # slot deleted before it until the next resize, which made a full set cost tens of µs per message.
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


class Delivery(NamedTuple, Generic[T]):
    """One decoded message: the item the decoder made of it, its event id and the message itself."""

    item: T
    id: str
    msg: Msg


class Batch(Generic[T]):
    """What a handler is given: the decoded items, their event ids and their messages, as parallel lists.

    Parallel lists rather than a ``Delivery`` per message: at tens of thousands of messages a second, one
    small object each is measurable garbage-collector work. Iterating yields ``Delivery`` views for
    handlers that want a message beside its item.
    """

    __slots__ = ("ids", "items", "msgs")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.ids: list[str] = []
        self.msgs: list[Msg] = []

    def add(self, item: T, event_id: str, msg: Msg) -> None:
        self.items.append(item)
        self.ids.append(event_id)
        self.msgs.append(msg)

    def one(self, k: int) -> Batch[T]:
        b: Batch[T] = Batch()
        b.add(self.items[k], self.ids[k], self.msgs[k])
        return b

    def __len__(self) -> int:
        return len(self.msgs)

    def __iter__(self) -> Iterator[Delivery[T]]:
        for item, event_id, msg in zip(self.items, self.ids, self.msgs, strict=True):
            yield Delivery(item, event_id, msg)


Decoder = Callable[[bytes, str], tuple[str, T]]  # (message data, NATS subject) -> (event id, item)
Handler = Callable[[Batch[T]], Awaitable[None]]


def envelope(data: bytes, subject: str) -> tuple[str, CloudEvent]:
    """The default decoder: the CloudEvent envelope by its model, with the subject it arrived on."""
    event = CloudEvent.from_bytes(data, received_on=subject)
    return event.id, event


@dataclass
class ConsumerStats:
    received: int = 0
    handled: int = 0
    duplicates: int = 0
    malformed: int = 0
    rejected: int = 0
    failed: int = 0
    stuck: int = 0  # messages failed ``stuck_after`` times or more, still retried
    last_error: str | None = None


@dataclass
class _Pulls:
    """Pull requests outstanding at the server (it serves them oldest first), as messages still owed."""

    size: int
    owed: deque[list[float]] = field(default_factory=deque)  # [messages owed, monotonic deadline]

    @property
    def outstanding(self) -> int:
        return int(sum(o[0] for o in self.owed))

    def requested(self, now: float) -> None:
        self.owed.append([float(self.size), now + EXPIRES_S])

    def delivered(self, n: int) -> None:
        while n and self.owed:
            take = min(n, int(self.owed[0][0]))
            self.owed[0][0] -= take
            n -= take
            if self.owed[0][0] <= 0:
                self.owed.popleft()

    def ended(self) -> None:
        """A status (timeout, no messages, conflict) closed the oldest request."""
        if self.owed:
            self.owed.popleft()

    def forget_lost(self, now: float) -> None:
        """Requests well past their deadline without a status are gone (a reconnect, a restarted server)."""
        while self.owed and self.owed[0][1] + 2 * EXPIRES_S < now:
            self.owed.popleft()


class PullConsumer(Generic[T]):
    """One pull consumer of ``stream``/``durable`` feeding ``handle`` with decoded batches.

    ``config`` declares the consumer at start (idempotent) and again after trouble; without it
    the consumer must exist already (declared by whoever owns it, e.g. a webhook subscription).
    """

    def __init__(self, bus: Bus, *, stream: str, durable: str, handle: Handler[T], decode: Decoder[T],
                 service: str, name: str, config: ConsumerConfig | None = None, batch: int = 256,
                 each: bool = False, in_flight: int = 1, linger_s: float = 0.0, dedupe: int = 100_000,
                 redelivery: Redelivery = Redelivery(), stuck_after: int = 0, drain_timeout_s: float = 5.0) -> None:
        self.bus, self.stream, self.durable, self.config = bus, stream, durable, config
        self.handle, self.decode, self.service, self.name = handle, decode, service, name
        self.batch, self.in_flight, self.linger_s = max(1, batch), max(1, in_flight), linger_s
        self.each = each
        self.redelivery, self.drain_timeout_s = redelivery, drain_timeout_s
        self.stuck = Stuck(service, name, stuck_after, redelivery)
        self.seen = SeenIds(dedupe) if dedupe > 0 else None
        self.stats = ConsumerStats()
        self._pulls = _Pulls(self.batch)
        self._buf: list[Msg] = []
        self._arrived = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()
        self._inbox = ""
        self._sub: Any = None
        self._trouble = False
        self._stopped = False
        self._tracer = tracer(f"xpumesh.{service}")

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Declare the consumer (when it owns the declaration) and subscribe the private inbox."""
        if self.config is not None:
            await self.bus.js.add_consumer(self.stream, self.config)
        self._inbox = self.bus.nc.new_inbox()
        self._sub = await self.bus.nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=self.batch * 8)
        _LIVE.add(self)

    async def run(self) -> None:
        """Pull and handle until stopped or cancelled (``start`` first)."""
        try:
            await self._loop()
        finally:
            for t in self._calls:
                t.cancel()
            await asyncio.gather(*self._calls, return_exceptions=True)

    async def stop(self) -> None:
        """End the loop, let handler calls in flight finish (bounded), drop the inbox: what is not acked
        comes back from JetStream."""
        self._stopped = True
        self._arrived.set()
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=self.drain_timeout_s)
        await self.close()

    async def close(self) -> None:
        _LIVE.discard(self)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    # --- the loop ----------------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        self._buf.append(msg)
        self._arrived.set()

    async def _loop(self) -> None:
        nc = self.bus.nc
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        request = json.dumps({"batch": self.batch, "expires": int(EXPIRES_S * 1e9)}).encode()
        started = -math.inf
        while not self._stopped:
            now = time.monotonic()
            self._pulls.forget_lost(now)
            try:
                while self._pulls.outstanding < self.batch:  # the next batch is on its way while this one is handled
                    await nc.publish(next_subject, request, reply=self._inbox)
                    self._pulls.requested(now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: back off, the consumer is durable
                log.warning("%s: pull request failed (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if len(self._calls) >= self.in_flight:  # every slot busy: what arrives meanwhile joins the next batch
                await asyncio.wait(self._calls, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not self._buf:
                self._arrived.clear()
                await wait_event(self._arrived, EXPIRES_S)
                continue
            rest = self.linger_s - (time.monotonic() - started)
            if rest > 0 and len(self._buf) < self.batch:  # not a whole batch yet: let it grow until the linger ends
                await asyncio.sleep(rest)
                continue
            msgs = self._take()
            if self._trouble:
                await self._recover()
            if not msgs or self._stopped:  # after stop: left unacked, JetStream redelivers them
                continue
            started = time.monotonic()
            task = asyncio.create_task(self._call(msgs), name=f"{self.name}:batch")
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def _take(self) -> list[Msg]:
        """Up to one batch of data messages from what has arrived; statuses settle the pull accounting."""
        got, self._buf = self._buf[: self.batch], self._buf[self.batch:]
        msgs = []
        for m in got:
            status = m.headers.get(Header.STATUS) if m.headers and not m.data and not m.reply else None
            if status is None:
                msgs.append(m)
            elif status != HEARTBEAT:
                self._pulls.ended()
                self._trouble = self._trouble or status not in ROUTINE
        self._pulls.delivered(len(msgs))
        return msgs

    async def _recover(self) -> None:
        """Back off, then declare the consumer again when this consumer owns it (idempotent)."""
        self._trouble = False
        log.warning("%s: pull requests refused; %s", self.name,
                    "declaring the consumer again" if self.config is not None else "backing off")
        await asyncio.sleep(1.0)
        if self.config is None:
            return
        try:
            await self.bus.js.add_consumer(self.stream, self.config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: consumer not declared (%s); retrying", self.name, type(exc).__name__)

    async def _call(self, msgs: list[Msg]) -> None:
        try:
            await self._process(msgs)
        except asyncio.CancelledError:
            raise
        except Exception:  # connection trouble while acknowledging: the messages come back
            log.exception("%s: batch failed", self.name)

    # --- one batch ---------------------------------------------------------------------------
    async def _process(self, msgs: Sequence[Msg]) -> None:
        self.stats.received += len(msgs)
        take: Batch[T] = Batch()
        # the hot path of every consumer (tens of thousands of messages a second): bound names, no calls per
        # message beyond the decoder and the dedupe set
        decode, seen = self.decode, self.seen.seen if self.seen is not None else None
        items, ids, kept = take.items.append, take.ids.append, take.msgs.append
        for k, m in enumerate(msgs, 1):
            if k % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                event_id, item = decode(m.data, m.subject)
            except InvalidEnvelope as exc:
                self.stats.malformed += 1
                reject(self.service, self.name, "malformed_envelope")
                log.warning("%s: dropped malformed event: %s", self.name, exc.reason)
                await m.term()
                continue
            except IdentityMismatch:
                self.stats.rejected += 1
                reject(self.service, self.name, IDENTITY_MISMATCH)
                await m.ack()
                continue
            if seen is not None and seen(event_id) and (m.metadata.num_delivered or 1) == 1:
                self.stats.duplicates += 1
                BUS_MESSAGES.labels(self.service, self.name, "duplicate").inc()
                await m.ack()
                continue
            items(item)
            ids(event_id)
            kept(m)
        if not take:
            return
        if self.each:  # one handler call, and one outcome, per message, in stream order
            for k in range(len(take)):
                one = take.one(k)
                await self._settle(one, await self._run(one))
        else:
            await self._settle(take, await self._run(take))

    async def _run(self, take: Batch[T]) -> str:
        outcome = await run_handler(self.service, self.name, lambda: self.handle(take), take.msgs[0].headers,
                                    self._tracer)
        if outcome == "error":
            self.stats.last_error = "handler failed"
        return outcome

    async def _settle(self, take: Batch[T], outcome: str) -> None:
        if outcome == "error":
            self.stats.failed += len(take)
        elif outcome == "rejected":
            self.stats.rejected += len(take)
        else:
            self.stats.handled += len(take)
        for k, m in enumerate(take.msgs, 1):
            if outcome == "error":
                delivered = m.metadata.num_delivered or 1
                if delivered >= self.stuck.after > 0:
                    self.stats.stuck += self.stuck.failed(m.metadata.sequence.stream, delivered)
                await m.nak(delay=self.redelivery.delay(delivered))
            else:
                if self.stuck.seqs:
                    self.stats.stuck -= self.stuck.handled(m.metadata.sequence.stream, m.metadata.num_delivered)
                await m.ack()
            if k % YIELD_EVERY == 0:
                await asyncio.sleep(0)

