"""CloudEvents envelopes: round trip, validation, rejection of malformed input."""

from __future__ import annotations

import json

import pytest

from libs.bus.subjects import check_token, event_subject, event_type_from_subject
from libs.events import CloudEvent, InvalidEnvelope


def test_envelope_round_trip_keeps_every_attribute() -> None:
    ev = CloudEvent.new("io.xpumesh.workload.placed", "/scheduler", {"workload": "w-1", "n": 2}, subject="w-1")
    back = CloudEvent.from_bytes(ev.to_bytes())
    assert back == ev
    raw = json.loads(ev.to_bytes())
    assert raw["specversion"] == "1.0" and raw["datacontenttype"] == "application/json"
    assert set(raw) >= {"specversion", "id", "source", "type", "time", "subject", "data"}


def test_envelope_accepts_extension_attributes() -> None:
    ev = CloudEvent.from_bytes(json.dumps({"specversion": "1.0", "id": "1", "source": "/x", "type": "t",
                                           "traceparent": "00-abc", "site": "hz", "data": {}}).encode())
    assert ev.model_extra == {"traceparent": "00-abc", "site": "hz"}


@pytest.mark.parametrize("raw, where", [
    (b"", "envelope"),
    (b"not json", "envelope"),
    (b"[]", "envelope"),
    (b'{"specversion":"0.3","id":"1","source":"/x","type":"t"}', "specversion"),
    (b'{"specversion":"1.0","source":"/x","type":"t"}', "id"),
    (b'{"specversion":"1.0","id":"","source":"/x","type":"t"}', "id"),
    (b'{"specversion":"1.0","id":"1","source":"/x","type":"a b"}', "type"),
    (b'{"specversion":"1.0","id":"1","source":"/x","type":"t","time":"yesterday"}', "time"),
    (b'{"specversion":"1.0","id":"1","source":"/x","type":"t","data":"text"}', "data"),
    (b'{"specversion":"1.0","id":"1","source":"/x","type":"t","Bad-Ext":1}', "extension"),
    (b'{"specversion":"1.0","id":"1","source":"/x","type":"t","datacontenttype":"text/xml"}', "datacontenttype"),
])
def test_envelope_rejects_malformed_input_with_a_reason(raw: bytes, where: str) -> None:
    with pytest.raises(InvalidEnvelope) as exc:
        CloudEvent.from_bytes(raw)
    assert where in exc.value.reason or where == "envelope"
    assert raw.decode(errors="replace")[:30] not in exc.value.reason or not raw


def test_event_subject_carries_site_and_maps_back() -> None:
    subject = event_subject("io.xpumesh.workload.placed", "hangzhou")
    assert subject == "xpumesh.events.workload.placed.hangzhou"
    assert event_type_from_subject(subject) == "io.xpumesh.workload.placed"
    assert event_subject("io.xpumesh.alert.firing") == "xpumesh.events.alert.firing._"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "a*", "a>", "x" * 65])
def test_subject_tokens_reject_unsafe_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        check_token(bad)
