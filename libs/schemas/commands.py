"""What the scheduler tells agents (launch, stop) and what agents say actually runs.

Commands travel as CloudEvents (``EventTypes.AGENT_LAUNCH``/``AGENT_STOP``) on
``xpumesh.agent.<site>.<host>.cmd`` (durable stream ``XPUMESH_COMMANDS``; the command id is
the event id and the ``Nats-Msg-Id``). Commands may be lost or arrive twice: a launch names one *attempt* of one replica, so a repeat is a
no-op, and the scheduler re-sends whatever the agent's state reports do not show.

Agents report what runs on ``xpumesh.host.<site>.<host>.state`` (stream ``XPUMESH_HOSTS``)
periodically and on every change. Logs are asked of the agent directly, request/reply on
``xpumesh.agent.<site>.<host>.logs``. Ids (host, site, workload) are subject tokens
(``libs.bus.subjects.Token``).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.bus.subjects import Token
from libs.schemas.devices import HardwareType, ShareEnforcement
from libs.schemas.hostevents import ReportTime
from libs.schemas.workload import WorkloadSpec

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")

STATE_SCHEMA_VERSION = 1


def command_id(kind: str, workload_id: str, replica: int, attempt: int, n: int) -> str:
    """Unique per send: JetStream dedupes by it, so a deliberate re-send needs a new ``n``."""
    return _SAFE_ID.sub("-", f"{kind}.{workload_id}.{replica}.{attempt}.{n}")[:128]


class CommandDevice(BaseModel):
    """One device a replica runs on, with what the agent needs to expose it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=160, description="Device id '<host>:<vendor>:<index>'.")
    index: int = Field(ge=0, description="Index within its vendor on the host (what visible-device variables take).")
    vendor: str = Field(max_length=40)
    hardware_type: HardwareType
    uuid: str | None = Field(default=None, max_length=128)
    share: float = Field(default=1.0, gt=0, le=1, description="Fraction of the device this replica holds.")
    memory_mib: int | None = Field(default=None, ge=0, description="Memory reserved on the device.")


class ReplicaResources(BaseModel):
    """What a placed replica holds of its host besides devices, and the alternative it was placed with."""

    model_config = ConfigDict(extra="forbid")

    alternative: int = Field(default=0, ge=0, le=16, description="Index of the workload's hardware alternative taken.")
    variant: str | None = Field(default=None, max_length=64, description="The variant that alternative names, when "
                                "it names one: for a catalog model, the build taken (e.g. 'vllm-ascend').")
    cpu: int = Field(default=0, ge=0, description="Logical CPUs it holds (the agent pins that many where it can).")
    memory_mib: int = Field(default=0, ge=0, description="Host memory it holds (also its limit where the driver sets one).")
    numa_node: int | None = Field(default=None, ge=0, description="With placement.numa 'single': the node of its "
                                  "devices and CPUs.")
    share_enforcement: ShareEnforcement | None = Field(
        default=None, description="With a share of a device: what holds it to the share on its host, as its agent "
        "reports once it starts ('mig', 'mps', 'hami-core', 'vnpu'; 'advisory': nothing, it is only told). None: whole "
        "devices, or not reported yet.")


class LaunchCommand(BaseModel):
    """Run one attempt of one replica on this host."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["launch"] = "launch"
    command_id: str = Field(min_length=1, max_length=128)
    host_id: Token
    site: Token
    workload_id: Token
    replica: int = Field(ge=0)
    attempt: int = Field(ge=1, description="Placement attempt of this replica; a newer attempt replaces an older one.")
    replicas: int = Field(ge=1, description="Replicas of the workload (world size).")
    peers: list[str] = Field(default_factory=list, max_length=4096, description="Host of each replica at placement time.")
    devices: list[CommandDevice] = Field(max_length=64)
    resources: ReplicaResources = Field(default_factory=ReplicaResources)
    spec: WorkloadSpec
    issued_at: datetime
    expires_at: datetime


class StopCommand(BaseModel):
    """Stop a replica (one attempt, or every attempt when ``attempt`` is None)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["stop"] = "stop"
    command_id: str = Field(min_length=1, max_length=128)
    host_id: Token
    site: Token
    workload_id: Token
    replica: int = Field(ge=0)
    attempt: int | None = Field(default=None, ge=1)
    reason: str = Field(default="", max_length=300)
    issued_at: datetime
    expires_at: datetime


AgentCommand = Annotated[LaunchCommand | StopCommand, Field(discriminator="kind")]


class ReplicaState(StrEnum):
    """A replica as the agent sees it."""

    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def live(self) -> bool:
        return self in (ReplicaState.STARTING, ReplicaState.RUNNING)


class ReplicaReport(BaseModel):
    """One replica attempt the agent runs or ran."""

    model_config = ConfigDict(extra="forbid")

    workload_id: Token
    replica: int = Field(ge=0)
    attempt: int = Field(ge=1)
    state: ReplicaState
    driver: str = Field(max_length=32)
    device_ids: list[str] = Field(default_factory=list, max_length=64)
    shares: list[float] = Field(default_factory=list, max_length=64)
    share_enforcement: ShareEnforcement | None = Field(default=None, description="What holds it to its share "
                                                       "(None: whole devices).")
    exit_code: int | None = None
    message: str = Field(default="", max_length=500)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    changed_at: datetime
    ready: bool | None = Field(default=None, description="A service replica: whether its readiness probe passes "
                               "(None for a job).")
    endpoint: str | None = Field(default=None, max_length=300, pattern=r"^https?://[^\s]+$",
                                 description="A service replica: the base URL it answers on (host address and port).")
    simulated: bool = Field(default=False, description="Answered by the simulator's built-in responder.")


class ActualStateReport(BaseModel):
    """Everything the agent runs (and recently ran), sent periodically and on change."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    host_id: Token
    site: Token
    boot_id: str = Field(min_length=1, max_length=64, description="Changes when the agent restarts.")
    seq: int = Field(ge=0, description="Increases with every report of one boot.")
    ts: ReportTime = Field(description="When the agent made the report; bounded ahead of the receiver's clock.")
    replicas: list[ReplicaReport] = Field(default_factory=list, max_length=4096)


class LogsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload_id: Token
    replica: int = Field(default=0, ge=0)
    tail_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024)


class LogsReply(BaseModel):
    workload_id: str
    replica: int
    attempt: int
    state: ReplicaState
    exit_code: int | None = None
    text: str = Field(description="The last tail_bytes of output (decoded as UTF-8, invalid bytes replaced).")
    truncated: bool = Field(description="True when older output exists beyond what is returned.")
