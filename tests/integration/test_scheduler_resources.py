"""Scheduler: a host's CPUs and memory as capacity, on real NATS and PostgreSQL with hosts that run real
processes: CPU-only work, a GPU job waiting for cores, requests no host can hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.bus import subjects
from libs.bus.errors import InvalidRequest
from libs.schemas.scheduler import WorkloadRef, WorkloadState, WorkloadView
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually
from tests.integration.test_scheduler_kit import TestHost, fast, get, gpu, submit, wait_state, workload_events

SLEEP = {"default": {"command": ["sleep", "30"]}}


async def test_scheduler_resources_above_every_host_are_refused_naming_the_field(settings, running_service,
                                                                                 bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "big", [gpu(0)], tmp_path, cpus=62, memory_gib=500).start()
    try:
        async def known() -> bool:  # the scheduler has the host's report
            try:
                await submit(bus, {"name": "probe", "hardware": {"type": "gpu"}, "resources": {"cpu": 63}})
            except InvalidRequest:
                return True
            return False

        await assert_eventually(known, timeout=10)
        cases = [({"cpu": 63}, None, "body.resources.cpu"), ({"memory_gib": 501}, None, "body.resources.memory_gib"),
                 (None, [{"type": "gpu"}, {"type": "cpu", "resources": {"cpu": 64}}], "body.hardware.1.resources.cpu")]
        for resources, hardware, loc in cases:
            body = {"name": "too-big", "hardware": hardware or {"type": "gpu"}, **({"resources": resources}
                                                                                    if resources else {})}
            with pytest.raises(InvalidRequest) as info:
                await submit(bus, body)
            assert [e["loc"] for e in info.value.errors] == [loc], info.value.errors
            assert "largest" in info.value.errors[0]["msg"]
        ok = await submit(bus, {"name": "fits", "hardware": {"type": "gpu"}, "resources": {"cpu": 62}})
        assert ok.state == WorkloadState.PENDING
    finally:
        await host.stop()


async def test_scheduler_resources_cpu_work_on_arm_and_a_gpu_job_waiting_for_cores(settings, running_service, bus,
                                                                                  tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    arm = await TestHost(bus, s, "arm-1", [], tmp_path, arch="aarch64", cpus=8, memory_gib=64).start()
    gpu_host = await TestHost(bus, s, "gpu-1", [gpu(0), gpu(1)], tmp_path, cpus=16, memory_gib=256).start()
    try:
        etl = await submit(bus, {"name": "etl", "hardware": {"type": "cpu", "arch": "arm64"},
                                 "resources": {"cpu": 4, "memory_gib": 8}, "variants": SLEEP})
        running = await wait_state(bus, etl.id, WorkloadState.RUNNING)
        rep = running.placement[0]
        assert rep.host_id == "arm-1" and rep.devices == []
        assert rep.resources is not None and (rep.resources.cpu, rep.resources.memory_mib) == (4, 8192)
        # CPU work on the GPU host takes 12 of its 16 CPUs; a GPU job asking 8 must wait for them
        hog = await submit(bus, {"name": "hog", "hardware": {"type": "cpu", "arch": "x86_64"},
                                 "resources": {"cpu": 12}, "variants": SLEEP})
        assert (await wait_state(bus, hog.id, WorkloadState.RUNNING)).placement[0].host_id == "gpu-1"
        train = await submit(bus, {"name": "train", "hardware": {"type": "gpu", "count": 2},
                                   "resources": {"cpu": 8, "memory_gib": 64}, "variants": SLEEP})

        async def explained() -> bool:
            v = await get(bus, train.id)
            return v.explanation is not None and "1 host: not enough free CPU" in v.explanation.reason

        await assert_eventually(explained, timeout=10, message="pending with the CPU reason")
        assert (await get(bus, train.id)).state == WorkloadState.PENDING
        await bus.request(subjects.rpc_subject("scheduler", "workloads.stop"), WorkloadRef(id=hog.id), WorkloadView)
        placed = await wait_state(bus, train.id, WorkloadState.RUNNING)
        assert placed.placement[0].host_id == "gpu-1" and len(placed.placement[0].devices) == 2
        assert placed.placement[0].resources is not None and placed.placement[0].resources.cpu == 8
    finally:
        await arm.stop()
        await gpu_host.stop()


async def test_scheduler_resources_alternative_falls_back_and_the_placement_names_it(settings, running_service, bus,
                                                                                    tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    host = await TestHost(bus, s, "gpu-1", [gpu(0), gpu(1)], tmp_path, cpus=16, memory_gib=256).start()
    try:
        view = await submit(bus, {"name": "alt", "hardware": [{"type": "npu", "model": "Ascend910B*", "count": 2},
                                                              {"type": "gpu", "model": ["V100*", "A100*"], "count": 2,
                                                               "resources": {"cpu": 6}}],
                                  "variants": SLEEP})
        running = await wait_state(bus, view.id, WorkloadState.RUNNING)
        rep = running.placement[0]
        assert rep.host_id == "gpu-1" and rep.resources is not None
        assert (rep.resources.alternative, rep.resources.cpu, len(rep.devices)) == (1, 6, 2)
        assert any("with alternative 1 (2 x gpu V100*|A100*)" in h.reason for h in running.history)
        placed = [e for e in await workload_events(bus, view.id) if e.type.endswith(".placed")]
        assert placed and placed[-1].data["placements"][0]["alternative"] == 1
    finally:
        await host.stop()
