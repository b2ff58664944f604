"""Tenant quotas: admins set them, tenants read their own, submissions over them get the numbers.

Quotas live in the scheduler, which checks them at submit; the gateway's routes ask it.
"""

from __future__ import annotations

from typing import Any

import httpx

from libs.bus.connection import Bus
from libs.schemas.tenancy import QUOTA_PROBLEM, TenantQuotas
from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import ADMIN, bearer, gateway_settings, make_key, start_gateway


def spec(**hardware: object) -> dict[str, Any]:
    return {"name": "job", "replicas": 2, "hardware": hardware}


async def test_auth_quotas_are_set_by_admins_and_read_by_their_tenant(settings, running_service, bus: Bus) -> None:
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        a = bearer(await make_key(c, "tenant-a", "user"))
        quota = {"devices": {"gpu": 4, "npu": 2.5}, "compute_units": 1000}
        assert (await c.put("/v1/tenants/tenant-a/quota", json=quota, headers=a)).status_code == 403
        r = await c.put("/v1/tenants/tenant-a/quota", json=quota, headers=ADMIN)
        assert r.status_code == 200 and r.json() == quota
        assert (await c.get("/v1/tenants/tenant-a/quota", headers=a)).json() == quota
        assert (await c.get("/v1/tenants/tenant-b/quota", headers=a)).status_code == 404
        assert (await c.get("/v1/tenants/tenant-b/quota", headers=ADMIN)).json() == {"devices": {},
                                                                                      "compute_units": None}
        for bad in ({"devices": {"tpu": 1}}, {"devices": {"gpu": -1}}, {"compute_units": -5}, {"other": 1}):
            assert (await c.put("/v1/tenants/tenant-a/quota", json=bad, headers=ADMIN)).status_code == 422, bad
        usage = await c.get("/v1/tenants/tenant-a/usage", headers=a)
        assert usage.json() == {"tenant": "tenant-a", "devices": {}, "compute_units": 0.0}
        answer = await bus.request("xpumesh.rpc.scheduler.quotas.list", {}, TenantQuotas)
        assert [(q.tenant, q.devices) for q in answer.items] == [("tenant-a", {"gpu": 4.0, "npu": 2.5})]


async def test_auth_quotas_refuse_a_submission_over_the_limit_with_the_numbers(settings, running_service) -> None:
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.put("/v1/tenants/acme/quota", json={"devices": {"gpu": 6}, "compute_units": 500}, headers=ADMIN)
        assert r.status_code == 200
        user = bearer(await make_key(c, "acme", "user"))
        other = bearer(await make_key(c, "free", "user"))

        async def submit(key: dict[str, str], body: dict[str, Any]) -> httpx.Response:
            return await c.post("/v1/workloads", json=body, headers=key)

        assert (await submit(other, spec(type="gpu", count=64))).status_code == 201  # no quota: no limit
        assert (await submit(user, spec(type="gpu", count=3))).status_code == 201  # 2 x 3 = 6 of 6
        r = await submit(user, spec(type="gpu", count=4))
        assert r.status_code == 403 and r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["type"] == QUOTA_PROBLEM and problem["title"] == "Quota exceeded"
        assert "may hold 6 gpu devices; it holds 0 and this workload asks for 8" in problem["detail"]
        assert problem["quota"]["devices"] == {"gpu": 6.0}
        assert problem["usage"] == {"devices": {}, "compute_units": 0.0}
        assert problem["requested"] == {"hardware_type": "gpu", "devices": 8.0, "compute_units": None}

        assert (await submit(user, spec(type="any", compute_units=250))).status_code == 201
        r = await submit(user, spec(type="any", compute_units=300))
        assert r.status_code == 403
        assert "may hold 500 compute units; it holds 0 and this workload asks for 600" in r.json()["detail"]
        assert (await submit(user, spec(type="npu", share=0.5))).status_code == 201  # no npu limit
