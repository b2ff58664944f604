"""The simulated fleet: where hosts are, what they have, and that their versions are real pairings."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.sim.fleet import DEFAULT_HOSTS, HostSpec, build_fleet, site_counts
from agent.sim.host import SimHost, diurnal
from libs.bus.connection import Bus
from libs.catalog.loader import load_catalog, load_rules, match_model
from libs.config import BusSettings
from libs.schemas.devices import Health
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.sites import DEMO_SITES
from libs.versions import SpecifierSet, Version


def test_sim_default_fleet_spans_eleven_cities_and_many_kinds_of_hardware() -> None:
    fleet = build_fleet()
    assert len(fleet) == DEFAULT_HOSTS
    assert {h.site for h in fleet} == {s.id for s in DEMO_SITES} and len(DEMO_SITES) == 11
    devices = [d for h in fleet for d in h.devices]
    assert len({d.vendor for d in devices}) >= 5
    assert len({d.hardware_type for d in devices}) >= 5
    assert all(d.driver_version and d.runtimes for d in devices)
    assert any(not h.devices for h in fleet if h.facts.arch == "aarch64"), "CPU-only ARM hosts"
    assert any(not h.devices for h in fleet if h.facts.arch == "x86_64"), "CPU-only x86 hosts"
    # Some hosts run older stacks than others.
    nvidia_drivers = {d.driver_version.split(".")[0] for d in devices if d.vendor == "nvidia" and d.driver_version}
    assert {"535", "550"} <= nvidia_drivers
    assert len({h.host_id for h in fleet}) == len(fleet)


@pytest.fixture(scope="module")
def big_fleet() -> list[HostSpec]:
    return build_fleet(2000)


def test_sim_model_names_are_the_catalogs_own(big_fleet: list[HostSpec]) -> None:
    catalog = load_catalog()
    for model in {(d.vendor, d.model) for h in big_fleet for d in h.devices}:
        found = match_model(model[0], model[1], catalog)
        assert found is not None and found.model == model[1], model


def test_sim_drivers_carry_the_runtimes_they_report(big_fleet: list[HostSpec]) -> None:
    """Every CUDA/CANN/DTK version a simulated device reports is one its driver supports per the seed rules."""
    _, driver_rules = load_rules()
    stacks = {(d.vendor, d.driver_version, runtime, version)
              for h in big_fleet for d in h.devices for runtime, version in d.runtimes.items()}
    checked = 0
    for vendor, driver, runtime, version in stacks:
        rules = [r for r in driver_rules if r.vendor == vendor and r.runtime == runtime
                 and SpecifierSet.parse(r.runtime_versions).contains(version)]
        for r in rules:
            assert driver and Version.parse(driver) >= Version.parse(r.min_driver_version), (driver, version, r.id)
            checked += 1
    assert checked >= 8, stacks


def test_sim_fleet_is_deterministic_and_sized_as_asked() -> None:
    assert [h.host_id for h in build_fleet(300, seed=3)] == [h.host_id for h in build_fleet(300, seed=3)]
    assert sum(site_counts(10_000).values()) == 10_000 and min(site_counts(10_000).values()) > 0
    assert site_counts(5) == {s.id: 1 for s in DEMO_SITES[:5]}
    uniform = build_fleet(200, devices_per_host=8)
    assert Counter(len(h.devices) for h in uniform) == Counter({8: 200})


def test_sim_fleet_keeps_to_the_sites_asked_for() -> None:
    own = build_fleet(4, seed=3, devices_per_host=4, prefix="b-", sites=["lishui"])
    assert {h.site for h in own} == {"lishui"} and len({h.host_id for h in own}) == 4
    assert len({h.profile.name for h in own}) == 4  # a site's first hosts still cycle through its mix
    assert site_counts(30, ["ningbo", "hangzhou"]) == {"hangzhou": 20, "ningbo": 10}  # by weight, demo order
    assert "lishui" not in {h.site for h in build_fleet(10, seed=7, devices_per_host=4)}
    with pytest.raises(ValueError, match="unknown sites"):
        build_fleet(4, sites=["atlantis"])


@pytest.mark.parametrize("hour", range(0, 24, 3))
def test_sim_diurnal_load_stays_in_bounds_and_peaks_in_the_afternoon(hour: int) -> None:
    utc = (hour - 8) % 24 * 3600.0
    load = diurnal(utc, 86400)
    assert 0.15 - 1e-9 <= load <= 0.95 + 1e-9
    if hour == 15:
        assert load > 0.85
    if hour == 3:
        assert load < 0.25


def test_sim_host_reports_validate_and_faults_show_in_both() -> None:
    spec = next(h for h in build_fleet(50) if len(h.devices) == 8)
    host = SimHost(spec, Bus(BusSettings(), name="unit"), interval_s=5)
    first = host.capability_report()
    assert host.fault(3, None)
    second = host.capability_report()
    assert second.generation > first.generation
    CapabilityReport.model_validate(second.model_dump(mode="json"))
    assert second.devices[3].health == Health.UNHEALTHY and second.devices[2].health == Health.HEALTHY
    raw = host.telemetry_json(1_700_000_000.0, 0.8)
    tel = TelemetryReport.model_validate_json(raw)
    assert tel.model_dump_json().encode() == raw  # the bytes a real agent's report gives
    assert [s[5] for s in tel.devices] == [1, 1, 1, 0, 1, 1, 1, 1]
    assert all(0 <= s[1] <= 100 and s[2] <= spec.devices[0].memory_mib for s in tel.devices)  # type: ignore[operator]
    assert host.repair(3) and not host.repair(3)


def test_sim_hosts_report_cpus_memory_and_numa_like_an_agent() -> None:
    fleet = build_fleet()
    for h in fleet:
        f = h.facts
        assert f.cpu_allocatable is not None and 0 < f.cpu_allocatable < f.cpu_threads
        assert f.memory_allocatable_mib is not None and 0 < f.memory_allocatable_mib < f.memory_mib
        assert sum(len(n.cpu_ids()) for n in f.numa) == f.cpu_threads
        assert f.cpu_vendor, f.cpu_model
    by_arch = {(h.facts.arch, h.facts.cpu_vendor) for h in fleet}
    assert {("aarch64", "huawei"), ("aarch64", "phytium"), ("x86_64", "hygon"), ("x86_64", "intel")} <= by_arch
    amx = [h for h in fleet if "amx_tile" in h.facts.cpu_features]
    assert amx and all(h.facts.cpu_model.startswith("Intel(R) Xeon(R) Platinum 84") for h in amx)
