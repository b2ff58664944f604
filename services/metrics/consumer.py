"""The telemetry consumer: a JetStream pull consumer driven by hand, so a message costs no task and no model.

ServiceApp's generic consumer (``libs.service``) parses every message into a ``CloudEvent``
model and fetches with nats-py's ``fetch``, which waits for each message of a batch with a
task and a timer of its own; at ten thousand messages a second those two were most of the
service's time. This loop keeps pull requests outstanding on a private inbox (the next batch
streams in while the current one is written), takes whatever has arrived, parses it with
``wire`` (models only for what is not canonical) and acknowledges each message.

The contract is the generic consumer's: the same durable consumer and configuration, dedupe
by event id (a redelivery of something that failed is let through), a malformed envelope
counted (``malformed_envelope``), terminated and logged without its content, a report of
the wrong type or with invalid data counted and acknowledged, a failed write nak'ed for
redelivery.

Writes overlap: up to ``INGEST_WRITES`` batches are in flight at once, each on its own
connection, so the next batch is parsed (and PostgreSQL works on one COPY) while another
commits. A new write starts when a whole batch is waiting, or else once ``ingest_linger_s``
has passed since the previous one started; with every connection busy, arrivals simply
accumulate into the next batch. Under load batches grow instead of commits multiplying, and
with a backlog there is no pause at all. Long stretches of parsing and acknowledging yield to
the event loop every ``YIELD_EVERY`` messages so that queries (the city summary) are not
held behind a whole batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, Header
from opentelemetry import trace
from pydantic import ValidationError

from libs.aio import wait_event
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_MESSAGES, HANDLER_SECONDS
from libs.schemas.hostevents import TelemetryReport
from libs.service import Context, SeenIds, ServiceApp, consumer_config
from libs.tracing import extract_context, tracer
from services.metrics import wire
from services.metrics.ingest import Ingest
from services.metrics.runtime import INGEST_WRITES

log = logging.getLogger(__name__)
SERVICE = "metrics"
HANDLER = "on_telemetry"
EXPIRES_S = 1.0  # each pull request's lifetime on the server
HEARTBEAT = "100"  # the only status that does not end a pull request
ROUTINE = ("404", "408")  # no messages, request expired: anything else (409, 503) is trouble
YIELD_EVERY = 512  # messages parsed or acknowledged between two turns of the event loop


@dataclass
class Pulls:
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


class TelemetryConsumer:
    def __init__(self, app: ServiceApp, ctx: Context, ingest: Ingest, *, stream: str, durable: str, subject: str,
                 batch: int, max_deliver: int = 5) -> None:
        self.app, self.ctx, self.ingest = app, ctx, ingest
        self.stream, self.durable, self.subject, self.batch, self.max_deliver = stream, durable, subject, batch, max_deliver
        self.pulls = Pulls(batch)
        self.buf: list[Msg] = []
        self.arrived = asyncio.Event()
        self.seen = SeenIds()
        self.inbox = ""
        self.trouble = False  # the server refused a pull request (a deleted consumer, no JetStream)
        self.writes: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.tracer = tracer(f"xpumesh.{SERVICE}")

    def config(self) -> ConsumerConfig:
        """What ``ServiceApp.consumer`` declares for a durable."""
        return consumer_config(self.durable, self.subject, batch_size=self.batch, max_deliver=self.max_deliver)

    async def _on_msg(self, msg: Msg) -> None:
        self.buf.append(msg)
        self.arrived.set()

    async def start(self) -> None:
        """Declare the durable consumer (as the generic consumer does) and subscribe the private inbox."""
        bus = self.ctx.bus
        await bus.js.add_consumer(self.stream, self.config())
        self.inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=self.batch * 8)
        self.ctx.pull_subscriptions.append(sub)  # dropped at stop like the generic consumers'

    async def stop(self, timeout_s: float) -> None:
        """End the loop and let writes in flight finish (bounded) before the pools close; what is not acked
        comes back from JetStream."""
        self.stopped = True
        self.arrived.set()
        if self.writes:
            await asyncio.wait(set(self.writes), timeout=timeout_s)

    async def run(self) -> None:
        try:
            await self._loop(self.writes)
        finally:
            for t in self.writes:
                t.cancel()
            await asyncio.gather(*self.writes, return_exceptions=True)

    async def _loop(self, writes: set[asyncio.Task[None]]) -> None:
        nc = self.ctx.bus.nc
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        request = json.dumps({"batch": self.batch, "expires": int(EXPIRES_S * 1e9)}).encode()
        linger = self.ctx.settings.metrics.ingest_linger_s
        started = -math.inf
        while not self.stopped:
            now = time.monotonic()
            self.pulls.forget_lost(now)
            try:
                while self.pulls.outstanding < self.batch:  # the next batch is on its way while this one is written
                    await nc.publish(next_subject, request, reply=self.inbox)
                    self.pulls.requested(now)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: back off, the consumer is durable
                log.warning("%s: pull request failed (%s); retrying", HANDLER, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if len(writes) >= INGEST_WRITES:  # every connection busy: what arrives meanwhile joins the next batch
                await asyncio.wait(writes, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not self.buf:
                self.arrived.clear()
                await wait_event(self.arrived, EXPIRES_S)
                continue
            rest = linger - (time.monotonic() - started)
            if rest > 0 and len(self.buf) < self.batch:  # not a whole batch yet: let it grow until the linger ends
                await asyncio.sleep(rest)
                continue
            msgs = self._take()
            if self.trouble:
                await self._recover()
            if not msgs or self.stopped:  # after stop: left unacked, JetStream redelivers them
                continue
            started = time.monotonic()
            task = asyncio.create_task(self._write(msgs), name=f"{HANDLER}:write")
            writes.add(task)
            task.add_done_callback(writes.discard)

    async def _write(self, msgs: list[Msg]) -> None:
        try:
            await self.handle(msgs)
        except asyncio.CancelledError:
            raise
        except Exception:  # connection trouble while acknowledging: the messages come back
            log.exception("%s: batch failed", HANDLER)

    async def _recover(self) -> None:
        """Back off, then declare the consumer again (idempotent; it may have been deleted)."""
        self.trouble = False
        log.warning("%s: pull requests refused; declaring the consumer again", HANDLER)
        await asyncio.sleep(1.0)
        try:
            await self.ctx.bus.js.add_consumer(self.stream, self.config())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: consumer not declared (%s); retrying", HANDLER, type(exc).__name__)

    def _take(self) -> list[Msg]:
        """Up to one batch of data messages from what has arrived; statuses settle the pull accounting."""
        got, self.buf = self.buf[: self.batch], self.buf[self.batch:]
        msgs = []
        for m in got:
            status = m.headers.get(Header.STATUS) if m.headers and not m.data and not m.reply else None
            if status is None:
                msgs.append(m)
            elif status != HEARTBEAT:
                self.pulls.ended()
                self.trouble = self.trouble or status not in ROUTINE
        self.pulls.delivered(len(msgs))
        return msgs

    async def handle(self, msgs: list[Msg]) -> None:
        cols = wire.Columns()
        take: list[Msg] = []
        for k, m in enumerate(msgs, 1):
            if k % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            fast = wire.canonical(m.data)
            event: CloudEvent | None = None
            if fast is not None:
                event_id = fast["id"]
            elif (event := await self._envelope(m)) is not None:
                event_id = event.id
            else:
                continue
            if self.seen.seen(event_id) and (m.metadata.num_delivered or 1) == 1:
                BUS_MESSAGES.labels(SERVICE, HANDLER, "duplicate").inc()
                await m.ack()
                continue
            if fast is not None:
                cols.add_event(fast)
            elif event is not None and (report := self._report(event)) is not None:
                cols.add_report(report)
            take.append(m)
        if not take:
            return
        with self.tracer.start_as_current_span(f"event {SERVICE}.{HANDLER}", context=extract_context(take[0].headers),
                                               kind=trace.SpanKind.CONSUMER):
            started = time.perf_counter()
            try:
                await self.ingest.write(cols)
                outcome = "ok"
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: handler failed", HANDLER)
                outcome = "error"
            HANDLER_SECONDS.labels(SERVICE, HANDLER).observe(time.perf_counter() - started)
        BUS_MESSAGES.labels(SERVICE, HANDLER, outcome).inc()
        for k, m in enumerate(take, 1):
            await (m.nak(delay=1.0) if outcome == "error" else m.ack())
            if k % YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _envelope(self, m: Msg) -> CloudEvent | None:
        """The envelope of a message the strict path left, by the full model; a malformed one is counted and
        terminated (never redelivered)."""
        event = self.app.parse_event(HANDLER, m.data)
        if event is None:
            await m.term()
        return event

    def _report(self, event: CloudEvent) -> TelemetryReport | None:
        """The report of a well-formed envelope, by the full model; the wrong type or invalid data is counted."""
        if event.type != EventTypes.HOST_TELEMETRY:
            self.ingest.reject_report("wrong_type")
            return None
        try:
            return TelemetryReport.model_validate(event.data)
        except ValidationError as exc:
            self.ingest.reject_report("invalid_data")
            first = exc.errors()[0]
            log.warning("%s: dropped an invalid telemetry report (%s: %s)", HANDLER,
                        ".".join(str(p) for p in first["loc"]), first["msg"])
            return None
