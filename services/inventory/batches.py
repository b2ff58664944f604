"""The counter of reports a batch handler skips for a reason that is not an error (rejections are
counted with the kit's ``libs.bus.outcomes.reject``; a batch the database refuses is split by
``libs.db.batches.apply_batch``)."""

from __future__ import annotations

from libs.metrics import BUS_MESSAGES
from services.inventory.state import SERVICE


def count(handler: str, outcome: str, n: int) -> None:
    """``n`` reports the handler skipped for a reason that is not an error (stale, too_old, unknown_host)."""
    if n:
        BUS_MESSAGES.labels(SERVICE, handler, outcome).inc(n)
