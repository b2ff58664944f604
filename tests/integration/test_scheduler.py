"""Scheduler: the workload lifecycle on real NATS and PostgreSQL, with hosts that run real processes."""

from __future__ import annotations

import sys
from pathlib import Path

from libs.schemas.commands import LogsRequest
from libs.schemas.scheduler import WorkloadState
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually
from tests.integration.test_scheduler_kit import TestHost, fast, get, gpu, submit, wait_state, workload_events

PY = sys.executable


async def test_scheduler_lifecycle_runs_to_succeeded_with_history_and_events(settings, running_service, bus,
                                                                             tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-gpu-1", [gpu(0), gpu(1)], tmp_path).start()
    try:
        spec = {"name": "hello", "hardware": {"type": "gpu", "count": 1},
                "variants": {"nvidia": {"command": [PY, "-c", "import os, time; time.sleep(0.5); "
                                                               "print(os.environ['CUDA_VISIBLE_DEVICES'])"]}}}
        view = await submit(bus, spec)
        assert view.state == WorkloadState.PENDING and view.created
        done = await wait_state(bus, view.id, WorkloadState.SUCCEEDED)
        rep = done.placement[0]
        assert rep.host_id == "hz-gpu-1" and rep.exit_code == 0 and rep.attempt == 1
        assert rep.devices[0].id in (host.device_id(0), host.device_id(1))
        states = [h.to_state for h in done.history if h.replica is None]
        assert states[0] == "pending" and states[-1] == "succeeded"
        assert states.index("placed") < states.index("running") < states.index("succeeded")
        types = [e.type.rsplit(".", 1)[1] for e in await workload_events(bus, view.id)]
        assert types[0] == "pending" and "placed" in types and "running" in types and types[-1] == "succeeded"
        event = (await workload_events(bus, view.id))[-1]
        assert event.data["placements"][0]["host_id"] == "hz-gpu-1"
    finally:
        await host.stop()


async def test_scheduler_failed_replica_restarts_per_policy_then_fails(settings, running_service, bus,
                                                                       tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-gpu-1", [gpu(0)], tmp_path).start()
    try:
        spec = {"name": "flaky", "hardware": {"type": "gpu"}, "max_restarts": 1,
                "variants": {"default": {"command": ["/bin/sh", "-c", "echo oops; exit 3"]}}}
        view = await submit(bus, spec)
        failed = await wait_state(bus, view.id, WorkloadState.FAILED)
        assert failed.restarts == 1 and failed.placement[0].attempt == 2
        assert failed.placement[0].exit_code == 3 and "code 3" in (failed.message or "")
        states = [h.to_state for h in failed.history if h.replica is None]
        assert "rescheduled" in states and states[-1] == "failed"
    finally:
        await host.stop()


async def test_scheduler_cuda_requirement_never_lands_on_an_old_driver_host(settings, running_service, bus,
                                                                            tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    old = await TestHost(bus, s, "old-drv", [gpu(i, driver="535.104.05", runtimes={"cuda": "12.2"}) for i in range(4)],
                         tmp_path).start()
    new = await TestHost(bus, s, "new-drv", [gpu(0, driver="550.54.15", runtimes={"cuda": "12.4"})], tmp_path).start()
    try:
        spec = {"name": "needs-124", "hardware": {"type": "gpu"}, "runtime": {"requires": ["cuda>=12.4"]},
                "variants": {"default": {"command": ["sleep", "30"]}}}
        first = await submit(bus, spec)
        running = await wait_state(bus, first.id, WorkloadState.RUNNING)
        assert running.placement[0].host_id == "new-drv"
        second = await submit(bus, spec)

        async def explained() -> bool:
            v = await get(bus, second.id)
            return v.explanation is not None and "driver too old for cuda>=12.4" in v.explanation.reason

        await assert_eventually(explained, timeout=10, message="pending with the driver reason")
        view = await get(bus, second.id)
        assert view.state == WorkloadState.PENDING and all(r.host_id is None for r in view.placement)
        assert view.explanation is not None and view.explanation.counts.get("driver too old for cuda>=12.4") == 1
        events = await workload_events(bus, second.id)
        assert any("driver too old" in (e.data.get("explanation") or {}).get("reason", "") for e in events)
    finally:
        await old.stop()
        await new.stop()


async def test_scheduler_two_half_shares_run_on_one_device(settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    try:
        spec = {"name": "half", "hardware": {"type": "gpu", "share": 0.5, "memory_gib": 20},
                "variants": {"default": {"command": ["/bin/sh", "-c", "echo share=$XPUMESH_SHARE; sleep 30"]}}}
        a, b = await submit(bus, spec), await submit(bus, spec)
        va = await wait_state(bus, a.id, WorkloadState.RUNNING)
        vb = await wait_state(bus, b.id, WorkloadState.RUNNING)
        assert va.placement[0].devices[0].id == vb.placement[0].devices[0].id == host.device_id(0)
        assert va.placement[0].devices[0].share == 0.5
        third = await submit(bus, spec)
        await assert_eventually(lambda: _explained(bus, third.id), timeout=10)
        assert (await get(bus, third.id)).state == WorkloadState.PENDING
    finally:
        await host.stop()


async def _explained(bus, wid: str) -> bool:
    view = await get(bus, wid)
    return view.explanation is not None


async def test_scheduler_gang_places_all_replicas_or_none(settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    hosts = [await TestHost(bus, s, f"hz-{i}", [gpu(0)], tmp_path).start() for i in range(2)]
    try:
        spec = {"name": "gang", "hardware": {"type": "gpu"}, "replicas": 3, "gang": True,
                "variants": {"default": {"command": ["/bin/sh", "-c", "echo peers=$XPUMESH_PEERS; sleep 30"]}}}
        view = await submit(bus, spec)
        await assert_eventually(lambda: _explained(bus, view.id), timeout=10)
        waiting = await get(bus, view.id)
        assert waiting.state == WorkloadState.PENDING and all(r.host_id is None for r in waiting.placement)
        assert waiting.explanation is not None and "gang of 3" in waiting.explanation.reason
        hosts.append(await TestHost(bus, s, "hz-2", [gpu(0)], tmp_path).start())
        running = await wait_state(bus, view.id, WorkloadState.RUNNING)
        assert sorted(r.host_id or "" for r in running.placement) == ["hz-0", "hz-1", "hz-2"]
        logs = await hosts[0].executor.logs(_logs_request(running.id, next(
            r.replica for r in running.placement if r.host_id == "hz-0")))
        assert logs.text.startswith("peers=") and "hz-2" in logs.text
    finally:
        for h in hosts:
            await h.stop()


def _logs_request(wid: str, replica: int) -> LogsRequest:
    return LogsRequest(workload_id=wid, replica=replica)


async def test_scheduler_preemption_stops_low_priority_work_for_high(settings, running_service, bus,
                                                                      tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "hz-1", [gpu(0)], tmp_path).start()
    try:
        sleeper = {"default": {"command": ["sleep", "30"]}}
        low = await submit(bus, {"name": "low", "hardware": {"type": "gpu"}, "priority": 10, "preemptible": True,
                                 "variants": sleeper})
        await wait_state(bus, low.id, WorkloadState.RUNNING)
        high = await submit(bus, {"name": "high", "hardware": {"type": "gpu"}, "priority": 900, "variants": sleeper})
        await wait_state(bus, high.id, WorkloadState.RUNNING)
        victim = await wait_state(bus, low.id, WorkloadState.PREEMPTED)
        assert any(h.to_state == "preempted" and high.id in h.reason for h in victim.history)
        await assert_eventually(lambda: not [r for r in host.executor.runs.values()
                                             if r.workload_id == low.id and r.state.live], timeout=10,
                                message="the preempted process was stopped on the host")
        types = [e.type for e in await workload_events(bus, low.id)]
        assert "io.xpumesh.workload.preempted" in types
    finally:
        await host.stop()


async def test_scheduler_rejects_specs_that_can_never_run_naming_the_field(settings, running_service, bus) -> None:
    import pytest

    from libs.bus.errors import InvalidRequest
    from libs.metrics import BUS_REJECTED

    await running_service(scheduler_app, fast(settings))
    before = BUS_REJECTED.labels("scheduler", "workloads.submit", "invalid_request")._value.get()
    cases = [
        ({"type": "gpu", "model": "Z9000*"}, {}, "body.hardware.model"),
        ({"type": "gpu", "vendor": "acme"}, {}, "body.hardware.vendor"),
        ({"type": "npu", "vendor": "nvidia"}, {}, "body.hardware.vendor"),
        ({"type": "gpu", "vendor": "nvidia", "memory_gib": 4096}, {}, "body.hardware.memory_gib"),
        ({"type": "gpu"}, {"requires": ["cuda>=99"]}, "body.runtime.requires.0"),
        ({"type": "gpu"}, {"framework": "nosuchframework"}, "body.runtime.framework"),
        ({"type": "gpu", "vendor": "nvidia"}, {"framework": "pytorch", "framework_version": "0.1"},
         "body.runtime.framework_version"),
    ]
    for hardware, runtime, loc in cases:
        with pytest.raises(InvalidRequest) as info:
            await submit(bus, {"name": "bad", "hardware": hardware, "runtime": runtime})
        assert [e["loc"] for e in info.value.errors] == [loc], (hardware, runtime, info.value.errors)
        assert info.value.errors[0]["msg"]
    assert BUS_REJECTED.labels("scheduler", "workloads.submit", "invalid_request")._value.get() == before + len(cases)
    ok = await submit(bus, {"name": "fine", "hardware": {"type": "gpu", "model": "A100*"},
                            "runtime": {"framework": "pytorch", "framework_version": "2.4", "requires": ["cuda>=12.1"]}})
    assert ok.state == WorkloadState.PENDING


async def test_scheduler_idempotency_key_returns_the_same_workload(settings, running_service, bus) -> None:
    import pytest

    from libs.bus.errors import Conflict, NotFound
    from libs.bus.subjects import rpc_subject
    from libs.schemas.scheduler import WorkloadPage, WorkloadQuery, WorkloadRef, WorkloadView

    await running_service(scheduler_app, fast(settings))
    spec = {"name": "once", "hardware": {"type": "gpu"}}
    first = await submit(bus, spec, tenant="acme", key="k-1")
    again = await submit(bus, spec, tenant="acme", key="k-1")
    assert again.id == first.id and first.created and not again.created
    other_tenant = await submit(bus, spec, tenant="zeta", key="k-1")
    assert other_tenant.id != first.id
    with pytest.raises(Conflict):
        await submit(bus, {**spec, "name": "different"}, tenant="acme", key="k-1")
    page = await bus.request(rpc_subject("scheduler", "workloads.list"), WorkloadQuery(tenant="acme"), WorkloadPage)
    assert [w.id for w in page.items] == [first.id]
    everyone = await bus.request(rpc_subject("scheduler", "workloads.list"), WorkloadQuery(limit=1), WorkloadPage)
    rest = await bus.request(rpc_subject("scheduler", "workloads.list"),
                             WorkloadQuery(limit=5, after=everyone.next_cursor), WorkloadPage)
    assert [w.id for w in everyone.items + rest.items] == [other_tenant.id, first.id] and rest.next_cursor is None
    with pytest.raises(NotFound):
        await bus.request(rpc_subject("scheduler", "workloads.get"), WorkloadRef(id=first.id, tenant="zeta"),
                          WorkloadView)
