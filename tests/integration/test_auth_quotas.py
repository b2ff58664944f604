"""Tenant quotas: admins set them, tenants read their own, submissions over them get the numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from libs.bus.connection import Bus
from libs.db import make_engine, make_sessionmaker
from libs.schemas.tenancy import TenantQuotas
from libs.schemas.workload import WorkloadSpec
from libs.service import Context
from services.gateway.auth import Principal
from services.gateway.problems import ProblemError
from services.gateway.quotas import check_quota
from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import ADMIN, bearer, gateway_settings, make_key, start_gateway


@pytest.fixture
async def ctx(settings, bus: Bus) -> AsyncIterator[Context]:
    engine = make_engine(settings.database_dsn(), settings.db)
    yield Context(service="gateway", instance="test", settings=settings, bus=bus, engine=engine,
                  sessions=make_sessionmaker(engine))
    await engine.dispose()


def spec(**hardware: object) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"name": "job", "replicas": 2, "hardware": hardware})


async def test_auth_quotas_are_set_by_admins_and_read_by_their_tenant(settings, running_service, bus: Bus) -> None:
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
        answer = await bus.request("xpumesh.rpc.gateway.quotas.list", {}, TenantQuotas)
        assert [(q.tenant, q.devices) for q in answer.items] == [("tenant-a", {"gpu": 4.0, "npu": 2.5})]


async def test_auth_quotas_refuse_a_submission_over_the_limit_with_the_numbers(settings, running_service,
                                                                              ctx: Context) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.put("/v1/tenants/acme/quota", json={"devices": {"gpu": 6}, "compute_units": 500}, headers=ADMIN)
        assert r.status_code == 200
    user = Principal(key_id="key_test", tenant="acme", role="user")
    other = Principal(key_id="key_other", tenant="free", role="user")
    await check_quota(ctx, other, spec(type="gpu", count=64))  # no quota: no limit, and no scheduler needed

    await running_service(scheduler_app)
    await check_quota(ctx, user, spec(type="gpu", count=3))  # 2 x 3 = 6 of 6
    with pytest.raises(ProblemError) as caught:
        await check_quota(ctx, user, spec(type="gpu", count=4))
    problem = caught.value
    assert problem.status == 403 and problem.title == "Quota exceeded"
    assert "may hold 6 gpu devices; it holds 0 and this workload asks for 8" in (problem.detail or "")
    assert problem.extra["quota"]["devices"] == {"gpu": 6.0}
    assert problem.extra["usage"] == {"devices": {}, "compute_units": 0.0}
    assert problem.extra["requested"] == {"hardware_type": "gpu", "devices": 8.0, "compute_units": None}

    await check_quota(ctx, user, spec(type="any", compute_units=250))
    with pytest.raises(ProblemError) as caught:
        await check_quota(ctx, user, spec(type="any", compute_units=300))
    assert "may hold 500 compute units; it holds 0 and this workload asks for 600" in (caught.value.detail or "")
    await check_quota(ctx, user, spec(type="npu", share=0.5))  # no npu limit
