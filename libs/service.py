"""ServiceApp: how a service declares its handlers and how it runs.

Modelled on nats.py's ``micro``: small ``async def handle(req, ctx)`` handlers registered
declaratively; one wrapper owns validation, errors, metrics and trace context. Each service
declares one typed state object, built at start and handed to every handler as ``ctx.state``.

    app: ServiceApp[InventoryState] = ServiceApp("inventory", state=load_state)
    Ctx = Context[InventoryState]

    @app.endpoint("hosts.get")
    async def get_host(req: HostRef, ctx: Ctx) -> HostDetail: ...

    @app.consumer(STREAM_HOSTS, durable="inventory-capability", subject=HOST_CAPABILITY_ALL)
    async def on_capability(event: CloudEvent, ctx: Ctx) -> None: ...

    @app.every(lambda s: s.inventory.catalog_refresh_s)
    async def refresh_catalog(ctx: Ctx) -> None: ...

Every JetStream consumer runs through ``libs.bus.consumer.PullConsumer``, every periodic loop
through ``libs.periodic.Every``, every HTTP server through ``libs.httpserve.HttpServer``.
Every service also answers ``xpumesh.rpc.<name>.health``, heartbeats to the registry, and
drains with a timeout on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, get_type_hints

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typing_extensions import TypeVar

from libs import __version__
from libs.aio import first_of
from libs.bus import subjects
from libs.bus.connection import ERROR_HEADER, Bus
from libs.bus.consumer import Batch, Decoder, PullConsumer, SeenIds, envelope
from libs.bus.errors import BusError, InvalidRequest, Unavailable
from libs.bus.outcomes import Redelivery, reject, run_handler
from libs.config import Settings
from libs.db.fencing import Fenced, FenceToken, claim_fence, connection_lost, fenced_sessionmaker, read_fence
from libs.election import KvLease
from libs.events import CloudEvent, EventTypes, InvalidEnvelope
from libs.exposure import check_exposure
from libs.httpserve import HttpServer
from libs.metrics import BUS_MESSAGES, HANDLER_SECONDS, SERVICE_UP, exposition
from libs.periodic import Every, Interval
from libs.schemas.registry import Heartbeat, MemberKind, ServiceHealth
from libs.tracing import extract_context, setup_tracing, shutdown_tracing, tracer

__all__ = ["LOSSY_MAX_DELIVER", "Context", "SeenIds", "ServiceApp", "consumer_config", "serve"]
log = logging.getLogger(__name__)
S = TypeVar("S", default=None)  # a service without state has none
# Deliveries of a telemetry message before JetStream drops it. Telemetry alone may be dropped: a sample is
# superseded by the next interval's, a health bit is a level that the next sample states again (the
# inventory compares with PostgreSQL, not with the previous message), and samples past their age are
# dropped by the writer anyway; retrying a PostgreSQL outage's worth of them without end would hold the
# consumer's ack backlog full of stale samples while fresh ones wait.
LOSSY_MAX_DELIVER = 5


@dataclass
class Context(Generic[S]):
    """What handlers get besides their message: the process's shared resources and the service's state."""

    service: str
    instance: str
    settings: Settings
    bus: Bus
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    started_at: float = field(default_factory=time.time)
    # set when the service begins to stop: long-lived work (event streams) ends on it
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # the framework's own bookkeeping: requests being answered concurrently, consumers and servers to stop
    inflight: set[asyncio.Task[None]] = field(default_factory=set)
    consumers: list[PullConsumer[Any]] = field(default_factory=list)
    servers: list[HttpServer] = field(default_factory=list)
    leader_token: FenceToken | None = None  # a singleton's fencing token while this instance leads
    deposed: asyncio.Event = field(default_factory=asyncio.Event)  # set when a leader learns it leads no more
    _state: S | None = None

    @property
    def db(self) -> async_sessionmaker[AsyncSession]:
        if self.sessions is None:
            raise RuntimeError(f"{self.service} has no database")
        return self.sessions

    @property
    def state(self) -> S:
        """The service's own state object, built by its state loader before any handler runs."""
        if self._state is None:
            raise RuntimeError(f"{self.service}'s state is not loaded yet")
        return self._state


EndpointFn = Callable[[Any, Any], Awaitable[Any]]
EventFn = Callable[[Any, Any], Awaitable[None]]
StateLoader = Callable[[Any], Awaitable[Any]]


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
    decode: Decoder[Any]
    in_flight: int
    linger: Interval


@dataclass
class _Subscription:
    subject: str
    queue: str | None
    fn: EventFn


@dataclass
class _Http:
    factory: Callable[[Any], Any]
    host: Callable[[Settings], str]
    port: Callable[[Settings], int]
    tls: Callable[[Settings], tuple[Path, Path] | None] | None = None


def _hints(fn: Callable[..., Any]) -> tuple[Any, Any]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    return hints[params[0]], hints.get("return", type(None))


class ServiceApp(Generic[S]):
    def __init__(self, name: str, *, state: StateLoader | None = None, uses_db: bool = True,
                 singleton: bool = False) -> None:
        self.name = subjects.check_token(name, "service name")
        self.uses_db = uses_db
        self.singleton = singleton  # one instance acts (libs/election.py); the others stand by
        self.state_loader = state
        self.endpoints: dict[str, _Endpoint] = {}
        self.consumers: list[_Consumer] = []
        self.subscriptions: list[_Subscription] = []
        self.tasks: list[Callable[[Any], Coroutine[Any, Any, None]]] = []
        self.loops: list[Every] = []
        self.http_servers: list[_Http] = []
        self.startup: list[Callable[[Any], Awaitable[None]]] = []
        self.shutdown: list[Callable[[Any], Awaitable[None]]] = []
        self.health_checks: dict[str, Callable[[Any], Awaitable[bool]]] = {}
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

    def consumer(self, stream: str, *, durable: str, subject: str, batch: bool = False, batch_size: int = 256,
                 max_deliver: int = -1, deliver_new: bool = False, decode: Decoder[Any] = envelope,
                 in_flight: int = 1, linger: Interval = 0.0) -> Callable[[EventFn], EventFn]:
        """A JetStream durable pull consumer with explicit ack (see ``libs.bus.consumer``).

        The handler gets one decoded item (a ``CloudEvent`` by default, its subject as ``received_on``), or
        with ``batch=True`` a list of them. ``decode``, ``in_flight`` and ``linger`` (seconds, or a function
        of the settings) tune it for high-rate streams. A failed message comes back after a growing delay
        (``bus.redelivery_base_s`` doubling up to ``bus.redelivery_max_s``) for as long as it fails: events
        that must not be lost are never given up on. Only loss-tolerant streams (telemetry, which the next
        interval supersedes) set ``max_deliver`` so that JetStream drops a message after that many deliveries.
        """
        def deco(fn: EventFn) -> EventFn:
            self.consumers.append(_Consumer(stream, durable, subject, fn, batch, batch_size, max_deliver,
                                            deliver_new, decode, in_flight, linger))
            return fn
        return deco

    def subscribe(self, subject: str, *, queue: str | None = None) -> Callable[[EventFn], EventFn]:
        """A core NATS subscription delivering validated CloudEvents (heartbeats and other lossy traffic), each
        with the subject it arrived on as ``received_on``."""
        def deco(fn: EventFn) -> EventFn:
            self.subscriptions.append(_Subscription(subject, queue, fn))
            return fn
        return deco

    def task(self, fn: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], Coroutine[Any, Any, None]]:
        """A long-running task of its own (cancelled at stop); periodic work belongs in ``every``."""
        self.tasks.append(fn)
        return fn

    def every(self, interval: Interval, *, wake: Callable[[Any], asyncio.Event] | None = None,
              first_run: Literal["now", "after"] = "now") -> Callable[[Callable[[Any], Awaitable[Any]]],
                                                                       Callable[[Any], Awaitable[Any]]]:
        """Periodic work (see ``libs.periodic``): ``interval`` seconds, or a function of the settings."""
        def deco(fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
            self.loops.append(Every(fn.__name__, fn, interval, wake, first_run))
            return fn
        return deco

    def http(self, factory: Callable[[Any], Any], *, host: Callable[[Settings], str],
             port: Callable[[Settings], int], tls: Callable[[Settings], tuple[Path, Path] | None] | None = None) -> None:
        """Serve ``factory(ctx)`` (an ASGI app) with uvicorn while the service runs; over HTTPS when ``tls``
        gives a certificate and key."""
        self.http_servers.append(_Http(factory, host, port, tls))

    def on_startup(self, fn: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        self.startup.append(fn)
        return fn

    def on_shutdown(self, fn: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        self.shutdown.append(fn)
        return fn

    # --- wrappers ---------------------------------------------------------------------
    async def _handle_request(self, ep: _Endpoint, msg: Msg, ctx: Context[S]) -> None:
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
                    reject(self.name, ep.name, "invalid_request")
            except Exception as exc:
                unavailable = await _unavailable(exc, ctx)
                if unavailable is not None:  # the caller retries, and its retry reaches the new leader
                    log.warning("%s.%s refused: %s", self.name, ep.name, unavailable.detail)
                    body, failed, outcome = unavailable.body().model_dump_json().encode(), True, \
                        "fenced" if unavailable.title == LEADER_CHANGED else unavailable.code
                else:
                    log.exception("%s.%s failed", self.name, ep.name)
                    span.set_status(trace.StatusCode.ERROR)
                    body, failed, outcome = BusError().body().model_dump_json().encode(), True, "internal"
            BUS_MESSAGES.labels(self.name, ep.name, outcome).inc()
            HANDLER_SECONDS.labels(self.name, ep.name).observe(time.perf_counter() - started)
            if msg.reply:
                try:
                    await ctx.bus.nc.publish(msg.reply, body, headers={ERROR_HEADER: "1"} if failed else None)
                except NatsError as exc:  # the connection closes (a stop): the caller's request times out
                    log.debug("%s.%s: reply not sent: %s", self.name, ep.name, type(exc).__name__)

    async def _subscription_loop(self, sub: _Subscription, psub: Any, ctx: Context[S]) -> None:
        handler = sub.fn.__name__
        async for msg in psub.messages:
            try:
                event = CloudEvent.from_bytes(msg.data, received_on=msg.subject)
            except InvalidEnvelope as exc:
                reject(self.name, handler, "malformed_envelope")
                log.warning("%s: dropped malformed event: %s", handler, exc.reason)
                continue
            await run_handler(self.name, handler, partial(sub.fn, event, ctx), msg.headers, self._tracer)

    def pull_consumer(self, c: _Consumer, ctx: Context[S]) -> PullConsumer[Any]:
        """The running consumer of a declaration: its handler adapted to the consumer's batches."""
        fn = c.fn

        async def handle(batch: Batch[Any]) -> None:
            await (fn(batch.items, ctx) if c.batch else fn(batch.items[0], ctx))

        linger = c.linger(ctx.settings) if callable(c.linger) else c.linger
        b = ctx.settings.bus
        return PullConsumer(ctx.bus, stream=c.stream, durable=c.durable, handle=handle, decode=c.decode,
                            service=self.name, name=fn.__name__, each=not c.batch, batch=c.batch_size,
                            in_flight=c.in_flight, linger_s=float(linger), drain_timeout_s=b.drain_timeout_s,
                            redelivery=Redelivery(b.redelivery_base_s, 2.0, b.redelivery_max_s),
                            stuck_after=b.stuck_deliveries,
                            config=consumer_config(c.durable, c.subject, batch_size=c.batch_size,
                                                   max_deliver=c.max_deliver, deliver_new=c.deliver_new))

    # --- lifecycle --------------------------------------------------------------------
    async def _heartbeat(self, ctx: Context[S]) -> None:
        """One heartbeat to the registry (a lost one is harmless: the next follows within the interval)."""
        meta = {"pid": str(os.getpid())}
        if self.singleton:  # GET /v1/services shows which instance leads
            meta["role"] = self.role(ctx)
        hb = Heartbeat(kind=MemberKind.SERVICE, id=f"{self.name}.{ctx.instance}", name=self.name, version=__version__,
                       interval_s=ctx.settings.heartbeat_interval_s, site=None, meta=meta)
        event = CloudEvent.new(EventTypes.SERVICE_HEARTBEAT, f"/service/{self.name}/{ctx.instance}", hb, subject=hb.id)
        try:
            await ctx.bus.publish(subjects.service_heartbeat_subject(self.name, ctx.instance), event.to_bytes())
        except Exception as exc:
            log.debug("heartbeat not sent: %s", type(exc).__name__)

    @staticmethod
    def role(ctx: Context[S]) -> Literal["leader", "standby"]:
        """A singleton instance's role: it leads from its fence claim until it learns it was deposed."""
        return "leader" if ctx.leader_token is not None and not ctx.deposed.is_set() else "standby"

    async def health(self, ctx: Context[S]) -> ServiceHealth:
        checks = {"nats": ctx.bus.connected}
        for name, check in self.health_checks.items():
            try:
                checks[name] = await asyncio.wait_for(check(ctx), timeout=2.0)
            except Exception:
                checks[name] = False
        role = self.role(ctx) if self.singleton else None
        return ServiceHealth(service=self.name, instance=ctx.instance, version=__version__,
                             status="ok" if all(checks.values()) else "degraded", checks=checks,
                             uptime_s=round(time.time() - ctx.started_at, 1), role=role)

    def _request_callback(self, ep: _Endpoint, ctx: Context[S]) -> Callable[[Msg], Awaitable[None]]:
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

    def _health_cb(self, ctx: Context[S]) -> Callable[[Msg], Awaitable[None]]:
        async def health_cb(msg: Msg) -> None:
            if msg.reply:
                await ctx.bus.nc.publish(msg.reply, (await self.health(ctx)).model_dump_json().encode())
        return health_cb

    async def start_control(self, ctx: Context[S]) -> list[asyncio.Task[Any]]:
        """What every instance runs, a standby too: the control broadcasts and the heartbeat."""
        async def metrics_cb(msg: Msg) -> None:
            if msg.reply:
                await ctx.bus.nc.publish(msg.reply, exposition())

        await ctx.bus.nc.subscribe(subjects.CTL_HEALTH, cb=self._health_cb(ctx))
        await ctx.bus.nc.subscribe(subjects.CTL_METRICS, cb=metrics_cb)
        heartbeat = Every("heartbeat", self._heartbeat, lambda s: s.heartbeat_interval_s)
        return [asyncio.create_task(heartbeat.run(self.name, ctx), name="every:heartbeat")]

    async def start(self, ctx: Context[S]) -> list[asyncio.Task[Any]]:
        """Load the state, start every handler; return the running tasks (the caller cancels them at shutdown).
        A singleton's instance calls this once it leads; ``xpumesh.rpc.<name>.health`` answers from then on."""
        if self.state_loader is not None:
            loading = time.perf_counter()
            ctx._state = await self.state_loader(ctx)
            log.info("%s %s loaded its state in %.3f s", self.name, ctx.instance, time.perf_counter() - loading)
        nc = ctx.bus.nc
        for ep in self.endpoints.values():
            cb = self._request_callback(ep, ctx)
            await nc.subscribe(subjects.rpc_subject(self.name, ep.name), queue=self.name, cb=cb,
                               pending_msgs_limit=ctx.settings.bus.max_pending_messages)
        await nc.subscribe(subjects.rpc_subject(self.name, "health"), queue=self.name, cb=self._health_cb(ctx))
        for hook in self.startup:
            await hook(ctx)
        tasks = []
        for s in self.subscriptions:
            psub = await nc.subscribe(s.subject, queue=s.queue or "", pending_msgs_limit=ctx.settings.bus.max_pending_messages)
            tasks.append(asyncio.create_task(self._subscription_loop(s, psub, ctx), name=f"sub:{s.subject}"))
        for c in self.consumers:
            consumer = self.pull_consumer(c, ctx)
            await consumer.start()
            ctx.consumers.append(consumer)
            tasks.append(asyncio.create_task(consumer.run(), name=f"consumer:{c.durable}"))
        for h in self.http_servers:
            server = HttpServer(h.factory(ctx), host=h.host(ctx.settings), port=h.port(ctx.settings),
                                drain_timeout_s=ctx.settings.bus.drain_timeout_s,
                                tls=h.tls(ctx.settings) if h.tls else None)
            ctx.servers.append(server)
            tasks.append(asyncio.create_task(server.run(), name=f"http:{self.name}"))
        tasks += [asyncio.create_task(loop.run(self.name, ctx), name=f"every:{loop.name}") for loop in self.loops]
        tasks += [asyncio.create_task(t(ctx), name=f"task:{t.__name__}") for t in self.tasks]
        SERVICE_UP.labels(self.name, ctx.instance).set(1)
        return tasks

    async def stop(self, ctx: Context[S], tasks: list[asyncio.Task[Any]]) -> None:
        """Drain in order: long-lived streams told to end, requests in flight, HTTP servers, consumers' handler
        calls in flight, then the shutdown hooks; then cancel what is left."""
        drain = ctx.settings.bus.drain_timeout_s
        ctx.stopping.set()
        if ctx.inflight:
            await asyncio.wait(set(ctx.inflight), timeout=drain)
        for server in ctx.servers:
            await server.stop(drain)
        # Messages a consumer fetched but no loop will take now would keep the bus's drain waiting for its
        # whole timeout; unacked, JetStream redelivers them to the next instance.
        await asyncio.gather(*(c.stop() for c in ctx.consumers), return_exceptions=True)
        for hook in reversed(self.shutdown):
            try:
                await asyncio.wait_for(hook(ctx), timeout=drain)
            except Exception:
                log.exception("shutdown hook failed")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        SERVICE_UP.labels(self.name, ctx.instance).set(0)


def consumer_config(durable: str, subject: str, *, batch_size: int, max_deliver: int = -1,
                    deliver_new: bool = False) -> ConsumerConfig:
    """The durable pull consumer every service declares: explicit ack, redelivery until handled (``max_deliver``
    -1) unless the stream is loss-tolerant, a bounded ack backlog."""
    return ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_deliver=max_deliver, ack_wait=30.0,
                          max_ack_pending=max(batch_size * 4, 1024), filter_subject=subject,
                          deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL)


def default_instance_id(settings: Settings) -> str:
    return settings.instance_id or f"{socket.gethostname().split('.')[0]}-{os.getpid()}".replace(".", "-")[:64]


async def serve(app: ServiceApp[Any], settings: Settings, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run one service until SIGTERM/SIGINT (or ``stop``): connect, check schema, start, drain."""
    from libs.db import make_engine, make_sessionmaker
    from libs.db.migrate import check_at_head

    setup_tracing(app.name, settings.otlp_endpoint)
    instance = subjects.check_token(default_instance_id(settings), "instance id")
    bus = Bus(settings.bus, name=f"{app.name}.{instance}", inbox_prefix=subjects.inbox_prefix("service", app.name))
    if not settings.nats_url:
        raise RuntimeError("XPUMESH_NATS_URL is not set (use `xpumesh up` to start an embedded mesh)")
    check_exposure(settings, [h.host(settings) for h in app.http_servers])
    await bus.connect(settings.nats_url)
    await bus.ensure_streams()
    ctx: Context[Any] = Context(service=app.name, instance=instance, settings=settings, bus=bus)
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
    lost = bus.lost or asyncio.Event()
    deposed = ctx.deposed
    tasks = await app.start_control(ctx)
    election = KvLease(bus, app.name, instance, settings.election, settings.bus.replicas) if app.singleton else None
    if election is not None and not await _lead(app, ctx, election, stop, lost, deposed, tasks, ready):
        return await _close(app, ctx, tasks, election, lost, stop)
    tasks += await app.start(ctx)
    if election is not None:
        await app._heartbeat(ctx)  # the registry learns the new leader now, not one interval later
    # The server has every subscription before we call ourselves ready. nats-py's flush() can put its PING
    # ahead of SUBs still sitting in the pending buffer, so push that buffer out first.
    await bus.nc._flush_pending(force_flush=True)
    await bus.nc.flush()
    log.info("%s %s ready", app.name, instance)
    if ready is not None:
        ready.set()
    await first_of(stop, lost, deposed)
    log.info("%s %s stopping", app.name, instance)
    await _close(app, ctx, tasks, election, lost, stop)
    if deposed.is_set() and not stop.is_set():
        raise RuntimeError(f"{app.name} {instance} lost its lease: it stops and starts again as a standby")


LEADER_CHANGED = "Leader changed"
FENCE_READ_TIMEOUT_S = 2.0
FENCE_READS, FENCE_READ_PAUSE_S = 5, 0.1  # how long a request whose session was terminated looks for a successor


async def _unavailable(exc: Exception, ctx: Context[Any]) -> Unavailable | None:
    """The 503 that a failed request answers when it failed because this instance no longer leads (its
    transaction was fenced, or its database session terminated by the successor's claim) or because its
    database connection was lost: the caller may ask again. None for any other failure (a 500)."""
    deposed = ctx.deposed.is_set() or isinstance(exc, Fenced)
    lost = connection_lost(exc)
    if not deposed and lost and ctx.leader_token is not None and ctx.engine is not None:
        # terminated by a successor, or by a database restart? The fence says, once the successor's claim (which
        # terminates first, then raises the fence) has committed: read it a few times
        for _ in range(FENCE_READS):
            try:
                fence = await asyncio.wait_for(read_fence(ctx.engine, ctx.service), timeout=FENCE_READ_TIMEOUT_S)
            except Exception as read_exc:  # the database is away: a retry may find it back
                log.debug("fence not read: %s", type(read_exc).__name__)
                break
            if deposed := fence > ctx.leader_token:
                break
            await asyncio.sleep(FENCE_READ_PAUSE_S)
    if deposed:
        ctx.deposed.set()
        return Unavailable(f"{ctx.service} {ctx.instance} no longer leads; retry", title=LEADER_CHANGED)
    if lost:
        return Unavailable(f"{ctx.service} {ctx.instance} lost its database connection; retry",
                           title="Database connection lost")
    return None


async def _lead(app: ServiceApp[Any], ctx: Context[Any], election: KvLease, stop: asyncio.Event,
                lost: asyncio.Event, deposed: asyncio.Event, tasks: list[asyncio.Task[Any]],
                ready: asyncio.Event | None) -> bool:
    """Stand by until this instance leads (False if stopped, or its connection lost, first); then fence
    its database sessions with its token and keep the lease in a task that sets ``deposed`` when lost.
    A standby is ready (``ready`` set) once it has found the lease held by another instance."""
    either = asyncio.Event()

    async def relay() -> None:
        await first_of(stop, lost)
        either.set()
    relaying = asyncio.create_task(relay())
    try:
        token = await election.campaign(either, standing_by=ready)
    finally:
        relaying.cancel()
    if token is None:
        return False
    if ctx.engine is not None:
        before = await claim_fence(ctx.engine, app.name, token, wait_s=ctx.settings.election.claim_wait_s)
        if before > token:  # won a lease that had already expired again, or a stale bucket: stand by anew
            await election.resign()
            raise RuntimeError(f"{app.name} {ctx.instance}: the fence holds {tuple(before)}, above this lease's "
                               f"{tuple(token)}; it starts again as a standby")
        log.info("%s %s claimed the fence: token %s (before: %s)", app.name, ctx.instance, tuple(token), tuple(before))
        ctx.sessions = fenced_sessionmaker(ctx.engine, app.name, app.name, token, on_fenced=deposed.set)
    ctx.leader_token = token

    async def hold() -> None:
        await election.hold(stop)
        if not stop.is_set():
            deposed.set()
    tasks.append(asyncio.create_task(hold(), name="lease"))
    return True


async def _close(app: ServiceApp[Any], ctx: Context[Any], tasks: list[asyncio.Task[Any]], election: KvLease | None,
                 lost: asyncio.Event, stop: asyncio.Event) -> None:
    await app.stop(ctx, tasks)
    if election is not None and ctx.leader_token is not None:
        await election.resign()  # after the drain: a standby starts once nothing of ours still writes
    await ctx.bus.close()
    if ctx.engine is not None:
        await ctx.engine.dispose()
    shutdown_tracing()
    if lost.is_set() and not stop.is_set():
        raise RuntimeError(ctx.bus.lost_reason())
