"""A host speaks only for itself, and only about now: reports are checked against the subject they came on.

Host A's agent may publish only on ``xpumesh.host.<site>.hz-a.>`` (the NATS permissions); these
tests publish there, on the production subjects, messages whose bodies speak for host B, and
messages that try to outlast the present (a far-future time, a huge generation, a long heartbeat
interval). Every one must be refused, counted, and change nothing B had.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import NotFound
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_REJECTED
from libs.schemas.commands import ActualStateReport
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.metrics import IngestStats, SummaryQuery
from libs.schemas.registry import Heartbeat, Member, MemberKind, MemberPage, MemberQuery, MemberRef
from libs.schemas.scheduler import WorkloadState, WorkloadView
from services.inventory.api import app as inventory_app
from services.metrics.api import app as metrics_app
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually
from tests.integration.test_metrics_kit import fast_settings, inventory_host, registered
from tests.integration.test_scheduler_kit import TestHost, fast, get, gpu, submit, wait_state

SITE = "hangzhou"
MISMATCH = "identity_mismatch"


def rejected(service: str, handler: str, reason: str) -> float:
    value: float = BUS_REJECTED.labels(service, handler, reason)._value.get()
    return value


def counts(reason: str, *where: tuple[str, str]) -> dict[tuple[str, str], float]:
    return {w: rejected(*w, reason) for w in where}


async def all_counted(before: dict[tuple[str, str], float], reason: str) -> bool:
    return all(rejected(*w, reason) > n for w, n in before.items())


async def member(bus: Bus, member_id: str) -> Member | None:
    try:
        found: Member = await bus.request(subjects.rpc_subject("registry", "members.get"), MemberRef(id=member_id),
                                          Member)
    except NotFound:
        return None
    return found


async def members(bus: Bus, kind: MemberKind) -> list[Member]:
    page = await bus.request(subjects.rpc_subject("registry", "members.list"), MemberQuery(kind=kind), MemberPage)
    return page.items


def heartbeat(kind: MemberKind, member_id: str, *, site: str | None = SITE, name: str = "evil",
              interval_s: float = 0.5) -> bytes:
    hb = Heartbeat(kind=kind, id=member_id, name=name, site=site, version="1", interval_s=interval_s)
    etype = EventTypes.HOST_HEARTBEAT if kind == MemberKind.HOST else EventTypes.SERVICE_HEARTBEAT
    return CloudEvent.new(etype, f"/agent/{SITE}/hz-a", hb, subject=member_id).to_bytes()


def facts_of(host: TestHost) -> Any:
    return {"hostname": host.host_id, "arch": "x86_64", "os": "Ubuntu 22.04.4 LTS", "kernel": "6.5.0",
            "cpu_model": "Xeon", "cpu_sockets": 2, "cpu_cores": 32, "cpu_threads": 64, "memory_mib": 512 * 1024}


async def mesh_with_work_on_b(settings: Any, running_service: Any, bus: Bus,
                              tmp_path: Path) -> tuple[TestHost, HostPublisher, WorkloadView]:
    """Registry, inventory, scheduler and metrics running; host B known everywhere and running one replica;
    host A's publisher (its own subjects) for the attacker."""
    s = fast_settings(fast(settings))
    for app in (registry_app, inventory_app, scheduler_app, metrics_app):
        await running_service(app, s)
    b = await TestHost(bus, s, "hz-b", [gpu(0)], tmp_path).start()
    await registered(bus, "hz-b")
    await assert_eventually(lambda: member(bus, "hz-b"), message="hz-b registered")
    spec = {"name": "stays", "hardware": {"type": "gpu"},
            "variants": {"default": {"command": [sys.executable, "-c", "import time; time.sleep(60)"]}}}
    view = await wait_state(bus, (await submit(bus, spec)).id, WorkloadState.RUNNING)
    assert view.placement[0].host_id == "hz-b"
    return b, HostPublisher(bus, "hz-a", SITE, "hz-a", interval_s=0.5), view


async def assert_b_unchanged(bus: Bus, view: WorkloadView) -> None:
    """B as it was: its registry record, its inventory generation, devices and readings, its running replica."""
    b = await member(bus, "hz-b")
    assert b is not None and b.name == "hz-b" and b.kind == MemberKind.HOST
    inv = await inventory_host(bus, "hz-b")
    assert inv is not None and inv.generation == 1 and len(inv.devices) == 1 and inv.devices[0].telemetry is None
    now = await get(bus, view.id)
    assert now.state == WorkloadState.RUNNING and now.placement[0].host_id == "hz-b"
    assert now.placement[0].attempt == 1 and not any(h.to_state == "lost" for h in now.history)
    stats = await bus.request(subjects.rpc_subject("metrics", "ingest.stats"), SummaryQuery(), IngestStats)
    assert stats.samples_total == 0


async def test_identity_host_a_speaking_for_host_b_is_refused_counted_and_changes_nothing(
        settings, running_service, bus: Bus, tmp_path: Path) -> None:
    b, a, view = await mesh_with_work_on_b(settings, running_service, bus, tmp_path)
    try:
        before = counts(MISMATCH, ("registry", "on_host_heartbeat"), ("inventory", "on_capability"),
                        ("inventory", "on_telemetry"), ("scheduler", "on_capability"), ("scheduler", "on_state"),
                        ("metrics", "on_capability"), ("metrics", "on_telemetry"))
        own = lambda kind: subjects.host_subject(SITE, "hz-a", kind)  # noqa: E731
        await bus.publish(own("heartbeat"), heartbeat(MemberKind.HOST, "hz-b"))
        await bus.publish(own("heartbeat"), heartbeat(MemberKind.HOST, "hz-ghost"))
        await a.capability(CapabilityReport.model_validate(
            {"host_id": "hz-b", "site": SITE, "generation": 5, "facts": facts_of(b), "devices": []}))
        await a.state(ActualStateReport(host_id="hz-b", site=SITE, boot_id="forged", seq=1,
                                        ts=datetime.now(UTC), replicas=[]))
        await a.telemetry(TelemetryReport(host_id="hz-b", site=SITE, ts=datetime.now(UTC), cpu_pct=1,
                                          mem_used_mib=1, mem_total_mib=2, devices=[(0, 99.0, 1, 40.0, 100.0, 0)]))
        await assert_eventually(lambda: all_counted(before, MISMATCH), message="every forged report counted")
        await assert_b_unchanged(bus, view)
        assert await member(bus, "hz-ghost") is None
    finally:
        await b.stop()


async def test_identity_reports_from_the_future_and_long_intervals_are_refused(
        settings, running_service, bus: Bus, tmp_path: Path) -> None:
    b, a, view = await mesh_with_work_on_b(settings, running_service, bus, tmp_path)
    try:
        before = counts("invalid_data", ("registry", "on_host_heartbeat"), ("inventory", "on_capability"),
                        ("scheduler", "on_capability"), ("scheduler", "on_state"), ("metrics", "on_capability"))
        await a.bus.publish(subjects.host_subject(SITE, "hz-a", "heartbeat"),
                            heartbeat(MemberKind.HOST, "hz-a", interval_s=3600))
        # B's own subject, B's own id: a report made to win against every later one
        huge = CapabilityReport.model_validate({"host_id": "hz-b", "site": SITE, "generation": 10**15,
                                                "facts": facts_of(b), "devices": []})
        await b.publisher.capability(huge)
        await b.report_state(ActualStateReport(host_id="hz-b", site=SITE, boot_id="skewed", seq=0,
                                               ts=datetime.now(UTC) + timedelta(days=1), replicas=[]))
        await assert_eventually(lambda: all_counted(before, "invalid_data"), message="every bounded report counted")
        await assert_b_unchanged(bus, view)
        assert await member(bus, "hz-a") is None
    finally:
        await b.stop()


async def test_identity_heartbeats_speak_only_for_the_member_their_subject_names(
        settings, running_service, bus: Bus) -> None:
    await running_service(registry_app)
    host_before = rejected("registry", "on_host_heartbeat", MISMATCH)
    svc_before = rejected("registry", "on_service_heartbeat", MISMATCH)
    # a host posing as a service instance, and a service instance posing as another
    await bus.publish(subjects.host_subject(SITE, "hz-a", "heartbeat"),
                      heartbeat(MemberKind.SERVICE, "scheduler.fake", site=None, name="scheduler"))
    await bus.publish(subjects.service_heartbeat_subject("gateway", "g1"),
                      heartbeat(MemberKind.SERVICE, "scheduler.fake", site=None, name="scheduler"))
    await bus.publish(subjects.service_heartbeat_subject("gateway", "g1"), heartbeat(MemberKind.HOST, "hz-a"))
    await assert_eventually(lambda: rejected("registry", "on_host_heartbeat", MISMATCH) > host_before
                            and rejected("registry", "on_service_heartbeat", MISMATCH) >= svc_before + 2,
                            message="forged heartbeats counted")
    # an honest one is still taken
    await bus.publish(subjects.service_heartbeat_subject("gateway", "g1"),
                      heartbeat(MemberKind.SERVICE, "gateway.g1", site=None, name="gateway"))
    await assert_eventually(lambda: member(bus, "gateway.g1"), message="honest heartbeat taken")
    assert await member(bus, "scheduler.fake") is None and await member(bus, "hz-a") is None


async def test_identity_registry_refuses_new_members_beyond_its_bound(settings, running_service, bus: Bus) -> None:
    await running_service(registry_app, settings.model_copy(update={
        "registry": settings.registry.model_copy(update={"max_members": 2})}))
    await assert_eventually(lambda: members(bus, MemberKind.SERVICE), message="the registry registered itself")
    await HostPublisher(bus, "hz-1", SITE, "hz-1", interval_s=0.5).heartbeat()
    await assert_eventually(lambda: member(bus, "hz-1"), message="first host taken")
    before = rejected("registry", "on_host_heartbeat", "registry_full")
    await HostPublisher(bus, "hz-2", SITE, "hz-2", interval_s=0.5).heartbeat()
    await assert_eventually(lambda: rejected("registry", "on_host_heartbeat", "registry_full") > before,
                            message="the new member beyond the bound counted")
    assert await member(bus, "hz-2") is None
