"""The simulator's hosts send what a real agent sends, through the same publisher; its control subject works."""

from __future__ import annotations

import time
from typing import Any

from agent.sim.fleet import build_fleet
from agent.sim.host import SimHost
from agent.sim.main import Simulator
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.events import CloudEvent
from libs.schemas.hostevents import TelemetryReport
from libs.schemas.registry import Heartbeat
from libs.schemas.sim import SimControlReply
from services.metrics import wire
from tests.conftest import assert_eventually


async def _capture(bus: Bus, subject: str) -> tuple[list[Any], Any]:
    got: list[Any] = []

    async def cb(msg: Any) -> None:
        got.append(msg)

    sub = await bus.nc.subscribe(subject, cb=cb)
    await bus.nc.flush()
    return got, sub


async def test_sim_host_sends_canonical_heartbeat_and_telemetry(settings, bus: Bus) -> None:
    spec = next(s for s in build_fleet(11) if s.devices)
    host = SimHost(spec, bus, interval_s=settings.heartbeat_interval_s)
    got, sub = await _capture(bus, f"xpumesh.host.{host.site}.{host.host_id}.*")
    await host.publisher.heartbeat()
    await host.send_telemetry(time.time(), 0.5)
    await assert_eventually(lambda: len(got) == 2, message="two messages")
    await sub.unsubscribe()
    heartbeat, telemetry = got
    assert heartbeat.subject.endswith(".heartbeat") and telemetry.subject.endswith(".telemetry")
    hb = CloudEvent.from_bytes(heartbeat.data)
    assert Heartbeat.model_validate(hb.data).id == host.host_id and hb.source == host.publisher.source
    assert (heartbeat.headers or {}).get("Nats-Msg-Id") is None
    event = CloudEvent.from_bytes(telemetry.data)
    assert event.to_bytes() == telemetry.data  # byte for byte the canonical envelope
    assert wire.canonical(telemetry.data) is not None  # the metrics service's fast path takes it
    assert (telemetry.headers or {}).get("Nats-Msg-Id") == event.id
    report = TelemetryReport.model_validate(event.data)
    assert (report.host_id, report.site, len(report.devices)) == (host.host_id, host.site, len(spec.devices))


async def test_sim_control_answers_and_rejects_bad_requests(settings, bus: Bus) -> None:
    hosts = [SimHost(s, bus, interval_s=settings.heartbeat_interval_s) for s in build_fleet(11)]
    sim = Simulator(settings, bus, hosts)
    await sim.subscribe()

    async def ctl(payload: bytes) -> SimControlReply:
        return SimControlReply.model_validate_json((await bus.nc.request(subjects.SIM_CONTROL, payload, timeout=3)).data)

    listing = await ctl(b'{"action":"list"}')
    assert len(listing.hosts) == 11 and len({h.site for h in listing.hosts}) == 11
    target = next(h for h in listing.hosts if h.devices)
    reply = await ctl(f'{{"action":"fault","host_id":"{target.host_id}","device_index":0}}'.encode())
    assert reply.ok and reply.hosts[0].faulty == [0]
    assert (await ctl(f'{{"action":"host_down","host_id":"{target.host_id}"}}'.encode())).hosts[0].up is False
    for bad in (b"garbage", b'{"action":"fault"}', b'{"action":"explode","host_id":"x"}',
                f'{{"action":"fault","host_id":"{target.host_id}","device_index":99}}'.encode()):
        answer = await ctl(bad)
        assert not answer.ok and answer.detail
    stats = await ctl(b'{"action":"stats"}')
    assert stats.ok and stats.stats["faults"] == 1 and stats.stats["losses"] == 1
