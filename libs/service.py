"""ServiceApp: how a service declares its handlers and how it runs.

Modelled on nats.py's ``micro``: small ``async def handle(req, ctx)`` handlers registered
declaratively; one wrapper owns validation, errors, metrics and trace context.

    app = ServiceApp("inventory")

    @app.endpoint("hosts.get")
    async def get_host(req: HostRef, ctx: Context) -> HostDetail: ...

    @app.consumer(STREAM_HOSTS, durable="inventory-capability", subject=HOST_CAPABILITY_ALL)
    async def on_capability(event: CloudEvent, ctx: Context) -> None: ...

Every service also answers ``xpumesh.rpc.<name>.health``, heartbeats to the registry,
and drains with a timeout on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from libs import __version__
from libs.bus import subjects
from libs.bus.connection import ERROR_HEADER, Bus
from libs.bus.errors import BusError, InvalidRequest
from libs.config import Settings
from libs.events import CloudEvent, InvalidEnvelope
from libs.metrics import BUS_MESSAGES, BUS_REJECTED, HANDLER_SECONDS, SERVICE_UP, exposition
from libs.schemas.registry import Heartbeat, MemberKind, ServiceHealth
from libs.tracing import extract_context, setup_tracing, shutdown_tracing, tracer

log = logging.getLogger(__name__)
CTL_METRICS = "xpumesh.ctl.metrics"
CTL_HEALTH = "xpumesh.ctl.health"


@dataclass
class Context:
    """What handlers get besides their message: the process's shared resources."""

    service: str
    instance: str
    settings: Settings
    bus: Bus
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    # the framework's own bookkeeping: requests being answered concurrently, pull subscriptions to drop at stop
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    pull_subscriptions: list[Any] = field(default_factory=list)

    @property
    def db(self) -> async_sessionmaker[AsyncSession]:
        if self.sessions is None:
            raise RuntimeError(f"{self.service} has no database")
        return self.sessions


class SeenIds:
    """A bounded set of recently processed event ids (first line of dedupe; DB checks are the second)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


EndpointFn = Callable[[Any, Context], Awaitable[Any]]
EventFn = Callable[[Any, Context], Awaitable[None]]


@dataclass
class _Endpoint:
    name: str
    fn: EndpointFn
    request: TypeAdapter[Any]
    response: TypeAdapter[Any]
    concurrency: int = 1


@dataclass
class _Consumer:
    stream: str
    durable: str
    subject: str
    fn: EventFn
    batch: bool
    batch_size: int
    max_deliver: int
    deliver_new: bool


@dataclass
class _Subscription:
    subject: str
    queue: str | None
    fn: EventFn


def _hints(fn: Callable[..., Any]) -> tuple[Any, Any]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    return hints[params[0]], hints.get("return", type(None))


class ServiceApp:
    def __init__(self, name: str, *, uses_db: bool = True) -> None:
        self.name = subjects.check_token(name, "service name")
        self.uses_db = uses_db
        self.endpoints: dict[str, _Endpoint] = {}
        self.consumers: list[_Consumer] = []
        self.subscriptions: list[_Subscription] = []
        self.tasks: list[Callable[[Context], Coroutine[Any, Any, None]]] = []
        self.startup: list[Callable[[Context], Awaitable[None]]] = []
        self.shutdown: list[Callable[[Context], Awaitable[None]]] = []
        self.health_checks: dict[str, Callable[[Context], Awaitable[bool]]] = {}
        # Subjects a task consumes with machinery of its own (not app.consumer/subscribe), declared so that
        # whatever walks a service's inputs (the garbage test, docs) still finds them.
        self.own_consumers: list[str] = []
        self._tracer = tracer(f"xpumesh.{name}")

    # --- declaration ------------------------------------------------------------------
    def endpoint(self, name: str, *, concurrency: int = 1) -> Callable[[EndpointFn], EndpointFn]:
        """A request/reply handler on ``xpumesh.rpc.<service>.<name>`` (queue group = the service).

        Requests are handled one at a time unless ``concurrency`` > 1: then up to that many run at once
        (for handlers that mostly wait on the database); further requests wait in the subscription's
        bounded pending queue.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")

        def deco(fn: EndpointFn) -> EndpointFn:
            req, resp = _hints(fn)
            self.endpoints[name] = _Endpoint(name, fn, TypeAdapter(req), TypeAdapter(resp), concurrency)
            return fn
        return deco

    def consumer(self, stream: str, *, durable: str, subject: str, batch: bool = False,
                 batch_size: int = 256, max_deliver: int = 5, deliver_new: bool = False) -> Callable[[EventFn], EventFn]:
        """A JetStream durable pull consumer with explicit ack. ``batch=True`` hands the handler a list."""
        def deco(fn: EventFn) -> EventFn:
            self.consumers.append(_Consumer(stream, durable, subject, fn, batch, batch_size, max_deliver, deliver_new))
            return fn
        return deco

    def subscribe(self, subject: str, *, queue: str | None = None) -> Callable[[EventFn], EventFn]:
        """A core NATS subscription delivering validated CloudEvents (heartbeats and other lossy traffic)."""
        def deco(fn: EventFn) -> EventFn:
            self.subscriptions.append(_Subscription(subject, queue, fn))
            return fn
        return deco

    def task(self, fn: Callable[[Context], Coroutine[Any, Any, None]]) -> Callable[[Context], Coroutine[Any, Any, None]]:
        self.tasks.append(fn)
        return fn

    def consumes(self, subject: str) -> None:
        """Declare a subject a task consumes by itself (see ``own_consumers``)."""
        self.own_consumers.append(subject)

    def on_startup(self, fn: Callable[[Context], Awaitable[None]]) -> Callable[[Context], Awaitable[None]]:
        self.startup.append(fn)
        return fn

    def on_shutdown(self, fn: Callable[[Context], Awaitable[None]]) -> Callable[[Context], Awaitable[None]]:
        self.shutdown.append(fn)
        return fn

    # --- wrappers ---------------------------------------------------------------------
    def _reject(self, handler: str, reason: str) -> None:
        BUS_REJECTED.labels(self.name, handler, reason).inc()
        BUS_MESSAGES.labels(self.name, handler, "rejected").inc()

    async def _handle_request(self, ep: _Endpoint, msg: Msg, ctx: Context) -> None:
        headers = dict(msg.headers or {})
        started = time.perf_counter()
        with self._tracer.start_as_current_span(f"rpc {self.name}.{ep.name}", context=extract_context(headers),
                                                kind=trace.SpanKind.SERVER) as span:
            try:
                try:
                    req = ep.request.validate_json(msg.data or b"{}")
                except ValidationError as exc:
                    errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]
                    raise InvalidRequest("request body does not match the endpoint's schema", errors=errors) from None
                result = await ep.fn(req, ctx)
                body, failed, outcome = ep.response.dump_json(result), False, "ok"
            except BusError as exc:
                body, failed, outcome = exc.body().model_dump_json().encode(), True, exc.code
                if isinstance(exc, InvalidRequest):
                    self._reject(ep.name, "invalid_request")
            except Exception:
                log.exception("%s.%s failed", self.name, ep.name)
                span.set_status(trace.StatusCode.ERROR)
                body, failed, outcome = BusError().body().model_dump_json().encode(), True, "internal"
            BUS_MESSAGES.labels(self.name, ep.name, outcome).inc()
            HANDLER_SECONDS.labels(self.name, ep.name).observe(time.perf_counter() - started)
            if msg.reply:
                await ctx.bus.nc.publish(msg.reply, body, headers={ERROR_HEADER: "1"} if failed else None)

    def parse_event(self, handler: str, data: bytes) -> CloudEvent | None:
        """The envelope, or None after counting and logging a malformed one (the caller terminates it)."""
        try:
            return CloudEvent.from_bytes(data)
        except InvalidEnvelope as exc:
            self._reject(handler, "malformed_envelope")
            log.warning("%s: dropped malformed event: %s", handler, exc.reason)
            return None

    async def _run_event(self, handler: str, fn: EventFn, arg: Any, ctx: Context, headers: dict[str, str]) -> str:
        with self._tracer.start_as_current_span(f"event {self.name}.{handler}", context=extract_context(headers),
                                                kind=trace.SpanKind.CONSUMER):
            started = time.perf_counter()
            try:
                await fn(arg, ctx)
                outcome = "ok"
            except (InvalidRequest, ValidationError) as exc:
                self._reject(handler, "invalid_data")
                log.warning("%s: rejected event data: %s", handler,
                            exc.detail if isinstance(exc, InvalidRequest) else f"{exc.error_count()} validation errors")
                outcome = "rejected"
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: handler failed", handler)
                outcome = "error"
            HANDLER_SECONDS.labels(self.name, handler).observe(time.perf_counter() - started)
            if outcome != "rejected":
                BUS_MESSAGES.labels(self.name, handler, outcome).inc()
            return outcome

    async def _subscription_loop(self, sub: _Subscription, psub: Any, ctx: Context) -> None:
        handler = sub.fn.__name__
        async for msg in psub.messages:
            event = self.parse_event(handler, msg.data)
            if event is not None:
                await self._run_event(handler, sub.fn, event, ctx, dict(msg.headers or {}))

    async def _pull_subscribe(self, c: _Consumer, ctx: Context) -> Any:
        config = consumer_config(c.durable, c.subject, batch_size=c.batch_size, max_deliver=c.max_deliver,
                                 deliver_new=c.deliver_new)
        return await ctx.bus.js.pull_subscribe(c.subject, durable=c.durable, stream=c.stream, config=config)

    async def _consumer_loop(self, c: _Consumer, psub: Any, ctx: Context) -> None:
        handler = c.fn.__name__
        seen = SeenIds()
        while True:
            try:
                msgs = await psub.fetch(c.batch_size, timeout=1.0)
            except TimeoutError:  # nats' own TimeoutError and asyncio's: an idle consumer, fetch again
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection trouble: back off, the consumer is durable
                log.warning("%s: fetch failed (%s); retrying", handler, type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            good: list[tuple[Msg, CloudEvent]] = []
            for m in msgs:
                event = self.parse_event(handler, m.data)
                if event is None:
                    await m.term()
                elif seen.seen(event.id) and (m.metadata.num_delivered or 1) == 1:
                    BUS_MESSAGES.labels(self.name, handler, "duplicate").inc()
                    await m.ack()
                else:
                    good.append((m, event))
            if not good:
                continue
            if c.batch:
                outcome = await self._run_event(handler, c.fn, [e for _, e in good], ctx, dict(good[0][0].headers or {}))
                for m, _ in good:
                    await (m.nak(delay=1.0) if outcome == "error" else m.ack())
            else:
                for m, e in good:
                    outcome = await self._run_event(handler, c.fn, e, ctx, dict(m.headers or {}))
                    await (m.nak(delay=1.0) if outcome == "error" else m.ack())

    # --- lifecycle --------------------------------------------------------------------
    async def _heartbeat_loop(self, ctx: Context) -> None:
        subject = subjects.service_heartbeat_subject(self.name, ctx.instance)
        while True:
            hb = Heartbeat(kind=MemberKind.SERVICE, id=f"{self.name}.{ctx.instance}", name=self.name, version=__version__,
                           interval_s=ctx.settings.heartbeat_interval_s, site=None, meta={"pid": str(os.getpid())})
            event = CloudEvent.new("io.xpumesh.service.heartbeat", f"/service/{self.name}/{ctx.instance}", hb,
                                   subject=hb.id)
            try:
                await ctx.bus.publish(subject, event.to_bytes())
            except Exception as exc:
                log.debug("heartbeat not sent: %s", type(exc).__name__)
            await asyncio.sleep(ctx.settings.heartbeat_interval_s)

    async def health(self, ctx: Context) -> ServiceHealth:
        checks = {"nats": ctx.bus.connected}
        for name, check in self.health_checks.items():
            try:
                checks[name] = await asyncio.wait_for(check(ctx), timeout=2.0)
            except Exception:
                checks[name] = False
        return ServiceHealth(service=self.name, instance=ctx.instance, version=__version__,
                             status="ok" if all(checks.values()) else "degraded", checks=checks,
                             uptime_s=round(time.time() - ctx.started_at, 1))

    def _request_callback(self, ep: _Endpoint, ctx: Context) -> Callable[[Msg], Awaitable[None]]:
        if ep.concurrency == 1:
            async def serial(msg: Msg) -> None:
                await self._handle_request(ep, msg, ctx)
            return serial
        inflight = ctx.inflight
        slots = asyncio.Semaphore(ep.concurrency)

        async def concurrent(msg: Msg) -> None:
            await slots.acquire()  # the subscription's callback waits: its bounded pending queue is the buffer

            async def run() -> None:
                try:
                    await self._handle_request(ep, msg, ctx)
                finally:
                    slots.release()

            task = asyncio.create_task(run())
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        return concurrent

    async def start(self, ctx: Context) -> list[asyncio.Task[Any]]:
        """Start every handler; return the running tasks (the caller cancels them at shutdown)."""
        nc = ctx.bus.nc
        for ep in self.endpoints.values():
            cb = self._request_callback(ep, ctx)
            await nc.subscribe(subjects.rpc_subject(self.name, ep.name), queue=self.name, cb=cb,
                               pending_msgs_limit=ctx.settings.bus.max_pending_messages)

        async def health_cb(msg: Msg) -> None:
            if msg.reply:
                await nc.publish(msg.reply, (await self.health(ctx)).model_dump_json().encode())

        async def metrics_cb(msg: Msg) -> None:
            if msg.reply:
                await nc.publish(msg.reply, exposition())

        await nc.subscribe(subjects.rpc_subject(self.name, "health"), queue=self.name, cb=health_cb)
        await nc.subscribe(CTL_HEALTH, cb=health_cb)
        await nc.subscribe(CTL_METRICS, cb=metrics_cb)
        for hook in self.startup:
            await hook(ctx)
        tasks = []
        for s in self.subscriptions:
            psub = await nc.subscribe(s.subject, queue=s.queue or "", pending_msgs_limit=ctx.settings.bus.max_pending_messages)
            tasks.append(asyncio.create_task(self._subscription_loop(s, psub, ctx), name=f"sub:{s.subject}"))
        for c in self.consumers:
            psub = await self._pull_subscribe(c, ctx)
            ctx.pull_subscriptions.append(psub)
            tasks.append(asyncio.create_task(self._consumer_loop(c, psub, ctx), name=f"consumer:{c.durable}"))
        tasks += [asyncio.create_task(t(ctx), name=f"task:{t.__name__}") for t in self.tasks]
        tasks.append(asyncio.create_task(self._heartbeat_loop(ctx), name="heartbeat"))
        SERVICE_UP.labels(self.name, ctx.instance).set(1)
        return tasks

    async def stop(self, ctx: Context, tasks: list[asyncio.Task[Any]]) -> None:
        if ctx.inflight:  # requests being answered finish (bounded) before the hooks tear things down
            await asyncio.wait(set(ctx.inflight), timeout=ctx.settings.bus.drain_timeout_s)
        for hook in reversed(self.shutdown):
            try:
                await asyncio.wait_for(hook(ctx), timeout=ctx.settings.bus.drain_timeout_s)
            except Exception:
                log.exception("shutdown hook failed")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Messages a pull subscription fetched but no loop will take now would keep the bus's drain waiting
        # for its whole timeout; unacked, JetStream redelivers them to the next instance.
        for psub in ctx.pull_subscriptions:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        SERVICE_UP.labels(self.name, ctx.instance).set(0)


def consumer_config(durable: str, subject: str, *, batch_size: int, max_deliver: int = 5,
                    deliver_new: bool = False) -> ConsumerConfig:
    """The durable pull consumer every service declares: explicit ack, bounded redelivery and ack backlog."""
    return ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_deliver=max_deliver, ack_wait=30.0,
                          max_ack_pending=max(batch_size * 4, 1024), filter_subject=subject,
                          deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL)


def default_instance_id(settings: Settings) -> str:
    return settings.instance_id or f"{socket.gethostname().split('.')[0]}-{os.getpid()}".replace(".", "-")[:64]


async def serve(app: ServiceApp, settings: Settings, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run one service until SIGTERM/SIGINT (or ``stop``): connect, check schema, start, drain."""
    from libs.db import make_engine, make_sessionmaker
    from libs.db.migrate import check_at_head

    setup_tracing(app.name, settings.otlp_endpoint)
    instance = subjects.check_token(default_instance_id(settings), "instance id")
    bus = Bus(settings.bus, name=f"{app.name}.{instance}")
    if not settings.nats_url:
        raise RuntimeError("XPUMESH_NATS_URL is not set (use `xpumesh up` to start an embedded mesh)")
    await bus.connect(settings.nats_url)
    await bus.ensure_streams()
    ctx = Context(service=app.name, instance=instance, settings=settings, bus=bus)
    if app.uses_db:
        ctx.engine = make_engine(settings.database_dsn(), settings.db, application_name=f"xpumesh-{app.name}")
        await check_at_head(ctx.engine, app.name)
        ctx.sessions = make_sessionmaker(ctx.engine)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    tasks = await app.start(ctx)
    # The server has every subscription before we call ourselves ready. nats-py's flush() can put its PING
    # ahead of SUBs still sitting in the pending buffer, so push that buffer out first.
    await bus.nc._flush_pending(force_flush=True)
    await bus.nc.flush()
    log.info("%s %s ready", app.name, instance)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("%s %s stopping", app.name, instance)
    await app.stop(ctx, tasks)
    await bus.close()
    if ctx.engine is not None:
        await ctx.engine.dispose()
    shutdown_tracing()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
