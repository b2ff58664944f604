"""Auth: API keys, roles, tenants; every route but the public ones needs a key."""

from __future__ import annotations

import httpx

from services.gateway.api import app as gateway_app
from tests.conftest import TEST_ADMIN_KEY


async def test_auth_admin_key_from_bootstrap_reads_and_missing_key_is_401(settings, running_service) -> None:
    await running_service(gateway_app)
    base = f"http://127.0.0.1:{settings.gateway_port}"
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/healthz")
        assert r.status_code == 200
        r = await c.get("/v1/hosts")
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await c.get("/v1/hosts", headers={"Authorization": "Bearer xpm_wrong_wrong_wrong_wrong_wrong"})
        assert r.status_code == 401
        r = await c.get("/openapi.json", headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"})
        assert r.status_code == 200, r.text
