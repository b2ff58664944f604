"""``GET /v1/events``: the mesh's durable events as Server-Sent Events.

Each SSE ``id`` is the event's JetStream stream sequence. A client that reconnects with
``Last-Event-ID: N`` gets everything after N that matches its filters, nothing missed: the
stream is read in order by one ephemeral pull consumer starting at N+1 (a new client starts
at the next event), a ``libs.bus.consumer.PullConsumer`` that is deleted when the client goes.
At most ``gateway.sse_buffer`` frames wait for the client, so a slow client is paused rather
than buffered without bound. Keep-alive comments go out every ``gateway.sse_heartbeat_s`` when
nothing else does; streams end when the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS
from libs.bus.consumer import Batch, PullConsumer, envelope
from libs.events import CloudEvent, EventTypes
from libs.schemas.subscriptions import check_type_pattern
from libs.service import Context
from services.gateway.auth import CurrentPrincipal, tenant_filter
from services.gateway.deps import Ctx
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError
from services.gateway.state import GatewayState
from services.gateway.webhooks.filters import EventFilter

log = logging.getLogger(__name__)
ALL_EVENTS = EventTypes.ANY
router = APIRouter(tags=["events"])
SSE_EXAMPLE = (": connected\n\n"
               "id: 1289\nevent: io.xpumesh.workload.placed\n"
               'data: {"specversion":"1.0","id":"5f0c2b1e-9a7d-4c1e-8b3a-2d6f7e9a0b1c","source":"/scheduler",'
               '"type":"io.xpumesh.workload.placed","subject":"wl_18ea52ab2dac349aa6915d69",'
               '"time":"2025-06-03T08:14:05.120Z","datacontenttype":"application/json",'
               '"data":{"workload_id":"wl_18ea52ab2dac349aa6915d69","name":"llama-finetune","tenant":"acme",'
               '"state":"placed","hardware_type":"gpu","priority":500,"restarts":0,"placements":[{"replica":0,'
               '"attempt":0,"host_id":"hz-a100-03","site":"hangzhou","devices":["hz-a100-03:nvidia:0"],'
               '"shares":[1.0],"state":"placed","exit_code":null}]}}\n\n'
               ": keep-alive\n\n")


def _start(last_event_id: str | None) -> int | None:
    if last_event_id is None or not last_event_id.strip():
        return None
    value = last_event_id.strip()
    if not value.isdigit() or len(value) > 19:
        raise ProblemError(400, "Invalid Last-Event-ID", "Last-Event-ID must be an id this stream sent")
    return int(value) + 1


def frame(seq: int, event: CloudEvent) -> bytes:
    return f"id: {seq}\nevent: {event.type}\ndata: {event.model_dump_json(exclude_none=True)}\n\n".encode()


class SseReader:
    """One client's stream: an ephemeral consumer feeding a bounded queue of frames.

    The consumer's handler waits while the queue is full (``gateway.sse_buffer`` frames), so a
    slow client pauses its consumer instead of growing memory. A frame whose stream sequence
    is not after the last one queued (a redelivery) is not sent twice.
    """

    def __init__(self, ctx: Context[GatewayState], flt: EventFilter, start: int | None) -> None:
        settings = ctx.settings.gateway
        batch = max(1, min(settings.sse_buffer, 256))
        name = "sse_" + secrets.token_hex(8)
        config = ConsumerConfig(
            name=name, ack_policy=AckPolicy.ALL, filter_subject=flt.nats_filter(),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start is not None else DeliverPolicy.NEW,
            opt_start_seq=start, inactive_threshold=30.0, mem_storage=True, num_replicas=1,
            max_ack_pending=batch * 4, ack_wait=60.0)
        self.ctx, self.flt, self.name = ctx, flt, name
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(settings.sse_buffer)
        self.last_seq = (start or 1) - 1
        self.consumer = PullConsumer(ctx.bus, stream=STREAM_EVENTS, durable=name, handle=self._enqueue,
                                     decode=envelope, service="gateway", name="sse", config=config, batch=batch,
                                     dedupe=0, drain_timeout_s=ctx.settings.bus.drain_timeout_s)

    async def _enqueue(self, batch: Batch[CloudEvent]) -> None:
        for d in batch:
            seq = d.msg.metadata.sequence.stream
            if seq > self.last_seq and self.flt.matches(d.item, d.msg.subject):
                await self.frames.put(frame(seq, d.item))
                self.last_seq = seq

    async def next(self, stopped: asyncio.Future[Any], timeout: float) -> bytes | None:
        """The next frame; None when none came within ``timeout`` or the service is stopping."""
        if not self.frames.empty():
            return self.frames.get_nowait()
        getter = asyncio.ensure_future(self.frames.get())
        try:
            await asyncio.wait((getter, stopped), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()  # a frame it was woken for stays in the queue
        return getter.result() if getter.done() and not getter.cancelled() else None

    async def close(self) -> None:
        """Stop reading (a handler waiting on the full queue is cancelled) and delete the consumer."""
        await self.consumer.close()
        with contextlib.suppress(Exception):
            await self.ctx.bus.js.delete_consumer(STREAM_EVENTS, self.name)


async def _stream(ctx: Context[GatewayState], reader: SseReader) -> AsyncIterator[bytes]:
    heartbeat = ctx.settings.gateway.sse_heartbeat_s
    state = ctx.state
    state.sse_clients += 1
    run = asyncio.create_task(reader.consumer.run(), name=f"sse:{reader.name}")
    stopped = asyncio.ensure_future(ctx.stopping.wait())
    try:
        yield b": connected\n\n"
        while not ctx.stopping.is_set():
            item = await reader.next(stopped, heartbeat)
            if item is not None:
                yield item
            elif not ctx.stopping.is_set():
                yield b": keep-alive\n\n"
    finally:
        state.sse_clients -= 1
        stopped.cancel()
        run.cancel()
        with anyio.CancelScope(shield=True):  # a disconnect cancels the response: clean up all the same
            await asyncio.gather(run, return_exceptions=True)
            await reader.close()


@router.get("/v1/events", summary="Live events as Server-Sent Events; resume with Last-Event-ID",
            response_class=StreamingResponse,
            responses={200: {"description": "An endless text/event-stream; each event's id is its stream sequence",
                             "content": {"text/event-stream": {"schema": {"type": "string"},
                                                               "example": SSE_EXAMPLE}}},
                       400: problem("Last-Event-ID is not one this stream sent", "Invalid Last-Event-ID",
                                    "Last-Event-ID must be an id this stream sent"),
                       503: problem("Too many streaming clients on this gateway (see Retry-After)",
                                    "Too many streams", "this gateway serves its maximum of event streams; retry later")})
async def stream_events(
        ctx: Ctx, principal: CurrentPrincipal,
        type: Annotated[list[str] | None, Query(description="Event type patterns (repeatable); default every type.",
                                                examples=[["io.xpumesh.workload.*", "io.xpumesh.device.unhealthy"]])
              ] = None,
        site: Annotated[str | None, Query(description="Only events of this site.", pattern=subjects.TOKEN_PATTERN,
                                          examples=["hangzhou"])] = None,
        last_event_id: Annotated[str | None, Header(description="Resume after this event id.",
                                                    examples=["1288"])] = None,
) -> StreamingResponse:
    try:
        patterns = tuple(sorted({check_type_pattern(p) for p in (type or [ALL_EVENTS])[:32]}))
    except ValueError as exc:
        raise ProblemError(422, "Invalid event type pattern", str(exc)) from None
    start = _start(last_event_id)
    if ctx.state.sse_clients >= ctx.settings.gateway.sse_max_clients:
        raise ProblemError(503, "Too many streams", "this gateway serves its maximum of event streams; retry later",
                           headers={"Retry-After": "5"})
    flt = EventFilter(types=patterns, site=site, tenant=tenant_filter(principal))
    reader = SseReader(ctx, flt, start)
    try:
        await reader.consumer.start()
    except Exception:
        log.exception("event stream consumer not created")
        raise ProblemError(503, "Event stream unavailable", "retry shortly", headers={"Retry-After": "1"}) from None
    return StreamingResponse(_stream(ctx, reader), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
