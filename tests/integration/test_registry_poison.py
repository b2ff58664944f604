"""Registry: one bad heartbeat cannot stall every member's transitions.

Before: a heartbeat with a NUL in its name, version, address or meta passed validation, and the
batch that upserted it failed in PostgreSQL (no text column holds a NUL); the writer put the batch
back and failed again every sweep, so no host anywhere went up or down any more.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import RegistrySettings
from libs.db import make_engine, make_sessionmaker
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_MESSAGES, BUS_REJECTED
from libs.schemas.registry import Heartbeat, Member, MemberKind, MemberStatus
from services.registry import store
from services.registry.api import app as registry_app
from services.registry.liveness import Live, Table, Transition
from services.registry.state import RegistryState
from tests.conftest import assert_eventually, stream_events


@pytest.mark.parametrize("field,value", [("name", "h\x00"), ("version", "1\x00"), ("address", "10.0.0.1\x00"),
                                         ("meta", {"k": "v\x00"}), ("meta", {"k\x00": "v"}),
                                         ("meta", {"k": "v" * 257}), ("meta", {f"k{i}": "v" for i in range(33)})])
def test_registry_heartbeat_with_unstorable_fields_is_invalid(field: str, value: object) -> None:
    fields = {"kind": "host", "id": "h1", "name": "h1", "site": "hz", "interval_s": 1.0, field: value}
    with pytest.raises(ValidationError):
        Heartbeat.model_validate(fields)


async def test_registry_nul_heartbeat_is_rejected_and_other_hosts_still_come_up(settings, running_service,
                                                                                bus: Bus) -> None:
    await running_service(registry_app)
    before = BUS_REJECTED.labels("registry", "on_host_heartbeat", "invalid_data")._value.get()
    bad = Heartbeat.model_construct(kind=MemberKind.HOST, id="h-bad", name="h-bad\x00", site="hz", version="",
                                    interval_s=0.5, address=None, meta={})
    event = CloudEvent.new(EventTypes.HOST_HEARTBEAT, "/agent/hz/h-bad", bad.model_dump(mode="json"), subject="h-bad")
    await bus.publish(subjects.host_subject("hz", "h-bad", "heartbeat"), event.to_bytes())
    await assert_eventually(lambda: BUS_REJECTED.labels("registry", "on_host_heartbeat",
                                                        "invalid_data")._value.get() >= before + 1)
    good = HostPublisher(bus, "h-good", "hz", "h-good", interval_s=0.5)
    await good.heartbeat()
    await assert_eventually(lambda: _up_event(bus, "h-good"), timeout=5, message="host.up of the good host")


async def _up_event(bus: Bus, host_id: str) -> bool:
    return any(e.type == EventTypes.HOST_UP and e.subject == host_id
               for _, e in await stream_events(bus, subjects.HOST_EVENTS_ALL))


def _member(member_id: str, name: str) -> Member:
    now = datetime.now(UTC)
    return Member.model_construct(kind=MemberKind.HOST, id=member_id, name=name, site="hz", version="",
                                  status=MemberStatus.UP, interval_s=1.0, address=None, meta={}, first_seen=now,
                                  last_seen=now, status_changed_at=now)


class _Relay:
    def poke(self) -> None:
        pass


class _Bridge:
    async def apply(self, transitions: list[Transition], touched: list[Member]) -> None:
        pass


async def test_registry_writer_drops_only_the_member_postgresql_refuses(settings, database_url: str) -> None:
    """The writer's own isolation, for whatever gets past validation: the batch fails, each member is written
    alone, the one PostgreSQL refuses is dropped and counted, the others are stored with their events."""
    engine = make_engine(database_url, settings.db)
    sessions = make_sessionmaker(engine)
    try:
        table = Table()
        for m in (_member("h1", "h1"), _member("h2", "bad\x00name"), _member("h3", "h3")):
            table.live[m.id] = Live(m, time.monotonic())  # fresh: the sweep leaves them up
            table.transitions.append(Transition(m, EventTypes.HOST_UP))
        state = RegistryState(table=table, relay=_Relay(), bridge=_Bridge())  # type: ignore[arg-type]
        before = BUS_MESSAGES.labels("registry", "writer", "rejected")._value.get()
        await state.write(sessions, RegistrySettings(flush_interval_s=3600))
        assert table.transitions == []  # nothing left to retry for ever
        assert BUS_MESSAGES.labels("registry", "writer", "rejected")._value.get() == before + 1
        async with sessions() as session:
            stored = {m.id for m in await store.list_members(session)}
        assert stored == {"h1", "h3"}
    finally:
        await engine.dispose()
