"""Service endpoints as the scheduler records them: which replicas of a service are in rotation.

A replica is in rotation while it is active and its agent last reported it ready with a URL
(``Replica.in_rotation``). ``store.update_workloads`` compares a service's set with the one
last published (``Workload.endpoints_published``, taken when the record was read) and, when it
differs, bumps ``endpoint_version`` and writes an ``io.xpumesh.endpoint.changed`` event with the
whole set into the outbox, in the same transaction as the change. Gateways read every set once
at start (``endpoints.list``) and follow these events from then on.
"""

from __future__ import annotations

import time
from typing import Any

from libs.schemas.endpoints import EndpointReplica, EndpointSet
from services.scheduler.lifecycle import Replica, Workload


def signature(wl: Workload) -> tuple[Any, ...]:
    """What a gateway needs of a service's set (equal signatures: nothing to publish)."""
    callers = tuple(wl.spec.service.callers) if wl.spec.service is not None else ()
    return (not wl.state.terminal, wl.name, callers,
            tuple((r.replica, r.attempt, r.host_id, r.endpoint, r.simulated) for r in in_rotation(wl)))


def in_rotation(wl: Workload) -> list[Replica]:
    """The replicas that take requests: none while the service drains (a rolling update replaced it)."""
    return [] if wl.draining_since is not None else [r for r in wl.replicas if r.in_rotation]


def changed(wl: Workload) -> bool:
    """Whether a service's set differs from the one last published; bumps its version when it does."""
    if wl.spec.kind != "service":
        return False
    sig = signature(wl)
    if sig == wl.endpoints_published:
        return False
    wl.endpoints_published = sig
    wl.endpoint_version = max(wl.endpoint_version + 1, time.time_ns() // 1000)
    wl.dirty = True
    return True


def endpoint_set(wl: Workload) -> EndpointSet:
    return EndpointSet(
        workload_id=wl.id, name=wl.name, tenant=wl.tenant,
        callers=list(wl.spec.service.callers) if wl.spec.service is not None else [],
        version=wl.endpoint_version, active=not wl.state.terminal,
        replicas=[EndpointReplica(replica=r.replica, attempt=r.attempt, host_id=r.host_id or "", url=r.endpoint or "",
                                  simulated=r.simulated) for r in in_rotation(wl)])
