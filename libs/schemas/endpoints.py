"""Service endpoints: which replicas of a service answer requests, as the scheduler tells the gateway.

The scheduler owns the record (per replica: ready or not, and the base URL its agent reported).
Whenever the ready set of a service changes it publishes an ``io.xpumesh.endpoint.changed``
event (through its outbox) carrying the whole ``EndpointSet``; a gateway reads every service's
set once at start (``endpoints.list``) and then follows those events, so no request asks the
scheduler anything. ``version`` grows with every change of a set, so a set older than the one
held (a snapshot racing an event) is ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EndpointList", "EndpointLoad", "EndpointReplica", "EndpointSet", "EndpointsQuery", "WorkloadLoad"]


class EndpointReplica(BaseModel):
    """One replica in rotation."""

    model_config = ConfigDict(extra="forbid")

    replica: int = Field(ge=0)
    attempt: int = Field(ge=1)
    host_id: str = Field(max_length=64)
    url: str = Field(max_length=300, pattern=r"^https?://[^\s]+$", description="Base URL the replica answers on.")
    simulated: bool = False


class EndpointSet(BaseModel):
    """A service's ready replicas (empty: none ready, or the service ended)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "workload_id": "wl_18ea52ab2dac349aa6915d69", "name": "echo", "tenant": "acme", "callers": [],
        "version": 1733560000123456, "active": True,
        "replicas": [{"replica": 0, "attempt": 1, "host_id": "hz-cpu-01", "url": "http://10.0.0.5:41234"}]}]})

    workload_id: str = Field(max_length=64)
    name: str = Field(max_length=128, description="The endpoint's name: /v1/endpoints/<name>/ of the tenant.")
    tenant: str | None = Field(default=None, max_length=64)
    callers: list[str] = Field(default_factory=list, max_length=64,
                               description="Other tenants allowed to call it ('*': every tenant).")
    version: int = Field(ge=0, description="Microseconds since the epoch of the change; newer wins.")
    active: bool = Field(description="False once the service has ended: forget it.")
    replicas: list[EndpointReplica] = Field(default_factory=list, max_length=4096)


class EndpointsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, max_length=64, description="One tenant's services; None: all.")


class EndpointList(BaseModel):
    items: list[EndpointSet]


class WorkloadLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload_id: str = Field(max_length=64)
    in_flight: float = Field(ge=0, le=1e9, description="Requests in flight to its replicas, averaged over the interval.")


class EndpointLoad(BaseModel):
    """What one gateway instance sends its services, every ``gateway.endpoint_load_interval_s`` (core NATS on
    ``xpumesh.gateway.ctl.endpoint_load.<instance>``): the scheduler's autoscaler sums the instances' reports."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(gt=0, le=3600)
    items: list[WorkloadLoad] = Field(default_factory=list, max_length=100_000,
                                      description="Every service it routes to (0 included).")
