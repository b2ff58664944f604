"""The audit log: every admin action leaves one entry (actor from the key, request id, action,
target, a redacted summary, the outcome); only admins read it, filtered and paged, newest first."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx

from libs.bus.connection import Bus
from libs.config import Settings
from services.gateway.audit import AUDIT_WRITES
from services.inventory.api import app as inventory_app
from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import ADMIN, bearer, gateway_settings, make_key, start_gateway
from tests.integration.test_inventory import capability, gpu, register

PROBLEM = "application/problem+json"
WEBHOOK_SECRET_PREFIX = "whsec_"  # no webhook secret, whatever its value, is ever in an entry
MODEL = {"vendor": "acme", "model": "Z9000", "hardware_type": "gpu", "memory_gib": 80, "fp16_tflops": 500,
         "compute_units": 500, "source": "test datasheet"}
RULE = {"compat": {"id": "acme-torch", "framework": "pytorch", "framework_versions": ">=2.4,<2.5",
                   "hardware_type": "gpu", "vendor": "acme", "runtime": "acmert", "runtime_versions": ">=1.0",
                   "source": "test"}}


async def _entries(c: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await c.get("/v1/audit", params={"limit": 500, **params}, headers=ADMIN)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def _one(c: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    found = [e for e in await _entries(c) if e["request_id"] == request_id]
    assert len(found) == 1, (request_id, found)
    return found[0]


def _rid(name: str) -> dict[str, str]:
    return {"X-Request-Id": name}


async def test_audit_every_admin_action_leaves_one_redacted_entry(settings, running_service, bus: Bus) -> None:
    await running_service(scheduler_app)
    await running_service(inventory_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    await register(bus, capability("hz-audit-01", "hangzhou", [gpu(0)]))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        admin_id = (await c.get("/v1/me", headers=ADMIN)).json()["key_id"]
        admin = {"key_id": admin_id, "tenant": "system", "role": "admin"}
        calls: list[tuple[str, httpx.Response, str, str]] = []  # (request id, answer, action, target)

        async def do(rid: str, action: str, target: str, method: str, path: str, key: dict[str, str] = ADMIN,
                     **kw: Any) -> httpx.Response:
            r = await c.request(method, path, headers={**key, **_rid(rid)}, **kw)
            calls.append((rid, r, action, target))
            return r

        created = (await do("rid-key-create", "key.create", "", "POST", "/v1/keys",
                            json={"tenant": "acme", "role": "user", "name": "ci"})).json()
        user = bearer(created["key"])
        user_id = created["id"]
        await do("rid-quota", "quota.set", "acme", "PUT", "/v1/tenants/acme/quota",
                 json={"devices": {"gpu": 4}, "compute_units": 100})
        await do("rid-catalog-create", "catalog.create", "acme/Z9000", "POST", "/v1/catalog", json=MODEL)
        await do("rid-catalog-put", "catalog.upsert", "acme/Z9000", "PUT", "/v1/catalog/acme/Z9000",
                 json={**MODEL, "memory_gib": 96})
        await do("rid-rule", "rule.upsert", "compat/acme-torch", "POST", "/v1/compat-rules", json=RULE)
        await do("rid-labels", "host.labels", "hz-audit-01", "PATCH", "/v1/hosts/hz-audit-01/labels",
                 json={"set": {"team": "vision"}, "remove": ["old"]})
        await do("rid-site", "site.upsert", "shanghai", "PUT", "/v1/sites/shanghai",
                 json={"id": "shanghai", "city": "Shanghai", "region": "east", "lat": 31.23, "lon": 121.47})
        hook = "http://127.0.0.1:9/hooks/pathsecret123?token=querysecret456"
        sub = (await do("rid-sub-create", "subscription.create", "", "POST", "/v1/subscriptions", key=user,
                        json={"url": hook, "types": ["io.xpumesh.workload.*"]})).json()
        await do("rid-sub-delete", "subscription.delete", sub["id"], "DELETE", f"/v1/subscriptions/{sub['id']}",
                 key=user)
        await do("rid-key-revoke", "key.revoke", user_id, "DELETE", f"/v1/keys/{user_id}")

        for rid, answer, action, target in calls:
            assert answer.status_code < 300, (rid, answer.status_code, answer.text)
            entry = await _one(c, rid)
            assert entry["action"] == action and entry["status"] == answer.status_code, (rid, entry)
            if target:
                assert entry["target"] == target, (rid, entry)
            who = {"key_id": user_id, "tenant": "acme", "role": "user"} if rid.startswith("rid-sub") else admin
            assert entry["actor"] == who, (rid, entry)
            text = json.dumps(entry)
            for secret in (created["key"], sub["secret"], "pathsecret123", "querysecret456", WEBHOOK_SECRET_PREFIX):
                assert secret not in text, (rid, secret)

        assert (await _one(c, "rid-key-create"))["target"] == user_id
        assert (await _one(c, "rid-key-create"))["changes"] == {"tenant": "acme", "role": "user", "name": "ci"}
        assert (await _one(c, "rid-sub-create"))["target"] == sub["id"]
        assert (await _one(c, "rid-sub-create"))["changes"]["url"] == "http://127.0.0.1:9/…"
        assert (await _one(c, "rid-labels"))["changes"] == {"set": {"team": "vision"}, "remove": ["old"]}
        assert (await _one(c, "rid-quota"))["changes"] == {  # a bare number is a limit (max) with no guarantee
            "devices": {"gpu": {"min": 0.0, "max": 4.0}}, "compute_units": {"min": 0.0, "max": 100.0},
            "cpu": None, "memory_gib": None}
        assert (await _one(c, "rid-catalog-put"))["changes"]["memory_gib"] == 96

        # failures are recorded with their status; a body naming an actor changes nothing
        r = await c.delete("/v1/keys/key_nope", headers={**ADMIN, **_rid("rid-revoke-missing")})
        assert r.status_code == 404
        assert (await _one(c, "rid-revoke-missing"))["status"] == 404
        r = await c.put("/v1/catalog/acme/Other", json=MODEL, headers={**ADMIN, **_rid("rid-catalog-bad")})
        assert r.status_code == 422
        assert (await _one(c, "rid-catalog-bad"))["status"] == 422
        r = await c.post("/v1/keys", json={"tenant": "acme", "role": "viewer", "name": "actor: key_forged"},
                         headers=ADMIN)
        entry = await _one(c, r.headers["x-request-id"])  # the gateway's own request id when none was sent
        assert entry["actor"]["key_id"] == admin_id and len(entry["request_id"]) >= 16
        # reads and a replayed POST leave nothing
        before = len(await _entries(c))
        body = {"tenant": "acme", "role": "viewer", "name": "once"}
        for _ in range(2):
            assert (await c.post("/v1/keys", json=body, headers={**ADMIN, "Idempotency-Key": "a-1"})).status_code == 201
        await c.get("/v1/keys", headers=ADMIN)
        assert len(await _entries(c)) == before + 1


async def test_audit_is_readable_by_admins_only(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        for role in ("operator", "user", "viewer"):
            r = await c.get("/v1/audit", headers=bearer(await make_key(c, "acme", role)))
            assert r.status_code == 403, (role, r.text)
            assert r.headers["content-type"].startswith(PROBLEM)
        for headers in ({}, bearer("xpm_" + "x" * 43)):
            r = await c.get("/v1/audit", headers=headers)
            assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
        assert (await c.get("/v1/audit", headers=ADMIN)).status_code == 200


async def test_audit_filters_and_pages_newest_first(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        keys = [(await c.post("/v1/keys", json={"tenant": "pager", "role": "viewer", "name": str(i)},
                              headers=ADMIN)).json() for i in range(5)]
        for k in keys[:2]:
            assert (await c.delete(f"/v1/keys/{k['id']}", headers=ADMIN)).status_code == 200
        other = bearer(await make_key(c, "acme", "admin"))
        other_id = (await c.get("/v1/me", headers=other)).json()["key_id"]
        await c.post("/v1/keys", json={"tenant": "acme", "role": "viewer"}, headers=other)

        revoked = await _entries(c, action="key.revoke")
        assert [e["target"] for e in revoked] == [keys[1]["id"], keys[0]["id"]], "newest first"
        by_other = await _entries(c, actor=other_id)
        assert len(by_other) == 1 and by_other[0]["actor"]["key_id"] == other_id
        assert [e["target"] for e in await _entries(c, target=keys[3]["id"])] == [keys[3]["id"]]
        everything = await _entries(c)
        assert len(everything) == 9  # 5 + 2 + the other admin key + its own key
        newest = everything[0]["at"]
        assert await _entries(c, since="2999-01-01T00:00:00Z") == []
        assert await _entries(c, until="2000-01-01T00:00:00+08:00") == []
        assert len(await _entries(c, since=everything[-1]["at"], until="2999-01-01T00:00:00Z")) == 9
        assert [e["id"] for e in await _entries(c, since=newest)] == [everything[0]["id"]]

        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
            page = (await c.get("/v1/audit", params=params, headers=ADMIN)).json()
            seen += [e["id"] for e in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert seen == [e["id"] for e in everything] and seen == sorted(seen, reverse=True)
        for bad in ({"cursor": "%%%"}, {"cursor": "InN0ciI"}, {"action": "key.explode"}, {"since": "yesterday"},
                    {"limit": 0}):
            r = await c.get("/v1/audit", params=bad, headers=ADMIN)
            assert r.status_code in (400, 422), (bad, r.status_code)
            assert r.headers["content-type"].startswith(PROBLEM)


def _failed() -> float:
    value: float = AUDIT_WRITES.labels("failed")._value.get()
    return value


async def test_audit_failed_write_is_counted_and_a_local_change_is_not_made(settings: Settings,
                                                                             running_service) -> None:
    await running_service(scheduler_app)
    url = await start_gateway(running_service, gateway_settings(settings, read_cache_s=0))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        conn = await asyncpg.connect(settings.database_dsn())
        try:
            await conn.execute("ALTER TABLE gateway.audit_log RENAME TO audit_log_away")
            failed = _failed()
            r = await c.post("/v1/keys", json={"tenant": "lost", "role": "user", "name": "x"}, headers=ADMIN)
            assert r.status_code == 500 and r.headers["content-type"].startswith(PROBLEM)
            assert _failed() == failed + 1
            listed = (await c.get("/v1/keys", params={"tenant": "lost"}, headers=ADMIN)).json()["items"]
            assert listed == [], "the key and its entry commit together, or neither does"
            # a change another service made stands; the lost entry is counted
            r = await c.put("/v1/tenants/acme/quota", json={"devices": {"gpu": 1}}, headers=ADMIN)
            assert r.status_code == 200
            assert _failed() == failed + 2
        finally:
            await conn.execute("ALTER TABLE IF EXISTS gateway.audit_log_away RENAME TO audit_log")
            await conn.close()
        assert (await c.get("/v1/tenants/acme/quota", headers=ADMIN)).json()["devices"] == {"gpu": {"min": 0.0, "max": 1.0}}
