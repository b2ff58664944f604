"""Auth: every route but the public ones needs a key; viewers cannot write; keys are admin-managed,
hashed at rest and revocable; tenants see only their own resources."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from services.gateway.auth import PUBLIC_PATHS
from services.gateway.http import create_app
from tests.conftest import TEST_ADMIN_KEY
from tests.integration.test_api_kit import (
    ADMIN,
    bearer,
    eventually,
    gateway_settings,
    make_key,
    start_gateway,
)

# Plain (non-API) routes that are public on purpose: the dashboard shell and the gateway's Prometheus text.
PUBLIC_PLAIN = {"/", "/static/{path:path}", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
WRONG_KEYS = ("xpm_" + "x" * 43, TEST_ADMIN_KEY[:-1] + "Z", "short")
_PARAM = re.compile(r"\{[^}]+\}")


def api_routes(app: FastAPI) -> tuple[list[tuple[str, str]], list[str]]:
    """(method, path) of every API route, and the path of every plain route, through included routers."""
    api: list[tuple[str, str]] = []
    plain: list[str] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for r in routes:
            if hasattr(r, "original_router"):
                walk(r.original_router.routes, prefix + r.include_context.prefix)
            elif isinstance(r, APIRoute):
                api.extend((m, prefix + r.path) for m in sorted(r.methods or ()) if m != "HEAD")
            elif isinstance(r, Route):
                plain.append(prefix + r.path)

    walk(list(app.routes), "")
    return api, plain


def concrete(path: str) -> str:
    return _PARAM.sub("1", path)


async def test_auth_every_route_needs_a_key_and_viewers_cannot_write(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, rate_burst=100_000, login_burst=100_000))
    routes, plain = api_routes(create_app(None))  # type: ignore[arg-type]
    assert len(routes) > 20, "the walk found the included routers"
    assert set(plain) <= PUBLIC_PLAIN, f"plain routes bypass the key check: {set(plain) - PUBLIC_PLAIN}"
    protected = [(m, p) for m, p in routes if p not in PUBLIC_PATHS]
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        viewer = bearer(await make_key(c, "acme", "viewer"))
        for method, path in protected:
            for headers in ({}, *(bearer(k) for k in WRONG_KEYS), {"Authorization": f"Basic {TEST_ADMIN_KEY}"}):
                r = await c.request(method, concrete(path), headers=headers, json={} if method != "GET" else None)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
                assert r.headers["www-authenticate"].startswith("Bearer")
            if method not in ("GET", "HEAD", "OPTIONS"):
                r = await c.request(method, concrete(path), headers=viewer, json={})
                assert r.status_code == 403, (method, path, r.status_code, r.text)
        for method, path in routes:
            if path in PUBLIC_PATHS:
                r = await c.request(method, path)
                assert r.status_code != 401, path


async def test_auth_keys_are_admin_only_hashed_at_rest_and_revocable(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.post("/v1/keys", json={"tenant": "acme", "role": "user", "name": "ci"}, headers=ADMIN)
        assert r.status_code == 201
        created = r.json()
        key, key_id = created["key"], created["id"]
        assert created["prefix"] == key[:12] and created["tenant"] == "acme" and created["role"] == "user"
        user = bearer(key)
        me = (await c.get("/v1/me", headers=user)).json()
        assert me == {"key_id": key_id, "tenant": "acme", "role": "user"}
        for method, path, body in (("POST", "/v1/keys", {"tenant": "acme", "role": "admin"}),
                                   ("GET", "/v1/keys", None), ("DELETE", f"/v1/keys/{key_id}", None)):
            r = await c.request(method, path, json=body, headers=user)
            assert r.status_code == 403, (method, path, r.text)
        operator = bearer(await make_key(c, "ops", "operator"))
        assert (await c.get("/v1/keys", headers=operator)).status_code == 403

        listed = (await c.get("/v1/keys", params={"tenant": "acme"}, headers=ADMIN)).json()["items"]
        assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0]

        conn = await asyncpg.connect(settings.database_dsn())
        try:
            rows = await conn.fetch("SELECT prefix, hash FROM gateway.api_keys")
        finally:
            await conn.close()
        assert all(key not in (row["prefix"], row["hash"]) for row in rows), "no secret stored in clear"

        r = await c.delete(f"/v1/keys/{key_id}", headers=ADMIN)
        assert r.status_code == 200 and r.json()["revoked_at"]
        assert (await c.get("/v1/me", headers=user)).status_code == 401, "revoked keys stop working at once"
        assert (await c.delete("/v1/keys/key_nope", headers=ADMIN)).status_code == 404
        for bad in ({"tenant": "Not A Tenant", "role": "user"}, {"tenant": "acme", "role": "root"},
                    {"tenant": "acme", "role": "user", "extra": 1}):
            r = await c.post("/v1/keys", json=bad, headers=ADMIN)
            assert r.status_code == 422, bad


async def test_auth_the_last_admin_key_cannot_be_revoked(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        me = (await c.get("/v1/me", headers=ADMIN)).json()
        r = await c.delete(f"/v1/keys/{me['key_id']}", headers=ADMIN)
        assert r.status_code == 409
        assert (await c.get("/v1/me", headers=ADMIN)).status_code == 200


async def test_auth_rate_limit_answers_429_with_retry_after(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, rate_per_s=2.0, rate_burst=5))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        codes = [(await c.get("/v1/me", headers=ADMIN)).status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and 429 in codes[5:]
        r = await c.get("/v1/me", headers=ADMIN)
        assert r.status_code == 429
        assert r.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert (await c.get("/healthz")).status_code == 200, "public routes are not limited"

        async def refilled() -> bool:
            return (await c.get("/v1/me", headers=ADMIN)).status_code == 200

        await eventually(refilled, timeout=3, interval=0.3, message="tokens refill")
