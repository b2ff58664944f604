"""Which events a subscription (or an SSE client) gets: type patterns, site, hardware type, tenant.

Tenant-owned events (those naming a tenant, and every workload event) reach only that
tenant's subscribers, plus admins and operators; fleet events (hosts, devices, alerts)
reach everyone who asked for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.bus import subjects
from libs.events import EVENT_TYPE_PREFIX, CloudEvent, EventTypes
from libs.schemas.subscriptions import type_matches


def _dig(data: dict[str, Any], *path: str) -> Any:
    cur: Any = data
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


def event_tenant(event: CloudEvent) -> str | None:
    for path in (("tenant",), ("workload", "tenant"), ("spec", "tenant"), ("workload", "spec", "tenant")):
        v = _dig(event.data, *path)
        if isinstance(v, str) and v:
            return v
    return None


def event_hardware_type(event: CloudEvent) -> str | None:
    for path in (("hardware_type",), ("hardware", "type"), ("spec", "hardware", "type"),
                 ("workload", "spec", "hardware", "type"), ("device", "hardware_type")):
        v = _dig(event.data, *path)
        if isinstance(v, str) and v:
            return v
    return None


def site_of(nats_subject: str) -> str | None:
    site = nats_subject.rsplit(".", 1)[-1]
    return None if site == "_" else site


@dataclass(frozen=True)
class EventFilter:
    """What one subscriber asked for, and the tenant it is confined to (None: every tenant)."""

    types: tuple[str, ...]
    site: str | None = None
    hardware_type: str | None = None
    tenant: str | None = None

    def matches(self, event: CloudEvent, nats_subject: str) -> bool:
        if not any(type_matches(p, event.type) for p in self.types):
            return False
        if self.site is not None and site_of(nats_subject) != self.site:
            return False
        if self.hardware_type is not None and event_hardware_type(event) != self.hardware_type:
            return False
        if self.tenant is not None:
            owner = event_tenant(event)
            if owner is not None and owner != self.tenant:
                return False
            if owner is None and event.type.startswith(EventTypes.WORKLOAD_PREFIX):
                return False
        return True

    def nats_filter(self) -> str:
        """The narrowest JetStream subject filter covering every pattern (exact matching happens in matches)."""
        if len(self.types) != 1:
            return subjects.EVENTS_ALL
        segs = self.types[0].removeprefix(EVENT_TYPE_PREFIX).split(".")
        if segs[-1] == "*":
            return subjects.events_of(".".join(segs[:-1]))
        return subjects.event_subject(self.types[0], self.site or "*")
