"""A gateway killed with SIGKILL mid-stream and restarted loses no webhook event and sends none under a new id."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
from standardwebhooks.webhooks import Webhook

from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from tests.conftest import assert_eventually
from tests.integration.test_api_kit import ADMIN, FAST_WEBHOOK_ENV, base_url, eventually, webhook_receiver

GATEWAY_ENV = FAST_WEBHOOK_ENV


async def test_subscriptions_sigkill_mid_stream_loses_nothing_and_keeps_ids(settings, spawn_service,
                                                                           bus: Bus) -> None:
    proc = spawn_service("gateway", **GATEWAY_ENV)
    async with httpx.AsyncClient(base_url=base_url(settings), timeout=5) as c, webhook_receiver() as rx:
        async def subscribed() -> dict[str, str] | None:
            try:
                r = await c.post("/v1/subscriptions", json={"url": rx.url, "types": ["io.xpumesh.workload.*"]},
                                 headers=ADMIN)
            except httpx.TransportError:
                return None
            assert r.status_code == 201, r.text
            body: dict[str, str] = r.json()
            return body

        sub = await eventually(subscribed, timeout=30, interval=0.2, message="gateway up, subscription made")
        assert sub is not None
        published: list[CloudEvent] = []

        async def publish(n: int) -> None:
            for _ in range(n):
                i = len(published)
                e = CloudEvent.new(EventTypes.workload("running"), "/scheduler", {"tenant": "acme", "n": i},
                                   subject=f"wl-{i % 7}")
                await bus.publish_event(e, site="hangzhou")
                published.append(e)
                await asyncio.sleep(0.005)

        await publish(60)
        await assert_eventually(lambda: len(rx.received) >= 20, timeout=10, message="deliveries under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        await publish(60)  # published while no gateway runs
        spawn_service("gateway", **GATEWAY_ENV)
        await publish(60)
        want = {e.id for e in published}
        await assert_eventually(lambda: want <= set(rx.ids()), timeout=30, interval=0.2,
                                message="every event delivered after the restart")

        subs = (await c.get("/v1/subscriptions", headers=ADMIN)).json()["items"]
        assert [s["id"] for s in subs] == [sub["id"]]
    assert set(rx.ids()) == want, "no delivery under an id that was never published"
    by_id = {e.id: e for e in published}
    wh = Webhook(sub["secret"])
    for r in rx.received:
        wh.verify(r.body, r.headers)
        event = CloudEvent.model_validate(json.loads(r.body))
        assert event == by_id[r.headers["webhook-id"]], "a retry carries the original event under its own id"
    for subject in {e.subject for e in published}:
        order = [e.id for e in published if e.subject == subject]
        firsts = list(dict.fromkeys(i for i in rx.ids() if i in set(order)))
        assert firsts == order, f"first deliveries of {subject} keep publication order"
