"""Periodic work, written once: ``ServiceApp.every`` runs a function on an interval.

In the spirit of Prefect's ``LoopService``: each run is timed; a run that takes longer than
its interval is logged and counted as an overrun (the next one starts at once); an exception
is logged and counted and the loop carries on at its interval; cancellation stops it cleanly.
A run may return a number of seconds to wait before the next run instead of the interval
(e.g. a shorter retry while a peer does not answer). With ``wake``, an event ends the wait
early (work arrived), and the event is cleared before the run.

    @app.every(lambda s: s.inventory.catalog_refresh_s, first_run="after")
    async def refresh_catalog(ctx: Ctx) -> None: ...
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from libs.aio import wait_event
from libs.metrics import LOOP_RUNS, LOOP_SECONDS

log = logging.getLogger(__name__)
LoopFn = Callable[[Any], Awaitable[float | None]]
Interval = float | Callable[[Any], float]


@dataclass
class Every:
    """One periodic loop of a service: ``fn(ctx)`` every ``interval`` seconds (a number, or a function of the
    settings), woken early by ``wake(ctx)`` when given."""

    name: str
    fn: LoopFn
    interval: Interval
    wake: Callable[[Any], asyncio.Event] | None = None
    first_run: Literal["now", "after"] = "now"

    def interval_s(self, settings: Any) -> float:
        return float(self.interval(settings) if callable(self.interval) else self.interval)

    async def run(self, service: str, ctx: Any) -> None:
        interval = self.interval_s(ctx.settings)
        wake = self.wake(ctx) if self.wake is not None else None
        delay = 0.0 if self.first_run == "now" else interval
        while True:
            if delay > 0:
                if wake is None:
                    await asyncio.sleep(delay)
                else:
                    await wait_event(wake, delay)
            if wake is not None:
                wake.clear()
            started = time.monotonic()
            asked: float | None = None
            try:
                asked = await self.fn(ctx)
                outcome = "ok"
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s.%s failed; running again in %.1f s", service, self.name, interval)
                outcome = "error"
            took = time.monotonic() - started
            LOOP_SECONDS.labels(service, self.name).observe(took)
            LOOP_RUNS.labels(service, self.name, outcome).inc()
            if took > interval:
                LOOP_RUNS.labels(service, self.name, "overrun").inc()
                log.warning("%s.%s took %.1f s, longer than its %.1f s interval", service, self.name, took, interval)
            delay = asked if asked is not None else max(0.0, interval - took)
