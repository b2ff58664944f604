"""The NATS connection every process shares: publish, request, JetStream streams."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError
from pydantic import BaseModel, TypeAdapter

from libs.bus import subjects
from libs.bus.errors import BusTimeout, ErrorBody, Unavailable, error_from_body
from libs.config import BusSettings
from libs.events import CloudEvent
from libs.tracing import inject_headers

log = logging.getLogger(__name__)
T = TypeVar("T")

ERROR_HEADER = "Xpumesh-Error"
MSG_ID_HEADER = "Nats-Msg-Id"

STREAM_EVENTS = "XPUMESH_EVENTS"
STREAM_HOSTS = "XPUMESH_HOSTS"
STREAM_TELEMETRY = "XPUMESH_TELEMETRY"
STREAM_COMMANDS = "XPUMESH_COMMANDS"


def stream_configs(settings: BusSettings) -> list[StreamConfig]:
    """The JetStream streams the mesh needs; created idempotently at start."""
    dup = float(settings.duplicate_window_s)
    return [cfg.evolve(num_replicas=settings.replicas) for cfg in [
        StreamConfig(name=STREAM_EVENTS, subjects=[subjects.EVENTS_ALL], storage=StorageType.FILE,
                     max_age=float(settings.events_max_age_s), duplicate_window=dup,
                     description="Durable mesh events (CloudEvents): workloads, hosts, devices, alerts."),
        StreamConfig(name=STREAM_HOSTS, subjects=[subjects.HOST_CAPABILITY_ALL, subjects.HOST_STATE_ALL],
                     storage=StorageType.FILE, max_age=float(settings.hosts_max_age_s), duplicate_window=dup,
                     max_msgs_per_subject=16, description="Agents' capability and actual-state reports."),
        StreamConfig(name=STREAM_TELEMETRY, subjects=[subjects.HOST_TELEMETRY_ALL], storage=StorageType.FILE,
                     max_age=float(settings.telemetry_max_age_s), duplicate_window=min(dup, 30.0),
                     max_bytes=2 * 1024**3, description="High-volume telemetry, one message per host per interval."),
        StreamConfig(name=STREAM_COMMANDS, subjects=[subjects.AGENT_COMMAND_ALL], storage=StorageType.FILE,
                     max_age=float(settings.hosts_max_age_s), duplicate_window=dup,
                     description="Launch/stop commands to agents (the scheduler reconciles; commands may be lost)."),
    ]]


def connect_security(settings: BusSettings, servers: list[str]) -> dict[str, Any]:
    """The credentials and TLS arguments of ``nats.connect`` for these settings.

    TLS is used when a URL says ``tls://`` or a CA file is set; the server's certificate is always
    verified (against ``tls_ca_file``, else the system's CAs)."""
    out: dict[str, Any] = {}
    if settings.creds_file is not None:
        if not settings.creds_file.is_file():
            raise RuntimeError(f"NATS credentials file {settings.creds_file} does not exist (XPUMESH_BUS__CREDS_FILE)")
        out["user_credentials"] = str(settings.creds_file)
    if settings.tls_ca_file is not None or any(s.startswith("tls://") for s in servers):
        from libs.tls import client_context

        out["tls"] = client_context(settings.tls_ca_file)
    return out


class Bus:
    """One NATS connection with JetStream, shared by everything in a process."""

    def __init__(self, settings: BusSettings, *, name: str, inbox_prefix: str | None = None) -> None:
        """``inbox_prefix`` (``subjects.inbox_prefix``) keeps the replies this connection awaits under
        a prefix only it may subscribe to; None keeps nats-py's shared ``_INBOX`` (tests, tools)."""
        self.settings = settings
        self.name = name
        self.inbox_prefix = inbox_prefix or subjects.INBOX_ROOT
        self.nc: NATS = NATS()
        self._js: JetStreamContext | None = None
        self._closing = False
        self.lost: asyncio.Event | None = None  # set when the connection closed for good, not by us
        self.last_error: str | None = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected")
        return self._js

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def connect(self, url: str) -> None:
        lost = self.lost = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            self.last_error = str(exc) or type(exc).__name__
            log.warning("nats error on %s: %s", self.name, type(exc).__name__)

        async def on_closed() -> None:
            if not self._closing:  # nats-py gave up: e.g. the server refuses our credentials now
                if self.nc.last_error is not None:
                    self.last_error = str(self.nc.last_error) or type(self.nc.last_error).__name__
                log.error("nats connection of %s closed for good (last error: %s)", self.name, self.last_error)
                lost.set()

        async def on_disconnect() -> None:
            if self._closing:  # our own close(): not news
                log.debug("nats connection closed")
            else:
                log.warning("nats disconnected; reconnecting")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        servers = [u.strip() for u in url.split(",") if u.strip()]
        self.nc = await nats.connect(
            servers=servers,
            name=self.name,
            connect_timeout=self.settings.connect_timeout_s,
            max_reconnect_attempts=self.settings.max_reconnect_attempts,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            closed_cb=on_closed,
            pending_size=64 * 1024 * 1024,
            inbox_prefix=self.inbox_prefix,
            **connect_security(self.settings, servers),
        )
        self._js = self.nc.jetstream(timeout=self.settings.connect_timeout_s)

    async def ensure_streams(self) -> None:
        """Create or update the mesh's streams; safe to run from every process at once."""
        for cfg in stream_configs(self.settings):
            try:
                await self.js.add_stream(cfg)
            except BadRequestError:
                await self.js.update_stream(cfg)

    def lost_reason(self) -> str:
        """Why the connection is gone, for the one line a process prints before it exits."""
        err = (self.last_error or "").lower()
        if "authorization" in err or "authentication" in err or "expired" in err:
            return "the NATS server refuses this process's credentials (revoked or expired?)"
        return f"the NATS connection closed ({self.last_error or 'no error reported'})"

    async def wait_for_streams(self, timeout_s: float = 60.0) -> None:
        """Wait until the mesh's streams exist (for clients that may not create them: the simulator)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for cfg in stream_configs(self.settings):
            while True:
                try:
                    await self.js.stream_info(cfg.name or "")
                    break
                except Exception:  # not yet created (or JetStream not yet answering)
                    if loop.time() > deadline:
                        raise Unavailable(f"stream {cfg.name} was not created within {timeout_s:.0f}s") from None
                    await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        self._closing = True
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await self.nc.drain()
            return
        except Exception:  # TimeoutError included: drain fails or stalls when the server is gone
            pass
        try:  # a connection stuck reconnecting to a vanished server must not hold up shutdown
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await self.nc.close()
        except Exception:
            log.warning("bus: connection did not close cleanly; abandoning it")

    # --- publishing -----------------------------------------------------------------
    async def publish_event(self, event: CloudEvent, *, site: str | None = None, subject: str | None = None) -> int:
        """Publish a durable event to JetStream; the event id is the Nats-Msg-Id. Returns the stream sequence."""
        headers = inject_headers({MSG_ID_HEADER: event.id})
        ack = await self.js.publish(subject or subjects.event_subject(event.type, site), event.to_bytes(), headers=headers)
        return ack.seq

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None) -> None:
        """Fire-and-forget publish (core NATS; JetStream still captures stream subjects)."""
        headers = inject_headers({MSG_ID_HEADER: msg_id} if msg_id else None)
        await self.nc.publish(subject, payload, headers=headers)

    # --- request/reply --------------------------------------------------------------
    async def request(self, subject: str, payload: BaseModel | dict[str, Any] | None, response: type[T],
                      *, timeout: float | None = None) -> T:
        """Call a service endpoint; raise the typed BusError the handler raised, BusTimeout, or Unavailable."""
        if isinstance(payload, BaseModel):
            body = payload.model_dump_json().encode()
        else:
            body = json.dumps(payload or {}).encode()
        try:
            msg = await self.nc.request(subject, body, timeout=timeout or self.settings.request_timeout_s,
                                        headers=inject_headers())
        except NoRespondersError:
            raise Unavailable(f"no instance answers {subject}") from None
        except NatsTimeout:
            raise BusTimeout(f"{subject} did not answer in time") from None
        return decode_reply(msg, response)

    async def scatter(self, subject: str, payload: bytes = b"{}", *, window_s: float = 0.5,
                      max_replies: int = 1000) -> list[Msg]:
        """Ask every instance listening on ``subject`` (no queue group) and gather replies for a window."""
        inbox = self.nc.new_inbox()
        replies: list[Msg] = []
        sub = await self.nc.subscribe(inbox, max_msgs=max_replies)
        try:
            await self.nc.publish(subject, payload, reply=inbox, headers=inject_headers())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + window_s
            while len(replies) < max_replies and (left := deadline - loop.time()) > 0:
                try:
                    replies.append(await sub.next_msg(timeout=left))
                except NatsTimeout:
                    break
        finally:
            await sub.unsubscribe()
        return replies


def decode_reply(msg: Msg, response: type[T] | Any) -> T:
    if msg.headers and msg.headers.get(ERROR_HEADER):
        raise error_from_body(ErrorBody.model_validate_json(msg.data))
    result: T = TypeAdapter(response).validate_json(msg.data)
    return result


Handler = Callable[[Msg], Awaitable[None]]
