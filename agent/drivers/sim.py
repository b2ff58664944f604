"""The sim driver: replicas on simulated hosts that run for a while and load their devices.

A replica runs for ``spec.duration_s`` (until stopped when unset) and then exits with
``XPUMESH_SIM_EXIT_CODE`` from the variant's environment (0 by default). While it runs
it loads its devices: ``device_load()`` gives utilisation per device index, which a
simulator folds into the host's telemetry. Runs are pure arithmetic on start times, so a
restarted simulator that kept its handles adopts them exactly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from agent.drivers.base import Exit, LaunchPlan, RunHandle

FULL_LOAD_PCT = 92.0


class SimDriver:
    name = "sim"

    def __init__(self) -> None:
        self._load: dict[tuple[str, int, int], dict[int, float]] = {}  # run → device index → share

    async def start(self, plan: LaunchPlan) -> RunHandle:
        try:
            code = int(plan.variant.env.get("XPUMESH_SIM_EXIT_CODE", "0"))
        except ValueError:
            code = 1
        handle = RunHandle(workload_id=plan.workload_id, replica=plan.replica, attempt=plan.attempt, driver=self.name,
                           started_at=datetime.now(UTC), duration_s=plan.spec.duration_s, exit_code=code)
        self._load[(handle.workload_id, handle.replica, handle.attempt)] = {d.index: d.share for d in plan.devices}
        return handle

    def _left(self, handle: RunHandle) -> float | None:
        if handle.duration_s is None:
            return None
        return handle.duration_s - (datetime.now(UTC) - handle.started_at).total_seconds()

    async def wait(self, handle: RunHandle) -> Exit:
        key = (handle.workload_id, handle.replica, handle.attempt)
        try:
            left = self._left(handle)
            if left is None:
                await asyncio.Event().wait()  # runs until stopped (the executor cancels this wait)
            elif left > 0:
                await asyncio.sleep(left)
            return Exit(handle.exit_code, "" if handle.exit_code == 0 else "simulated failure")
        finally:
            self._load.pop(key, None)

    async def stop(self, handle: RunHandle, grace_s: float) -> None:
        self._load.pop((handle.workload_id, handle.replica, handle.attempt), None)

    async def alive(self, handle: RunHandle) -> bool:
        left = self._left(handle)
        return left is None or left > 0

    async def logs(self, handle: RunHandle, tail_bytes: int) -> tuple[str, bool]:
        text = (f"simulated run of {handle.workload_id} replica {handle.replica} attempt {handle.attempt}, "
                f"started {handle.started_at.isoformat()}\n")
        return text[-tail_bytes:], len(text) > tail_bytes

    def device_load(self) -> dict[int, float]:
        """Utilisation per device index (percent) from every running simulated replica."""
        out: dict[int, float] = {}
        for devices in self._load.values():
            for index, share in devices.items():
                out[index] = min(100.0, out.get(index, 0.0) + share * FULL_LOAD_PCT)
        return out
