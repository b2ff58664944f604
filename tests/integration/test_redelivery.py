"""A consumer of events that must not be lost retries a failing message without a cap on deliveries.

Before: every service consumer had ``max_deliver`` 5 one second apart, so a PostgreSQL outage of more than
about five seconds dropped ``host.down`` and its kin for good. Now a failed message comes back after a
growing delay for as long as it fails, is counted stuck past ``bus.stuck_deliveries`` and leaves that count
when it is finally handled.
"""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig

from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_STUCK, BUS_STUCK_TOTAL
from libs.service import Context, ServiceApp
from tests.conftest import assert_eventually


def _app(failures: int, handled: list[str], attempts: list[int]) -> ServiceApp[None]:
    app: ServiceApp[None] = ServiceApp("retrytest", uses_db=False)

    @app.consumer(STREAM_EVENTS, durable="retrytest-hosts", subject=subjects.HOST_EVENTS_ALL)
    async def on_host_event(event: CloudEvent, ctx: Context[None]) -> None:
        attempts.append(1)
        if len(attempts) <= failures:
            raise ConnectionRefusedError("database down")  # what an outage looks like to a handler
        handled.append(event.id)

    return app


def _fast(settings):
    return settings.model_copy(update={"bus": settings.bus.model_copy(update={
        "redelivery_base_s": 0.05, "redelivery_max_s": 0.2, "stuck_deliveries": 4})})


async def test_redelivery_retries_past_five_deliveries_until_handled(settings, running_service, bus: Bus) -> None:
    handled: list[str] = []
    attempts: list[int] = []
    await running_service(_app(8, handled, attempts), _fast(settings))
    stuck_before = BUS_STUCK_TOTAL.labels("retrytest", "on_host_event")._value.get()
    event = CloudEvent.new(EventTypes.HOST_DOWN, "/registry", {"id": "h1", "kind": "host"}, subject="h1")
    await bus.publish_event(event, site="hangzhou")
    await assert_eventually(lambda: handled == [event.id], timeout=15, message="the event handled at last")
    assert len(attempts) == 9
    assert BUS_STUCK_TOTAL.labels("retrytest", "on_host_event")._value.get() == stuck_before + 1
    assert BUS_STUCK.labels("retrytest", "on_host_event")._value.get() == 0  # handled: no longer stuck


async def test_redelivery_consumer_declared_with_a_cap_is_redeclared_without_one(settings, running_service,
                                                                                 bus: Bus) -> None:
    """A mesh upgraded in place: the durable consumer at the server still has the old cap of 5."""
    await bus.js.add_consumer(STREAM_EVENTS, ConsumerConfig(durable_name="retrytest-hosts", ack_policy=AckPolicy.EXPLICIT,
                                                            max_deliver=5, ack_wait=30.0,
                                                            filter_subject=subjects.HOST_EVENTS_ALL))
    handled: list[str] = []
    await running_service(_app(0, handled, []), _fast(settings))
    info = await bus.js.consumer_info(STREAM_EVENTS, "retrytest-hosts")
    assert info.config.max_deliver == -1
