"""Batch submit: many workloads in one request and one transaction, accepted or refused together."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from libs.bus.errors import Conflict
from libs.db import session_scope
from libs.events import EventTypes
from libs.schemas.tenancy import QUOTA_PROBLEM
from libs.schemas.workload import WorkloadSpec
from services.scheduler import store
from services.scheduler.api import app as scheduler_app
from services.scheduler.lifecycle import utcnow
from services.scheduler.orm import workloads
from tests.conftest import stream_events
from tests.integration.test_api_kit import ADMIN, bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import TestHost, fast, gpu
from tests.integration.test_scheduler_submit import Maker, sessions

__all__ = ["sessions"]  # the fixture: a migrated scheduler schema and a session maker

BATCH = "/v1/workloads/batch"
QUICK = [sys.executable, "-c", "print('ok')"]


def item(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "hardware": {"type": "gpu", "share": 0.25}, "restart_policy": "never",
            "variants": {"nvidia": {"command": QUICK}}, **extra}


async def _listed(c: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    r = await c.get("/v1/workloads", params={"limit": 500}, headers=headers)
    assert r.status_code == 200, r.text
    return [w["name"] for w in r.json()["items"]]


async def test_workload_batch_creates_every_item_in_order_and_they_run(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-gpu-1", [gpu(0), gpu(1)], tmp_path).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            user = bearer(await make_key(c, "acme", "user"))
            body = {"workloads": [item(f"sweep-{i}") for i in range(6)]}
            r = await c.post(BATCH, json=body, headers=user)
            assert r.status_code == 201, r.text
            answer = r.json()
            assert answer["created"] is True
            assert [w["name"] for w in answer["items"]] == [f"sweep-{i}" for i in range(6)]
            assert {w["tenant"] for w in answer["items"]} == {"acme"} and {w["state"] for w in answer["items"]} == {
                "pending"}

            async def all_done() -> bool:
                states = [(await c.get(f"/v1/workloads/{w['id']}", headers=user)).json()["state"]
                          for w in answer["items"]]
                return all(st == "succeeded" for st in states)

            await eventually(all_done, timeout=30, interval=0.2, message="every workload of the batch ran")
            submitted = [e for _, e in await stream_events(bus) if e.type == EventTypes.workload("pending")]
            assert sorted(str(e.subject) for e in submitted) == sorted(w["id"] for w in answer["items"])
    finally:
        await host.stop()


async def test_workload_batch_with_one_bad_item_creates_nothing_and_names_the_item(
        settings, running_service, tmp_path: Path) -> None:
    await running_service(scheduler_app, fast(settings))
    url = await start_gateway(running_service, settings)
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        user = bearer(await make_key(c, "acme", "user"))
        # invalid at the gateway: a count of 0 on item 2
        bad = {"workloads": [item("a"), item("b"), {"name": "c", "hardware": {"type": "gpu", "count": 0}}]}
        r = await c.post(BATCH, json=bad, headers=user)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
        assert any(str(e["loc"]).startswith("body.workloads.2.hardware") for e in r.json()["errors"]), r.json()
        # valid in form, impossible anywhere: a model no catalog entry matches, on item 1
        never = {"workloads": [item("a"), {"name": "b", "hardware": {"type": "gpu", "model": "NO-SUCH-CHIP*"}}]}
        r = await c.post(BATCH, json=never, headers=user)
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["errors"]] == ["body.workloads.1.hardware.model"]
        refused: list[dict[str, Any]] = [{"workloads": []}, {"workloads": [item(str(i)) for i in range(1001)]},
                                         {"items": [item("a")]}]
        for body in refused:
            assert (await c.post(BATCH, json=body, headers=user)).status_code == 422
        assert await _listed(c, user) == []


async def test_workload_batch_quota_counts_the_whole_batch(settings, running_service) -> None:
    await running_service(scheduler_app, fast(settings))
    url = await start_gateway(running_service, settings)
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        assert (await c.put("/v1/tenants/acme/quota", json={"devices": {"gpu": 1}}, headers=ADMIN)).status_code == 200
        user = bearer(await make_key(c, "acme", "user"))
        r = await c.post(BATCH, json={"workloads": [item(f"q-{i}") for i in range(5)]}, headers=user)  # 5 x 0.25
        assert r.status_code == 403, r.text
        problem = r.json()
        assert problem["type"] == QUOTA_PROBLEM
        assert "may hold 1 gpu devices; it holds 0 and these 5 workloads ask for 1.25" in problem["detail"]
        assert problem["requested"]["devices"] == 1.25
        assert await _listed(c, user) == []
        assert (await c.post(BATCH, json={"workloads": [item(f"q-{i}") for i in range(4)]},
                             headers=user)).status_code == 201


async def test_workload_batch_retried_with_its_key_returns_the_same_workloads(settings, running_service) -> None:
    await running_service(scheduler_app, fast(settings))
    url = await start_gateway(running_service, settings)
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        user = {**bearer(await make_key(c, "acme", "user")), "Idempotency-Key": "sweep-7"}
        body = {"workloads": [item(f"k-{i}") for i in range(3)]}
        first = await c.post(BATCH, json=body, headers=user)
        again = await c.post(BATCH, json=body, headers=user)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()  # the gateway replays the answer it stored for this key
        changed = {"workloads": [item("k-0"), item("k-1"), item("other")]}
        r = await c.post(BATCH, json=changed, headers=user)
        assert r.status_code == 422 and r.json()["title"] == "Idempotency-Key reused", r.text
        assert sorted(await _listed(c, user)) == ["k-0", "k-1", "k-2"]


async def test_workload_batch_store_decides_keyed_batches_all_or_nothing(sessions: Maker) -> None:
    specs = [WorkloadSpec.model_validate({"name": f"s-{i}", "hardware": {"type": "gpu"}}) for i in range(4)]

    async def create(batch: list[WorkloadSpec], key: str | None, tenant: str | None = "acme") -> tuple[list[str], bool]:
        async with session_scope(sessions) as session:
            wls, created = await store.create_workloads(session, batch, tenant, key, utcnow())
        return [wl.id for wl in wls], created

    twins = await asyncio.gather(*(create(specs, "k-1") for _ in range(4)))  # concurrent twins: one batch
    assert len({tuple(ids) for ids, _ in twins}) == 1 and sum(created for _, created in twins) == 1
    with pytest.raises(Conflict):  # items 0-3 exist under this key, item 4 does not: refused, nothing added
        await create([*specs, specs[0].model_copy(update={"name": "s-4"})], "k-1")
    with pytest.raises(Conflict):  # same key, different item
        await create([specs[0].model_copy(update={"name": "other"}), *specs[1:]], "k-1")
    ids, created = await create(specs, "k-none", tenant=None)
    again, created_again = await create(specs, "k-none", tenant=None)
    assert created and not created_again and again == ids
    plain, _ = await create(specs, None)
    async with session_scope(sessions) as session:
        rows = int(await session.scalar(select(func.count()).select_from(workloads)) or 0)
    assert rows == 12 and len(set(plain) | set(ids) | set(twins[0][0])) == 12


async def test_workload_batch_refuses_keys_that_may_not_submit(settings, running_service) -> None:
    await running_service(scheduler_app, fast(settings))
    url = await start_gateway(running_service, settings)
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        body = {"workloads": [item("x")]}
        assert (await c.post(BATCH, json=body)).status_code == 401
        assert (await c.post(BATCH, json=body, headers=bearer("xpk_" + "0" * 40))).status_code == 401
        viewer = bearer(await make_key(c, "acme", "viewer"))
        assert (await c.post(BATCH, json=body, headers=viewer)).status_code == 403
        user = bearer(await make_key(c, "acme", "user"))
        high = {"workloads": [item("fine"), item("too-high", priority=900)]}
        r = await c.post(BATCH, json=high, headers=user)
        assert r.status_code == 403 and r.json()["max_priority"] == 500
        assert await _listed(c, user) == []
