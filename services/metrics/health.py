"""Device health in the metrics service: the inventory's decisions, followed, never made here.

The inventory is the one home of a device's health: a telemetry sample's healthy flag or a
capability report's health, whichever arrived last (``services/inventory/telemetry.py`` and
``capability.py``). It publishes every decision as a device event (``device.added`` carries
the health a new device starts with; ``device.healthy`` / ``device.unhealthy`` each real flip).
This module takes those events, stores the health in ``metrics.devices.health`` (so a restart
keeps it) and sets the fleet's ``health`` array, which the ``device_unhealthy`` alert, the
summaries' healthy/unhealthy counts and the ``xpumesh_device_healthy`` gauge read.

Devices are matched by (host, slot), the key metrics uses. An event about a device metrics has
not seen yet (its capability report or telemetry is still on the way) gives it a bare row, as
telemetry before capability does; the capability report fills in the rest later.
"""

from __future__ import annotations

from collections.abc import Sequence

from libs.bus.outcomes import each_valid
from libs.events import CloudEvent, EventTypes
from libs.schemas.inventory import DeviceEvent
from services.metrics import store
from services.metrics.state import MetricsState

HANDLER = "on_device_event"
#: The device events that carry the inventory's health decision (``device.removed`` does not).
DECIDING = frozenset((EventTypes.DEVICE_ADDED, EventTypes.DEVICE_HEALTHY, EventTypes.DEVICE_UNHEALTHY))


def decisions(events: Sequence[CloudEvent], service: str) -> list[tuple[str, int, str, str]]:
    """The newest decision per device in a batch (stream order), as (host, slot, site, health)."""
    deciding = [e for e in events if e.type in DECIDING]
    latest: dict[tuple[str, int], tuple[str, int, str, str]] = {}
    for _, dev in each_valid(deciding, DeviceEvent, service=service, handler=HANDLER):
        latest[(dev.host_id, dev.slot)] = (dev.host_id, dev.slot, dev.site, dev.health.value)
    return list(latest.values())


async def apply_device_events(rt: MetricsState, events: Sequence[CloudEvent], service: str) -> None:
    """Store a batch's health decisions, then set them in the fleet (a device new to metrics joins it)."""
    changes = decisions(events, service)
    if not changes:
        return
    async with rt.pool.acquire() as conn, conn.transaction():
        stored = await store.update_device_health(conn, changes)
    health = {(host, slot): h for host, slot, _, h in changes}
    fleet = rt.fleet
    for meta, present in stored:
        if present and (meta.id not in fleet.devices or not fleet.present[meta.id]):
            fleet.put_device(meta)
        fleet.set_health(meta.id, health[(meta.host_id, meta.slot)])
    rt.summaries.clear()
