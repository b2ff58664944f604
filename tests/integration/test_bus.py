"""The service framework on a real NATS: typed request/reply, trace context, garbage, dedupe."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.bus.errors import BusTimeout, InvalidRequest, NotFound, Unavailable
from libs.events import CloudEvent
from libs.metrics import BUS_MESSAGES, BUS_REJECTED
from libs.service import Context, ServiceApp
from libs.tracing import setup_tracing
from services.gateway.api import app as gateway_app
from services.registry.api import app as registry_app
from tests.conftest import assert_eventually


class Echo(BaseModel):
    text: str
    times: int = 1


def make_app() -> ServiceApp:
    app = ServiceApp("echo", uses_db=False)
    app.state_seen = []  # type: ignore[attr-defined]

    @app.endpoint("say")
    async def say(req: Echo, ctx: Context) -> Echo:
        if req.text == "missing":
            raise NotFound("nothing called missing")
        if req.text == "boom":
            raise RuntimeError("secret internal detail")
        return Echo(text=req.text * req.times, times=1)

    @app.consumer(STREAM_EVENTS, durable="echo-events", subject="xpumesh.events.test.>")
    async def on_event(event: CloudEvent, ctx: Context) -> None:
        if event.data.get("bad"):
            raise InvalidRequest("bad data")
        app.state_seen.append(event.id)  # type: ignore[attr-defined]

    return app


async def test_bus_request_reply_returns_typed_results_and_errors(settings, running_service, bus: Bus) -> None:
    await running_service(make_app())
    subject = subjects.rpc_subject("echo", "say")
    assert (await bus.request(subject, Echo(text="ab", times=2), Echo)).text == "abab"
    with pytest.raises(NotFound):
        await bus.request(subject, Echo(text="missing"), Echo)
    with pytest.raises(InvalidRequest) as exc:
        await bus.request(subject, {"text": 5}, Echo)
    assert exc.value.errors and exc.value.errors[0]["loc"] == "text"
    with pytest.raises(Exception) as internal:
        await bus.request(subject, Echo(text="boom"), Echo)
    assert "secret internal detail" not in str(internal.value)
    with pytest.raises(Unavailable):
        await bus.request(subjects.rpc_subject("nobody", "home"), None, Echo)


async def test_bus_request_times_out_with_typed_error(settings, bus: Bus) -> None:
    sub = await bus.nc.subscribe("xpumesh.rpc.slow.op")  # subscribed, never answers
    with pytest.raises(BusTimeout):
        await bus.request("xpumesh.rpc.slow.op", None, Echo, timeout=0.2)
    await sub.unsubscribe()


async def test_bus_consumer_dedupes_by_event_id_and_counts_garbage(settings, running_service, bus: Bus) -> None:
    app = make_app()
    await running_service(app)
    ev = CloudEvent.new("io.xpumesh.test.thing", "/test", {"n": 1})
    before_rejected = BUS_REJECTED.labels("echo", "on_event", "malformed_envelope")._value.get()
    before_invalid = BUS_REJECTED.labels("echo", "on_event", "invalid_data")._value.get()
    await bus.publish_event(ev)
    await bus.js.publish(subjects.event_subject(ev.type), ev.to_bytes())  # same id, no Nats-Msg-Id: consumer dedupes
    await bus.js.publish("xpumesh.events.test.thing._", b"{garbage")
    await bus.publish_event(CloudEvent.new("io.xpumesh.test.thing", "/test", {"bad": True}))
    await bus.publish_event(CloudEvent.new("io.xpumesh.test.thing", "/test", {"n": 2}))
    await assert_eventually(lambda: len(app.state_seen) == 2)  # type: ignore[attr-defined]
    assert app.state_seen[0] == ev.id  # type: ignore[attr-defined]
    assert BUS_REJECTED.labels("echo", "on_event", "malformed_envelope")._value.get() == before_rejected + 1
    assert BUS_REJECTED.labels("echo", "on_event", "invalid_data")._value.get() == before_invalid + 1
    assert BUS_MESSAGES.labels("echo", "on_event", "duplicate")._value.get() >= 1
    # and it keeps answering
    assert (await bus.request(subjects.rpc_subject("echo", "say"), Echo(text="ok"), Echo)).text == "ok"


async def test_trace_started_in_gateway_continues_in_handling_service(settings, running_service) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("tests", None, exporter=exporter)
    await running_service(registry_app)
    await running_service(gateway_app)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.gateway_port}") as client:
        await assert_eventually(lambda: _ok(client, "/readyz"))
        exporter.clear()
        r = await client.get("/v1/services", headers=_auth(settings))
        assert r.status_code == 200, r.text

    def spans_match() -> bool:
        spans = exporter.get_finished_spans()
        http = [s for s in spans if s.name == "GET /v1/services"]
        rpc = [s for s in spans if s.name == "rpc registry.members.list"]
        return bool(http and rpc and rpc[0].context.trace_id == http[0].context.trace_id
                    and rpc[0].parent is not None)

    await assert_eventually(spans_match, message="registry span shares the gateway's trace id")


async def _ok(client: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await client.get(path)).status_code == 200
    except httpx.HTTPError:
        return False


def _auth(settings) -> dict[str, str]:
    key = settings.bootstrap_admin_key
    return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}


@pytest.mark.parametrize("concurrency,expected_peak", [(1, 1), (4, 4)])
async def test_bus_endpoint_concurrency_bounds_requests_in_flight(concurrency: int, expected_peak: int, settings,
                                                                  running_service, bus: Bus) -> None:
    app = ServiceApp("wait", uses_db=False)
    state = {"now": 0, "peak": 0}
    release = asyncio.Event()

    @app.endpoint("hold", concurrency=concurrency)
    async def hold(req: Echo, ctx: Context) -> Echo:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            async with asyncio.timeout(1.0):  # a serial endpoint never sees the release: it times out per request
                await release.wait()
        except TimeoutError:
            pass
        state["now"] -= 1
        return req

    await running_service(app)
    calls = [asyncio.create_task(bus.request(subjects.rpc_subject("wait", "hold"), Echo(text=str(i)), Echo,
                                             timeout=10)) for i in range(6)]
    await assert_eventually(lambda: state["peak"] >= expected_peak, timeout=5, message="requests in flight")
    release.set()
    answers = await asyncio.gather(*calls)
    assert sorted(a.text for a in answers) == [str(i) for i in range(6)]
    assert state["peak"] == expected_peak
