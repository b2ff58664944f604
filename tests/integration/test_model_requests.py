"""Catalog models end to end: the packaged embedding model placed on a real local host and answering
OpenAI-compatible requests through /v1/endpoints/ with real vectors; on the simulated demo fleet, a chat model
asked for on any hardware lands on a vendor with a published build whose runtime its driver carries, the
placement naming the build, and pends naming every build when their hardware is busy; a conversion recipe runs
as a job on a host of its vendor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent.sim.fleet import build_fleet
from agent.sim.main import simulate
from libs.catalog import load_rules
from libs.versions import SpecifierSet, Version
from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import TestHost, fast
from xpumesh.examples.embeddings import MODEL_ID

SENTENCES = ["A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply on Monday."]
HOSTS, SEED = 22, 7


async def _view(client: httpx.AsyncClient, headers: dict[str, str], wid: str) -> dict[str, Any]:
    r = await client.get(f"/v1/workloads/{wid}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _state(client: httpx.AsyncClient, headers: dict[str, str], wid: str, state: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await _view(client, headers, wid)
        return view if view["state"] == state else None

    found: dict[str, Any] = await eventually(check, timeout=30, interval=0.1, message=f"{wid} {state}")
    return found


async def test_models_packaged_model_answers_embeddings_through_the_gateway_from_a_local_host(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    s = s.model_copy(update={"agent": s.agent.model_copy(update={"readiness_interval_s": 0.1})})
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            r = await client.post("/v1/workloads", json={"model": MODEL_ID, "hardware": {"type": "cpu"}}, headers=acme)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            view = await _state(client, acme, wid, "running")
            [replica] = view["placement"]
            assert replica["host_id"] == "hz-cpu-1" and replica["resources"]["variant"] == "wordllama-cpu"
            assert not replica["simulated"]

            async def answered() -> httpx.Response | None:
                got = await client.post(f"/v1/endpoints/{MODEL_ID}/v1/embeddings",
                                        json={"input": SENTENCES, "model": MODEL_ID}, headers=acme)
                return got if got.status_code == 200 else None

            answer = await eventually(answered, timeout=30, interval=0.2, message="embeddings through the gateway")
            body = answer.json()
            assert body["object"] == "list" and body["model"] == MODEL_ID and body["usage"]["total_tokens"] > 0
            v = np.array([d["embedding"] for d in body["data"]])
            assert v.shape == (3, 256) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
            assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1  # related sentences closer than unrelated ones
            assert answer.headers["x-xpumesh-replica"] == "0"
    finally:
        await host.stop()


def _driver_carries(build: str, driver: str) -> bool:
    """The build's runtime as the seed rules read it: a driver at least the minimum of the runtime's release."""
    runtime, release = {"vllm-cuda": ("cuda", "12.4"), "vllm-ascend": ("cann", "8.1.RC1")}[build]
    [row] = [r for r in load_rules()[1] if r.runtime == runtime and SpecifierSet.parse(r.runtime_versions).contains(release)]
    return Version.parse(driver) >= Version.parse(row.min_driver_version)


async def test_models_chat_model_on_any_hardware_lands_on_a_published_build_or_pends_naming_them(
        settings, running_service, bus) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    fleet = {h.host_id: h for h in build_fleet(HOSTS, SEED)}
    stop, ready = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(simulate(s, HOSTS, SEED, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), timeout=20)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            r = await client.post("/v1/workloads", json={"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}},
                                  headers=acme)
            assert r.status_code == 201, r.text
            view = await _state(client, acme, r.json()["id"], "running")
            [replica] = view["placement"]
            build = replica["resources"]["variant"]
            alternative = view["spec"]["hardware"][replica["resources"]["alternative"]]
            assert build in {"vllm-cuda", "vllm-ascend"} and alternative["variant"] == build
            host = fleet[replica["host_id"]]
            [device] = [d for d in host.devices if f"{host.host_id}:{d.vendor}:{d.index}" == replica["devices"][0]["id"]]
            assert device.vendor == alternative["vendor"] and (device.memory_mib or 0) >= 17.1 * 1024
            assert _driver_carries(build, device.driver_version or "")
            assert any(f"build {build}" in h["reason"] for h in view["history"])  # the placement names the build

            recipe = await client.post("/v1/workloads", headers=acme, json={
                "recipe": "onnx-to-om-atc", "duration_s": 0.5,
                "recipe_args": {"model": "/data/resnet50.onnx", "output": "/data/resnet50", "soc_version": "Ascend910B3"}})
            assert recipe.status_code == 201, recipe.text
            done = await _state(client, acme, recipe.json()["id"], "succeeded")
            assert {fleet[p["host_id"]].profile.vendor for p in done["placement"]} == {"huawei"}

            for name, hw, n in (("fill-gpu", {"type": "gpu", "vendor": "nvidia"}, 40),
                                ("fill-npu", {"type": "npu", "vendor": "huawei"}, 50)):
                filler = {"name": name, "hardware": hw, "replicas": n, "variants": {"default": {"image": "x/y:1"}}}
                assert (await client.post("/v1/workloads", json=filler, headers=acme)).status_code == 201
            busy = await client.post("/v1/workloads", headers=acme,
                                     json={"model": "qwen2.5-7b-instruct", "name": "qwen-busy", "hardware": {"type": "any"}})
            assert busy.status_code == 201, busy.text

            async def explained() -> str | None:
                v = await _view(client, acme, busy.json()["id"])
                reason = (v.get("explanation") or {}).get("reason", "")
                return reason if v["state"] == "pending" and "alternative 1" in reason else None

            reason = await eventually(explained, timeout=30, interval=0.2, message="qwen-busy pending with a reason")
            assert reason.startswith("alternative 0 (1 x gpu nvidia variant vllm-cuda): "), reason
            assert "; else alternative 1 (1 x npu huawei Ascend910B* variant vllm-ascend): " in reason
    finally:
        stop.set()
        await asyncio.wait_for(sim, timeout=45)  # it winds down 90-odd running replicas; slow on a busy machine
