"""A share of a GPU handed over through NVIDIA MPS, end to end: a real agent process (replaying an
8 x A100 host's captures) whose MPS control daemon pipe exists runs a half-GPU replica through the
process driver; the replica's own environment carries the MPS client limits from its share, and the
workload's placement says the share is enforced by 'mps'; the host's facts say what may hold a share of
its GPUs. A whole-GPU replica beside it reports none."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil

from services.inventory.api import app as inventory_app
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import REPO, TEST_ADMIN_KEY, spawn_agent
from tests.integration.test_api_kit import bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import fast

START = 2_100_100_000
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
PRINT_ENV = "env | grep -E '^(CUDA_|XPUMESH_SHARE|XPUMESH_MEMORY)' | sort; echo done=1"


async def test_share_enforcement_half_gpu_through_mps_gets_its_limits_and_says_so(
        settings, running_service, tmp_path: Path) -> None:
    s = fast(settings)
    for app in (registry_app, inventory_app, scheduler_app):
        await running_service(app, s)
    url = await start_gateway(running_service, s)
    probes = tmp_path / "probes"
    shutil.copytree(REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8", probes)
    pipes = tmp_path / "nvidia-mps"
    pipes.mkdir()
    os.mkfifo(pipes / "control")  # as nvidia-cuda-mps-control -d leaves it
    log = tmp_path / "agent.log"
    proc = spawn_agent(s, probes, log, XPUMESH_AGENT__STATE_INTERVAL_S="0.3",
                       XPUMESH_AGENT__MPS_PIPE_DIRECTORY=str(pipes),
                       XPUMESH_AGENT__REPLICA_UID_START=str(START), XPUMESH_AGENT__REPLICA_UID_COUNT="16")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            key = bearer(await make_key(client, "acme", "user"))

            async def submit(name: str, hardware: dict[str, Any]) -> str:
                spec = {"name": name, "hardware": hardware, "restart_policy": "never",
                        "variants": {"nvidia": {"command": ["/bin/sh", "-c", PRINT_ENV]}}}
                r = await client.post("/v1/workloads", json=spec, headers=key)
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

            async def finished(wid: str) -> tuple[dict[str, Any], str] | None:
                view = (await client.get(f"/v1/workloads/{wid}", headers=key)).json()
                if view["state"] != "succeeded":
                    return None
                text = (await client.get(f"/v1/workloads/{wid}/logs", headers=key)).json().get("text", "")
                return (view, str(text)) if "done=1" in text else None

            async def host_facts() -> dict[str, Any] | None:
                r = await client.get("/v1/hosts", headers=ADMIN)
                items = r.json().get("items", []) if r.status_code == 200 else []
                if not items:
                    return None
                facts: dict[str, Any] = (await client.get(f"/v1/hosts/{items[0]['id']}", headers=ADMIN)).json()["facts"]
                return facts

            facts = await eventually(host_facts, timeout=30, message="the host registered")
            assert facts["share_enforcement"] == {"nvidia": ["mps", "advisory"]}, facts  # no HAMi-core library here

            half = await submit("half", {"type": "gpu", "vendor": "nvidia", "share": 0.5, "memory_gib": 20})
            whole = await submit("whole", {"type": "gpu", "vendor": "nvidia"})
            view, text = await eventually(lambda: finished(half), timeout=30, message="the half-GPU replica ran")
            [replica] = view["placement"]
            [dev] = replica["devices"]
            assert replica["resources"]["share_enforcement"] == "mps", replica
            env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(pipes)
            assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
            assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=20480M"
            assert env["CUDA_VISIBLE_DEVICES"] == dev["id"].rsplit(":", 1)[1] and env["XPUMESH_SHARE"] == "0.5"

            view, text = await eventually(lambda: finished(whole), timeout=30, message="the whole-GPU replica ran")
            [replica] = view["placement"]
            assert replica["resources"]["share_enforcement"] is None, replica
            assert "CUDA_MPS_" not in text and "CUDA_VISIBLE_DEVICES=" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        for p in psutil.process_iter(["uids"]):  # nothing of this test's uids outlives it
            if START <= p.info["uids"].real < START + 16:
                p.kill()
    assert code == 0, log.read_text()[-2000:]
