"""REST conventions on every route: problem+json errors, request ids, body caps, content types,
Idempotency-Key, cursor pagination, OpenAPI 3.1 with bearer auth and examples."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from tests.integration.test_api_kit import ADMIN, gateway_settings, start_gateway

PROBLEM = "application/problem+json"


def assert_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, object] = r.json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


async def test_api_errors_are_problems_with_request_ids(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, max_body_bytes=4096))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.get("/v1/nothing-here", headers=ADMIN)
        assert_problem(r, 404)
        assert len(r.headers["x-request-id"]) >= 16
        r = await c.get("/v1/me", headers={**ADMIN, "X-Request-Id": "trace-me-123"})
        assert r.headers["x-request-id"] == "trace-me-123"
        assert_problem(await c.put("/v1/me", headers=ADMIN, json={}), 405)
        assert_problem(await c.get("/v1/me"), 401)
        big = b'{"tenant": "acme", "role": "user", "name": "' + b"x" * 5000 + b'"}'
        assert_problem(await c.post("/v1/keys", content=big, headers={**ADMIN, "content-type": "application/json"}),
                       413)

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000
                await asyncio.sleep(0)

        r = await c.post("/v1/keys", content=chunked(), headers={**ADMIN, "content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_problem(r, 413)
        assert_problem(await c.post("/v1/keys", content=b"tenant=acme", headers={
            **ADMIN, "content-type": "application/x-www-form-urlencoded"}), 415)
        body = assert_problem(await c.post("/v1/keys", content=b"{not json", headers={
            **ADMIN, "content-type": "application/json"}), 422)
        assert body["errors"]
        body = assert_problem(await c.post("/v1/keys", json={"tenant": "acme"}, headers=ADMIN), 422)
        assert "role" in str(body["detail"])
        assert_problem(await c.get("/v1/keys", params={"cursor": "%%%"}, headers=ADMIN), 400)
        assert_problem(await c.get("/v1/keys", params={"limit": 100000}, headers=ADMIN), 422)
        # NUL fits no text column: a clear 422, never a 500 from the database
        assert_problem(await c.get("/v1/compat-rules", params={"vendor": "\x00nvidia"}, headers=ADMIN), 422)
        body = assert_problem(await c.post("/v1/keys", json={"tenant": "a\x00", "role": "user", "name": "n"},
                                           headers=ADMIN), 422)
        assert "NUL" in str(body["detail"])
        # the text backslash-u0000 is not a NUL: accepted
        r = await c.post("/v1/keys", json={"tenant": "acme", "role": "user", "name": "\\u0000"}, headers=ADMIN)
        assert r.status_code == 201, r.text


async def test_api_idempotency_key_replays_the_first_answer(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        body = {"tenant": "acme", "role": "user", "name": "once"}
        first = await c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "k-1"})
        assert first.status_code == 201
        again = await c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "k-1"})
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        listed = (await c.get("/v1/keys", params={"tenant": "acme"}, headers=ADMIN)).json()["items"]
        assert len(listed) == 1, "the retry created nothing"
        other = await c.post("/v1/keys", json={**body, "name": "different"},
                             headers={**ADMIN, "Idempotency-Key": "k-1"})
        assert_problem(other, 422)
        fresh = await c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "k-2"})
        assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
        bad = await c.post("/v1/keys", json={"tenant": "acme"}, headers={**ADMIN, "Idempotency-Key": "k-3"})
        assert_problem(bad, 422)
        ok = await c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "k-3"})
        assert ok.status_code == 422, "a stored client error is replayed for the same key"
        assert_problem(await c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "x" * 300}), 400)

        results = await asyncio.gather(*(c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "k-4"})
                                         for _ in range(6)))
        ids = {r.json()["id"] for r in results if r.status_code == 201}
        assert len(ids) == 1, "concurrent retries create one key"
        assert all(r.status_code in (201, 409) for r in results)


async def test_api_pagination_walks_every_item_once(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        made = set()
        for i in range(7):
            r = await c.post("/v1/keys", json={"tenant": "pager", "role": "viewer", "name": str(i)}, headers=ADMIN)
            made.add(r.json()["id"])
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"tenant": "pager", "limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get("/v1/keys", params=params, headers=ADMIN)).json()
            seen += [k["id"] for k in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert sorted(seen) == sorted(made) and len(seen) == 7


async def test_api_hot_reads_come_from_a_short_ttl_cache_after_the_key_check(settings, running_service) -> None:
    from services.inventory.api import app as inventory_app

    await running_service(inventory_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0.5))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        other = {"Authorization": "Bearer " + (await c.post("/v1/keys", json={"tenant": "acme", "role": "viewer"},
                                                             headers=ADMIN)).json()["key"]}
        first = await c.get("/v1/devices", params={"hardware_type": "gpu"}, headers=ADMIN)
        assert first.status_code == 200 and "x-cache" not in first.headers
        again = await c.get("/v1/devices", params={"hardware_type": "gpu"}, headers=ADMIN)
        assert again.headers.get("x-cache") == "hit" and again.json() == first.json()
        assert again.headers["x-request-id"] != first.headers["x-request-id"]
        assert "x-cache" not in (await c.get("/v1/devices", params={"hardware_type": "gpu"},
                                             headers=other)).headers, "no answer shared across tenants or roles"
        assert_problem(await c.get("/v1/devices", params={"hardware_type": "gpu"}), 401)
        assert "x-cache" not in (await c.get("/v1/devices", params={"hardware_type": "npu"}, headers=ADMIN)).headers
        await asyncio.sleep(0.6)
        assert "x-cache" not in (await c.get("/v1/devices", params={"hardware_type": "gpu"},
                                             headers=ADMIN)).headers, "entries expire"
