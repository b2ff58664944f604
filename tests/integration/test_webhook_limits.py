"""Webhook targets cannot hurt the gateway: a huge answer is not read, a trickling one is cut off at the
attempt's deadline, a late result of a lost lease changes nothing, and one tenant's slow targets leave
delivery slots to the others."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import insert, select

from libs.bus.connection import Bus
from libs.db import make_engine, make_sessionmaker, session_scope
from libs.schemas.subscriptions import DeliveryStatus
from services.gateway.orm import deliveries, subscriptions
from services.gateway.webhooks import store
from tests.conftest import assert_eventually
from tests.integration.test_api_kit import (
    ADMIN,
    bearer,
    eventually,
    gateway_settings,
    make_key,
    start_gateway,
    webhook_receiver,
)
from tests.integration.test_subscriptions import _deliveries, _subscribe, workload_event

Respond = Callable[["RawTarget", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawTarget:
    """A webhook target speaking raw HTTP/1.1, so it can misbehave the way a real server can."""

    respond: Respond
    url: str = ""
    open: int = 0
    most_open: int = 0
    sent: int = 0
    requests: int = 0
    closed_after_s: list[float] = field(default_factory=list)  # request read → client gone, per connection
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            started = time.monotonic()
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.respond(self, reader, writer)
            self.closed_after_s.append(time.monotonic() - started)
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def raw_target(respond: Respond) -> AsyncIterator[RawTarget]:
    target = RawTarget(respond)
    server = await asyncio.start_server(target.handle, "127.0.0.1", 0)
    target.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield target
    finally:
        target.release.set()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)


async def _until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(1024):
        pass


async def huge_body(t: RawTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (256 << 20))
    chunk = b"x" * 65536
    while t.sent < 256 << 20 and not reader.at_eof():
        writer.write(chunk)
        await writer.drain()
        t.sent += len(chunk)


async def trickle(t: RawTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    closed = asyncio.create_task(_until_closed(reader))
    try:
        while not closed.done():
            writer.write(b"x")  # a byte a second: never idle long enough for a per-read timeout
            await writer.drain()
            await asyncio.wait({closed}, timeout=1.0)
    finally:
        closed.cancel()


async def hang(t: RawTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    closed = asyncio.create_task(_until_closed(reader))
    released = asyncio.create_task(t.release.wait())
    await asyncio.wait({closed, released}, return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    released.cancel()


async def test_webhook_huge_answer_is_not_read(settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, webhook_timeout_s=10.0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c, raw_target(huge_body) as target:
        sub = await _subscribe(c, ADMIN, target.url, ["io.xpumesh.workload.*"])
        await bus.publish_event(workload_event("acme"))

        async def succeeded() -> bool:
            return any(d["status"] == "succeeded" for d in await _deliveries(c, sub["id"]))

        await eventually(succeeded, timeout=8, message="the 200 counts without the body being read")
        await assert_eventually(lambda: target.closed_after_s, timeout=5, message="the gateway hung up")
        assert target.sent < 32 << 20, f"the target got {target.sent >> 20} MiB out before the gateway hung up"


async def test_webhook_trickling_target_is_cut_off_at_the_attempt_deadline(settings, running_service,
                                                                        bus: Bus) -> None:
    deadline = 1.5
    url = await start_gateway(running_service, gateway_settings(settings, webhook_timeout_s=deadline,
                                                                webhook_retry_schedule_s=[30.0]))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c, raw_target(trickle) as target:
        sub = await _subscribe(c, ADMIN, target.url, ["io.xpumesh.workload.*"])
        await bus.publish_event(workload_event("acme"))

        async def timed_out() -> dict[str, object] | None:
            items = await _deliveries(c, sub["id"])
            return items[0] if items and items[0]["attempts"] == 1 else None

        d = await eventually(timed_out, timeout=deadline + 8, message="the attempt ended and was recorded")
        assert d is not None and d["last_error"] == "timeout" and d["status"] == "pending", d
        await assert_eventually(lambda: target.closed_after_s, timeout=5, message="the gateway hung up")
        # The whole attempt ended at its deadline, well inside its lease (deadline + 5 s).
        assert target.closed_after_s[0] < deadline + 1.0, target.closed_after_s


async def test_webhook_late_result_of_an_expired_lease_changes_nothing(settings) -> None:
    engine = make_engine(settings.database_dsn(), settings.db)
    sessions = make_sessionmaker(engine)
    try:
        async with session_scope(sessions) as s:
            await s.execute(insert(subscriptions).values(
                id="sub_race", tenant="acme", created_by="key_x", url="https://hooks.example.com/h", types=["*"],
                secret="whsec_x"))
            await s.execute(insert(deliveries).values(
                subscription_id="sub_race", event_id="ev-1", event_type="io.xpumesh.workload.placed",
                stream_seq=1, payload=b"{}"))
        async with session_scope(sessions) as s:
            (first,) = await store.update_due_leases(s, limit=10, lease_s=0.05, floors={"sub_race": 1})

        async def taken_again() -> store.DueDelivery | None:
            async with session_scope(sessions) as s:
                due = await store.update_due_leases(s, limit=10, lease_s=60.0, floors={"sub_race": 1})
            return due[0] if due else None

        second = await assert_eventually(taken_again, timeout=5, message="the expired lease is taken again")
        assert second.id == first.id and second.lease_token != first.lease_token
        async with session_scope(sessions) as s:  # the first worker comes back late, with a success
            recorded = await store.update_delivery(s, first.id, status=DeliveryStatus.SUCCEEDED, attempts=1,
                                                   code=200, error=None, lease_token=first.lease_token)
        assert recorded is False
        async with session_scope(sessions) as s:
            row = (await s.execute(select(deliveries).where(deliveries.c.id == first.id))).one()
        assert row.status == "pending" and row.attempts == 0 and row.lease_token == second.lease_token
        async with session_scope(sessions) as s:
            assert await store.update_delivery(s, second.id, status=DeliveryStatus.PENDING, attempts=1, code=503,
                                               error="HTTP 503", lease_token=second.lease_token)
        async with session_scope(sessions) as s:
            row = (await s.execute(select(deliveries).where(deliveries.c.id == first.id))).one()
        assert row.attempts == 1 and row.last_status_code == 503 and row.leased_until is None
    finally:
        await engine.dispose()


async def test_webhook_one_tenants_slow_targets_do_not_starve_another(settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(
        settings, webhook_concurrency=4, webhook_tenant_concurrency=2, webhook_timeout_s=8.0))
    async with (httpx.AsyncClient(base_url=url, timeout=10) as c, raw_target(hang) as slow,
                webhook_receiver() as fast):
        slow_key = bearer(await make_key(c, "slow", "user"))
        fast_key = bearer(await make_key(c, "fast", "user"))
        for _ in range(6):
            await _subscribe(c, slow_key, slow.url, ["io.xpumesh.workload.*"])
        await _subscribe(c, fast_key, fast.url, ["io.xpumesh.workload.*"])
        await bus.publish_event(workload_event("slow"))
        await assert_eventually(lambda: slow.requests >= 2, timeout=10, message="the slow tenant's targets hang")
        published = time.monotonic()
        await bus.publish_event(workload_event("fast"))
        await assert_eventually(lambda: fast.received, timeout=5, message="the other tenant's event arrives")
        assert fast.received[0].at - published < 1.5, "a free slot was left for the other tenant"
        assert slow.most_open <= 2, f"{slow.most_open} of the slow tenant's deliveries in flight at once"
