"""Device events (added, removed, healthy, unhealthy) as outbox rows."""

from __future__ import annotations

import json
import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

from libs.bus.subjects import event_subject
from libs.schemas.devices import device_id

SOURCE = "/inventory"


def device_event(etype: str, row: dict[str, Any], reason: str) -> dict[str, Any]:
    """An outbox row carrying a device event (a CloudEvent whose data is a ``DeviceEvent``).

    Built as JSON directly: a fleet registering emits one event per device, and these are
    made from rows this service wrote itself, so pydantic validation would only cost time.
    """
    did = device_id(row["host_id"], row["vendor"], row["vendor_index"])
    event_id = str(uuidlib.uuid4())
    data = {"id": did, "host_id": row["host_id"], "site": row["site"], "slot": row["slot"],
            "index": row["vendor_index"], "hardware_type": row["hardware_type"], "vendor": row["vendor"],
            "model": row["model"], "uuid": row.get("uuid"), "health": row["health"], "reason": reason}
    envelope = {"specversion": "1.0", "id": event_id, "source": SOURCE, "type": etype,
                "time": datetime.now(UTC).isoformat(), "subject": did, "datacontenttype": "application/json",
                "data": data}
    return {"event_id": event_id, "subject": event_subject(etype, row["site"]),
            "payload": json.dumps(envelope, separators=(",", ":")).encode()}
