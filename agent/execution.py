"""An executor wired to the bus for one host: its commands, its state reports, its log requests.

``start_execution`` gives a host (``agent.ports.ExecutionHost``: the real agent, a simulated
host, a test's host) its ``HostExecution``. Every command message, whichever subscription
it came by, goes through ``HostExecution.command``: the agent's own subscription on
``xpumesh.agent.<site>.<host>.cmd``, or the simulator's one wildcard subscription for its whole
fleet. State reports go out through the host's ``report_state``; log requests are answered
on ``xpumesh.agent.<site>.<host>.logs``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from agent.drivers.base import Driver
from agent.executor import Executor
from agent.ports import ExecutionHost
from agent.shares import DeviceFacts
from libs.bus import subjects
from libs.bus.connection import ERROR_HEADER, Bus
from libs.bus.errors import BusError, InvalidRequest
from libs.config import AgentSettings
from libs.events import CloudEvent, InvalidEnvelope
from libs.metrics import BUS_REJECTED
from libs.schemas.commands import LogsRequest

log = logging.getLogger(__name__)


def host_drivers(settings: AgentSettings) -> dict[str, Driver]:
    """The drivers of a real host: processes, and containers when the variant names an image; both
    run each replica under its own uid from ``agent.replica_uid_start``/``replica_uid_count``."""
    from agent.drivers.docker import DockerDriver
    from agent.drivers.isolation import UidPool, isolation_status
    from agent.drivers.process import ProcessDriver

    uids = UidPool(settings.replica_uid_start, settings.replica_uid_count)  # one pool: a uid is one replica's
    log.info("%s", isolation_status(settings.replica_uid_start, settings.replica_uid_count,
                                    settings.replica_cgroup_parent))
    return {"process": ProcessDriver(log_max_bytes=settings.log_max_bytes, uids=uids,
                                     cgroup_parent=settings.replica_cgroup_parent, groups=settings.replica_groups),
            "docker": DockerDriver(uids=uids)}


class HostExecution:
    """One host's executor on the bus (``agent.ports.Execution``)."""

    def __init__(self, bus: Bus, executor: Executor) -> None:
        self.bus = bus
        self.executor = executor
        self._subs: list[Subscription] = []

    async def command(self, data: bytes) -> str:
        """The one path of a command message: envelope, then the executor; every outcome counted."""
        try:
            event = CloudEvent.from_bytes(data)
        except InvalidEnvelope as exc:
            BUS_REJECTED.labels("agent", "commands", "malformed_envelope").inc()
            log.warning("dropped a malformed command for %s: %s", self.executor.host_id, exc.reason)
            return "rejected"
        try:
            return await self.executor.handle_event(event)
        except Exception:
            log.exception("command %s on %s failed", event.id, self.executor.host_id)
            return "failed"

    async def listen(self) -> None:
        """Take commands from the host's own subject (lost ones are re-sent by the scheduler)."""
        async def on_command(msg: Msg) -> None:
            await self.command(msg.data)

        ex = self.executor
        self._subs.append(await self.bus.nc.subscribe(subjects.agent_command_subject(ex.site, ex.host_id),
                                                      cb=on_command))
        await self.bus.nc.flush()

    async def _serve_logs(self) -> None:
        async def on_logs(msg: Msg) -> None:
            await self._answer_logs(msg)

        ex = self.executor
        self._subs.append(await self.bus.nc.subscribe(subjects.agent_logs_subject(ex.site, ex.host_id), cb=on_logs))

    async def _answer_logs(self, msg: Msg) -> None:
        headers: dict[str, str] | None = None
        try:
            reply = await self.executor.logs(LogsRequest.model_validate_json(msg.data or b"{}"))
            body = reply.model_dump_json().encode()
        except ValidationError:
            BUS_REJECTED.labels("agent", "logs", "invalid_request").inc()
            body, headers = InvalidRequest("not a log request").body().model_dump_json().encode(), {ERROR_HEADER: "1"}
        except BusError as exc:
            body, headers = exc.body().model_dump_json().encode(), {ERROR_HEADER: "1"}
        if msg.reply:
            await self.bus.nc.publish(msg.reply, body, headers=headers)

    def report_soon(self) -> None:
        self.executor.report_soon()

    async def stop_all(self, reason: str) -> None:
        await self.executor.stop_all(reason)

    async def close(self) -> None:
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._subs.clear()
        await self.executor.close()


async def start_execution(bus: Bus, host: ExecutionHost, *, drivers: dict[str, Driver], settings: AgentSettings,
                          state_dir: Path | None = None, default_driver: str | None = None,
                          listen: bool = True, share_facts: Callable[[], Mapping[str, DeviceFacts]] | None = None,
                          responder: str | None = None) -> HostExecution:
    """Run work on ``host``: log requests answered, what a previous agent left running adopted (with a
    ``state_dir``), then, with ``listen``, commands taken from the host's subject. Without ``listen``
    the caller feeds ``command`` itself (the simulator, from one subscription for every host). ``responder``:
    the base URL of the simulator's HTTP responder, which answers for simulated service replicas."""
    executor = Executor(host.host_id, host.site, drivers=drivers, settings=settings, state_dir=state_dir,
                        publish=host.report_state, default_driver=default_driver, known_devices=host.device_ids,
                        share_facts=share_facts, responder=responder)
    execution = HostExecution(bus, executor)
    await execution._serve_logs()
    await bus.nc.flush()
    await executor.start()
    if listen:
        await execution.listen()
    return execution
