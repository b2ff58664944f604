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


NO_QUOTA: dict[str, Any] = {"devices": {}, "compute_units": None, "cpu": None, "memory_gib": None}


async def test_auth_quotas_are_set_by_admins_and_read_by_their_tenant(settings, running_service, bus: Bus) -> None:
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        a = bearer(await make_key(c, "tenant-a", "user"))
        legacy = {"devices": {"gpu": 4, "npu": 2.5}, "compute_units": 1000}  # the form before guarantees: max only
        as_limits = {"devices": {"gpu": {"min": 0.0, "max": 4.0}, "npu": {"min": 0.0, "max": 2.5}},
                     "compute_units": {"min": 0.0, "max": 1000.0}, "cpu": None, "memory_gib": None}
        assert (await c.put("/v1/tenants/tenant-a/quota", json=legacy, headers=a)).status_code == 403
        r = await c.put("/v1/tenants/tenant-a/quota", json=legacy, headers=ADMIN)
        assert r.status_code == 200 and r.json() == as_limits
        assert (await c.get("/v1/tenants/tenant-a/quota", headers=a)).json() == as_limits
        assert (await c.get("/v1/tenants/tenant-b/quota", headers=a)).status_code == 404
        assert (await c.get("/v1/tenants/tenant-b/quota", headers=ADMIN)).json() == NO_QUOTA
        elastic = {"devices": {"gpu": {"min": 2, "max": 8}}, "cpu": {"min": 16}, "memory_gib": 512}
        r = await c.put("/v1/tenants/tenant-a/quota", json=elastic, headers=ADMIN)
        assert r.status_code == 200
        assert r.json() == {"devices": {"gpu": {"min": 2.0, "max": 8.0}}, "compute_units": None,
                            "cpu": {"min": 16.0, "max": None}, "memory_gib": {"min": 0.0, "max": 512.0}}
        for bad in ({"devices": {"tpu": 1}}, {"devices": {"gpu": -1}}, {"compute_units": -5}, {"other": 1},
                    {"devices": {"gpu": {"min": 5, "max": 4}}}, {"cpu": {"min": -1}}, {"devices": {"gpu": {"mx": 1}}},
                    {"cpu": 4, "devices": {"cpu": 4}}):
            assert (await c.put("/v1/tenants/tenant-a/quota", json=bad, headers=ADMIN)).status_code == 422, bad
        usage = await c.get("/v1/tenants/tenant-a/usage", headers=a)
        assert usage.status_code == 200
        body = usage.json()
        assert (body["devices"], body["compute_units"], body["cpu"], body["borrowing"]) == ({}, 0.0, 0.0, [])
        assert body["resources"]["gpu"] == {"min": 2.0, "max": 8.0, "used": 0.0, "borrowed": 0.0}
        assert body["resources"]["memory_gib"] == {"min": 0.0, "max": 512.0, "used": 0.0, "borrowed": 0.0}
        answer = await bus.request("xpumesh.rpc.scheduler.quotas.list", {}, TenantQuotas)
        assert [(q.tenant, {k: (v.min, v.max) for k, v in q.limits().items()}) for q in answer.items] == [
            ("tenant-a", {"gpu": (2.0, 8.0), "cpu": (16.0, None), "memory_gib": (0.0, 512.0)})]


async def test_auth_quotas_every_route_refuses_whom_it_must(settings, running_service) -> None:
    """Only admins set quotas; a tenant's keys read only their own quota and usage; /v1/quotas lists every
    tenant for operators and admins, and only the caller's own tenant for the others; no key: 401."""
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        keys = {role: bearer(await make_key(c, "tenant-a", role)) for role in ("user", "viewer", "operator")}
        other = bearer(await make_key(c, "tenant-b", "user"))
        quota = {"devices": {"gpu": {"min": 1, "max": 2}}}
        for who in (keys["user"], keys["viewer"], keys["operator"], other, {}):
            for tenant in ("tenant-a", "tenant-b"):
                r = await c.put(f"/v1/tenants/{tenant}/quota", json=quota, headers=who)
                assert r.status_code == (401 if not who else 403), (who, tenant, r.status_code)
        assert (await c.get("/v1/tenants/tenant-a/quota", headers=ADMIN)).json() == NO_QUOTA  # nothing was set
        assert (await c.put("/v1/tenants/tenant-a/quota", json=quota, headers=ADMIN)).status_code == 200
        assert (await c.put("/v1/tenants/tenant-b/quota", json=quota, headers=ADMIN)).status_code == 200
        for path in ("quota", "usage"):
            assert (await c.get(f"/v1/tenants/tenant-a/{path}", headers=other)).status_code == 404
            assert (await c.get(f"/v1/tenants/tenant-b/{path}", headers=keys["viewer"])).status_code == 404
            assert (await c.get(f"/v1/tenants/tenant-a/{path}", headers={})).status_code == 401
            assert (await c.get(f"/v1/tenants/tenant-b/{path}", headers=keys["operator"])).status_code == 200
            assert (await c.get(f"/v1/tenants/tenant-a/{path}", headers=keys["viewer"])).status_code == 200
        assert (await c.get("/v1/quotas", headers={})).status_code == 401
        for who, seen in ((keys["user"], ["tenant-a"]), (keys["viewer"], ["tenant-a"]), (other, ["tenant-b"]),
                          (keys["operator"], ["tenant-a", "tenant-b"]), (ADMIN, ["tenant-a", "tenant-b"])):
            r = await c.get("/v1/quotas", headers=who)
            assert r.status_code == 200 and [u["tenant"] for u in r.json()["items"]] == seen, (seen, r.json())


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
        assert problem["quota"]["devices"] == {"gpu": {"min": 0.0, "max": 6.0}}
        assert problem["usage"]["devices"] == {} and problem["usage"]["compute_units"] == 0.0
        assert problem["requested"] == {"hardware_type": "gpu", "devices": 8.0, "compute_units": None, "cpu": 0.0,
                                        "memory_gib": 2.0, "alternative": 0}

        assert (await submit(user, spec(type="any", compute_units=250))).status_code == 201
        r = await submit(user, spec(type="any", compute_units=300))
        assert r.status_code == 403
        assert "may hold 500 compute units; it holds 0 and this workload asks for 600" in r.json()["detail"]
        assert (await submit(user, spec(type="npu", share=0.5))).status_code == 201  # no npu limit


async def test_auth_quotas_count_every_hardware_alternative_and_cpu_and_memory(settings, running_service) -> None:
    """The first alternative within the limits is the one counted; a submission is refused only when none is,
    naming each; CPUs and host memory have limits of their own."""
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        quota = {"devices": {"gpu": 4, "npu": {"min": 2, "max": 16}}, "cpu": 40, "memory_gib": {"max": 100}}
        assert (await c.put("/v1/tenants/acme/quota", json=quota, headers=ADMIN)).status_code == 200
        user = bearer(await make_key(c, "acme", "user"))

        async def submit(hardware: Any, **extra: Any) -> httpx.Response:
            return await c.post("/v1/workloads", json={"name": "job", "hardware": hardware, **extra}, headers=user)

        # 8 gpus are over the limit, 8 npus are not: accepted (before, only the first alternative was counted)
        r = await submit([{"type": "gpu", "count": 8}, {"type": "npu", "count": 8}])
        assert r.status_code == 201, r.text
        r = await submit([{"type": "gpu", "count": 8}, {"type": "npu", "count": 32}])
        assert r.status_code == 403
        detail = r.json()["detail"]
        assert detail.startswith("no hardware alternative fits the quota: alternative 0 (8 x gpu): tenant 'acme' "
                                 "may hold 4 gpu devices"), detail
        assert "alternative 1 (32 x npu): tenant 'acme' may hold 16 npu devices; it holds 0 and this workload " \
               "asks for 32" in detail
        assert r.json()["requested"]["alternative"] == 0
        r = await submit({"type": "cpu"}, resources={"cpu": 48})
        assert r.status_code == 403 and "may hold 40 CPUs; it holds 0 and this workload asks for 48" in r.json()["detail"]
        r = await submit({"type": "gpu"}, resources={"memory_gib": 200})
        assert r.status_code == 403 and "may hold 100 GiB of host memory" in r.json()["detail"]
        # an alternative's own resources count: the first asks 64 CPUs, the second fits
        r = await submit([{"type": "gpu", "count": 2, "resources": {"cpu": 64}}, {"type": "npu", "count": 2}])
        assert r.status_code == 201, r.text
        # a batch counts its workloads one after the other: 3 x 16 CPUs are over 40 together
        r = await c.post("/v1/workloads/batch", headers=user, json={"workloads": [
            {"name": f"etl-{i}", "hardware": {"type": "cpu"}, "resources": {"cpu": 16}} for i in range(3)]})
        assert r.status_code == 403 and "these 3 workloads ask for 48" in r.json()["detail"], r.text
