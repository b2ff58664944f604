"""The workload API end to end: gateway → scheduler → a host running real processes → back to the API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import ADMIN, bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import TestHost, fast, gpu

PRINTER = [sys.executable, "-c",
           "import os, sys; print('visible=' + os.environ['CUDA_VISIBLE_DEVICES']);"
           "print('devices=' + os.environ['XPUMESH_DEVICES']); print('replica=' + os.environ['XPUMESH_REPLICA']);"
           "sys.stdout.flush(); sys.exit(7)"]


async def _state(client: httpx.AsyncClient, wid: str, state: str, headers: dict[str, str]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await client.get(f"/v1/workloads/{wid}", headers=headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if body["state"] == state else None

    return await eventually(check, timeout=15, interval=0.1, message=f"{wid} {state}")


async def test_workloads_real_process_sees_its_devices_and_its_output_and_exit_code_reach_the_api(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-gpu-7", [gpu(0), gpu(3)], tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            spec = {"name": "printer", "hardware": {"type": "gpu", "count": 2}, "restart_policy": "never",
                    "variants": {"nvidia": {"command": PRINTER}}}
            headers = {**ADMIN, "Idempotency-Key": "submit-1"}
            r = await client.post("/v1/workloads", json=spec, headers=headers)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            assert r.headers["location"] == f"/v1/workloads/{wid}" and r.json()["state"] == "pending"
            again = await client.post("/v1/workloads", json=spec, headers=headers)
            assert again.status_code == 201 and again.json()["id"] == wid
            done = await _state(client, wid, "failed", ADMIN)
            placed = done["placement"][0]
            assert placed["host_id"] == "hz-gpu-7" and placed["exit_code"] == 7
            assert sorted(d["id"] for d in placed["devices"]) == ["hz-gpu-7:nvidia:0", "hz-gpu-7:nvidia:3"]
            assert [h["to_state"] for h in done["history"] if h["replica"] is None][-1] == "failed"
            logs = await client.get(f"/v1/workloads/{wid}/logs", params={"replica": 0}, headers=ADMIN)
            assert logs.status_code == 200, logs.text
            body = logs.json()
            assert body["exit_code"] == 7 and body["state"] == "failed" and body["host_id"] == "hz-gpu-7"
            assert "visible=0,3\n" in body["text"] and "replica=0\n" in body["text"]
            assert "devices=hz-gpu-7:nvidia:0,hz-gpu-7:nvidia:3" in body["text"]
            missing = await client.get(f"/v1/workloads/{wid}/logs", params={"replica": 5}, headers=ADMIN)
            assert missing.status_code == 404
    finally:
        await host.stop()


async def test_workloads_are_confined_to_the_callers_tenant(settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "sh-1", [gpu(0)], tmp_path, site="shanghai").start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            acme, zeta = bearer(await make_key(client, "acme", "user")), bearer(await make_key(client, "zeta", "user"))
            spec = {"name": "mine", "hardware": {"type": "gpu"}, "tenant": "zeta",
                    "variants": {"default": {"command": ["sleep", "60"]}}}
            r = await client.post("/v1/workloads", json=spec, headers=acme)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            assert r.json()["tenant"] == "acme"  # from the key, not from the body
            running = await _state(client, wid, "running", acme)
            assert running["sites"] == ["shanghai"]
            for method in ("GET", "DELETE"):
                other = await client.request(method, f"/v1/workloads/{wid}", headers=zeta)
                assert other.status_code == 404 and other.headers["content-type"].startswith("application/problem+json")
            assert (await client.get(f"/v1/workloads/{wid}/logs", headers=zeta)).status_code == 404
            assert (await client.get("/v1/workloads", headers=zeta)).json()["items"] == []
            mine = (await client.get("/v1/workloads", params={"state": "running", "hardware_type": "gpu",
                                                              "site": "shanghai"}, headers=acme)).json()
            assert [w["id"] for w in mine["items"]] == [wid]
            assert (await client.get("/v1/workloads", params={"site": "hangzhou"}, headers=acme)).json()["items"] == []
            r2 = await client.post("/v1/workloads", json={**spec, "name": "second"}, headers=acme)
            page1 = (await client.get("/v1/workloads", params={"limit": 1}, headers=acme)).json()
            page2 = (await client.get("/v1/workloads", params={"limit": 1, "cursor": page1["next_cursor"]},
                                      headers=acme)).json()
            assert [page1["items"][0]["id"], page2["items"][0]["id"]] == [r2.json()["id"], wid]
            assert page2["next_cursor"] is None
            everyone = (await client.get("/v1/workloads", headers=ADMIN)).json()
            assert {w["id"] for w in everyone["items"]} >= {wid, r2.json()["id"]}
            bad = await client.get("/v1/workloads", params={"hardware_type": "tpu"}, headers=acme)
            assert bad.status_code == 422
            stopped = await client.delete(f"/v1/workloads/{wid}", headers=acme)
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
            await eventually(lambda: _none_live(host, wid), timeout=10, message="process stopped on the host")
    finally:
        await host.stop()


async def _none_live(host: TestHost, wid: str) -> bool:
    return not [r for r in host.executor.runs.values() if r.workload_id == wid and r.state.live]


async def test_workloads_bad_specs_get_422_naming_the_field(settings, running_service) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    cases = [
        ({"type": "gpu", "count": 0}, {}, "body.hardware.count"),
        ({"type": "gpu", "share": 1.5}, {}, "body.hardware.share"),
        ({"type": "gpu", "share": 0}, {}, "body.hardware.share"),
        ({"type": "tpu"}, {}, "body.hardware.type"),
        ({"type": "gpu", "model": "Z9000*"}, {}, "body.hardware.model"),
        ({"type": "npu", "vendor": "nvidia"}, {}, "body.hardware.vendor"),
        ({"type": "gpu"}, {"requires": ["cuda>=99"]}, "body.runtime.requires.0"),
        ({"type": "gpu"}, {"framework": "nosuchframework"}, "body.runtime.framework"),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for hardware, runtime, loc in cases:
            r = await client.post("/v1/workloads", json={"name": "bad", "hardware": hardware, "runtime": runtime},
                                  headers=ADMIN)
            assert r.status_code == 422, (hardware, runtime, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert loc in [e["loc"] for e in problem["errors"]], (loc, problem)
            assert all(e["msg"] for e in problem["errors"])
        assert (await client.get("/v1/workloads", headers=ADMIN)).json()["items"] == []
