"""A gateway killed with SIGKILL mid-stream and restarted loses no webhook event and sends none under a new id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import httpx
from standardwebhooks.webhooks import Webhook

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.events import CloudEvent, EventTypes
from tests.conftest import assert_eventually
from tests.integration.test_api_kit import ADMIN, FAST_WEBHOOK_ENV, base_url, eventually, webhook_receiver

GATEWAY_ENV = FAST_WEBHOOK_ENV


async def _subscribe(c: httpx.AsyncClient, url: str) -> dict[str, str]:
    """A subscription to every workload event, made once the gateway answers."""
    async def subscribed() -> dict[str, str] | None:
        try:
            r = await c.post("/v1/subscriptions", json={"url": url, "types": ["io.xpumesh.workload.*"]},
                             headers=ADMIN)
        except httpx.TransportError:
            return None
        assert r.status_code == 201, r.text
        body: dict[str, str] = r.json()
        return body

    sub = await eventually(subscribed, timeout=30, interval=0.2, message="gateway up, subscription made")
    assert sub is not None
    return sub


async def test_subscriptions_sigkill_mid_stream_loses_nothing_and_keeps_ids(settings, spawn_service,
                                                                           bus: Bus) -> None:
    proc = spawn_service("gateway", **GATEWAY_ENV)
    async with httpx.AsyncClient(base_url=base_url(settings), timeout=5) as c, webhook_receiver() as rx:
        sub = await _subscribe(c, rx.url)
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


async def test_subscriptions_event_held_by_another_reader_still_goes_out_before_later_ones(settings, spawn_service,
                                                                                          bus: Bus) -> None:
    """An event another reader of the subscription's consumer took and has not recorded (a gateway killed
    mid-batch, or one whose write failed) comes back later than events of its subject published after it,
    which this gateway records meanwhile: they wait for it, so the subject's first deliveries keep stream order."""
    spawn_service("gateway", **GATEWAY_ENV)
    async with httpx.AsyncClient(base_url=base_url(settings), timeout=5) as c, webhook_receiver() as rx:
        sub = await _subscribe(c, rx.url)

        def event(n: int) -> CloudEvent:
            return CloudEvent.new(EventTypes.workload("running"), "/scheduler", {"tenant": "acme", "n": n},
                                  subject="wl-held")

        # the other reader: takes the first event from the subscription's consumer before the gateway does
        # (the gateway's intake pulls too, so the event is published while the other reader waits for it)
        held = await bus.js.pull_subscribe_bind(f"gw_{sub['id']}", STREAM_EVENTS)
        fetched = asyncio.create_task(held.fetch(1, timeout=30))
        for n in range(100, 120):  # the gateway may win the race for an event: then publish another
            await bus.publish_event(event(n), site="hangzhou")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fetched), timeout=1)
                break
        assert fetched.done(), "the other reader never got an event ahead of the gateway"
        (msg,) = fetched.result()
        first = CloudEvent.from_bytes(msg.data)
        later = [event(n) for n in range(1, 6)]
        for e in later:
            await bus.publish_event(e, site="hangzhou")
        ids = {e.id for e in later}

        async def recorded() -> bool:
            await msg.in_progress()  # still working on it, as far as JetStream knows
            r = await c.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=ADMIN, params={"limit": 100})
            return ids <= {d["event_id"] for d in r.json()["items"]}

        await assert_eventually(recorded, timeout=15, interval=0.2, message="the later events recorded")
        with contextlib.suppress(AssertionError):  # the later events must not go out while the first is held
            await assert_eventually(lambda: bool(ids & set(rx.ids())), timeout=3, interval=0.1)
        await msg.nak()  # the other reader gives up on it (its write failed): JetStream hands it out again
        want = [first.id] + [e.id for e in later]
        await assert_eventually(lambda: set(want) <= set(rx.ids()), timeout=30, interval=0.2,
                                message="every event delivered")
        await held.unsubscribe()
    mine = set(want)
    firsts = [i for i in dict.fromkeys(rx.ids()) if i in mine]
    assert firsts == want, "events published after a held one went out before it"


async def test_subscriptions_event_with_a_nul_is_skipped_and_later_ones_still_go_out(settings, spawn_service,
                                                                                    bus: Bus) -> None:
    """PostgreSQL stores no NUL: an event carrying one in its id or subject would fail its batch on every
    redelivery and, as every later event waits for the earlier ones to be recorded, hold them all."""
    spawn_service("gateway", **GATEWAY_ENV)
    async with httpx.AsyncClient(base_url=base_url(settings), timeout=5) as c, webhook_receiver() as rx:
        async def subscribed() -> bool:
            try:
                r = await c.post("/v1/subscriptions", json={"url": rx.url, "types": ["io.xpumesh.workload.*"]},
                                 headers=ADMIN)
            except httpx.TransportError:
                return False
            assert r.status_code == 201, r.text
            return True

        await eventually(subscribed, timeout=30, interval=0.2, message="gateway up, subscription made")
        nul = "\u0000"
        poison = json.dumps({"specversion": "1.0", "id": f"nul{nul}", "source": "/scheduler",
                             "type": EventTypes.workload("running"), "subject": f"wl-{nul}",
                             "data": {"tenant": "acme"}}).encode()
        await bus.js.publish(subjects.event_subject(EventTypes.workload("running"), "hangzhou"), poison)
        after = CloudEvent.new(EventTypes.workload("running"), "/scheduler", {"tenant": "acme"}, subject="wl-after")
        await bus.publish_event(after, site="hangzhou")
        await assert_eventually(lambda: after.id in rx.ids(), timeout=20, interval=0.2,
                                message="the event after the NUL-laden one delivered")
    assert all(nul not in i for i in rx.ids())
