"""CloudEvents 1.0 envelopes (structured JSON mode) and the mesh's event types.

Every message that crosses NATS between processes is one of these. The envelope's
``id`` travels as the ``Nats-Msg-Id`` header, so JetStream drops duplicates inside its
window and consumers dedupe by the same id.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

EVENT_TYPE_PREFIX = "io.xpumesh."
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_WHITESPACE = re.compile(r"\s")


class InvalidEnvelope(ValueError):
    """A message that is not a valid CloudEvent. ``reason`` is safe to log and count."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=128, description="Unique per source; used for dedupe.")
    source: str = Field(min_length=1, max_length=256, description="URI-reference of the producer, e.g. /agent/hangzhou/h-001.")
    type: str = Field(min_length=1, max_length=128, description="Reverse-DNS type, e.g. io.xpumesh.workload.placed.")
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = Field(default=None, max_length=256, description="What the event is about (host id, workload id…).")
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    # The NATS subject the event arrived on, set by whoever received it (``from_bytes``): never parsed from the
    # body and never serialised, so a handler can trust it as far as it trusts the server's permissions.
    _received_on: str | None = PrivateAttr(default=None)

    @property
    def received_on(self) -> str | None:
        """The transport subject this event was received on (None for an event built in this process)."""
        return self._received_on

    @field_validator("time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @field_validator("source", "type")
    @classmethod
    def _no_whitespace(cls, v: str) -> str:
        if _WHITESPACE.search(v):
            raise ValueError("must not contain whitespace")
        return v

    def model_post_init(self, __context: Any) -> None:
        for name in self.model_extra or {}:
            if not _EXTENSION_NAME.match(name):
                raise ValueError(f"extension attribute {name!r} must be 1-20 lower-case letters or digits")

    @classmethod
    def new(cls, type: str, source: str, data: dict[str, Any] | BaseModel, *, subject: str | None = None,
            id: str | None = None, **extensions: Any) -> CloudEvent:
        payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
        return cls(id=id or str(uuid.uuid4()), source=source, type=type, subject=subject, data=payload, **extensions)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, received_on: str | None = None) -> CloudEvent:
        """Parse and validate; raise InvalidEnvelope with a short reason (never the raw input). ``received_on``:
        the NATS subject the bytes arrived on (``received_on`` of the event)."""
        try:
            event = cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "envelope"
            raise InvalidEnvelope(f"{where}: {first.get('msg', 'invalid')}") from None
        except ValueError as exc:  # model_post_init
            raise InvalidEnvelope(str(exc)[:200]) from None
        event._received_on = received_on
        return event


def event_type(kind: str) -> str:
    """``host.down`` → ``io.xpumesh.host.down``."""
    return kind if kind.startswith(EVENT_TYPE_PREFIX) else EVENT_TYPE_PREFIX + kind


class EventTypes:
    """Every event type the mesh publishes.

    Durable ones ride ``xpumesh.events.<kind>.<site>`` (``libs.bus.subjects.event_subject``);
    the heartbeats, agent commands and gateway broadcasts ride their own subjects."""

    HOST_UP = event_type("host.up")
    HOST_DOWN = event_type("host.down")
    SERVICE_UP = event_type("service.up")
    SERVICE_DOWN = event_type("service.down")
    HOST_CAPABILITY = event_type("host.capability")
    HOST_TELEMETRY = event_type("host.telemetry")
    HOST_STATE = event_type("host.state")
    DEVICE_ADDED = event_type("device.added")
    DEVICE_REMOVED = event_type("device.removed")
    DEVICE_UNHEALTHY = event_type("device.unhealthy")
    DEVICE_HEALTHY = event_type("device.healthy")
    ALERT_FIRING = event_type("alert.firing")
    ALERT_RESOLVED = event_type("alert.resolved")
    # scheduler → gateways: a service's ready replicas changed (data: libs.schemas.endpoints.EndpointSet)
    ENDPOINT_CHANGED = event_type("endpoint.changed")
    # gateway → scheduler (core NATS): requests in flight per service, for autoscaling
    ENDPOINT_LOAD = event_type("endpoint.load")
    # liveness (core NATS, to the registry)
    HOST_HEARTBEAT = event_type("host.heartbeat")
    SERVICE_HEARTBEAT = event_type("service.heartbeat")
    # scheduler → agent commands (stream XPUMESH_COMMANDS)
    AGENT_LAUNCH = event_type("agent.launch")
    AGENT_STOP = event_type("agent.stop")
    # gateway: broadcasts between its instances, and the signed test delivery of a webhook
    GATEWAY_KEY_REVOKED = event_type("gateway.key_revoked")
    GATEWAY_SUBSCRIPTION_CHANGED = event_type("gateway.subscription_changed")
    WEBHOOK_PING = event_type("webhook.ping")
    # prefixes and patterns
    WORKLOAD_PREFIX = event_type("workload.")
    ANY = event_type("*")  # a subscription type pattern that matches every type

    @staticmethod
    def workload(state: str) -> str:
        return event_type(f"workload.{state}")
