"""Every consumer the running mesh has at the NATS server is read by the one ``PullConsumer``.

All five services run in this process; the gateway also gets a webhook subscription and an
open Server-Sent Events stream (its two dynamic readers). Then every consumer of every stream
at the server must be one this process reads with ``libs.bus.consumer.PullConsumer``, and
every consumer a service declares must be among them. (The static half, that nothing else
calls JetStream's read APIs, is ``tests/unit/test_one_consumer.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib

import httpx

from libs.bus import consumer, subjects
from libs.bus.connection import STREAM_COMMANDS, STREAM_EVENTS, STREAM_HOSTS, STREAM_TELEMETRY, Bus
from libs.bus.consumer import live_consumers
from libs.service import ServiceApp
from tests.conftest import assert_eventually
from tests.integration.test_api_kit import ADMIN, gateway_settings, start_gateway, webhook_receiver
from xpumesh.cli import SERVICE_APPS

STREAMS = (STREAM_EVENTS, STREAM_HOSTS, STREAM_TELEMETRY, STREAM_COMMANDS)


async def _server_consumers(bus: Bus) -> set[tuple[str, str]]:
    found = set()
    for stream in STREAMS:
        for info in await bus.js.consumers_info(stream):
            found.add((stream, info.name or ""))
    return found


async def test_consumers_every_reader_at_the_server_is_a_pull_consumer(settings, running_service, bus: Bus) -> None:
    s = gateway_settings(settings)
    apps: list[ServiceApp] = [importlib.import_module(SERVICE_APPS[n]).app for n in sorted(SERVICE_APPS)]
    for app in apps:
        if app.name != "gateway":
            await running_service(app, s)
    url = await start_gateway(running_service, s)
    async with httpx.AsyncClient(base_url=url, timeout=10) as c, webhook_receiver() as rx:
        r = await c.post("/v1/subscriptions", json={"url": rx.url, "types": ["io.xpumesh.workload.*"]}, headers=ADMIN)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        async with c.stream("GET", "/v1/events", headers=ADMIN) as stream:
            lines = stream.aiter_lines()
            assert (await asyncio.wait_for(anext(lines), 5)).startswith(":")  # connected

            async def all_read() -> bool:
                at_server, live = await _server_consumers(bus), set(live_consumers())
                return bool(at_server) and at_server <= live and any(d.startswith("sse_") for _, d in at_server) \
                    and any(sid in d for _, d in at_server)

            await assert_eventually(all_read, timeout=15, message="every server consumer read by a PullConsumer")
            declared = {(c.stream, c.durable) for app in apps for c in app.consumers}
            assert declared <= set(live_consumers())
            # each pulls on an inbox under its service's private prefix, which no agent may subscribe to
            inboxes = {(c.service, c._inbox) for c in list(consumer._LIVE)}
            assert inboxes and all(i.startswith(subjects.inbox_prefix("service", svc) + ".") for svc, i in inboxes), \
                inboxes
            with contextlib.suppress(Exception):
                await stream.aclose()
