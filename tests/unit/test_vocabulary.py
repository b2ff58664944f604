"""The mesh's vocabulary: subjects, event types and the subject-token rule, each spelled in one place."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
from pydantic import BaseModel, ValidationError

from libs.bus import subjects
from libs.bus.subjects import TOKEN_PATTERN, Token, check_token
from libs.events import EVENT_TYPE_PREFIX, EventTypes
from libs.schemas.hostevents import host_id_for
from services.gateway.webhooks.filters import EventFilter

ROOT = Path(__file__).resolve().parents[2]
HOMES = {ROOT / "libs" / "bus" / "subjects.py", ROOT / "libs" / "events.py"}
_SUBJECT = re.compile(r"^xpumesh\.(host|agent|svc|rpc|events|ctl|gateway|sim)\.[A-Za-z0-9_.*>-]+$")
_TYPE = re.compile(r"^io\.xpumesh\.[a-z0-9_.*]+$")
_TOKEN_REGEX = "A-Za-z0-9_-]{1,"
_SENDERS = frozenset({"new", "subscribe", "consumer", "publish", "request", "scatter", "pull_subscribe"})


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
    assert subjects.event_subject(EventTypes.ENDPOINT_CHANGED).startswith(subjects.ENDPOINT_EVENTS_ALL[:-1])


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


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _spelled(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """String constants that name a subject or an event type, or repeat the token regex, where code uses them:
    assigned to a name, passed as ``subject=``/``pattern=``, or first argument of a send/subscribe/new call."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            values.append(node.value)
        elif isinstance(node, ast.Call):
            values += [k.value for k in node.keywords if k.arg in ("subject", "pattern", "filter_subject")]
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in _SENDERS and node.args:
                values.append(node.args[0])
        for v in values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str) and id(v) not in skip:
                s = v.value
                if _SUBJECT.match(s) or _TYPE.match(s) or _TOKEN_REGEX in s:
                    yield v.lineno, s


def test_vocabulary_subjects_types_and_token_live_in_their_homes():
    offences = []
    for tree_dir in ("services", "libs", "agent", "xpumesh", "bench"):
        for path in sorted((ROOT / tree_dir).rglob("*.py")):
            if path in HOMES:
                continue
            for line, s in _spelled(ast.parse(path.read_text(encoding="utf-8"))):
                offences.append(f"{path.relative_to(ROOT)}:{line} {s!r}")
    assert offences == [], "spell these with libs.bus.subjects / libs.events.EventTypes:\n" + "\n".join(offences)
