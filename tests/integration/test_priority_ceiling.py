"""Workload priority is bounded by the key's role: a user key cannot take a top priority (and
with it preempt other tenants' preemptible work); an admin key can."""

from __future__ import annotations

from typing import Any

import httpx

from libs.metrics import BUS_REJECTED
from services.gateway.problems import PRIORITY_PROBLEM
from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import ADMIN, bearer, gateway_settings, make_key, start_gateway


def _spec(priority: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "urgent", "hardware": {"type": "gpu"}, "preemptible": False}
    if priority is not None:
        body["priority"] = priority
    return body


def _refused() -> float:
    return BUS_REJECTED.labels("gateway", "workloads", "priority_not_allowed")._value.get()


async def test_priority_ceiling_refuses_a_user_key_above_it_and_lets_an_admin_key(settings, running_service) -> None:
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        user = bearer(await make_key(c, "acme", "user"))
        operator = bearer(await make_key(c, "ops", "operator"))
        before = _refused()
        r = await c.post("/v1/workloads", json=_spec(900), headers=user)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["type"] == PRIORITY_PROBLEM and problem["title"] == "Priority not allowed"
        assert problem["max_priority"] == 500 and "up to 500" in problem["detail"] and "900" in problem["detail"]
        assert _refused() == before + 1
        assert (await c.get("/v1/workloads", headers=ADMIN)).json()["items"] == []  # nothing was created
        assert (await c.post("/v1/workloads", json=_spec(1000), headers=operator)).status_code == 403
        for key, priority in ((user, None), (user, 500), (operator, 900), (ADMIN, 900), (ADMIN, 1000)):
            r = await c.post("/v1/workloads", json=_spec(priority), headers=key)
            assert r.status_code == 201, (priority, r.text)
            assert r.json()["spec"]["priority"] == (100 if priority is None else priority)
        listed = (await c.get("/v1/workloads", headers=ADMIN)).json()["items"]
        assert len(listed) == 5 and _refused() == before + 2
