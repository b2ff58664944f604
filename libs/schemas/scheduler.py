"""What the scheduler answers over the bus: workloads, their replicas, history and logs.

The gateway's ``/v1/workloads`` routes are thin: they take the tenant from the caller's
key and pass it here, so every query is confined to one tenant (``tenant=None`` only for
roles that see every tenant).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.bus.subjects import TOKEN_PATTERN
from libs.schemas.commands import ReplicaResources, ReplicaState
from libs.schemas.workload import WorkloadSpec

MAX_PAGE = 500
MAX_BATCH = 1000  # workloads in one POST /v1/workloads/batch

# Examples for the API documentation: one 8-GPU replica on an A100 host of the demo fleet.
_SUMMARY_EXAMPLE: dict[str, Any] = {
    "id": "wl_18ea52ab2dac349aa6915d69", "name": "llama-finetune", "tenant": "acme", "state": "running",
    "hardware_type": "gpu", "priority": 500, "replicas": 1, "sites": ["hangzhou"], "restarts": 0,
    "created_at": "2025-06-03T08:02:11Z", "updated_at": "2025-06-03T08:02:17Z"}
_VIEW_EXAMPLE: dict[str, Any] = {
    **_SUMMARY_EXAMPLE,
    "spec": {"name": "llama-finetune", "hardware": {"type": "gpu", "vendor": "nvidia", "model": "A100*", "count": 8},
             "runtime": {"framework": "pytorch", "framework_version": "2.4", "requires": ["cuda>=12.1"]},
             "variants": {"nvidia": {"image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
                                     "command": ["torchrun", "--nproc-per-node=8", "train.py"]}},
             "placement": {"sites": ["hangzhou", "ningbo"], "topology": "same_link_group"},
             "replicas": 1, "priority": 500, "tenant": "acme"},
    "placement": [{"replica": 0, "attempt": 0, "state": "running", "host_id": "hz-a100-03", "site": "hangzhou",
                   "devices": [{"id": f"hz-a100-03:nvidia:{i}", "index": i, "vendor": "nvidia", "hardware_type": "gpu",
                                "share": 1.0, "memory_mib": 81920} for i in range(8)],
                   "started_at": "2025-06-03T08:02:17Z"}],
    "history": [
        {"at": "2025-06-03T08:02:11Z", "to_state": "pending", "reason": "submitted"},
        {"at": "2025-06-03T08:02:12Z", "from_state": "pending", "to_state": "placed",
         "reason": "1 replica placed at hangzhou"},
        {"at": "2025-06-03T08:02:17Z", "from_state": "placed", "to_state": "running", "reason": "replica 0 running"}],
    "created": True}


class WorkloadState(StrEnum):
    """pending → placed → starting → running → succeeded | failed | stopped.

    ``preempted`` and ``rescheduled`` (after ``lost``) wait for placement like ``pending``;
    ``lost`` is passed through on the way to ``rescheduled`` or ``failed``.
    """

    PENDING = "pending"
    PLACED = "placed"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    PREEMPTED = "preempted"
    LOST = "lost"
    RESCHEDULED = "rescheduled"

    @property
    def terminal(self) -> bool:
        return self in (WorkloadState.SUCCEEDED, WorkloadState.FAILED, WorkloadState.STOPPED)

    @property
    def queued(self) -> bool:
        return self in (WorkloadState.PENDING, WorkloadState.PREEMPTED, WorkloadState.RESCHEDULED)


class WorkloadSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: WorkloadSpec
    tenant: str | None = Field(default=None, max_length=64, description="Owner, from the caller's key.")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class WorkloadBatch(BaseModel):
    """The body of ``POST /v1/workloads/batch``: many workloads, accepted or refused together."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"workloads": [
        {"name": f"sweep-{i}", "hardware": {"type": "gpu", "share": 0.25}} for i in range(3)]}]})

    workloads: list[WorkloadSpec] = Field(min_length=1, max_length=MAX_BATCH, description=(
        f"1 to {MAX_BATCH} workloads. Each is checked as a single submit would be and the tenant's quota "
        "against their sum; one refusal refuses them all, and nothing is created."))


class WorkloadBatchSubmit(BaseModel):
    """A batch as the gateway hands it to the scheduler (``workloads.submit_batch``)."""

    model_config = ConfigDict(extra="forbid")

    specs: list[WorkloadSpec] = Field(min_length=1, max_length=MAX_BATCH)
    tenant: str | None = Field(default=None, max_length=64, description="Owner, from the caller's key.")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class WorkloadRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TOKEN_PATTERN)
    tenant: str | None = Field(default=None, max_length=64, description="Confine to this tenant; None: any.")


class WorkloadPatch(BaseModel):
    """The body of ``PATCH /v1/workloads/{id}``: what may change on a running service (one of the two)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"replicas": 3},
        {"spec": {"name": "echo", "kind": "service", "replicas": 3, "hardware": {"type": "cpu", "share": 0.1},
                  "service": {"port": 8000, "readiness_path": "/healthz"},
                  "variants": {"cpu": {"command": ["python3", "echo.py"], "env": {"VERSION": "2"}}}}}]})

    replicas: int | None = Field(default=None, ge=1, le=4096, description="The service's new number of replicas: "
                                 "new ones are placed, the highest-numbered ones stopped.")
    spec: WorkloadSpec | None = Field(default=None, description="A changed spec (same name and kind 'service'): a "
                                      "rolling update. A new service with this spec starts beside the running one "
                                      "under the same endpoint; once all its replicas are ready the old one leaves "
                                      "rotation and stops after scheduler.rollout_drain_s. The answer is the new "
                                      "workload.")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.replicas is None) == (self.spec is None):
            raise ValueError("give either replicas or spec")
        return self


class WorkloadUpdate(BaseModel):
    """A rolling update as the gateway hands it to the scheduler (``workloads.update``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TOKEN_PATTERN)
    tenant: str | None = Field(default=None, max_length=64, description="Confine to this tenant; None: any.")
    spec: WorkloadSpec


class WorkloadScale(BaseModel):
    """A patch as the gateway hands it to the scheduler (``workloads.scale``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TOKEN_PATTERN)
    tenant: str | None = Field(default=None, max_length=64, description="Confine to this tenant; None: any.")
    replicas: int = Field(ge=1, le=4096)


class WorkloadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, max_length=64)
    state: WorkloadState | None = None
    hardware_type: str | None = Field(default=None, max_length=16)
    site: str | None = Field(default=None, max_length=64, description="Workloads with a replica placed at this site.")
    after: str | None = Field(default=None, max_length=64, description="Cursor: the last id of the previous page.")
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)


class Explanation(BaseModel):
    """Why (part of) a workload waits: one line, and hosts excluded per filter."""

    reason: str
    counts: dict[str, int] = Field(default_factory=dict)
    replicas: list[int] = Field(default_factory=list, description="Replicas still waiting.")
    at: datetime


class ReplicaDevice(BaseModel):
    id: str
    index: int
    vendor: str
    hardware_type: str
    share: float = 1.0
    memory_mib: int | None = None
    uuid: str | None = None


class ReplicaView(BaseModel):
    replica: int
    attempt: int
    state: str = Field(description="pending (not placed), placed, starting, running, succeeded, failed, stopped.")
    host_id: str | None = None
    site: str | None = None
    devices: list[ReplicaDevice] = Field(default_factory=list)
    resources: ReplicaResources | None = Field(default=None, description="What it holds of its host (CPUs, "
                                               "memory), the hardware alternative it took (and the variant it names: a "
                                               "catalog model's build) and its NUMA node.")
    exit_code: int | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ready: bool | None = Field(default=None, description="A service replica: in rotation (its readiness probe "
                               "passes) or not; None for a job.")
    endpoint: str | None = Field(default=None, description="A service replica: the base URL it answers on.")
    simulated: bool = Field(default=False, description="A simulated replica (the simulator's built-in responder).")
    variant: str | None = Field(default=None, description="The key of spec.variants this replica runs, chosen by its "
                                "devices' vendor and type and its alternative; None before placement or when the "
                                "spec has no variants.")


class HistoryEntry(BaseModel):
    at: datetime
    from_state: str | None = None
    to_state: str
    replica: int | None = Field(default=None, description="Set when the entry is about one replica.")
    reason: str = ""


class WorkloadSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUMMARY_EXAMPLE]})

    id: str
    name: str
    tenant: str | None = None
    state: WorkloadState
    hardware_type: str
    priority: int
    replicas: int
    sites: list[str] = Field(default_factory=list, description="Sites its replicas are placed at.")
    restarts: int = 0
    created_at: datetime
    updated_at: datetime


class WorkloadView(WorkloadSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [_VIEW_EXAMPLE]})

    spec: WorkloadSpec
    placement: list[ReplicaView] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)
    explanation: Explanation | None = None
    message: str | None = Field(default=None, description="Why it failed or stopped.")
    finished_at: datetime | None = None
    created: bool = Field(default=True, description="False when an Idempotency-Key returned an earlier workload.")
    replaces: str | None = Field(default=None, description="A rolling update: the service this one takes over from "
                                 "(stopped once every replica of this one is ready and a drain has passed).")
    draining: bool = Field(default=False, description="A service replaced by a rolling update: out of rotation, "
                           "stopped after the drain.")


class WorkloadBatchResult(BaseModel):
    """What a batch submit created (or, retried with its Idempotency-Key, found), in the order sent."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {**_SUMMARY_EXAMPLE, "id": f"wl_18ea52ab2dac349aa6915d6{i}", "name": f"sweep-{i}", "state": "pending",
         "sites": [], "updated_at": _SUMMARY_EXAMPLE["created_at"]} for i in range(3)], "created": True}]})

    items: list[WorkloadSummary]
    created: bool = Field(default=True, description="False when an Idempotency-Key returned an earlier batch.")


class WorkloadPage(BaseModel):
    items: list[WorkloadSummary]
    next_cursor: str | None = None


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TOKEN_PATTERN)
    tenant: str | None = Field(default=None, max_length=64)
    replica: int = Field(default=0, ge=0)
    tail_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024)


class LogsView(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "workload_id": "wl_18ea52ab2dac349aa6915d69", "replica": 0, "attempt": 0, "host_id": "hz-a100-03",
        "state": "running", "text": "[rank0] epoch 3 step 1200/5000 loss 1.873 lr 2.0e-05 tokens/s 48210\n"
                                    "[rank0] epoch 3 step 1250/5000 loss 1.861 lr 2.0e-05 tokens/s 48388\n",
        "truncated": True}]})

    workload_id: str
    replica: int
    attempt: int
    host_id: str
    state: ReplicaState
    exit_code: int | None = None
    text: str
    truncated: bool


def event_data(view: WorkloadView, **extra: Any) -> dict[str, Any]:
    """The data of an ``io.xpumesh.workload.<state>`` event."""
    data: dict[str, Any] = {
        "workload_id": view.id, "name": view.name, "tenant": view.tenant, "state": view.state.value,
        "hardware_type": view.hardware_type, "priority": view.priority, "restarts": view.restarts,
        "placements": [{"replica": r.replica, "attempt": r.attempt, "host_id": r.host_id, "site": r.site,
                        "devices": [d.id for d in r.devices], "shares": [d.share for d in r.devices],
                        "state": r.state, "exit_code": r.exit_code,
                        **({"alternative": r.resources.alternative, "variant": r.resources.variant,
                            "cpu": r.resources.cpu, "memory_mib": r.resources.memory_mib}
                           if r.resources is not None else {})}
                       for r in view.placement if r.host_id is not None],
    }
    if view.explanation is not None:
        data["explanation"] = view.explanation.model_dump(mode="json")
    if view.message:
        data["message"] = view.message
    data.update(extra)
    return data
