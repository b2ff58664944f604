"""The mesh's vocabulary: subjects, event types and the subject-token rule, each spelled in one place."""

from __future__ import annotations

import re
from typing import get_args, get_type_hints

import pytest
from pydantic import BaseModel, ValidationError

from libs.bus import subjects
from libs.bus.subjects import TOKEN_PATTERN, Token, check_token
from libs.events import EVENT_TYPE_PREFIX, EventTypes
from libs.schemas.hostevents import host_id_for
from services.gateway.webhooks.filters import EventFilter


class _Ids(BaseModel):
    site: Token


def test_vocabulary_token_pattern_accepts_tokens_only():
    assert _Ids(site="hang-zhou_1").site == "hang-zhou_1"
    for bad in ("", "a.b", "a b", "x" * 65, "a>", "*"):
        with pytest.raises(ValidationError):
            _Ids(site=bad)
        with pytest.raises(ValueError):
            check_token(bad)
    assert re.fullmatch(TOKEN_PATTERN, "x" * 64)


def test_vocabulary_host_id_for_makes_a_token():
    assert check_token(host_id_for("gpu-01.dc.example.com")) == "gpu-01-dc-example-com"
    assert check_token(host_id_for("é" * 80)) == "host"


def test_vocabulary_event_families_cover_their_events():
    assert subjects.HOST_EVENTS_ALL == "xpumesh.events.host.>"
    assert subjects.events_of("") == subjects.EVENTS_ALL
    assert subjects.event_subject(EventTypes.HOST_DOWN, "hz").startswith(subjects.HOST_EVENTS_ALL[:-1])
    assert subjects.event_subject(EventTypes.DEVICE_UNHEALTHY, "hz").startswith(subjects.DEVICE_EVENTS_ALL[:-1])
    assert subjects.event_subject(EventTypes.workload("placed")).startswith(subjects.WORKLOAD_EVENTS_ALL[:-1])
    assert EventTypes.workload("placed").startswith(EventTypes.WORKLOAD_PREFIX)


@pytest.mark.parametrize("types, site, expected", [
    (["io.xpumesh.workload.*"], None, "xpumesh.events.workload.>"),
    (["io.xpumesh.*"], None, "xpumesh.events.>"),
    (["io.xpumesh.device.unhealthy"], "hz", "xpumesh.events.device.unhealthy.hz"),
    (["io.xpumesh.device.unhealthy"], None, "xpumesh.events.device.unhealthy.*"),
    (["io.xpumesh.device.*", "io.xpumesh.host.*"], None, "xpumesh.events.>"),
])
def test_vocabulary_webhook_filters_narrow_to_one_subject(types: list[str], site: str | None, expected: str):
    assert EventFilter(types=tuple(types), site=site).nats_filter() == expected


def test_vocabulary_telemetry_fast_path_names_the_telemetry_type():
    from services.metrics import wire

    literal = get_type_hints(wire.Event)["type"]
    assert get_args(literal) == (EventTypes.HOST_TELEMETRY,)


def test_vocabulary_event_types_share_the_prefix():
    names = [n for n in vars(EventTypes) if n.isupper()]
    assert len(names) > 20
    assert all(getattr(EventTypes, n).startswith(EVENT_TYPE_PREFIX) for n in names)
    assert len({getattr(EventTypes, n) for n in names}) == len(names)
