"""The typed seam between a host (discovery, publishing) and execution (running the work sent to it).

``ExecutionHost`` is what execution needs from the host it runs on: the real agent
(``agent.main.Agent``), a simulated host (``agent.sim.host.SimHost``) or a test's host.
``Execution`` is what the host gets back from ``agent.execution.start_execution``: the one
path every command message takes, and ``close``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from libs.schemas.commands import ActualStateReport


class ExecutionHost(Protocol):
    """The host that work runs on."""

    @property
    def host_id(self) -> str: ...

    @property
    def site(self) -> str: ...

    def device_ids(self) -> Collection[str]:
        """Ids (``libs.schemas.devices.device_id``) of the devices the host reports now; a launch
        naming any other is refused."""
        ...

    async def report_state(self, report: ActualStateReport) -> None:
        """Publish what actually runs on the host (``HostPublisher.state``), or drop it while the host is down."""
        ...


class Execution(Protocol):
    """Execution on a host, wired to the bus."""

    async def command(self, data: bytes) -> str:
        """Handle one command message (a launch or stop CloudEvent); returns the counted outcome."""
        ...

    def report_soon(self) -> None:
        """Send a state report now rather than at the next interval."""
        ...

    async def stop_all(self, reason: str) -> None:
        """Stop every replica this host runs (the agent's ``stop_replicas_on_exit``)."""
        ...

    async def close(self) -> None:
        """Stop listening; replicas keep running and a restarted agent adopts them."""
        ...
