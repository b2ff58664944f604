"""Poison for every subject of the mesh: malformed, oversized, NUL-laden and far-future messages.

Subjects come from ``libs.bus.subjects`` (wildcards filled with a real host and site) and from
every endpoint the services declare, so a subject added later is poisoned too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from libs.bus import subjects
from libs.events import EVENT_TYPE_PREFIX, EventTypes


def every_subject(site: str, host: str) -> list[str]:
    from services.gateway.api import app as gateway
    from services.inventory.api import app as inventory
    from services.metrics.api import app as metrics
    from services.registry.api import app as registry
    from services.scheduler.api import app as scheduler

    out = {subjects.host_subject(site, host, kind) for kind in ("capability", "state", "telemetry", "heartbeat")}
    out |= {subjects.agent_command_subject(site, host), subjects.agent_logs_subject(site, host),
            subjects.service_heartbeat_subject("scheduler", "poison"), subjects.SIM_CONTROL, subjects.CTL_HEALTH,
            subjects.CTL_METRICS, subjects.GATEWAY_KEY_REVOKED, subjects.GATEWAY_SUBSCRIPTIONS_CHANGED}
    for app in (gateway, inventory, metrics, registry, scheduler):
        out |= {subjects.rpc_subject(app.name, name) for name in app.endpoints}
    for kind in ("host", "device", "workload", "alert", "service"):
        out.add(subjects.event_subject(f"{EVENT_TYPE_PREFIX}{kind}.poison", site))
    out |= {subjects.event_subject(t, site) for t in (EventTypes.HOST_UP, EventTypes.HOST_DOWN,
                                                       EventTypes.workload("placed"))}
    return sorted(out)


def payloads(subject: str, host: str) -> Iterator[bytes]:
    yield b"\x00\xff{not json"
    yield json.dumps({"specversion": "1.0", "id": "big", "source": "/poison", "type": EVENT_TYPE_PREFIX + "x",
                      "data": {"blob": "A" * (1024 * 1024)}}).encode()
    nul = "\u0000"
    yield json.dumps({"specversion": "1.0", "id": f"nul{nul}", "source": f"/po{nul}ison", "type": f"{EVENT_TYPE_PREFIX}{nul}x",
                      "subject": f"{host}{nul}", "data": {"host_id": f"{host}{nul}", "name": nul * 50,
                                                          "site": nul, "meta": {nul: nul}}}).encode()
    yield json.dumps({"specversion": "1.0", "id": f"future-{subject}"[:120], "source": "/poison",
                      "type": subjects.event_type_from_subject(subject) if ".events." in subject
                      else EVENT_TYPE_PREFIX + "host.heartbeat",
                      "time": "9999-12-31T23:59:59Z", "subject": host,
                      "data": {"host_id": host, "site": "hangzhou", "generation": 10 ** 18, "seq": 10 ** 18,
                               "boot_id": "poison", "ts": "9999-12-31T23:59:59Z", "interval_s": 1.0,
                               "replicas": [], "devices": [], "samples": []}}).encode()
