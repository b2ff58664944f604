"""Telemetry messages as columns: one strict parse of a whole batch, the full models only for the odd ones.

The hot path validates the raw bytes of every message of a batch in one pydantic-core call
against a lean, *strict* description of the canonical telemetry CloudEvent (TypedDicts, no
model instances, no Python validators). Strict acceptance is a subset of what the envelope
(``libs.events.CloudEvent``) and ``TelemetryReport`` accept, with the same values, so a
message this path takes is one the models would take too. Everything else — garbage,
extension attributes, lax encodings such as numbers in strings, other event types — goes
through the full models (``slow``), which decide, with the same reasons as any consumer,
whether it is rejected. Parsing per message is faster than one parse of a joined array, and
cannot let a crafted message pair up with its neighbour. The result is columnar: per report its host, site, time and host
figures; per device sample one row of a flat list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, StringConstraints, TypeAdapter
from typing_extensions import TypedDict

from libs.bus.subjects import Token
from libs.schemas.hostevents import DeviceSample, TelemetryReport

_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class _Report(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]

    schema_version: NotRequired[Literal[1]]
    host_id: Token
    site: Token
    ts: datetime
    cpu_pct: Annotated[float, Field(ge=0, le=100)]
    mem_used_mib: Annotated[int, Field(ge=0)]
    mem_total_mib: Annotated[int, Field(ge=0)]
    devices: NotRequired[Annotated[list[DeviceSample], Field(max_length=1024)]]


class Event(TypedDict):
    """The canonical telemetry CloudEvent (``EventTypes.HOST_TELEMETRY``); ``source`` printable ASCII, no spaces."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]

    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    source: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,256}$")]
    type: Literal["io.xpumesh.host.telemetry"]
    time: datetime
    subject: NotRequired[Annotated[str, StringConstraints(max_length=256)] | None]
    datacontenttype: NotRequired[Literal["application/json"]]
    dataschema: NotRequired[str | None]
    data: _Report


_EVENT = TypeAdapter(Event)


def canonical(raw: bytes) -> Event | None:
    """The message as a canonical telemetry event, or None: then the full models must judge it."""
    try:
        return _EVENT.validate_json(raw)
    except ValueError:  # ValidationError included
        return None


@dataclass
class Columns:
    """Reports of a batch as columns. ``samples`` rows: slot, util, mem, temp, power, healthy."""

    host_ids: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    cpu_pct: list[float] = field(default_factory=list)
    mem_used: list[int] = field(default_factory=list)
    mem_total: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    samples: list[DeviceSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.host_ids)

    def add(self, host_id: str, site: str, ts: datetime, cpu: float, mem_used: int, mem_total: int,
            devices: list[DeviceSample]) -> None:
        self.host_ids.append(host_id)
        self.sites.append(site)
        self.ts_us.append(((ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)) - _UNIX) // _US)
        self.cpu_pct.append(cpu)
        self.mem_used.append(mem_used)
        self.mem_total.append(mem_total)
        self.counts.append(len(devices))
        self.samples.extend(devices)

    def add_event(self, e: Event) -> None:
        d = e["data"]
        self.add(d["host_id"], d["site"], d["ts"], d["cpu_pct"], d["mem_used_mib"], d["mem_total_mib"],
                 d.get("devices", []))

    def add_report(self, r: TelemetryReport) -> None:
        self.add(r.host_id, r.site, r.ts, r.cpu_pct, r.mem_used_mib, r.mem_total_mib, r.devices)
