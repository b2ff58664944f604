"""The telemetry hot path's strict parse: never takes what the full models would not, with the same values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes, InvalidEnvelope
from libs.metrics import BUS_MESSAGES, BUS_REJECTED
from libs.schemas.hostevents import TelemetryReport
from libs.schemas.metrics import IngestStats, SummaryQuery
from services.metrics import wire
from services.metrics.api import app as metrics_app
from tests.integration.test_metrics_kit import announce, devices, eventually, fast_settings, rpc


def _event(**changes: Any) -> dict[str, Any]:
    data = {"schema_version": 1, "host_id": "h-1", "site": "lishui", "ts": datetime.now(UTC).isoformat(),
            "cpu_pct": 12.5, "mem_used_mib": 100, "mem_total_mib": 1000,
            "devices": [[0, 55.5, 100, 40.0, 100.0, 1], [1, 7, 0, 30, 80, 0]]}
    event = CloudEvent.new(EventTypes.HOST_TELEMETRY, "/agent/lishui/h-1", data, subject="h-1").model_dump(mode="json")
    for key, value in changes.items():
        target, name = (event["data"], key[5:]) if key.startswith("data_") else (event, key)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return event


VARIANTS: dict[str, bytes] = {
    "canonical": json.dumps(_event()).encode(),
    "no optional fields": json.dumps(_event(subject=None, datacontenttype=None, data_schema_version=None,
                                            data_devices=None)).encode(),
    "naive time": json.dumps(_event(data_ts="2030-01-02T03:04:05")).encode(),
    "numbers in strings": json.dumps(_event(data_cpu_pct="20.5")).encode(),
    "float slot": json.dumps(_event(data_devices=[[0.0, 1, 1, 1, 1, 1]])).encode(),
    "bool sample": json.dumps(_event(data_devices=[[0, True, 1, 1, 1, 1]])).encode(),
    "extension attribute": json.dumps(_event(traceparent="00-x")).encode(),
    "bad extension attribute": json.dumps(_event(**{"Bad-Name": 1})).encode(),
    "whitespace source": json.dumps(_event(source="/agent/a b")).encode(),
    "unit separator source": json.dumps(_event(source="/agent/a\x1fb")).encode(),
    "other type": json.dumps(_event(type=EventTypes.HOST_STATE)).encode(),
    "cpu over 100": json.dumps(_event(data_cpu_pct=101)).encode(),
    "extra data field": json.dumps(_event(data_gpu=1)).encode(),
    "short sample": json.dumps(_event(data_devices=[[0, 1, 1, 1, 1]])).encode(),
    "bad host id": json.dumps(_event(data_host_id="h 1")).encode(),
    "schema version 2": json.dumps(_event(data_schema_version=2)).encode(),
    "nan": json.dumps(_event(data_cpu_pct=float("nan"))).encode(),
    "deep nesting": b"{" * 5000,
    "not json": b"not json",
    "empty": b"",
}


def _by_models(raw: bytes) -> wire.Columns | None:
    try:
        event = CloudEvent.from_bytes(raw)
        if event.type != EventTypes.HOST_TELEMETRY:
            return None
        report = TelemetryReport.model_validate(event.data)
    except (InvalidEnvelope, ValidationError):
        return None
    cols = wire.Columns()
    cols.add_report(report)
    return cols


def test_metrics_wire_takes_only_what_the_models_take_with_the_same_values() -> None:
    taken = []
    for name, raw in VARIANTS.items():
        fast = wire.canonical(raw)
        if fast is None:
            continue
        taken.append(name)
        cols = wire.Columns()
        cols.add_event(fast)
        assert cols == _by_models(raw), name
    assert taken == ["canonical", "no optional fields", "naive time"]


def test_metrics_wire_leaves_lax_but_valid_reports_to_the_models() -> None:
    for name in ("numbers in strings", "float slot", "bool sample", "extension attribute"):
        assert wire.canonical(VARIANTS[name]) is None and _by_models(VARIANTS[name]) is not None, name


async def _one_host_known(settings: Any, running_service: Any, bus: Bus) -> str:
    """The metrics service running and knowing host h-1's two devices; returns h-1's telemetry subject."""
    await running_service(metrics_app, fast_settings(settings))
    await announce(bus, "h-1", "lishui", devices("gpu", 2))
    await eventually(lambda: rpc_devices(bus, 2))
    return subjects.host_subject("lishui", "h-1", "telemetry")


async def test_metrics_wire_lax_reports_are_ingested_and_garbage_counted(settings, running_service, bus: Bus) -> None:
    subject = await _one_host_known(settings, running_service, bus)
    before = BUS_REJECTED.labels("metrics", "on_telemetry", "malformed_envelope")._value.get()
    for raw in (VARIANTS["deep nesting"], VARIANTS["not json"], VARIANTS["numbers in strings"], VARIANTS["canonical"]):
        await bus.js.publish(subject, raw)
    await eventually(lambda: BUS_REJECTED.labels("metrics", "on_telemetry", "malformed_envelope")._value.get()
                     >= before + 2)
    await eventually(lambda: rpc_samples(bus, 4))  # two reports of two samples each, lax and canonical alike


async def rpc_devices(bus: Bus, n: int) -> bool:
    stats: IngestStats = await rpc(bus, "ingest.stats", SummaryQuery(), IngestStats)
    return stats.devices == n


async def rpc_samples(bus: Bus, n: int) -> bool:
    stats: IngestStats = await rpc(bus, "ingest.stats", SummaryQuery(), IngestStats)
    return stats.samples_total == n and stats.reports_total == 2


async def test_metrics_wire_same_event_published_twice_is_ingested_once(settings, running_service, bus: Bus) -> None:
    subject = await _one_host_known(settings, running_service, bus)
    before = BUS_MESSAGES.labels("metrics", "on_telemetry", "duplicate")._value.get()
    raw = VARIANTS["canonical"]
    for _ in range(2):  # no Nats-Msg-Id: JetStream keeps both; the consumer's processed-id check drops one
        await bus.js.publish(subject, raw)
    await eventually(lambda: BUS_MESSAGES.labels("metrics", "on_telemetry", "duplicate")._value.get() >= before + 1)

    async def written_once() -> bool:
        stats: IngestStats = await rpc(bus, "ingest.stats", SummaryQuery(), IngestStats)
        assert stats.reports_total <= 1, "the duplicate was ingested too"
        return stats.reports_total == 1 and stats.samples_total == 2

    await eventually(written_once)
