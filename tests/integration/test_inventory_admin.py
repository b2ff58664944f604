"""Inventory: sites, summaries, host status from the registry, operator labels, catalog and rules."""

from __future__ import annotations

from agent.publisher import HostPublisher
from libs.bus.errors import InvalidRequest, NotFound
from libs.schemas.catalog import CompatRule, DeviceModel
from libs.schemas.devices import HardwareType
from libs.schemas.inventory import (
    CatalogEntry,
    CatalogPage,
    CatalogQuery,
    CatalogRef,
    DevicePage,
    DeviceQuery,
    Empty,
    HostDetail,
    HostLabels,
    HostPage,
    HostQuery,
    HostStatus,
    RuleQuery,
    RuleSet,
    RuleUpsert,
    Site,
    SiteLinkList,
    SiteList,
    SiteSummaryList,
    Upserted,
)
from services.inventory.api import app as inventory_app
from services.registry.api import app as registry_app
from tests.conftest import assert_eventually
from tests.integration.test_inventory import ask, capability, gpu, host, register


async def test_inventory_sites_are_seeded_with_links_from_distance(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    sites = await ask(bus, "sites.list", Empty(), SiteList)
    assert len(sites.items) == 11 and {s.region for s in sites.items} == {"zhejiang"}
    hz = next(s for s in sites.items if s.id == "hangzhou")
    assert hz.lat is not None and 30 < hz.lat < 31
    links = (await ask(bus, "sites.links", Empty(), SiteLinkList)).items
    assert len(links) == 55
    by_pair = {(lk.a, lk.b): lk for lk in links}
    near, far = by_pair[("hangzhou", "shaoxing")], by_pair[("hangzhou", "wenzhou")]
    assert near.latency_ms < far.latency_ms and near.bandwidth_gbps == 400

    added = Site(id="shanghai", city="Shanghai", region="east", lat=31.2304, lon=121.4737)
    assert (await ask(bus, "sites.upsert", added, Upserted)).created
    assert not (await ask(bus, "sites.upsert", added, Upserted)).created
    links = (await ask(bus, "sites.links", Empty(), SiteLinkList)).items
    assert len(links) == 55 + 11 and any(lk.a == "hangzhou" and lk.b == "shanghai" for lk in links)


async def test_inventory_summary_counts_devices_by_site_type_and_health(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    await register(bus, capability("hz-gpu-0001", "hangzhou", [gpu(0), gpu(1)]))
    await register(bus, capability("ls-npu-0001", "lishui", [
        gpu(0, "Ascend910B3", vendor="huawei", hw=HardwareType.NPU, runtimes={"cann": "8.0.RC3"})]))
    await register(bus, capability("new-0001", "newcity", [gpu(0, "T4", memory_mib=15360)]))
    summary = {s.site: s for s in (await ask(bus, "sites.summary", Empty(), SiteSummaryList)).items}
    assert summary["hangzhou"].devices["gpu"].total == 2 and summary["hangzhou"].hosts_up == 1
    assert summary["lishui"].devices["npu"].total == 1
    assert summary["hangzhou"].devices["gpu"].compute_units > 1800
    # A site an agent reports that nobody configured is created, not dropped.
    assert "newcity" in summary and summary["newcity"].devices["gpu"].total == 1
    assert summary["quzhou"].hosts == 0


async def test_inventory_follows_registry_host_down_and_up(settings, running_service, bus) -> None:
    await running_service(registry_app)
    await running_service(inventory_app)
    await register(bus, capability("jx-gpu-0001", "jiaxing", [gpu(0)]))
    pub = HostPublisher(bus, "jx-gpu-0001", "jiaxing", "jx-gpu-0001", interval_s=settings.heartbeat_interval_s)
    await pub.heartbeat()

    async def status(expected: HostStatus) -> bool:
        h = await host(bus, "jx-gpu-0001")
        return h is not None and h.status == expected

    await assert_eventually(lambda: status(HostStatus.DOWN), timeout=10, message="host down after silence")
    down = await ask(bus, "devices.list", DeviceQuery(status=HostStatus.DOWN), DevicePage)
    assert [d.host_id for d in down.items] == ["jx-gpu-0001"]
    await pub.heartbeat()
    await assert_eventually(lambda: status(HostStatus.UP), timeout=10, message="host back up")


async def test_inventory_operator_labels_survive_reregistration(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    await register(bus, capability("hz-gpu-0001", "hangzhou", [gpu(0)], labels={"xpumesh.io/cuda": "12.4"}))
    labelled = await ask(bus, "hosts.labels", HostLabels(id="hz-gpu-0001", set={"team": "nlp",
                                                                                "xpumesh.io/cuda": "pinned"}),
                         HostDetail)
    assert labelled.operator_labels == {"team": "nlp", "xpumesh.io/cuda": "pinned"}
    again = await register(bus, capability("hz-gpu-0001", "hangzhou", [gpu(0)], generation=2,
                                           labels={"xpumesh.io/cuda": "12.6"}))
    assert again.discovered_labels == {"xpumesh.io/cuda": "12.6"}
    assert again.operator_labels["team"] == "nlp" and again.labels["xpumesh.io/cuda"] == "pinned"
    page = await ask(bus, "hosts.list", HostQuery(labels={"team": "nlp"}), HostPage)
    assert [h.id for h in page.items] == ["hz-gpu-0001"]
    removed = await ask(bus, "hosts.labels", HostLabels(id="hz-gpu-0001", remove=["team"]), HostDetail)
    assert "team" not in removed.labels
    try:
        await ask(bus, "hosts.labels", HostLabels(id="nope", set={"a": "b"}), HostDetail)
    except NotFound:
        pass
    else:
        raise AssertionError("labels on an unknown host were accepted")


async def test_inventory_catalog_is_seeded_and_operator_edits_rematch_devices(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    page = await ask(bus, "catalog.list", CatalogQuery(vendor="huawei"), CatalogPage)
    assert any(e.model == "Ascend910B3" for e in page.items) and all(e.origin == "seed" for e in page.items)
    first = await ask(bus, "catalog.list", CatalogQuery(limit=5), CatalogPage)
    rest = await ask(bus, "catalog.list", CatalogQuery(limit=500, after=first.next_cursor), CatalogPage)
    assert first.next_cursor and len(first.items) == 5 and rest.items[0].model not in {e.model for e in first.items}

    await register(bus, capability("hz-x-0001", "hangzhou", [gpu(0, "Z9000 Turbo", vendor="acme")]))
    detail = await host(bus, "hz-x-0001")
    assert detail is not None and detail.devices[0].catalog_model is None
    model = DeviceModel(vendor="acme", model="Z9000", aliases=["Z9000 Turbo"], hardware_type=HardwareType.GPU,
                        memory_gib=80, fp16_tflops=500, compute_units=500, source="test datasheet")
    assert (await ask(bus, "catalog.upsert", model, Upserted)).created
    assert not (await ask(bus, "catalog.upsert", model, Upserted)).created
    entry = await ask(bus, "catalog.get", CatalogRef(vendor="acme", model="Z9000"), CatalogEntry)
    assert entry.origin == "operator" and entry.compute_units == 500
    detail = await host(bus, "hz-x-0001")
    assert detail is not None and detail.devices[0].catalog_model == "Z9000" and detail.devices[0].compute_units == 500


async def test_inventory_rules_list_and_upsert_validate_specifiers(settings, running_service, bus) -> None:
    await running_service(inventory_app)
    rules = await ask(bus, "rules.list", RuleQuery(vendor="nvidia"), RuleSet)
    assert rules.driver and rules.compat and all(r.vendor == "nvidia" for r in rules.driver)
    rule = CompatRule(id="acme-torch", framework="pytorch", framework_versions=">=2.4,<2.5",
                      hardware_type=HardwareType.GPU, vendor="acme", runtime="acmert", runtime_versions=">=1.0",
                      source="test")
    assert (await ask(bus, "rules.upsert", RuleUpsert(compat=rule), Upserted)).created
    listed = await ask(bus, "rules.list", RuleQuery(vendor="acme"), RuleSet)
    assert [r.id for r in listed.compat] == ["acme-torch"]
    bad = rule.model_copy(update={"runtime_versions": ">=banana"})
    try:
        await ask(bus, "rules.upsert", RuleUpsert(compat=bad), Upserted)
    except InvalidRequest as exc:
        assert exc.errors and exc.errors[0]["loc"] == "compat"
    else:
        raise AssertionError("a bad specifier was accepted")
