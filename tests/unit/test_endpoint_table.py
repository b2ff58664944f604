"""The gateway's endpoint table: newest set wins, ended services leave, snapshots drop what ended unseen,
least outstanding requests first and rotation among equals, callers."""

from __future__ import annotations

import time

from libs.schemas.endpoints import EndpointReplica, EndpointSet
from services.gateway.endpoints import EndpointTable


def _set(wid: str = "wl_a", version: int = 1, n: int = 2, *, name: str = "echo", active: bool = True,
         callers: list[str] | None = None) -> EndpointSet:
    return EndpointSet(workload_id=wid, name=name, tenant="acme", version=version, active=active,
                       callers=callers or [],
                       replicas=[EndpointReplica(replica=i, attempt=1, host_id="h", url=f"http://10.0.0.1:{9000 + i}")
                                 for i in range(n)])


def test_endpoint_table_keeps_the_newest_set_and_forgets_ended_services() -> None:
    t = EndpointTable()
    assert t.apply(_set(version=5, n=3))
    assert not t.apply(_set(version=4, n=1))  # older: ignored
    ep = t.get("acme", "echo")
    assert ep is not None and len(ep.replicas()) == 3
    assert t.apply(_set(version=6, active=False))
    assert t.get("acme", "echo") is None
    assert not t.apply(_set(version=6, n=2))  # a late copy of an older state never revives it


def test_endpoint_table_pools_services_of_one_name_and_snapshot_drops_unseen_ended_ones() -> None:
    t = EndpointTable()
    t.apply(_set("wl_a", 1, 1))
    t.apply(_set("wl_b", 1, 2))
    ep = t.get("acme", "echo")
    assert ep is not None and len(ep.replicas()) == 3
    later = time.monotonic() + 1
    t.replace([_set("wl_b", 1, 2)], asked_at=later)  # wl_a ended while its event was missed
    ep = t.get("acme", "echo")
    assert ep is not None and sorted(ep.sets) == ["wl_b"]


def test_endpoint_table_picks_least_outstanding_and_rotates_among_equals() -> None:
    t = EndpointTable()
    t.apply(_set(n=3))
    ep = t.get("acme", "echo")
    assert ep is not None
    picked = [t.pick(ep) for _ in range(6)]
    assert sorted({p.replica for p in picked if p}) == [0, 1, 2]
    t.begin("http://10.0.0.1:9000")
    t.begin("http://10.0.0.1:9001")
    assert {t.pick(ep).replica for _ in range(5)} == {2}  # type: ignore[union-attr]
    t.end("http://10.0.0.1:9000")
    t.end("http://10.0.0.1:9001")
    assert t.outstanding == {}
    assert t.pick(ep, exclude=[r.url for r in ep.replicas()]) is None


def test_endpoint_table_callers_open_an_endpoint_to_named_tenants_only() -> None:
    t = EndpointTable()
    t.apply(_set(callers=["beta"]))
    ep = t.get("acme", "echo")
    assert ep is not None
    assert ep.callable_by("acme") and ep.callable_by("beta") and not ep.callable_by("zeta")
    t.apply(_set("wl_b", 1, callers=[]))  # a second service of the name that is not open: closed to beta
    assert not ep.callable_by("beta")
    t.apply(_set("wl_b", 2, callers=["*"]))
    assert ep.callable_by("beta") and not ep.callable_by("zeta")
