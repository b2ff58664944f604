"""The identity guard: what a subject names, what a body may claim, and that the subject never comes from the body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from libs.bus import identity, subjects
from libs.bus.consumer import envelope
from libs.events import CloudEvent, InvalidEnvelope
from libs.schemas.commands import ActualStateReport
from libs.schemas.hostevents import ReportBounds, TelemetryReport


def test_identity_subjects_name_their_sender() -> None:
    assert subjects.host_of(subjects.host_subject("hz", "h-1", "state")) == ("hz", "h-1")
    assert subjects.service_of(subjects.service_heartbeat_subject("gateway", "g1")) == ("gateway", "g1")
    for other in (None, "", "xpumesh.host.hz.h-1", "xpumesh.agent.hz.h-1.cmd", "xpumesh.host.hz.h-1.state.x",
                  "other.host.hz.h-1.state", subjects.service_heartbeat_subject("gateway", "g1")):
        assert subjects.host_of(other) is None, other
    assert subjects.service_of("xpumesh.svc.gateway.g1.other") is None
    assert subjects.service_of(subjects.host_subject("hz", "h-1", "heartbeat")) is None


def test_identity_inbox_prefix_is_one_per_identity() -> None:
    assert subjects.inbox_prefix("host", "hangzhou", "hz-gpu-01") == "_INBOX.host.hangzhou.hz-gpu-01"
    assert subjects.inbox_prefix("service", "gateway") == "_INBOX.service.gateway"
    assert subjects.inbox_prefix("sim") == "_INBOX.sim"
    # names are tokens apart: site a_b host c and site a host b_c do not share an inbox
    assert subjects.inbox_prefix("host", "a_b", "c") != subjects.inbox_prefix("host", "a", "b_c")
    for bad in (("host", "hangzhou"), ("host", "hz", "h.1"), ("host", "hz", ">"), ("service", "*"), ("sim", "x"),
                ("nobody",)):
        with pytest.raises(ValueError):
            subjects.inbox_prefix(*bad)


def test_identity_checks_refuse_another_sender() -> None:
    own = subjects.host_subject("hz", "h-1", "telemetry")
    identity.check_host(own, "hz", "h-1")
    for site, host in (("hz", "h-2"), ("nb", "h-1"), (None, "h-1")):
        with pytest.raises(identity.IdentityMismatch):
            identity.check_host(own, site, host)
    with pytest.raises(identity.IdentityMismatch):
        identity.check_host(subjects.service_heartbeat_subject("h-1", "x"), "hz", "h-1")
    identity.check_service(subjects.service_heartbeat_subject("gateway", "g1"), "gateway.g1")
    for bad_subject, member in ((subjects.service_heartbeat_subject("gateway", "g1"), "gateway.g2"),
                                (subjects.host_subject("hz", "gateway", "heartbeat"), "gateway.g1"), (None, "a.b")):
        with pytest.raises(identity.IdentityMismatch):
            identity.check_service(bad_subject, member)


def test_identity_received_on_comes_from_the_receiver_only() -> None:
    raw = CloudEvent.new("io.xpumesh.host.state", "/agent/hz/h-1", {"a": 1}).to_bytes()
    _, event = envelope(raw, "xpumesh.host.hz.h-1.state")
    assert event.received_on == "xpumesh.host.hz.h-1.state"
    assert b"received" not in event.to_bytes() and CloudEvent.from_bytes(raw).received_on is None
    with pytest.raises(InvalidEnvelope):  # a body cannot set it, not even as an extension attribute
        CloudEvent.from_bytes(raw.replace(b'"data"', b'"_received_on":"xpumesh.host.hz.h-2.state","data"'))


def test_identity_report_bounds_refuse_the_far_future_only_when_asked() -> None:
    now = datetime.now(UTC)
    bounds = ReportBounds(300.0, now=now).context()
    state = {"host_id": "h-1", "site": "hz", "boot_id": "b", "seq": 0, "ts": (now + timedelta(days=1)).isoformat()}
    ActualStateReport.model_validate(state)  # an agent building its own report: unbounded
    with pytest.raises(ValidationError, match="ahead of the receiver's clock"):
        ActualStateReport.model_validate(state, context=bounds)
    naive = {**state, "ts": (now + timedelta(seconds=10)).replace(tzinfo=None).isoformat()}
    assert ActualStateReport.model_validate(naive, context=bounds).seq == 0
    tel = {"host_id": "h-1", "site": "hz", "ts": (now + timedelta(seconds=301)).isoformat(), "cpu_pct": 1,
           "mem_used_mib": 1, "mem_total_mib": 1}
    with pytest.raises(ValidationError):
        TelemetryReport.model_validate(tel, context=bounds)
