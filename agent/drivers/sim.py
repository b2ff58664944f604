"""The sim driver: replicas on simulated hosts that run for a while and exit.

A replica runs for ``spec.duration_s`` (until stopped when unset) and then exits with
``XPUMESH_SIM_EXIT_CODE`` from the variant's environment (0 by default). Runs are pure
arithmetic on start times, so a restarted simulator that kept its handles adopts them exactly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from agent.drivers.base import Exit, LaunchPlan, RunHandle


class SimDriver:
    name = "sim"

    async def start(self, plan: LaunchPlan) -> RunHandle:
        try:
            code = int(plan.variant.env.get("XPUMESH_SIM_EXIT_CODE", "0"))
        except ValueError:
            code = 1
        return RunHandle(workload_id=plan.workload_id, replica=plan.replica, attempt=plan.attempt, driver=self.name,
                         started_at=datetime.now(UTC), duration_s=plan.spec.duration_s, exit_code=code)

    def _left(self, handle: RunHandle) -> float | None:
        if handle.duration_s is None:
            return None
        return handle.duration_s - (datetime.now(UTC) - handle.started_at).total_seconds()

    async def wait(self, handle: RunHandle) -> Exit:
        left = self._left(handle)
        if left is None:
            await asyncio.Event().wait()  # runs until stopped (the executor cancels this wait)
        elif left > 0:
            await asyncio.sleep(left)
        return Exit(handle.exit_code, "" if handle.exit_code == 0 else "simulated failure")

    async def stop(self, handle: RunHandle, grace_s: float) -> None:
        """Nothing runs: the executor cancels the replica's ``wait``."""

    async def alive(self, handle: RunHandle) -> bool:
        left = self._left(handle)
        return left is None or left > 0

    async def logs(self, handle: RunHandle, tail_bytes: int) -> tuple[str, bool]:
        text = (f"simulated run of {handle.workload_id} replica {handle.replica} attempt {handle.attempt}, "
                f"started {handle.started_at.isoformat()}\n")
        return text[-tail_bytes:], len(text) > tail_bytes
