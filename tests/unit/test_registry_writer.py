"""The registry's writer step: what a failed write leaves behind."""

from __future__ import annotations

from typing import Any

import pytest

from libs.config import RegistrySettings
from libs.schemas.registry import Heartbeat, MemberKind
from services.registry.liveness import Table
from services.registry.state import RegistryState


class _Relay:
    pokes = 0

    def poke(self) -> None:
        self.pokes += 1


class _Bridge:
    applied: list[Any]

    def __init__(self) -> None:
        self.applied = []

    async def apply(self, transitions: list[Any], touched: list[Any]) -> None:
        self.applied.append((transitions, touched))


def _down_database() -> Any:
    raise ConnectionRefusedError("database down")


def _hb(member_id: str) -> Heartbeat:
    return Heartbeat(kind=MemberKind.HOST, id=member_id, name=member_id, site="hz", interval_s=1.0)


async def test_registry_writer_puts_writes_back_when_the_write_fails() -> None:
    table = Table()
    table.heartbeat(_hb("h1"))
    table.heartbeat(_hb("h2"))
    table.take_writes()
    table.heartbeat(_hb("h2"))  # only touched
    table.heartbeat(_hb("h3"))  # a new member: a transition
    relay, bridge = _Relay(), _Bridge()
    state = RegistryState(table=table, relay=relay, bridge=bridge, last_flush=0.0)  # type: ignore[arg-type]
    with pytest.raises(ConnectionRefusedError):
        await state.write(_down_database, RegistrySettings())  # type: ignore[arg-type]
    assert [t.member.id for t in table.transitions] == ["h3"]
    assert table.live["h2"].dirty and not table.live["h1"].dirty
    assert relay.pokes == 0 and bridge.applied == []
    transitions, touched = table.take_writes()
    assert [t.member.id for t in transitions] == ["h3"] and [m.id for m in touched] == ["h2"]


def test_registry_table_put_back_goes_ahead_of_newer_writes() -> None:
    table = Table()
    table.heartbeat(_hb("h1"))
    taken, touched = table.take_writes()
    table.heartbeat(_hb("h2"))
    table.put_back(taken, touched)
    assert [t.member.id for t in table.transitions] == ["h1", "h2"]
