"""Registry bridges: mirror membership into another registry (Consul) as it changes.

A bridge sees every batch the registry writes: transitions (a member came up, went down
or changed) and members that merely heartbeated. The Consul bridge registers each member
as a Consul service with a TTL check, passes the check on heartbeats and deregisters the
member when it goes down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol
from urllib.parse import urlparse

from libs.config import Settings
from libs.schemas.registry import Member, MemberStatus
from services.registry.liveness import Transition

log = logging.getLogger(__name__)


class RegistryBridge(Protocol):
    async def apply(self, transitions: list[Transition], touched: list[Member]) -> None: ...


class NullBridge:
    async def apply(self, transitions: list[Transition], touched: list[Member]) -> None:
        return None


def consul_service_id(m: Member) -> str:
    return f"xpumesh-{m.kind}-{m.id}"


class ConsulBridge:
    """Mirrors members into a Consul agent with py-consul (its blocking client, run in a thread)."""

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


def bridge_from_settings(settings: Settings) -> RegistryBridge:
    if settings.consul_url:
        token = settings.consul_token.get_secret_value() if settings.consul_token else None
        return ConsulBridge(settings.consul_url, token)
    return NullBridge()
