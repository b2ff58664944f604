"""Registry: membership, liveness, events, restart without loss."""

from __future__ import annotations

import asyncio
import signal
import time

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import STREAM_EVENTS, Bus
from libs.events import CloudEvent
from libs.schemas.registry import MemberKind, MemberPage, MemberQuery, MemberStatus, ServiceHealth
from services.registry.api import app as registry_app
from tests.conftest import assert_eventually, stream_events


async def _members(bus: Bus, **q: object) -> MemberPage:
    return await bus.request(subjects.rpc_subject("registry", "members.list"), MemberQuery.model_validate(q), MemberPage)


async def _event_types(bus: Bus, subject_filter: str) -> list[tuple[str, str | None, float]]:
    """(type, subject, arrival) of every event in the durable stream matching the filter."""
    return [(ev.type, ev.subject, ev.time.timestamp()) for _, ev in await stream_events(bus, subject_filter)]


async def test_registry_host_down_within_three_intervals_and_up_on_return(settings, running_service, bus) -> None:
    await running_service(registry_app)
    pub = HostPublisher(bus, "h-001", "hangzhou", "h-001", interval_s=settings.heartbeat_interval_s)
    await pub.heartbeat()
    await assert_eventually(lambda: _host_status(bus, "h-001", MemberStatus.UP), message="host registered up")

    silent_since = time.time()
    limit = 3 * settings.heartbeat_interval_s + 1.0
    await assert_eventually(lambda: _host_status(bus, "h-001", MemberStatus.DOWN), timeout=limit,
                            message="host marked down")
    events = await assert_eventually(lambda: _has(bus, "io.xpumesh.host.down"), timeout=3.0)
    down_at = next(t for (typ, _, t) in events if typ == "io.xpumesh.host.down")
    assert down_at - silent_since <= limit

    await pub.heartbeat()
    await assert_eventually(lambda: _host_status(bus, "h-001", MemberStatus.UP), message="host back up")
    await assert_eventually(lambda: _count(bus, "io.xpumesh.host.up", 2), timeout=3.0, message="second host.up")


async def _host_status(bus: Bus, host_id: str, status: MemberStatus) -> bool:
    page = await _members(bus, kind=MemberKind.HOST)
    return any(m.id == host_id and m.status == status for m in page.items)


async def _has(bus: Bus, etype: str) -> list[tuple[str, str | None, float]]:
    events = await _event_types(bus, subjects.EVENTS_ALL)
    return events if any(t == etype for (t, _, _) in events) else []


async def _count(bus: Bus, etype: str, n: int) -> bool:
    events = await _event_types(bus, subjects.EVENTS_ALL)
    return sum(1 for (t, _, _) in events if t == etype) >= n


async def test_registry_services_register_and_answer_catalog(settings, running_service, bus) -> None:
    await running_service(registry_app)
    page = await assert_eventually(lambda: _members_nonempty(bus, MemberKind.SERVICE))
    names = {m.name for m in page.items}
    assert "registry" in names
    assert all(m.status == MemberStatus.UP for m in page.items)


async def _members_nonempty(bus: Bus, kind: MemberKind) -> MemberPage | None:
    page = await _members(bus, kind=kind)
    return page if page.items else None


async def test_registry_garbage_is_counted_and_service_keeps_answering(settings, running_service, bus) -> None:
    from libs.metrics import BUS_REJECTED

    await running_service(registry_app)
    before = BUS_REJECTED.labels("registry", "on_host_heartbeat", "malformed_envelope")._value.get()
    for payload in (b"", b"not json", b"{}", b'{"specversion":"1.0"}', b"\xff\xfe", b"[1,2,3]"):
        await bus.nc.publish(subjects.host_subject("hz", "x", "heartbeat"), payload)
    bad_data = CloudEvent.new("io.xpumesh.host.heartbeat", "/test", {"kind": "host", "id": ""})
    await bus.nc.publish(subjects.host_subject("hz", "x", "heartbeat"), bad_data.to_bytes())
    await bus.nc.publish(subjects.rpc_subject("registry", "members.list"), b"garbage")
    await assert_eventually(
        lambda: BUS_REJECTED.labels("registry", "on_host_heartbeat", "malformed_envelope")._value.get() >= before + 6)
    await assert_eventually(
        lambda: BUS_REJECTED.labels("registry", "on_host_heartbeat", "invalid_data")._value.get() >= 1)
    page = await _members(bus)
    assert isinstance(page, MemberPage)


async def test_registry_sigkill_and_restart_loses_no_member(settings, spawn_service, bus) -> None:
    proc = spawn_service("registry")
    pubs = [HostPublisher(bus, f"h-{i}", "ningbo", f"h-{i}", interval_s=settings.heartbeat_interval_s) for i in range(20)]

    async def beat_all() -> None:
        for p in pubs:
            await p.heartbeat()

    async def registered() -> bool:
        await beat_all()
        try:
            page = await _members(bus, kind=MemberKind.HOST)
        except Exception:
            return False
        return len(page.items) == 20

    await assert_eventually(registered, timeout=20, interval=0.2, message="20 hosts registered")
    await asyncio.sleep(settings.registry.flush_interval_s * 2)  # let one batch of last-seen times land too
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=5)
    spawn_service("registry")

    async def all_back() -> bool:
        await beat_all()
        try:
            page = await _members(bus, kind=MemberKind.HOST)
        except Exception:
            return False
        return len(page.items) == 20 and all(m.status == MemberStatus.UP for m in page.items)

    await assert_eventually(all_back, timeout=20, interval=0.2, message="all 20 hosts known after restart")
    stream = await bus.js.stream_info(STREAM_EVENTS)
    assert stream.state.messages >= 20


async def test_registry_sigterm_after_nats_vanished_still_exits_within_the_budget(settings, spawn_service, bus,
                                                                                  nats_server) -> None:
    proc = spawn_service("registry")

    async def healthy() -> bool:
        try:
            await bus.request(subjects.rpc_subject("registry", "health"), {}, ServiceHealth, timeout=1.0)
        except Exception:
            return False
        return True

    await assert_eventually(healthy, timeout=20, interval=0.2, message="registry answers")
    nats_server.stop()  # the server goes away: the service's connection starts reconnecting
    await asyncio.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 15)
    elapsed = time.monotonic() - started
    # drain and close are each bounded by drain_timeout_s (1 s in these settings)
    assert code == 0 and elapsed < 3 * settings.bus.drain_timeout_s + 2, (code, elapsed)
