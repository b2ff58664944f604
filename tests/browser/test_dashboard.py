"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, against a real mesh.

The module runs registry, inventory, metrics and gateway as processes plus the simulated
fleet over the demo cities; every test signs in with an API key and checks the page
against the API.
Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, cast
from urllib.parse import urlparse, urlunparse

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import Settings
from libs.embedded import EmbeddedNats, free_port
from libs.schemas.sim import SimControl, SimControlReply
from libs.sites import DEMO_SITES
from tests.conftest import REPO, TEST_ADMIN_KEY, assert_eventually, service_env

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
HOSTS = 2 * len(DEMO_SITES)

eventually = cast(Callable[..., Any], assert_eventually)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture(scope="module")
async def mesh_settings(pg_server: tuple[str, Any], template_db: str,
                        tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    """One mesh for the whole module (starting one takes seconds): its own database and nats-server."""
    dsn, _ = pg_server
    name = f"xpm_browser_{os.getpid()}"
    admin = await asyncpg.connect(urlunparse(urlparse(dsn)._replace(path="/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    tmp = tmp_path_factory.mktemp("mesh")
    nats = EmbeddedNats(tmp).start()
    try:
        yield Settings(nats_url=nats.url, database_url=SecretStr(urlunparse(urlparse(dsn)._replace(path=f"/{name}"))),
                       data_dir=tmp, bootstrap_admin_key=SecretStr(TEST_ADMIN_KEY), heartbeat_interval_s=0.5,
                       telemetry_interval_s=0.5, gateway_port=free_port(), metrics_port=free_port(),
                       registry={"sweep_interval_s": 0.1, "flush_interval_s": 0.3})
    finally:
        nats.stop()


@pytest.fixture(scope="module")
async def mesh(mesh_settings: Settings) -> AsyncIterator[str]:
    """The mesh as processes with a simulated fleet; yields the gateway's base URL once every city reports."""
    settings = mesh_settings
    procs = []
    for argv in (["run", "registry"], ["run", "inventory"], ["run", "metrics"], ["run", "scheduler"],
                 ["run", "gateway"], ["sim", "--hosts", str(HOSTS)]):
        log = open(settings.data_dir / f"{argv[-1]}.log", "wb")
        procs.append((subprocess.Popen([sys.executable, "-m", "xpumesh", *argv], env=service_env(settings),
                                       stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
    base = f"http://127.0.0.1:{settings.gateway_port}"
    try:
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as api:
            async def reporting() -> bool:
                try:
                    r = await api.get("/v1/metrics/summary")
                except httpx.TransportError:
                    return False
                body = r.json() if r.status_code == 200 else {}
                sites = body.get("sites", [])
                return len(sites) == len(DEMO_SITES) and all(s["utilization_pct"] is not None for s in sites if s["devices"])

            await eventually(reporting, timeout=60, interval=0.5, message="every demo city reports")
        yield base
    finally:
        for p, _ in procs:
            p.terminate()
        for p, log in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()


async def _api(base: str, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as api:
        r = await api.get(path, params=params)
        r.raise_for_status()
        return r.json()


async def _open(browser: Browser, base: str) -> Page:
    page = await browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "/v1/sites" not in msg.text
            and "/v1/events" not in msg.text else None)
    await page.goto(base + "/")
    await expect(page.locator("#signin")).to_be_visible()
    await page.fill("#key", TEST_ADMIN_KEY)
    await page.click("#signin-submit")
    await expect(page.locator("#signin")).to_be_hidden()
    page.errors = errors  # type: ignore[attr-defined]
    return page


def _n(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


async def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


async def test_dashboard_overview_shows_every_city_with_totals_matching_the_api(mesh: str, browser: Browser) -> None:
    page = await _open(browser, mesh)
    await expect(page.locator("svg.map g.city")).to_have_count(len(DEMO_SITES), timeout=15_000)
    await expect(page.locator(".cards .card")).to_have_count(len(DEMO_SITES))
    summary = await _api(mesh, "/v1/metrics/summary")
    shown = set(await page.locator(".cards .card").evaluate_all("els => els.map(e => e.dataset.site)"))
    assert shown == {s["site"] for s in summary["sites"]} == {s.id for s in DEMO_SITES}
    for site in summary["sites"]:
        card = page.locator(f'.card[data-site="{site["site"]}"]')
        await expect(card).to_contain_text(f'{_n(site["hosts"], "host")} · {_n(site["devices"], "device")}')
        for t in site["by_type"]:
            await expect(card.locator(f'tr[data-type="{t["hardware_type"]}"] td').nth(1)).to_have_text(f'{t["total"]:,}')
    totals = page.locator("#totals")
    await expect(totals).to_contain_text(f'{summary["totals"]["devices"]:,}devices')
    await expect(totals).to_contain_text(f'{len(DEMO_SITES)}cities')
    await expect(page.locator("#fleet-chart svg.chart")).to_be_visible()
    await _shot(page, "overview")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_dashboard_device_fault_appears_as_alert_without_reload(mesh: str, browser: Browser,
                                                                     mesh_settings: Settings) -> None:
    page = await _open(browser, mesh)
    await expect(page.locator(".cards .card")).to_have_count(len(DEMO_SITES), timeout=15_000)
    await page.evaluate("window.__same_page = 42")
    bus = Bus(mesh_settings.bus, name="test-browser")
    await bus.connect(mesh_settings.nats_url or "")
    try:
        hosts = await bus.request(subjects.SIM_CONTROL, SimControl(action="list"), SimControlReply)
        target = next(h for h in hosts.hosts if h.devices and not h.faulty and h.up)
        reply = await bus.request(subjects.SIM_CONTROL, SimControl(action="fault", host_id=target.host_id, device_index=0),
                                  SimControlReply)
        assert reply.ok
    finally:
        await bus.close()
    alert = page.locator(f'.alert[data-alert="device_unhealthy/{target.host_id}/0"]')
    await expect(alert).to_be_visible(timeout=10_000)
    await expect(alert).to_contain_text("unhealthy")
    assert await page.evaluate("window.__same_page") == 42  # no reload
    await expect(page.locator(f'.city[data-site="{target.site}"] .badge')).to_be_visible()
    await _shot(page, "alert")
    await alert.locator("a").click()
    await expect(page.locator(".device .facts")).to_contain_text("driver")
    await expect(page.locator(".device .stats")).to_contain_text("unhealthy")


async def test_dashboard_drill_down_city_host_device(mesh: str, browser: Browser) -> None:
    page = await _open(browser, mesh)
    await page.locator('.card[data-site="hangzhou"]').click()
    await expect(page).to_have_url(f"{mesh}/#/site/hangzhou")
    await expect(page.locator(".host-table tbody tr").first).to_be_visible(timeout=10_000)
    hosts = await _api(mesh, "/v1/metrics/sites/hangzhou/hosts")
    await expect(page.locator(".host-table tbody tr")).to_have_count(len(hosts["items"]))
    await _shot(page, "city")
    host = next(h for h in hosts["items"] if h["devices"])
    chip = page.locator(f'.chip[data-device="{host["host_id"]}/0"]')
    await chip.click()
    await expect(page).to_have_url(f'{mesh}/#/device/{host["host_id"]}/0')
    detail = await _api(mesh, f'/v1/metrics/devices/{host["host_id"]}/0')
    facts = page.locator(".device .facts")
    await expect(facts).to_contain_text(detail["device"]["model"])
    if detail["driver_version"]:
        await expect(facts).to_contain_text(detail["driver_version"])
    for name, version in detail["runtimes"].items():
        await expect(facts).to_contain_text(f"{name} {version}")
    await expect(page.locator(".device svg.chart").first).to_be_visible()
    await page.locator(".ranges button", has_text="15m").click()
    await expect(page.locator(".device svg.chart path.line").first).to_be_visible(timeout=10_000)
    await _shot(page, "device")
    await page.locator(".tabs a", has_text="Workloads").click()
    await expect(page.locator(".workloads h2")).to_contain_text("every tenant")
    await _shot(page, "workloads")


async def test_dashboard_quotas_show_min_max_used_and_borrowed_per_tenant(mesh: str, browser: Browser) -> None:
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=mesh, headers=admin, timeout=10) as api:
        r = await api.put("/v1/tenants/lab/quota", json={"devices": {"gpu": {"min": 1, "max": 4}}})
        assert r.status_code == 200, r.text
        r = await api.put("/v1/tenants/studio/quota", json={"devices": {"npu": {"min": 2, "max": 8}}, "cpu": 64})
        assert r.status_code == 200, r.text
        key = (await api.post("/v1/keys", json={"tenant": "lab", "role": "user", "name": "dashboard"})).json()["key"]
        lab = {"Authorization": f"Bearer {key}"}
        r = await api.post("/v1/workloads", headers=lab, json={
            "name": "borrower", "hardware": {"type": "gpu", "count": 2}, "preemptible": True, "duration_s": 600})
        assert r.status_code == 201, r.text

        async def held() -> dict[str, Any] | None:
            body = (await api.get("/v1/tenants/lab/usage")).json()
            return body if body["resources"].get("gpu", {}).get("used") == 2 else None

        usage = await eventually(held, timeout=30, interval=0.5, message="lab's workload holds 2 gpus")
    assert usage["resources"]["gpu"] == {"min": 1.0, "max": 4.0, "used": 2.0, "borrowed": 1.0}
    page = await _open(browser, mesh)
    await page.locator(".tabs a", has_text="Quotas").click()
    await expect(page).to_have_url(f"{mesh}/#/quotas")
    await expect(page.locator(".quotas h2")).to_contain_text("every tenant")
    row = page.locator('.quota-table tr[data-tenant="lab"][data-resource="gpu"]')
    await expect(row.locator("td.q-used")).to_have_text("2")
    await expect(row.locator("td.q-lent")).to_have_text("1")
    await expect(row).to_have_class("borrowing")
    studio = page.locator('.quota-table tr[data-tenant="studio"][data-resource="npu"]')
    await expect(studio.locator("td.n").nth(0)).to_have_text("2")
    await expect(studio.locator("td.n").nth(1)).to_have_text("8")
    await expect(page.locator('.quota-table tr[data-tenant="studio"][data-resource="cpu"] td.n').nth(1)).to_have_text("64")
    await expect(page.locator('.quota-notes li[data-tenant="lab"]')).to_contain_text("1 workload borrowing")
    await _shot(page, "quotas")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    # a tenant's own key sees its own quota only
    own = await browser.new_page(viewport={"width": 1400, "height": 900})
    await own.goto(mesh + "/#/quotas")
    await own.fill("#key", key)
    await own.click("#signin-submit")
    await expect(own.locator(".quotas h2")).to_contain_text("Quota of tenant lab")
    await expect(own.locator('.quota-table tr[data-tenant="lab"]').first).to_be_visible()
    await expect(own.locator('.quota-table tr[data-tenant="studio"]')).to_have_count(0)


async def test_dashboard_services_show_each_endpoint_its_replicas_readiness_simulated_marks_and_traffic(
        mesh: str, browser: Browser) -> None:
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=mesh, headers=admin, timeout=10) as api:
        key = (await api.post("/v1/keys", json={"tenant": "svc", "role": "user", "name": "svc"})).json()["key"]
        svc = {"Authorization": f"Bearer {key}"}
        spec = {"name": "infer", "kind": "service", "replicas": 3, "hardware": {"type": "gpu", "share": 0.25},
                "service": {"port": 8000}, "variants": {"nvidia": {"image": "example/serve-cuda:1"},
                                                        "default": {"image": "example/serve:1"}}}
        r = await api.post("/v1/workloads", headers=svc, json=spec)
        assert r.status_code == 201, r.text
        wid = r.json()["id"]

        async def ready() -> bool:
            items = (await api.get("/v1/endpoints", headers=svc)).json()["items"]
            return [(i["name"], i["replicas_ready"], i["simulated"]) for i in items] == [("infer", 3, 3)]

        await eventually(ready, timeout=30, interval=0.3, message="three simulated replicas ready")
        for i in range(40):
            got = await api.post(f"/v1/endpoints/infer/v1/infer?i={i}", json={"i": i}, headers=svc)
            assert got.status_code == 200, got.text
        view = (await api.get(f"/v1/workloads/{wid}", headers=svc)).json()
        models = {}
        for host in {p["host_id"] for p in view["placement"]}:
            for d in (await api.get(f"/v1/hosts/{host}")).json()["devices"]:
                models[d["id"]] = d["model"]
    assert all(p["simulated"] and p["ready"] and p["variant"] for p in view["placement"])
    page = await _open(browser, mesh)
    await page.locator(".tabs a", has_text="Services").click()
    await expect(page).to_have_url(f"{mesh}/#/services")
    await expect(page.locator(".services h2").first).to_contain_text("every tenant")
    card = page.locator('.service[data-endpoint="svc:infer"]')
    await expect(card.locator(".svc-ready")).to_have_text("3 ready of 3", timeout=15_000)
    await expect(card.locator(".svc-sim")).to_have_text("3 simulated")
    await expect(card.locator(".svc-url")).to_have_text("/v1/endpoints/svc:infer/")
    await expect(card.locator("tr[data-replica]")).to_have_count(3)
    for p in view["placement"]:
        row = card.locator(f'tr[data-replica="{wid}/{p["replica"]}"]')
        await expect(row.locator(".r-ready")).to_have_text("ready")
        await expect(row.locator(".r-sim")).to_have_text("simulated")
        await expect(row).to_have_class("sim")
        await expect(row.locator(".r-host")).to_contain_text(p["host_id"])
        device = p["devices"][0]
        chip = row.locator(f'.r-chips [data-device="{device["id"]}"]')
        await expect(chip).to_contain_text(device["hardware_type"])
        await expect(chip).to_contain_text(models[device["id"]])
        await expect(row.locator(".r-runs b")).to_have_text(p["variant"])
    await expect(card.locator(".s-requests b")).to_have_text("40")
    await expect(card.locator(".s-failed b")).to_have_text("0")
    await expect(card.locator(".s-rate b")).not_to_have_text("0.00/s")
    await expect(card.locator(".s-p50 b")).to_contain_text("ms")
    await expect(card.locator(".s-errors b")).to_have_text("0.0%")
    await _shot(page, "services")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    await card.locator(".r-chips a.dev").first.click()  # a chip leads to its device
    await expect(page.locator(".device .facts")).to_contain_text(models[view["placement"][0]["devices"][0]["id"]])
    # another tenant's key sees none of it
    other = await browser.new_page(viewport={"width": 1400, "height": 900})
    async with httpx.AsyncClient(base_url=mesh, headers=admin, timeout=10) as api:
        zeta = (await api.post("/v1/keys", json={"tenant": "zeta", "role": "viewer", "name": "z"})).json()["key"]
    await other.goto(mesh + "/#/services")
    await other.fill("#key", zeta)
    await other.click("#signin-submit")
    await expect(other.locator(".services h2").first).to_contain_text("Services of tenant zeta")
    await expect(other.locator(".services .state-empty")).to_be_visible()
    await expect(other.locator(".service")).to_have_count(0)
