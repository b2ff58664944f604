"""Executors wired to the bus: the host's commands, state reports and the log responder.

``attach`` starts one executor on the bus; ``attach_agent`` gives a real agent its executor (runs kept
under the data dir, adopted after a restart); ``SimExecutors`` gives each simulated host one on its first
command.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from agent.drivers.base import Driver
from agent.drivers.sim import SimDriver
from agent.executor import Executor
from libs.bus import subjects
from libs.bus.connection import ERROR_HEADER, Bus
from libs.bus.errors import BusError, InvalidRequest
from libs.config import AgentSettings, Settings
from libs.events import CloudEvent, InvalidEnvelope
from libs.metrics import BUS_REJECTED
from libs.schemas.commands import ActualStateReport, LogsRequest

log = logging.getLogger(__name__)


# -- wiring to the bus ---------------------------------------------------------------------------
async def _answer_logs(bus: Bus, executor: Executor, msg: Msg) -> None:
    headers: dict[str, str] | None = None
    try:
        body = (await executor.logs(LogsRequest.model_validate_json(msg.data or b"{}"))).model_dump_json().encode()
    except ValidationError:
        BUS_REJECTED.labels("agent", "logs", "invalid_request").inc()
        body, headers = InvalidRequest("not a log request").body().model_dump_json().encode(), {ERROR_HEADER: "1"}
    except BusError as exc:
        body, headers = exc.body().model_dump_json().encode(), {ERROR_HEADER: "1"}
    if msg.reply:
        await bus.nc.publish(msg.reply, body, headers=headers)


async def serve_logs(bus: Bus, executor: Executor) -> Any:
    """Answer log requests for this host on ``xpumesh.agent.<site>.<host>.logs``; returns the subscription."""
    async def on_logs(msg: Msg) -> None:
        await _answer_logs(bus, executor, msg)

    return await bus.nc.subscribe(subjects.agent_logs_subject(executor.site, executor.host_id), cb=on_logs)


async def _on_command(executor: Executor, msg: Msg) -> None:
    try:
        event = CloudEvent.from_bytes(msg.data)
    except InvalidEnvelope:
        BUS_REJECTED.labels("agent", "commands", "malformed_envelope").inc()
        return
    try:
        await executor.handle_event(event)
    except Exception:
        log.exception("command %s on %s failed", event.id, executor.host_id)


@dataclass
class Attachment:
    """An executor wired to the bus; ``close`` stops listening (replicas keep running)."""

    executor: Executor
    subs: list[Any]

    async def close(self) -> None:
        for s in self.subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        await self.executor.close()


async def attach(bus: Bus, executor: Executor, *, commands: bool = True) -> Attachment:
    """Start an executor on the bus: log requests answered and, unless the host's own command
    subscription already calls ``executor.handle_event`` (the agent's ``on_command`` seam), commands
    from ``xpumesh.agent.<site>.<host>.cmd``. Lost commands are re-sent by the scheduler."""
    subs = [await serve_logs(bus, executor)]
    if commands:
        async def on_command(msg: Msg) -> None:
            await _on_command(executor, msg)

        subs.append(await bus.nc.subscribe(subjects.agent_command_subject(executor.site, executor.host_id),
                                           cb=on_command))
    await bus.nc.flush()
    await executor.start()
    return Attachment(executor, subs)


# -- hosts -------------------------------------------------------------------------------------------
def host_drivers(settings: AgentSettings) -> dict[str, Driver]:
    """The drivers of a real host: processes, and containers when the variant names an image."""
    from agent.drivers.docker import DockerDriver
    from agent.drivers.process import ProcessDriver

    return {"process": ProcessDriver(log_max_bytes=settings.log_max_bytes), "docker": DockerDriver()}


async def attach_agent(bus: Bus, agent: Any, settings: Settings) -> Attachment:
    """Run work on the agent's host: its command seam feeds the executor, which keeps its runs under
    ``<data_dir>/agent/<host>`` so that a restarted agent adopts them."""
    host_id, site = agent.host_id, agent.publisher.site

    def known() -> Collection[str]:
        devices = agent.discovery.devices if agent.discovery is not None else []
        return {f"{host_id}:{d.vendor}:{d.index}" for d in devices}

    executor = Executor(host_id, site, drivers=host_drivers(settings.agent), settings=settings.agent,
                        state_dir=settings.data_dir / "agent" / host_id, publish=agent.report_state,
                        known_devices=known)
    agent.on_command = executor.handle_event
    return await attach(bus, executor, commands=False)


class SimExecutors:
    """The simulator's fleet command hook: one sim-driver executor per host, made on its first command
    (hosts that never get work cost nothing). A host that is down reports nothing."""

    def __init__(self, bus: Bus, settings: AgentSettings) -> None:
        self.bus, self.settings = bus, settings
        self.attached: dict[str, Attachment] = {}

    async def __call__(self, host: Any, event: CloudEvent) -> None:
        att = self.attached.get(host.host_id)
        if att is None:
            async def publish(report: ActualStateReport) -> None:
                if host.up:
                    await host.report_state(report)

            executor = Executor(host.host_id, host.site, drivers={"sim": SimDriver()}, settings=self.settings,
                                publish=publish, default_driver="sim")
            att = self.attached[host.host_id] = await attach(self.bus, executor, commands=False)
        await att.executor.handle_event(event)

    def device_load(self, host_id: str) -> dict[int, float]:
        att = self.attached.get(host_id)
        return att.executor.device_load() if att is not None else {}

    async def close(self) -> None:
        for att in self.attached.values():
            await att.close()
        self.attached.clear()
