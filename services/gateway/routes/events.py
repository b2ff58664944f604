"""``GET /v1/events``: the mesh's durable events as Server-Sent Events.

Each SSE ``id`` is the event's JetStream stream sequence. A client that reconnects with
``Last-Event-ID: N`` gets everything after N that matches its filters, nothing missed: the
stream is read in order by one ephemeral pull consumer starting at N+1 (a new client starts
at the next event). The gateway fetches at most ``gateway.sse_buffer`` events ahead of what
the client has taken, so a slow client is paused rather than buffered without bound.
Keep-alive comments go out every ``gateway.sse_heartbeat_s`` when nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.bus.connection import STREAM_EVENTS
from libs.events import CloudEvent, InvalidEnvelope
from libs.metrics import BUS_REJECTED
from libs.schemas.subscriptions import check_type_pattern
from libs.service import Context
from services.gateway.auth import CurrentPrincipal, tenant_filter
from services.gateway.deps import Ctx
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError
from services.gateway.webhooks.filters import EventFilter

log = logging.getLogger(__name__)
ALL_EVENTS = "io.xpumesh.*"
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


async def _consumer(ctx: Context, flt: EventFilter, start: int | None, batch: int) -> Any:
    config = ConsumerConfig(
        name="sse_" + secrets.token_hex(8), ack_policy=AckPolicy.ALL, filter_subject=flt.nats_filter(),
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start is not None else DeliverPolicy.NEW,
        opt_start_seq=start, inactive_threshold=30.0, mem_storage=True, num_replicas=1, max_ack_pending=batch * 4,
        ack_wait=60.0)
    return await ctx.bus.js.pull_subscribe(flt.nats_filter(), durable=None, stream=STREAM_EVENTS, config=config)


async def _stream(ctx: Context, psub: Any, flt: EventFilter, batch: int) -> AsyncIterator[bytes]:
    heartbeat = ctx.settings.gateway.sse_heartbeat_s
    closing: asyncio.Event = ctx.state.setdefault("closing", asyncio.Event())
    ctx.state["sse_clients"] = ctx.state.get("sse_clients", 0) + 1
    try:
        yield b": connected\n\n"
        while not closing.is_set():
            try:
                msgs = await psub.fetch(batch, timeout=heartbeat)
            except TimeoutError:  # nats raises both its own and asyncio's
                yield b": keep-alive\n\n"
                continue
            for m in msgs:
                try:
                    event = CloudEvent.from_bytes(m.data)
                except InvalidEnvelope:
                    BUS_REJECTED.labels("gateway", "sse", "malformed_envelope").inc()
                    continue
                if flt.matches(event, m.subject):
                    yield frame(m.metadata.sequence.stream, event)
            if msgs:
                await msgs[-1].ack()
    finally:
        ctx.state["sse_clients"] = ctx.state.get("sse_clients", 1) - 1
        with contextlib.suppress(Exception):
            info = await psub.consumer_info()
            await psub.unsubscribe()
            await ctx.bus.js.delete_consumer(STREAM_EVENTS, info.name)


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
        site: Annotated[str | None, Query(description="Only events of this site.", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                          examples=["hangzhou"])] = None,
        last_event_id: Annotated[str | None, Header(description="Resume after this event id.",
                                                    examples=["1288"])] = None,
) -> StreamingResponse:
    try:
        patterns = tuple(sorted({check_type_pattern(p) for p in (type or [ALL_EVENTS])[:32]}))
    except ValueError as exc:
        raise ProblemError(422, "Invalid event type pattern", str(exc)) from None
    start = _start(last_event_id)
    settings = ctx.settings.gateway
    if ctx.state.get("sse_clients", 0) >= settings.sse_max_clients:
        raise ProblemError(503, "Too many streams", "this gateway serves its maximum of event streams; retry later",
                           headers={"Retry-After": "5"})
    flt = EventFilter(types=patterns, site=site, tenant=tenant_filter(principal))
    batch = max(1, min(settings.sse_buffer, 256))
    try:
        psub = await _consumer(ctx, flt, start, batch)
    except Exception:
        log.exception("event stream consumer not created")
        raise ProblemError(503, "Event stream unavailable", "retry shortly", headers={"Retry-After": "1"}) from None
    return StreamingResponse(_stream(ctx, psub, flt, batch), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
