"""Garbage on any subject a service listens to is counted and dropped; the service keeps answering.

The test walks every service's declared endpoints, subscriptions and consumers, so a new
handler is covered without anyone remembering to add a case.
"""

from __future__ import annotations

import importlib

import pytest

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.metrics import BUS_REJECTED
from libs.schemas.registry import ServiceHealth
from libs.service import ServiceApp
from tests.conftest import assert_eventually
from xpumesh.cli import SERVICE_APPS

GARBAGE = (b"", b"\x00\xff\xfe", b"not json", b"[]", b'{"specversion":"1.0"}', b"{" * 5000)


def concrete(subject: str) -> str:
    return subject.replace(">", "garbage.x").replace("*", "garbage")


def _rejected(service: str) -> float:
    total = 0.0
    for metric in BUS_REJECTED.collect():
        for sample in metric.samples:
            if sample.labels.get("service") == service and sample.name.endswith("_total"):
                total += sample.value
    return total


@pytest.mark.parametrize("service", sorted(SERVICE_APPS))
async def test_service_counts_and_drops_garbage_on_every_subject_and_keeps_answering(
        service: str, settings, running_service, bus: Bus) -> None:
    app: ServiceApp = importlib.import_module(SERVICE_APPS[service]).app
    await running_service(app)
    before = _rejected(service)
    targets = [concrete(s.subject) for s in app.subscriptions]
    targets += [concrete(c.subject) for c in app.consumers]
    for subject in targets:
        for payload in GARBAGE:
            if subject.startswith("xpumesh.events.") or ".capability" in subject or ".state" in subject \
                    or ".telemetry" in subject or ".cmd" in subject:
                await bus.js.publish(subject, payload)
            else:
                await bus.nc.publish(subject, payload)
    for name in app.endpoints:
        for payload in GARBAGE:
            try:
                await bus.nc.request(subjects.rpc_subject(service, name), payload, timeout=3)
            except Exception as exc:  # a garbage request must still get an answer
                raise AssertionError(f"{service}.{name} did not answer garbage: {type(exc).__name__}") from None
    expected = len(targets) * len(GARBAGE) + len(app.endpoints) * 1  # at least the non-JSON request per endpoint
    await assert_eventually(lambda: _rejected(service) - before >= expected, timeout=15,
                            message=f"{service} counted its garbage")
    health = await bus.request(subjects.rpc_subject(service, "health"), None, ServiceHealth)
    assert health.service == service
