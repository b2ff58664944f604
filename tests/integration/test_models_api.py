"""GET /v1/models and /v1/models/{id}: the adapted-model catalog, readable by admin and viewer keys, refused to
callers without a key and to invoke-only keys; a model request naming no catalog model is a 422 naming it."""

from __future__ import annotations

import httpx

from libs.catalog.models import load_models
from tests.integration.test_api_kit import ADMIN, bearer, gateway_settings, make_key, start_gateway

PROBLEM = "application/problem+json"


async def test_models_catalog_is_readable_by_admin_and_viewer_keys(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        viewer = bearer(await make_key(c, "acme", "viewer"))
        for headers in (ADMIN, viewer):
            r = await c.get("/v1/models", headers=headers)
            assert r.status_code == 200, r.text
            body = r.json()
            assert [m["id"] for m in body["items"]] == [m.id for m in load_models().models]
            assert {x["id"] for x in body["recipes"]} == {x.id for x in load_models().recipes}
            one = await c.get("/v1/models/qwen2.5-7b-instruct", headers=headers)
            assert one.status_code == 200, one.text
            qwen = one.json()
            assert {b["vendor"] for b in qwen["builds"]} == {"nvidia", "huawei"}
            assert all(b["sources"] for b in qwen["builds"])
            assert {m["precision"]: m["total_gib"] for m in qwen["memory"]} == {"bf16": 17.1, "fp16": 17.1}
        missing = await c.get("/v1/models/qwen9-1t", headers=viewer)
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(PROBLEM)
        assert "qwen9-1t" in missing.json()["detail"]


async def test_models_routes_refuse_callers_without_a_key_and_invoke_only_keys(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        invoker = bearer(await make_key(c, "acme", "invoker"))
        for path in ("/v1/models", "/v1/models/qwen2.5-7b-instruct"):
            anonymous = await c.get(path)
            assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith(PROBLEM)
            wrong = await c.get(path, headers={"Authorization": "Bearer xpk_not_a_key"})
            assert wrong.status_code == 401
            refused = await c.get(path, headers=invoker)
            assert refused.status_code == 403 and refused.headers["content-type"].startswith(PROBLEM), refused.text
        viewer = bearer(await make_key(c, "acme", "viewer"))  # a viewer reads the catalog but runs nothing
        run = await c.post("/v1/workloads", json={"model": "qwen2.5-7b-instruct", "hardware": {"type": "any"}},
                           headers=viewer)
        assert run.status_code == 403


async def test_models_request_for_an_unknown_model_is_a_problem_naming_the_field(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.post("/v1/workloads", json={"model": "qwen9-1t", "hardware": {"type": "any"}}, headers=ADMIN)
        assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
        problem = r.json()
        assert [e["loc"] for e in problem["errors"]] == ["body.model"], problem
        assert "qwen9-1t" in problem["errors"][0]["msg"]
