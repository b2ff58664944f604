"""The Consul bridge against a real Consul agent (set XPUMESH_CONSUL_URL to run these)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import pytest

from agent.publisher import HostPublisher
from libs.config import Settings
from services.registry.api import app as registry_app
from services.registry.bridge import consul_service_id
from tests.conftest import assert_eventually

CONSUL_URL = os.environ.get("XPUMESH_CONSUL_URL")
pytestmark = pytest.mark.skipif(not CONSUL_URL, reason="no Consul configured (set XPUMESH_CONSUL_URL to run)")


def consul_service_id_for_host(host_id: str) -> str:
    from datetime import UTC, datetime

    from libs.schemas.registry import Member, MemberKind, MemberStatus

    now = datetime.now(UTC)
    return consul_service_id(Member(kind=MemberKind.HOST, id=host_id, name=host_id, site=None, version="",
                                    status=MemberStatus.UP, interval_s=1, first_seen=now, last_seen=now,
                                    status_changed_at=now))


def _consul() -> Any:
    import consul

    u = urlparse(CONSUL_URL or "")
    return consul.Consul(host=u.hostname, port=u.port or 8500, scheme=u.scheme or "http")


async def test_consul_bridge_registers_with_ttl_and_deregisters_when_down(settings: Settings, running_service, bus) -> None:
    s = settings.model_copy(update={"consul_url": CONSUL_URL})
    await running_service(registry_app, s)
    pub = HostPublisher(bus, "consul-h1", "hangzhou", "consul-h1", interval_s=s.heartbeat_interval_s)
    await pub.heartbeat()
    c = _consul()
    sid = consul_service_id_for_host("consul-h1")

    def registered() -> bool:
        services = c.agent.services()
        checks = c.agent.checks()
        return sid in services and checks.get(f"service:{sid}", {}).get("Status") == "passing"

    await assert_eventually(registered, timeout=10, message="host registered in Consul with a passing TTL check")
    await assert_eventually(lambda: sid not in c.agent.services(), timeout=3 * s.heartbeat_interval_s + 3,
                            message="host deregistered after going down")
