"""Webhook subscriptions: signed CloudEvents, retries, dead letters, 410, ordering, tenants, SSRF."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
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


def workload_event(tenant: str, state: str = "placed", subject: str = "wl-1", **data: object) -> CloudEvent:
    return CloudEvent.new(EventTypes.workload(state), "/scheduler", {"tenant": tenant, "state": state, **data},
                          subject=subject)


async def _subscribe(c: httpx.AsyncClient, headers: dict[str, str], url: str, types: list[str],
                     **filters: str) -> dict[str, object]:
    r = await c.post("/v1/subscriptions", json={"url": url, "types": types, "filters": filters}, headers=headers)
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def _deliveries(c: httpx.AsyncClient, sid: object, headers: dict[str, str] = ADMIN) -> list[dict[str, object]]:
    r = await c.get(f"/v1/subscriptions/{sid}/deliveries", headers=headers)
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["items"]
    return items


async def test_subscriptions_signed_cloudevent_arrives_within_one_second(settings, running_service, bus: Bus) -> None:
    s = gateway_settings(settings)
    url = await start_gateway(running_service, s)
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        sub = await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.*"])
        assert str(sub["secret"]).startswith("whsec_")
        event = workload_event("acme")
        published = time.monotonic()
        await bus.publish_event(event, site="hangzhou")
        await assert_eventually(lambda: rx.received, timeout=5, message="webhook delivered")
        got = rx.received[0]
        assert got.at - published < 1.0, f"delivered after {got.at - published:.3f}s"
        verified = Webhook(str(sub["secret"])).verify(got.body, got.headers)  # raises if the signature is wrong
        assert verified["id"] == event.id and verified["specversion"] == "1.0"
        assert got.headers["webhook-id"] == event.id
        assert got.headers["content-type"].startswith("application/cloudevents+json")
        assert CloudEvent.from_bytes(got.body) == event


async def test_subscriptions_retry_with_backoff_keeps_the_id_then_dead_letters(settings, running_service,
                                                                              bus: Bus) -> None:
    s = gateway_settings(settings, webhook_retry_schedule_s=[0.2, 0.3])
    url = await start_gateway(running_service, s)
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        flaky = workload_event("acme", subject="flaky")
        dead = workload_event("acme", subject="dead")
        rx.answer = lambda r: 204 if (r.headers["webhook-id"] == flaky.id and
                                      rx.ids().count(flaky.id) >= 3) else 503
        sub = await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.placed"])
        await bus.publish_event(flaky)
        await bus.publish_event(dead)

        async def settled() -> dict[str, dict[str, object]] | None:
            by_event = {str(d["event_id"]): d for d in await _deliveries(c, sub["id"])}
            if by_event.get(flaky.id, {}).get("status") == "succeeded" and by_event.get(dead.id, {}).get(
                    "status") == "dead":
                return by_event
            return None

        by_event = await eventually(settled, timeout=10, message="one delivered after retries, one dead")
        assert by_event is not None
        assert by_event[flaky.id]["attempts"] == 3
        assert by_event[dead.id]["attempts"] == 3 and by_event[dead.id]["last_status_code"] == 503
        assert rx.ids().count(flaky.id) == 3 and rx.ids().count(dead.id) == 3
        bodies = {r.body for r in rx.received if r.headers["webhook-id"] == flaky.id}
        assert len(bodies) == 1, "every retry carries the same event"


async def test_subscriptions_gone_disables_the_subscription(settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        rx.answer = lambda r: 410
        sub = await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.device.unhealthy"])
        await bus.publish_event(CloudEvent.new(EventTypes.DEVICE_UNHEALTHY, "/inventory", {"hardware_type": "gpu"}))

        async def disabled() -> bool:
            r = await c.get(f"/v1/subscriptions/{sub['id']}", headers=ADMIN)
            return bool(r.json()["status"] == "disabled")

        await eventually(disabled, timeout=5, message="subscription disabled after 410")
        await bus.publish_event(CloudEvent.new(EventTypes.DEVICE_UNHEALTHY, "/inventory", {"hardware_type": "gpu"}))
        r = await c.post(f"/v1/subscriptions/{sub['id']}/ping", headers=ADMIN)
        assert r.status_code == 409
        assert len(rx.received) == 1


async def test_subscriptions_order_per_subject_survives_a_failing_first_attempt(settings, running_service,
                                                                               bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, webhook_retry_schedule_s=[0.3, 0.3]))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        events = [workload_event("acme", state="running", subject="wl-ordered", n=i) for i in range(12)]
        first = events[0].id
        rx.answer = lambda r: 503 if r.headers["webhook-id"] == first and rx.ids().count(first) == 1 else 200
        await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.running"])
        for e in events:
            await bus.publish_event(e)
        await assert_eventually(lambda: set(rx.ids()) >= {e.id for e in events}, timeout=10,
                                message="all delivered")
        accepted = [r.headers["webhook-id"] for r in rx.received if not (r.headers["webhook-id"] == first
                                                                         and r is rx.received[0])]
        assert accepted == [e.id for e in events], "same-subject events arrive in the order they were published"


async def test_subscriptions_filters_by_site_and_hardware_type(settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.device.*"], site="hangzhou", hardware_type="npu")
        want = CloudEvent.new(EventTypes.DEVICE_UNHEALTHY, "/inventory", {"hardware_type": "npu"})
        await bus.publish_event(CloudEvent.new(EventTypes.DEVICE_UNHEALTHY, "/inventory", {"hardware_type": "gpu"}),
                                site="hangzhou")
        await bus.publish_event(CloudEvent.new(EventTypes.DEVICE_UNHEALTHY, "/inventory", {"hardware_type": "npu"}),
                                site="ningbo")
        await bus.publish_event(want, site="hangzhou")
        await assert_eventually(lambda: rx.received, timeout=5)
        marker = CloudEvent.new(EventTypes.DEVICE_HEALTHY, "/inventory", {"hardware_type": "npu"})
        await bus.publish_event(marker, site="hangzhou")
        await assert_eventually(lambda: marker.id in rx.ids(), timeout=5)
        assert rx.ids() == [want.id, marker.id]


async def test_subscriptions_tenant_sees_only_its_own_workload_events_and_subscriptions(
        settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx_a, webhook_receiver() as rx_b:
        a = bearer(await make_key(c, "tenant-a", "user"))
        b = bearer(await make_key(c, "tenant-b", "user"))
        r = await c.post("/v1/subscriptions", json={"url": rx_a.url, "types": ["io.xpumesh.workload.*"],
                                                    "filters": {"tenant": "tenant-b"}}, headers=a)
        assert r.status_code == 404, "subscribing to another tenant's workloads: that tenant does not exist for A"
        sub_a = await _subscribe(c, a, rx_a.url, ["io.xpumesh.workload.*"])
        sub_b = await _subscribe(c, b, rx_b.url, ["io.xpumesh.workload.*"])
        for path in (f"/v1/subscriptions/{sub_b['id']}", f"/v1/subscriptions/{sub_b['id']}/deliveries"):
            assert (await c.get(path, headers=a)).status_code == 404
        assert (await c.post(f"/v1/subscriptions/{sub_b['id']}/ping", headers=a)).status_code == 404
        assert (await c.delete(f"/v1/subscriptions/{sub_b['id']}", headers=a)).status_code == 404
        listed = (await c.get("/v1/subscriptions", headers=a)).json()["items"]
        assert [s["id"] for s in listed] == [sub_a["id"]]
        assert len((await c.get("/v1/subscriptions", headers=ADMIN)).json()["items"]) == 2

        mine, theirs, nobodys = workload_event("tenant-a"), workload_event("tenant-b"), workload_event("")
        fleet = CloudEvent.new(EventTypes.workload("placed"), "/scheduler", {"state": "placed"})
        for e in (theirs, nobodys, fleet, mine):
            await bus.publish_event(e)
        await assert_eventually(lambda: mine.id in rx_a.ids() and theirs.id in rx_b.ids(), timeout=5)
        assert rx_a.ids() == [mine.id], "A gets only A's workload events"
        assert rx_b.ids() == [theirs.id]


async def test_subscriptions_refuse_private_and_loopback_targets_unless_allowed(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, webhook_allow_hosts=["*.allowed.test"]))
    async with httpx.AsyncClient(base_url=url) as c:
        for target in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x", "http://192.168.0.7/x",
                       "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://0.0.0.0/x",
                       "http://[::ffff:127.0.0.1]/x", "ftp://example.com/x", "http://user:pw@example.com/x"):
            r = await c.post("/v1/subscriptions", json={"url": target, "types": ["io.xpumesh.workload.*"]},
                             headers=ADMIN)
            assert r.status_code == 422, (target, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")


async def test_subscriptions_ping_reports_the_targets_answer(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        sub = await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.*"])
        r = await c.post(f"/v1/subscriptions/{sub['id']}/ping", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded" and r.json()["last_status_code"] == 204
        Webhook(str(sub["secret"])).verify(rx.received[0].body, rx.received[0].headers)
        assert json.loads(rx.received[0].body)["type"] == "io.xpumesh.webhook.ping"
        r = await c.delete(f"/v1/subscriptions/{sub['id']}", headers=ADMIN)
        assert r.status_code == 204
        assert (await c.get(f"/v1/subscriptions/{sub['id']}", headers=ADMIN)).status_code == 404


async def test_subscriptions_consumers_of_deleted_subscriptions_are_dropped(settings, running_service, bus: Bus,
                                                                          monkeypatch) -> None:
    from nats.js.api import ConsumerConfig

    from libs.bus.connection import STREAM_EVENTS
    from libs.db import make_engine, make_sessionmaker
    from libs.service import Context
    from services.gateway.webhooks import engine as engine_module

    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        kept = await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.*"])
    await bus.js.add_consumer(STREAM_EVENTS, ConsumerConfig(durable_name="gw_sub_orphan0000000"))
    monkeypatch.setattr(engine_module, "ORPHAN_AGE_S", 0.0)
    db = make_engine(settings.database_dsn(), settings.db)
    eng = engine_module.WebhookEngine(Context(service="gateway", instance="t", settings=settings, bus=bus,
                                              engine=db, sessions=make_sessionmaker(db)))
    try:
        await eng.reconcile()
    finally:
        await eng.close()
        await db.dispose()
    names = {ci.name for ci in await bus.js.consumers_info(STREAM_EVENTS)}
    assert "gw_sub_orphan0000000" not in names and f"gw_{kept['id']}" in names


async def test_subscriptions_malformed_event_is_counted_and_skipped_not_blocking_the_next(settings, running_service,
                                                                                        bus: Bus) -> None:
    from libs.bus import subjects
    from libs.metrics import BUS_REJECTED

    def malformed() -> float:
        return BUS_REJECTED.labels("gateway", "webhook_intake", "malformed_envelope")._value.get()

    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.*"])
        before = malformed()
        await bus.js.publish(subjects.event_subject(EventTypes.workload("placed"), "hangzhou"), b"not an event")
        good = workload_event("acme")
        await bus.publish_event(good, site="hangzhou")
        await assert_eventually(lambda: rx.ids() == [good.id], timeout=5, message="the good event delivered")
    assert malformed() - before == 1


async def test_subscriptions_events_come_back_when_recording_them_fails(settings, running_service, bus: Bus,
                                                                        monkeypatch) -> None:
    from services.gateway.webhooks import store

    real = store.create_deliveries
    failures: list[int] = []

    async def failing_once(session: Any, rows: list[dict[str, Any]]) -> None:
        if not failures:
            failures.append(len(rows))
            raise ConnectionError("database away")
        await real(session, rows)

    monkeypatch.setattr(store, "create_deliveries", failing_once)
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url) as c, webhook_receiver() as rx:
        await _subscribe(c, ADMIN, rx.url, ["io.xpumesh.workload.*"])
        event = workload_event("acme")
        await bus.publish_event(event, site="hangzhou")
        await assert_eventually(lambda: rx.ids() == [event.id], timeout=8, message="delivered after the failure")
    assert failures == [1]
