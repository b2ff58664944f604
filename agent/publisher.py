"""What every agent (real or simulated) sends, built and published in one place."""

from __future__ import annotations

from libs import __version__
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from libs.schemas.hostevents import CapabilityReport, TelemetryReport
from libs.schemas.registry import Heartbeat, MemberKind


class HostPublisher:
    """Publishes one host's heartbeat, capability and telemetry events on its own subjects."""

    def __init__(self, bus: Bus, host_id: str, site: str, hostname: str, *, interval_s: float) -> None:
        self.bus = bus
        self.host_id = subjects.check_token(host_id, "host id")
        self.site = subjects.check_token(site, "site")
        self.hostname = hostname
        self.interval_s = interval_s
        self.source = f"/agent/{site}/{host_id}"

    def heartbeat_event(self, meta: dict[str, str] | None = None) -> CloudEvent:
        hb = Heartbeat(kind=MemberKind.HOST, id=self.host_id, name=self.hostname, site=self.site, version=__version__,
                       interval_s=self.interval_s, meta=meta or {})
        return CloudEvent.new("io.xpumesh.host.heartbeat", self.source, hb, subject=self.host_id)

    async def heartbeat(self, meta: dict[str, str] | None = None) -> None:
        event = self.heartbeat_event(meta)
        await self.bus.publish(subjects.host_subject(self.site, self.host_id, "heartbeat"), event.to_bytes())

    async def capability(self, report: CapabilityReport) -> None:
        """Durable: acknowledged by JetStream; the id makes a re-send of the same generation a duplicate."""
        event = CloudEvent.new(EventTypes.HOST_CAPABILITY, self.source, report, subject=self.host_id,
                               id=f"cap-{self.host_id}-{report.generation}")
        await self.bus.publish_event(event, subject=subjects.host_subject(self.site, self.host_id, "capability"))

    async def telemetry(self, report: TelemetryReport) -> None:
        """High volume, fire-and-forget into the telemetry stream."""
        event = CloudEvent.new(EventTypes.HOST_TELEMETRY, self.source, report, subject=self.host_id)
        await self.bus.publish(subjects.host_subject(self.site, self.host_id, "telemetry"), event.to_bytes(),
                               msg_id=event.id)
