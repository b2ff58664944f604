"""The telemetry hot path: how a message of ``XPUMESH_TELEMETRY`` is decoded and how a batch is written.

The stream is read by the mesh's one pull consumer (``libs.bus.consumer``, declared in
``api.py``) with this module's ``decode`` and ``write_batch``:

- ``decode`` tries the strict canonical parse first (``wire.canonical``: no model, no
  envelope object) and only for anything else the full ``CloudEvent`` model, so garbage is
  judged, counted and terminated exactly as on every other consumer. A report must be about
  the host its subject names (``libs.bus.identity``): for a canonical event ``decode``
  compares the subject's tokens with the parsed site and host (raising ``IdentityMismatch``,
  which the consumer acks and counts), for the others ``_report`` does after the model;
- ``write_batch`` turns the batch into columns (``wire.Columns``), the odd envelopes through
  ``TelemetryReport`` (a report of the wrong type or with invalid data is counted and acked),
  and hands them to ``Ingest.write`` (one COPY).

Writes overlap: the consumer runs up to ``INGEST_WRITES`` batches at once, each on its own
connection, and lets a partial batch linger ``metrics.ingest_linger_s`` for more; under load
batches grow instead of commits multiplying, and with a backlog there is no pause at all.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from libs.bus import identity
from libs.events import CloudEvent, EventTypes
from libs.schemas.hostevents import TelemetryReport
from services.metrics import wire
from services.metrics.ingest import Ingest

log = logging.getLogger(__name__)
INGEST_WRITES = 2  # telemetry writes in flight at once, each on its own connection
BATCH = 4096
YIELD_EVERY = 512  # reports turned into columns between two turns of the event loop
Item = wire.Event | CloudEvent  # a canonical event as parsed by ``wire``, or an envelope by its model


def decode(data: bytes, subject: str) -> tuple[str, Item]:
    """The event id and the event: the strict canonical parse, else the envelope model (which raises
    ``InvalidEnvelope`` for garbage). A canonical report about another host than ``subject``'s raises
    ``IdentityMismatch``."""
    fast = wire.canonical(data)
    if fast is not None:
        report = fast["data"]
        identity.check_host(subject, report["site"], report["host_id"])
        return fast["id"], fast
    event = CloudEvent.from_bytes(data, received_on=subject)
    return event.id, event


def _report(ingest: Ingest, event: CloudEvent) -> TelemetryReport | None:
    """The report of a well-formed envelope, by the full model; the wrong type or invalid data is counted."""
    if event.type != EventTypes.HOST_TELEMETRY:
        ingest.reject_report("wrong_type")
        return None
    try:
        report = TelemetryReport.model_validate(event.data)
    except ValidationError as exc:
        ingest.reject_report("invalid_data")
        first = exc.errors()[0]
        log.warning("on_telemetry: dropped an invalid telemetry report (%s: %s)",
                    ".".join(str(p) for p in first["loc"]), first["msg"])
        return None
    try:
        identity.check_host(event.received_on, report.site, report.host_id)
    except identity.IdentityMismatch:
        ingest.reject_report(identity.REASON)
        return None
    return report


async def write_batch(ingest: Ingest, items: list[Item]) -> None:
    """Columns from a batch of decoded events, written in one go (raises on a failed write: redelivered)."""
    cols = wire.Columns()
    for k, item in enumerate(items, 1):
        if k % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        if isinstance(item, CloudEvent):
            if (report := _report(ingest, item)) is not None:
                cols.add_report(report)
        else:
            cols.add_event(item)
    await ingest.write(cols)
