"""The one encoder of a host's heartbeats and telemetry: exactly the canonical CloudEvent, for agent and simulator."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.publisher import HostPublisher, utc_json
from agent.sim.fleet import build_fleet
from agent.sim.host import SimHost
from libs import __version__
from libs.bus.connection import Bus
from libs.config import BusSettings
from libs.events import CloudEvent, EventTypes
from libs.schemas.hostevents import TelemetryReport
from libs.schemas.registry import Heartbeat, MemberKind
from services.metrics import wire

WHOLE = datetime(2025, 6, 3, 8, 14, 2, tzinfo=UTC)
FRACTION = datetime(2025, 6, 3, 8, 14, 2, 500, tzinfo=UTC)


def _publisher() -> HostPublisher:
    return HostPublisher(Bus(BusSettings(), name="unit"), "hz-a100-03", "hangzhou", "hz-a100-03", interval_s=5.0)


@pytest.mark.parametrize("at", [WHOLE, FRACTION])
def test_agent_publisher_utc_json_is_what_pydantic_writes(at: datetime) -> None:
    assert CloudEvent(id="x", source="/s", type="t", time=at).model_dump(mode="json")["time"] == utc_json(at)


@pytest.mark.parametrize("at", [WHOLE, FRACTION])
def test_agent_publisher_telemetry_is_the_canonical_event(at: datetime) -> None:
    pub = _publisher()
    report = TelemetryReport(host_id=pub.host_id, site=pub.site, ts=at, cpu_pct=41.2, mem_used_mib=612400,
                             mem_total_mib=2063600, devices=[(0, 87.5, 40960, 61.0, 342.8, 1), (1, 0.0, 0, 30.0, 40.0, 0)])
    raw, event_id = pub.telemetry_template().render(report.model_dump_json().encode(), event_id="e-1", at=at)
    expected = CloudEvent(id="e-1", source=pub.source, type=EventTypes.HOST_TELEMETRY, time=at, subject=pub.host_id,
                          data=report.model_dump(mode="json"))
    assert event_id == "e-1" and raw == expected.to_bytes()
    assert wire.canonical(raw) is not None


def test_agent_publisher_heartbeat_is_the_canonical_event() -> None:
    pub = _publisher()
    raw, _ = pub.heartbeat_template().render(event_id="hb-1", at=FRACTION)
    hb = Heartbeat(kind=MemberKind.HOST, id=pub.host_id, name=pub.hostname, site=pub.site, version=__version__,
                   interval_s=5.0)
    expected = CloudEvent(id="hb-1", source=pub.source, type=EventTypes.HOST_HEARTBEAT, time=FRACTION,
                          subject=pub.host_id, data=hb.model_dump(mode="json"))
    assert raw == expected.to_bytes()


def test_agent_publisher_ids_are_new_per_message() -> None:
    template = _publisher().telemetry_template()
    assert template.render(b"{}")[1] != template.render(b"{}")[1]


def test_agent_publisher_simulated_telemetry_is_the_agent_report_byte_for_byte() -> None:
    bus = Bus(BusSettings(), name="unit")
    for spec in build_fleet(40):
        host = SimHost(spec, bus, interval_s=5.0)
        if spec.devices:
            host.fault(0, None)
        for now, load in ((1_700_000_000.0, 0.15), (1_700_000_000.25, 0.95)):
            data = host.telemetry_json(now, load)
            assert TelemetryReport.model_validate_json(data).model_dump_json().encode() == data
            raw, _ = host.publisher.telemetry_template().render(data)
            assert wire.canonical(raw) is not None and CloudEvent.from_bytes(raw).to_bytes() == raw
