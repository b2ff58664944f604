"""Service workloads through the scheduler: readiness and URLs recorded per replica, endpoint sets
published as events and listed, replicas changed on a running service, sets emptied when it ends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import xpumesh.examples.echo as echo
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import InvalidRequest
from libs.events import EventTypes
from libs.schemas.endpoints import EndpointList, EndpointSet, EndpointsQuery
from libs.schemas.scheduler import WorkloadScale, WorkloadView
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually, stream_events
from tests.integration.test_scheduler_kit import TestHost, fast, get, submit, wait_state

ECHO = [sys.executable, echo.__file__]


def service_spec(name: str = "echo", replicas: int = 2, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "service", "replicas": replicas, "hardware": {"type": "cpu"},
            "service": {"port": 8000, "readiness_path": "/healthz"}, "variants": {"default": {"command": ECHO}},
            **extra}


async def endpoint_sets(bus: Bus, tenant: str | None = None) -> list[EndpointSet]:
    page = await bus.request(subjects.rpc_subject("scheduler", "endpoints.list"), EndpointsQuery(tenant=tenant),
                             EndpointList)
    return page.items


async def scale(bus: Bus, wid: str, replicas: int) -> WorkloadView:
    return await bus.request(subjects.rpc_subject("scheduler", "workloads.scale"),
                             WorkloadScale(id=wid, replicas=replicas), WorkloadView)


async def ready_urls(bus: Bus, wid: str, n: int) -> list[str]:
    async def check() -> list[str] | None:
        sets = [s for s in await endpoint_sets(bus) if s.workload_id == wid]
        urls = [r.url for r in sets[0].replicas] if sets else []
        return urls if len(urls) == n else None

    urls: list[str] = await assert_eventually(check, timeout=20, interval=0.1, message=f"{n} ready replicas of {wid}")
    return urls


async def test_services_replicas_come_into_rotation_scale_and_leave_it_when_stopped(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    s = s.model_copy(update={"agent": s.agent.model_copy(update={"readiness_interval_s": 0.1})})
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        view = await submit(bus, service_spec(), tenant="acme")
        await wait_state(bus, view.id, "running")
        urls = await ready_urls(bus, view.id, 2)
        assert len(set(urls)) == 2 and all(u.startswith("http://127.0.0.1:") for u in urls)
        placed = (await get(bus, view.id)).placement
        assert [(p.ready, p.simulated) for p in placed] == [(True, False), (True, False)]
        assert sorted(p.endpoint or "" for p in placed) == sorted(urls)
        assert [s.tenant for s in await endpoint_sets(bus, "acme")] == ["acme"]
        assert await endpoint_sets(bus, "other") == []

        await scale(bus, view.id, 3)
        await ready_urls(bus, view.id, 3)
        scaled = await scale(bus, view.id, 1)
        assert scaled.spec.replicas == 1 and [p.replica for p in scaled.placement] == [0]
        await ready_urls(bus, view.id, 1)
        await assert_eventually(lambda: [r.replica for r in host.executor.runs.values() if r.state.live] == [0],
                                timeout=10, message="replicas 1 and 2 stopped on the host")

        await bus.request(subjects.rpc_subject("scheduler", "workloads.stop"), {"id": view.id}, WorkloadView)
        await assert_eventually(lambda: _no_sets(bus), timeout=10, message="no endpoint set once stopped")
        events = [e for _, e in await stream_events(bus, subjects.ENDPOINT_EVENTS_ALL) if e.subject == view.id]
        assert events and all(e.type == EventTypes.ENDPOINT_CHANGED for e in events)
        sets = [EndpointSet.model_validate(e.data) for e in events]
        assert [x.version for x in sets] == sorted({x.version for x in sets})  # strictly newer each time
        assert sets[0].active and sets[0].replicas == [] and not sets[-1].active
        assert max(len(x.replicas) for x in sets) == 3
    finally:
        await host.stop()


async def _no_sets(bus: Bus) -> bool:
    return await endpoint_sets(bus) == []


async def test_services_scaling_a_job_is_refused(settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    view = await submit(bus, {"name": "job", "hardware": {"type": "gpu"}})
    try:
        await scale(bus, view.id, 2)
        raise AssertionError("scaling a job was accepted")
    except InvalidRequest as exc:
        assert "service" in (exc.detail or "")
