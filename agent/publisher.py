"""What every host (a real agent or a simulated one) sends, encoded and published in one place.

Heartbeats and telemetry are the hot path: the simulator sends them for 10,000 hosts. Each
host's event of each kind is serialized once into an ``EventTemplate``; per message only
the id, the time and (for telemetry) the data are put in. The bytes are exactly what
``CloudEvent.to_bytes()`` gives for the same event, the canonical form the metrics service's
strict parser takes on its fast path.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from libs import __version__
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from libs.schemas.commands import ActualStateReport
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.registry import Heartbeat, MemberKind

_ID = "__xpumesh_id__"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATA = {"__xpumesh_data__": 0}


def utc_json(at: datetime) -> str:
    """A UTC time as pydantic writes it in JSON (``2025-06-03T08:14:02.5Z``; no fraction when whole)."""
    return at.isoformat().replace("+00:00", "Z")


class EventTemplate:
    """One CloudEvent serialized once and split where its id, time and (unless fixed) data go."""

    def __init__(self, event_type: str, source: str, subject: str, data: Heartbeat | None = None) -> None:
        fixed = data.model_dump(mode="json") if data is not None else _DATA
        raw = CloudEvent(id=_ID, source=source, type=event_type, time=_EPOCH, subject=subject, data=fixed).to_bytes()
        head, rest = raw.split(json.dumps(_ID).encode(), 1)
        mid, rest = rest.split(json.dumps(utc_json(_EPOCH)).encode(), 1)
        if data is None:
            before_data, tail = rest.split(json.dumps(_DATA, separators=(",", ":")).encode(), 1)
            self._parts = (head + b'"', b'"' + mid + b'"', b'"' + before_data, tail)
        else:
            self._parts = (head + b'"', b'"' + mid + b'"', b'"' + rest, b"")

    def render(self, data: bytes = b"", *, event_id: str | None = None, at: datetime | None = None) -> tuple[bytes, str]:
        """The event's bytes and its id (new unless given); ``data`` is the JSON of the data, unless fixed."""
        event_id = event_id or str(uuid.uuid4())
        head, mid, before_data, tail = self._parts
        when = utc_json(at or datetime.now(UTC)).encode()
        return b"".join((head, event_id.encode(), mid, when, before_data, data, tail)), event_id


class HostPublisher:
    """Publishes one host's heartbeat, capability, telemetry and state events on its own subjects."""

    def __init__(self, bus: Bus, host_id: str, site: str, hostname: str, *, interval_s: float) -> None:
        self.bus = bus
        self.host_id = subjects.check_token(host_id, "host id")
        self.site = subjects.check_token(site, "site")
        self.hostname = hostname
        self.interval_s = interval_s
        self.source = f"/agent/{site}/{host_id}"
        self._heartbeat: EventTemplate | None = None  # made on first use: a simulated fleet has thousands
        self._telemetry: EventTemplate | None = None
        self._capability: CloudEvent | None = None  # the last report JetStream acknowledged
        self._resends = 0

    def heartbeat_template(self) -> EventTemplate:
        if self._heartbeat is None:
            hb = Heartbeat(kind=MemberKind.HOST, id=self.host_id, name=self.hostname, site=self.site,
                           version=__version__, interval_s=self.interval_s)
            self._heartbeat = EventTemplate(EventTypes.HOST_HEARTBEAT, self.source, self.host_id, hb)
        return self._heartbeat

    def telemetry_template(self) -> EventTemplate:
        if self._telemetry is None:
            self._telemetry = EventTemplate(EventTypes.HOST_TELEMETRY, self.source, self.host_id)
        return self._telemetry

    async def heartbeat(self) -> None:
        payload, _ = self.heartbeat_template().render()
        await self.bus.publish(subjects.host_subject(self.site, self.host_id, "heartbeat"), payload)

    async def capability(self, report: CapabilityReport) -> None:
        """Durable: acknowledged by JetStream; the id makes a re-send of the same generation a duplicate."""
        event = CloudEvent.new(EventTypes.HOST_CAPABILITY, self.source, report, subject=self.host_id,
                               id=f"cap-{self.host_id}-{report.generation}")
        await self.bus.publish_event(event, subject=subjects.host_subject(self.site, self.host_id, "capability"))
        self._capability = event

    async def resend_capability(self) -> bool:
        """The last acknowledged report again (periodically, and after a reconnect), for whoever lost it: the
        same generation and time, so a consumer that has it skips it as not newer, under an id of its own, so
        that no consumer's dedupe takes it for the first send. False when nothing was sent yet."""
        first = self._capability
        if first is None:
            return False
        self._resends += 1
        event = first.model_copy(update={"id": f"{first.id}-r{self._resends}"})
        await self.bus.publish_event(event, subject=subjects.host_subject(self.site, self.host_id, "capability"))
        return True

    async def telemetry(self, report: TelemetryReport) -> None:
        await self.telemetry_json(report.model_dump_json().encode())

    async def telemetry_json(self, data: bytes) -> None:
        """High volume, fire-and-forget into the telemetry stream. ``data``: a ``TelemetryReport`` as
        JSON (the simulator writes its own without building a model per message)."""
        payload, event_id = self.telemetry_template().render(data)
        await self.bus.publish(subjects.host_subject(self.site, self.host_id, "telemetry"), payload, msg_id=event_id)

    async def state(self, report: ActualStateReport) -> None:
        """What runs on the host (durable); the id makes a re-send of the same report a duplicate."""
        event = CloudEvent.new(EventTypes.HOST_STATE, self.source, report, subject=self.host_id,
                               id=f"state-{self.host_id}-{report.boot_id}-{report.seq}")
        await self.bus.publish_event(event, subject=subjects.host_subject(self.site, self.host_id, "state"))


class Reconnects:
    """Tells whether the connection was re-established since the last look (nats-py counts reconnects)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen = self._count()

    def _count(self) -> int:
        return int(self.bus.nc.stats.get("reconnects", 0))

    def happened(self) -> bool:
        now = self._count()
        changed, self.seen = now != self.seen, now
        return changed
