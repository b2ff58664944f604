"""Elastic quotas on real NATS and PostgreSQL, with a host that runs real processes: a tenant borrows idle
GPUs above its guarantee; a tenant below its own guarantee submits and the borrower's preemptible work is
reclaimed (with the reason in its history and events) while its non-preemptible work keeps running; the
usage view says what each holds and borrows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.events import EventTypes
from libs.schemas.scheduler import WorkloadState
from libs.schemas.tenancy import Quota, TenantQuota, TenantRef, TenantUsage
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually
from tests.integration.test_scheduler_kit import TestHost, fast, get, gpu, submit, wait_state, workload_events

SLEEP = {"default": {"command": ["sleep", "60"]}}


def job(name: str, count: int, *, preemptible: bool) -> dict[str, Any]:
    return {"name": name, "hardware": {"type": "gpu", "count": count}, "preemptible": preemptible,
            "resources": {"cpu": 1, "memory_gib": 1}, "variants": SLEEP}


async def set_quota(bus: Bus, tenant: str, quota: dict[str, Any]) -> None:
    await bus.request(subjects.rpc_subject("scheduler", "quotas.set"),
                      TenantQuota(tenant=tenant, **Quota.model_validate(quota).model_dump()), Quota)


async def usage(bus: Bus, tenant: str) -> TenantUsage:
    return await bus.request(subjects.rpc_subject("scheduler", "workloads.usage"), TenantRef(tenant=tenant),
                             TenantUsage)


async def test_elastic_quotas_borrow_then_reclaim_for_a_tenant_below_its_min(settings, running_service, bus,
                                                                             tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "g4", [gpu(i) for i in range(4)], tmp_path, cpus=32, memory_gib=256).start()
    try:
        await set_quota(bus, "alpha", {"devices": {"gpu": {"min": 1, "max": 4}}})
        await set_quota(bus, "beta", {"devices": {"gpu": {"min": 2, "max": 4}}})
        fixed = await submit(bus, job("a-fixed", 1, preemptible=False), tenant="alpha")
        await wait_state(bus, fixed.id, WorkloadState.RUNNING)
        lent = await submit(bus, job("a-lent", 2, preemptible=True), tenant="alpha")
        extra = await submit(bus, job("a-extra", 1, preemptible=True), tenant="alpha")
        for w in (lent, extra):
            view = await wait_state(bus, w.id, WorkloadState.RUNNING)
            assert any("borrowing idle capacity above the tenant's guaranteed min" in h.reason
                       for h in view.history), [h.reason for h in view.history]
        fixed_view = await get(bus, fixed.id)
        assert not any("borrowing" in h.reason for h in fixed_view.history)  # within alpha's min of 1
        a = await usage(bus, "alpha")
        assert a.devices == {"gpu": 4.0} and a.cpu == 3.0
        assert a.resources["gpu"].model_dump() == {"min": 1.0, "max": 4.0, "used": 4.0, "borrowed": 3.0}
        assert a.borrowing == sorted([lent.id, extra.id])
        assert a.dominant_share == 0.75

        # beta holds nothing and is guaranteed 2: its 2-GPU job reclaims alpha's preemptible borrowed work
        b_job = await submit(bus, job("b-job", 2, preemptible=False), tenant="beta")
        placed = await wait_state(bus, b_job.id, WorkloadState.RUNNING)
        assert len(placed.placement[0].devices) == 2

        async def reclaimed() -> str | None:
            view = await get(bus, lent.id)
            return next((h.reason for h in view.history if h.to_state == "preempted"), None)

        reason = await assert_eventually(reclaimed, timeout=15, message="a-lent reclaimed")
        assert reason.startswith(f"reclaimed for {b_job.id} of tenant beta, within its guarantee (gpu 2 of min 2)")
        assert "tenant alpha borrowed above its own min" in reason
        events = await workload_events(bus, lent.id)
        assert any(e.type == EventTypes.workload("preempted") and "reclaimed for" in str(e.data) for e in events), \
            [(e.type, e.data) for e in events]
        # the non-preemptible one and the smaller borrowed one (not needed for 2 GPUs) keep running
        assert (await get(bus, fixed.id)).state == WorkloadState.RUNNING
        assert (await get(bus, extra.id)).state == WorkloadState.RUNNING
        assert (await get(bus, lent.id)).state in (WorkloadState.PENDING, WorkloadState.PREEMPTED)

        # above its min beta only borrows idle capacity: its next GPU waits, nothing more is reclaimed
        b_more = await submit(bus, job("b-more", 1, preemptible=True), tenant="beta")

        async def explained() -> bool:
            v = await get(bus, b_more.id)
            return v.explanation is not None and v.state == WorkloadState.PENDING

        await assert_eventually(explained, timeout=10, message="b-more pending with an explanation")
        assert (await get(bus, extra.id)).state == WorkloadState.RUNNING
        b = await usage(bus, "beta")
        assert b.resources["gpu"].model_dump() == {"min": 2.0, "max": 4.0, "used": 2.0, "borrowed": 0.0}
        assert b.borrowing == []
        assert b.dominant_share == round(1 / 32, 4)  # its GPUs are within its min: only its 1 of 32 CPUs counts
        a = await usage(bus, "alpha")
        assert a.resources["gpu"].model_dump() == {"min": 1.0, "max": 4.0, "used": 2.0, "borrowed": 1.0}
        assert a.borrowing == [extra.id]
    finally:
        await host.stop()
