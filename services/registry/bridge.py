"""Registry bridges: mirror membership into another registry (Consul) as it changes.

A bridge sees every batch the registry writes: transitions (a member came up, went down
or changed) and members that merely heartbeated. The Consul bridge registers each member
as a Consul service with a TTL check, passes the check on heartbeats and deregisters the
member when it goes down; it also registers each ready replica of every service endpoint as an
instance of ``xpumesh-endpoint-<tenant>-<name>`` (no check: the registry deregisters it when the
scheduler takes it out of rotation), so Consul's catalog and DNS find them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol
from urllib.parse import urlparse

from libs.config import Settings
from libs.schemas.endpoints import EndpointSet
from libs.schemas.registry import Member, MemberStatus
from services.registry.liveness import Transition

log = logging.getLogger(__name__)


class RegistryBridge(Protocol):
    mirrors: bool  # whether it mirrors anything (the registry follows endpoints only for one that does)

    async def apply(self, transitions: list[Transition], touched: list[Member]) -> None: ...

    async def endpoints(self, changes: dict[str, EndpointSet | None], *, full: bool) -> None:
        """Each service's new set of replicas in rotation (None: it ended). ``full``: these are all of them,
        so any endpoint registered before and not among them is gone."""
        ...


class NullBridge:
    mirrors = False

    async def apply(self, transitions: list[Transition], touched: list[Member]) -> None:
        return None

    async def endpoints(self, changes: dict[str, EndpointSet | None], *, full: bool) -> None:
        return None


def consul_service_id(m: Member) -> str:
    return f"xpumesh-{m.kind}-{m.id}"


ENDPOINT_TAG = "xpumesh-endpoint"


def consul_endpoint_name(s: EndpointSet) -> str:
    return f"xpumesh-endpoint-{s.tenant or 'system'}-{s.name}"


def consul_endpoint_registrations(s: EndpointSet) -> list[dict[str, Any]]:
    """One Consul service instance per ready replica (register's keyword arguments)."""
    out = []
    for r in s.replicas:
        u = urlparse(r.url)
        tags = [ENDPOINT_TAG, f"tenant={s.tenant or 'system'}", f"host={r.host_id}"] + (
            ["simulated"] if r.simulated else [])
        out.append({"name": consul_endpoint_name(s), "service_id": f"xpumesh-ep-{s.workload_id}-{r.replica}",
                    "address": u.hostname or "", "port": u.port or (443 if u.scheme == "https" else 80), "tags": tags,
                    "meta": {"xpumesh_workload": s.workload_id, "replica": str(r.replica), "url": r.url}})
    return out


class ConsulBridge:
    """Mirrors members and endpoints into a Consul agent with py-consul (its blocking client, run in a thread)."""

    mirrors = True

    def __init__(self, url: str, token: str | None = None, *, ttl_factor: int = 3) -> None:
        import consul

        parsed = urlparse(url)
        self.client: Any = consul.Consul(host=parsed.hostname or "127.0.0.1", port=parsed.port or 8500,
                                         scheme=parsed.scheme or "http", token=token)
        self.ttl_factor = ttl_factor

    def _register(self, m: Member) -> None:
        import consul

        ttl = f"{max(1, int(m.interval_s * self.ttl_factor))}s"
        tags = ["xpumesh", m.kind] + ([f"site={m.site}"] if m.site else [])
        self.client.agent.service.register(
            name=f"xpumesh-{m.name}" if m.kind == "service" else "xpumesh-host", service_id=consul_service_id(m),
            tags=tags, meta={"xpumesh_id": m.id, "version": m.version, **{k: v for k, v in m.meta.items()}},
            check=consul.Check.ttl(ttl))
        self.client.agent.check.ttl_pass(f"service:{consul_service_id(m)}")

    def _sync(self, transitions: list[Transition], touched: list[Member]) -> None:
        for t in transitions:
            if t.member.status == MemberStatus.DOWN:
                self.client.agent.service.deregister(consul_service_id(t.member))
            else:
                self._register(t.member)
        for m in touched:
            try:
                self.client.agent.check.ttl_pass(f"service:{consul_service_id(m)}")
            except Exception:  # unknown to Consul (e.g. Consul restarted): register again
                self._register(m)

    async def apply(self, transitions: list[Transition], touched: list[Member]) -> None:
        try:
            await asyncio.to_thread(self._sync, transitions, touched)
        except Exception as exc:
            log.warning("consul bridge: %s; will catch up on the next batch", type(exc).__name__)

    def _sync_endpoints(self, changes: dict[str, EndpointSet | None], full: bool) -> None:
        registered: dict[str, str] = {}  # Consul service id → workload, of the endpoint instances it holds
        for sid, svc in (self.client.agent.services() or {}).items():
            if ENDPOINT_TAG in (svc.get("Tags") or []):
                registered[sid] = (svc.get("Meta") or {}).get("xpumesh_workload", "")
        keep: set[str] = set()
        for s in changes.values():
            for reg in ([] if s is None else consul_endpoint_registrations(s)):
                self.client.agent.service.register(**reg)
                keep.add(reg["service_id"])
        for sid, wid in registered.items():
            if sid not in keep and (full or wid in changes):
                self.client.agent.service.deregister(sid)

    async def endpoints(self, changes: dict[str, EndpointSet | None], *, full: bool) -> None:
        await asyncio.to_thread(self._sync_endpoints, changes, full)  # a failure is the mirror's to retry


def bridge_from_settings(settings: Settings) -> RegistryBridge:
    if settings.consul_url:
        token = settings.consul_token.get_secret_value() if settings.consul_token else None
        return ConsulBridge(settings.consul_url, token)
    return NullBridge()
