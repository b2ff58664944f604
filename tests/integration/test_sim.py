"""The simulator's fast path sends what a real agent's HostPublisher sends; its control subject works."""

from __future__ import annotations

import time
from typing import Any

from agent.sim.fleet import build_fleet
from agent.sim.host import SimHost
from agent.sim.main import Simulator
from libs.bus.connection import Bus
from libs.events import CloudEvent
from libs.schemas.hostevents import TelemetryReport
from libs.schemas.registry import Heartbeat
from libs.schemas.sim import SIM_CTL_SUBJECT, SimControlReply
from tests.conftest import assert_eventually


async def _capture(bus: Bus, subject: str) -> tuple[list[Any], Any]:
    got: list[Any] = []

    async def cb(msg: Any) -> None:
        got.append(msg)

    sub = await bus.nc.subscribe(subject, cb=cb)
    await bus.nc.flush()
    return got, sub


async def test_sim_fast_path_sends_what_host_publisher_sends(settings, bus: Bus) -> None:
    host = SimHost(build_fleet(11)[0], bus, interval_s=settings.heartbeat_interval_s)
    got, sub = await _capture(bus, f"xpumesh.host.{host.site}.{host.host_id}.*")
    await host.publisher.heartbeat()
    await host.send_heartbeat()
    await host.publisher.telemetry(host.telemetry_report(time.time(), 0.5))
    await host.send_telemetry(time.time(), 0.5)
    await assert_eventually(lambda: len(got) == 4, message="four messages")
    await sub.unsubscribe()
    events = [CloudEvent.from_bytes(m.data) for m in got]
    for slow, fast, (m_slow, m_fast) in ((events[0], events[1], got[:2]), (events[2], events[3], got[2:])):
        assert m_slow.subject == m_fast.subject
        assert (slow.type, slow.source, slow.subject) == (fast.type, fast.source, fast.subject)
        assert slow.id != fast.id and abs((fast.time - slow.time).total_seconds()) < 5
        assert (m_slow.headers or {}).get("Nats-Msg-Id") == (slow.id if "telemetry" in m_slow.subject else None)
        assert (m_fast.headers or {}).get("Nats-Msg-Id") == (fast.id if "telemetry" in m_fast.subject else None)
    assert Heartbeat.model_validate(events[0].data) == Heartbeat.model_validate(events[1].data)
    slow_t, fast_t = TelemetryReport.model_validate(events[2].data), TelemetryReport.model_validate(events[3].data)
    assert (slow_t.host_id, slow_t.site, len(slow_t.devices)) == (fast_t.host_id, fast_t.site, len(fast_t.devices))


async def test_sim_control_answers_and_rejects_bad_requests(settings, bus: Bus) -> None:
    hosts = [SimHost(s, bus, interval_s=settings.heartbeat_interval_s) for s in build_fleet(11)]
    sim = Simulator(settings, bus, hosts)
    await sim.subscribe()

    async def ctl(payload: bytes) -> SimControlReply:
        return SimControlReply.model_validate_json((await bus.nc.request(SIM_CTL_SUBJECT, payload, timeout=3)).data)

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
