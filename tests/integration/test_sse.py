"""GET /v1/events: Server-Sent Events with filters, resume by Last-Event-ID, heartbeats, tenants."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from tests.integration.test_api_kit import (
    ADMIN,
    base_url,
    bearer,
    eventually,
    gateway_settings,
    make_key,
    start_gateway,
)


class Sse:
    """Reads one SSE response frame by frame (comments come as {"comment": text})."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        async for line in self.lines:
            if line == "":
                if fields:
                    return fields
            elif line.startswith(":"):
                return {"comment": line[1:].strip()}
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        raise AssertionError("stream ended")

    async def take(self, n: int, *, timeout: float = 5.0) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []

        async def read() -> None:
            while len(out) < n:
                f = await self.next()
                if "data" in f:
                    out.append(f)

        await asyncio.wait_for(read(), timeout=timeout)
        return out


def wl(tenant: str, n: int) -> CloudEvent:
    return CloudEvent.new(EventTypes.workload("running"), "/scheduler", {"tenant": tenant, "n": n}, subject=f"wl-{n}")


async def test_sse_disconnect_and_resume_with_last_event_id_misses_nothing(settings, running_service,
                                                                           bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    events = [wl("acme", i) for i in range(10)]
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with c.stream("GET", "/v1/events", params={"type": "io.xpumesh.workload.*"}, headers=ADMIN) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            sse = Sse(r)
            first = await sse.next()
            assert "comment" in first  # the stream is open before anything is published
            for e in events[:5]:
                await bus.publish_event(e, site="hangzhou")
            await bus.publish_event(CloudEvent.new(EventTypes.HOST_UP, "/registry", {}), site="hangzhou")
            got = await sse.take(3)
        for e in events[5:]:
            await bus.publish_event(e, site="hangzhou")
        last = got[-1]["id"]
        async with c.stream("GET", "/v1/events", params={"type": "io.xpumesh.workload.*"},
                            headers={**ADMIN, "Last-Event-ID": last}) as r:
            rest = await Sse(r).take(7)
    seen = [CloudEvent.model_validate_json(f["data"]).id for f in got + rest]
    assert seen == [e.id for e in events], "every event once, in order, across the reconnect"
    ids = [int(f["id"]) for f in got + rest]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert all(f["event"] == "io.xpumesh.workload.running" for f in got + rest)


async def test_sse_filters_by_site_and_confines_tenants(settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        a = bearer(await make_key(c, "tenant-a", "viewer"))
        async with c.stream("GET", "/v1/events", params={"site": "ningbo"}, headers=a) as r:
            sse = Sse(r)
            await sse.next()
            await bus.publish_event(wl("tenant-b", 1), site="ningbo")
            await bus.publish_event(wl("tenant-a", 2), site="hangzhou")
            mine = wl("tenant-a", 3)
            await bus.publish_event(mine, site="ningbo")
            down = CloudEvent.new(EventTypes.HOST_DOWN, "/registry", {"id": "h-1"})
            await bus.publish_event(down, site="ningbo")
            got = await sse.take(2)
    assert [CloudEvent.model_validate_json(f["data"]).id for f in got] == [mine.id, down.id]


async def test_sse_sends_heartbeat_comments_and_rejects_bad_input(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, sse_heartbeat_s=0.2))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with c.stream("GET", "/v1/events", headers=ADMIN) as r:
            comments: list[dict[str, str]] = []

            sse = Sse(r)

            async def two_keepalives() -> None:
                while len(comments) < 2:
                    f = await sse.next()
                    if f.get("comment") == "keep-alive":
                        comments.append(f)

            await asyncio.wait_for(two_keepalives(), timeout=3)
        for headers, params in (({**ADMIN, "Last-Event-ID": "abc"}, {}),
                                (ADMIN, {"type": "com.example.*"}), (ADMIN, {"site": "no/such"})):
            r2 = await c.get("/v1/events", headers=headers, params=params)
            assert r2.status_code in (400, 422), r2.text
            assert r2.headers["content-type"].startswith("application/problem+json")


async def test_sse_client_limit_answers_503_and_frees_slots_on_disconnect(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, sse_max_clients=1))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with contextlib.AsyncExitStack() as stack:
            r = await stack.enter_async_context(c.stream("GET", "/v1/events", headers=ADMIN))
            await Sse(r).next()
            busy = await c.get("/v1/events", headers=ADMIN)
            assert busy.status_code == 503 and busy.headers["retry-after"]

        async def free() -> bool:
            async with c.stream("GET", "/v1/events", headers=ADMIN) as again:
                return again.status_code == 200

        await eventually(free, timeout=5, message="slot freed after disconnect")


async def test_sse_slow_client_gets_every_event_in_order_through_a_small_buffer(settings, running_service,
                                                                                bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, sse_buffer=2))
    events = [wl("acme", i) for i in range(20)]
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        async with c.stream("GET", "/v1/events", params={"type": "io.xpumesh.workload.*"}, headers=ADMIN) as r:
            sse = Sse(r)
            await sse.next()
            for e in events:  # far more than the buffer holds before the client reads anything
                await bus.publish_event(e, site="hangzhou")
            await asyncio.sleep(0.5)  # the reader waits on its full buffer meanwhile
            got = await sse.take(20)
    assert [CloudEvent.model_validate_json(f["data"]).id for f in got] == [e.id for e in events]


async def test_sse_streams_end_and_their_consumers_go_when_the_gateway_stops(settings, running_service,
                                                                             bus: Bus) -> None:
    from libs.bus.connection import STREAM_EVENTS
    from services.gateway.api import app as gateway_app

    s = gateway_settings(settings, sse_heartbeat_s=60.0)
    s = s.model_copy(update={"bus": s.bus.model_copy(update={"drain_timeout_s": 20.0})})  # no forced end
    gateway = await running_service(gateway_app, s)

    async def sse_consumers() -> set[str]:
        return {ci.name or "" for ci in await bus.js.consumers_info(STREAM_EVENTS)
                if (ci.name or "").startswith("sse_")}

    async with httpx.AsyncClient(base_url=base_url(s), timeout=10) as c:
        async with c.stream("GET", "/v1/events", headers=ADMIN) as r:
            sse = Sse(r)
            assert "comment" in await sse.next()
            assert await sse_consumers()
            stopping = asyncio.create_task(gateway.stop())
            with contextlib.suppress(AssertionError, httpx.HTTPError):
                await asyncio.wait_for(sse.next(), timeout=5)  # ends: no keep-alive is due, no drain forces it
            await asyncio.wait_for(stopping, timeout=8)
    assert not await sse_consumers()
