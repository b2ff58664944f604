"""What a handler's outcome means, written once for pull consumers and core subscriptions.

- ``run_handler``: one handler call in a consumer span; returning is ``ok``, ``InvalidRequest`` /
  ``ValidationError`` is ``rejected`` (data that retrying cannot mend: counted, acked), anything else is
  ``error`` (logged; the pull consumer naks it for redelivery);
- ``each_valid``: the events of a batch that validate, each judged alone, and that speak only for the host
  of the subject they arrived on;
- ``reject``: the one counter of dropped messages (``xpumesh_bus_rejected_total`` by reason, and the
  message counter's ``rejected``);
- ``Redelivery``: how long a failed message waits before it comes back (doubling, capped); ``Stuck``: the
  messages that failed so often that someone should look (``xpumesh_bus_stuck_messages``, an error logged),
  while they are still retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from libs.bus.errors import InvalidRequest
from libs.bus.identity import REASON as IDENTITY_MISMATCH
from libs.bus.identity import IdentityMismatch, host_of
from libs.events import CloudEvent
from libs.metrics import BUS_MESSAGES, BUS_REJECTED, BUS_STUCK, BUS_STUCK_TOTAL, HANDLER_SECONDS
from libs.tracing import extract_context

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def reject(service: str, handler: str, reason: str, n: int = 1) -> None:
    """Count ``n`` messages (or reports inside a batch) a handler dropped as unusable, under ``reason``."""
    BUS_REJECTED.labels(service, handler, reason).inc(n)
    BUS_MESSAGES.labels(service, handler, "rejected").inc(n)


def each_valid(events: Sequence[CloudEvent], model: type[M], *, service: str, handler: str,
               event_type: str | None = None, context: dict[str, Any] | None = None) -> list[tuple[CloudEvent, M]]:
    """The events of a batch whose data validates as ``model`` (and whose type is ``event_type``, when given),
    each judged alone: one bad event is counted (``wrong_type``, ``invalid_data``) and dropped, not the batch.

    ``context`` is pydantic's validation context (e.g. ``libs.schemas.hostevents.ReportBounds``). An event received
    on a host subject (``xpumesh.host.<site>.<host>.<kind>``) must report about that host: its data's ``site`` and
    ``host_id`` are the subject's tokens, or it is counted ``identity_mismatch`` and dropped."""
    out = []
    for event in events:
        if event_type is not None and event.type != event_type:
            reject(service, handler, "wrong_type")
            continue
        try:
            report = model.model_validate(event.data, context=context)
        except ValidationError as exc:
            reject(service, handler, "invalid_data")
            first = exc.errors()[0]
            log.warning("%s: dropped an event whose data does not validate (%s: %s)", handler,
                        ".".join(str(p) for p in first["loc"]), first["msg"])
            continue
        origin = host_of(event.received_on)
        if origin is not None and origin != (getattr(report, "site", None), getattr(report, "host_id", None)):
            reject(service, handler, IDENTITY_MISMATCH)
            log.warning("%s: dropped a report about a host other than its subject's (%s)", handler, event.received_on)
            continue
        out.append((event, report))
    return out


async def run_handler(service: str, handler: str, call: Callable[[], Awaitable[None]],
                      headers: dict[str, str] | None, tracer_: trace.Tracer) -> str:
    """Run one handler call in a consumer span and say how it went: ``ok``; ``rejected`` for data that cannot
    be handled (``InvalidRequest``, ``ValidationError``: counted ``invalid_data``); ``error`` for anything else
    (logged: worth a retry). Shared by the pull consumer and core subscriptions."""
    with tracer_.start_as_current_span(f"event {service}.{handler}", context=extract_context(headers),
                                       kind=trace.SpanKind.CONSUMER):
        started = time.perf_counter()
        try:
            await call()
            outcome = "ok"
        except (InvalidRequest, ValidationError) as exc:
            reject(service, handler, IDENTITY_MISMATCH if isinstance(exc, IdentityMismatch) else "invalid_data")
            log.warning("%s: rejected event data: %s", handler,
                        exc.detail if isinstance(exc, InvalidRequest) else f"{exc.error_count()} validation errors")
            outcome = "rejected"
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: handler failed", handler)
            outcome = "error"
        HANDLER_SECONDS.labels(service, handler).observe(time.perf_counter() - started)
    if outcome != "rejected":
        BUS_MESSAGES.labels(service, handler, outcome).inc()
    return outcome


@dataclass(frozen=True)
class Redelivery:
    """How long a nak'ed message waits before its ``n``-th redelivery: ``base_s * factor**(n-1)``, capped."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 30.0

    def delay(self, delivered: int) -> float:
        return min(self.max_s, self.base_s * self.factor ** max(0, delivered - 1))


class Stuck:
    """One consumer's stuck messages: failed ``after`` deliveries or more (0: never counted), still retried.

    Counted once when a message becomes stuck (``xpumesh_bus_stuck_total``, an error logged with its stream
    sequence) and held in the gauge ``xpumesh_bus_stuck_messages`` until it is handled at last."""

    def __init__(self, service: str, handler: str, after: int, redelivery: Redelivery, limit: int = 100_000) -> None:
        self.service, self.handler, self.after, self.redelivery, self.limit = service, handler, after, redelivery, limit
        self.seqs: set[int] = set()  # stream sequences of the stuck messages (bounded by ``limit``)

    def failed(self, seq: int, delivered: int) -> int:
        """A stuck message failed again; 1 when it is newly stuck, else 0."""
        if seq in self.seqs:
            return 0
        if len(self.seqs) < self.limit:  # beyond the bound only the counter and the log say so
            self.seqs.add(seq)
            BUS_STUCK.labels(self.service, self.handler).inc()
        BUS_STUCK_TOTAL.labels(self.service, self.handler).inc()
        log.error("%s: stream message %d failed %d deliveries; still retried, every %.0f s at most", self.handler,
                  seq, delivered, self.redelivery.max_s)
        return 1

    def handled(self, seq: int, delivered: int | None) -> int:
        """A message was settled for good; 1 when it had been stuck, else 0."""
        if seq not in self.seqs:
            return 0
        self.seqs.discard(seq)
        BUS_STUCK.labels(self.service, self.handler).dec()
        log.warning("%s: stream message %d handled after %d deliveries", self.handler, seq, delivered or 0)
        return 1
