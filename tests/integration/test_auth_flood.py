"""Attempts without a valid key are limited per client address before any key lookup, and a valid key from
the same address keeps working through a flood of bad ones."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import pytest

from libs.metrics import BUS_REJECTED
from services.gateway import store
from tests.integration.test_api_kit import ADMIN, bearer, gateway_settings, make_key, start_gateway

BURST = 20
RATE = 1.0
FLOOD = 1000


def _bad_token(i: int) -> str:
    if i % 10 == 0:
        return "not-a-key"  # malformed: refused without a lookup
    return "xpm_" + secrets.token_urlsafe(32)  # well-formed, unknown


async def test_auth_flood_of_bad_tokens_gets_429_after_the_budget_while_a_valid_key_works(
        settings, running_service, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = 0
    real_lookup = store.read_live_key

    async def counting_lookup(session: Any, secret: str) -> Any:
        nonlocal lookups
        lookups += 1
        return await real_lookup(session, secret)

    monkeypatch.setattr(store, "read_live_key", counting_lookup)
    # A short key cache: the valid key's entry expires many times during the flood and is looked up again.
    url = await start_gateway(running_service, gateway_settings(
        settings, login_burst=BURST, login_rate_per_s=RATE, key_cache_s=0.2, rate_burst=100_000))
    limited_before = BUS_REJECTED.labels("gateway", "auth", "login_rate_limited")._value.get()
    async with httpx.AsyncClient(base_url=url, timeout=10,
                                 limits=httpx.Limits(max_connections=64)) as c:
        valid = bearer(await make_key(c, "acme", "user"))
        lookups_before = lookups
        codes: dict[int, int] = {}
        retry_after: set[str] = set()
        latencies: list[float] = []
        done = asyncio.Event()
        queue = iter(range(FLOOD))

        async def flood() -> None:
            for i in queue:
                r = await c.get("/v1/me", headers=bearer(_bad_token(i)))
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                assert r.headers["content-type"].startswith("application/problem+json"), r.text
                if r.status_code == 429:
                    retry_after.add(r.headers["retry-after"])

        async def valid_key() -> None:
            while not done.is_set():
                t = time.perf_counter()
                r = await c.get("/v1/me", headers=valid)
                latencies.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
                await asyncio.sleep(0)

        started = time.monotonic()
        user = asyncio.create_task(valid_key())
        await asyncio.gather(*(flood() for _ in range(32)))
        elapsed = time.monotonic() - started
        done.set()
        await user

    allowed = BURST + int(elapsed * RATE) + 1  # the burst plus what the bucket refilled meanwhile
    assert sum(codes.values()) == FLOOD
    assert codes.get(401, 0) <= allowed, codes
    assert codes.get(429, 0) >= FLOOD - allowed, codes
    assert set(codes) <= {401, 429}, codes
    assert retry_after and all(v.isdigit() and int(v) >= 1 for v in retry_after)
    assert BUS_REJECTED.labels("gateway", "auth", "login_rate_limited")._value.get() - limited_before == codes[429]
    # Lookups: at most one per token inside the budget, plus the valid key's refreshes (one per 0.2 s cache).
    assert lookups - lookups_before <= allowed + int(elapsed / 0.2) + 2, (lookups - lookups_before, elapsed)
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"\nflood of {FLOOD} bad tokens in {elapsed:.2f} s: {codes}; valid key {len(latencies)} requests, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert len(latencies) >= 5


async def test_auth_a_valid_key_is_not_charged_to_its_address(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings, login_burst=2, login_rate_per_s=0.01))
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        keys = [await make_key(c, "acme", "user") for _ in range(5)]  # each is looked up once, then refunded
        for key in keys:
            assert (await c.get("/v1/me", headers=bearer(key))).status_code == 200
        for _ in range(2):
            assert (await c.get("/v1/me", headers=bearer("xpm_" + "y" * 43))).status_code == 401
        r = await c.get("/v1/me")
        assert r.status_code == 429 and r.headers["retry-after"].isdigit(), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert (await c.get("/v1/me", headers=ADMIN)).status_code == 200, "a verified key still passes"
