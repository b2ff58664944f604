"""Submit checks against the fleet: the CPU and host-memory limits follow the fleet as it changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.bus.errors import InvalidRequest
from libs.schemas.devices import HostFacts
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.workload import WorkloadSpec
from services.scheduler import reference
from services.scheduler.fleet import Fleet
from services.scheduler.validate import check_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _report(host_id: str, generation: int, cpus: int | None, memory_gib: int | None) -> CapabilityReport:
    facts = HostFacts(hostname=host_id, arch="x86_64", os="Ubuntu 22.04.4 LTS", kernel="6.5.0", cpu_model="Xeon",
                      cpu_sockets=2, cpu_cores=32, cpu_threads=64, memory_mib=512 * 1024, cpu_allocatable=cpus,
                      memory_allocatable_mib=None if memory_gib is None else memory_gib * 1024)
    return CapabilityReport(host_id=host_id, site="hangzhou", generation=generation, facts=facts, devices=[])


def _cpu_job(cpus: int, memory_gib: int = 1) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"name": "j", "hardware": {"type": "cpu"},
                                        "resources": {"cpu": cpus, "memory_gib": memory_gib}})


def _fleet() -> Fleet:
    fleet = Fleet()
    fleet.set_reference(*reference.seed_reference(), [], "seed")
    return fleet


def test_validate_resource_limit_follows_hosts_joining_and_changing() -> None:
    fleet = _fleet()
    check_spec(_cpu_job(100), fleet)  # no host reports its CPUs: nothing to check against
    fleet.apply_capability(_report("h1", 1, 16, 64), T0)
    with pytest.raises(InvalidRequest, match="largest: 16"):
        check_spec(_cpu_job(32), fleet)
    fleet.apply_capability(_report("h2", 1, 48, 256), T0)  # a bigger host joins
    check_spec(_cpu_job(32, 200), fleet)
    fleet.apply_capability(_report("h2", 2, 8, 32), T0 + timedelta(seconds=1))  # and then reports less
    with pytest.raises(InvalidRequest) as err:
        check_spec(_cpu_job(32, 200), fleet)
    assert {e["loc"] for e in err.value.errors} == {"body.resources.cpu", "body.resources.memory_gib"}
    assert "largest: 16" in str(err.value.errors[0]["msg"])
