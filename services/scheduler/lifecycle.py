"""The workload state machine, on in-memory records; ``store`` reads and writes them.

A workload is a set of replicas; each replica is ``pending`` (not placed), ``placed``
(launch sent), ``starting``, ``running``, ``succeeded``, ``failed`` or ``stopped``. The
workload's state follows its replicas (the least advanced active one), except for the
transitions decided here: ``lost`` (its host went down or a device turned unhealthy) →
``rescheduled`` or ``failed``; ``preempted``; a failed replica restarts (→ ``rescheduled``)
or fails the workload, per ``restart_policy``/``max_restarts``; a stop ends it. Gangs
restart and get rescheduled as a whole.

Every change appends a history entry; every workload-level change also an event; launch
and stop commands for agents are collected on the record. ``store.update_workloads`` writes
all of it in the caller's transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.events import CloudEvent, EventTypes
from libs.schemas.commands import (
    CommandDevice,
    LaunchCommand,
    ReplicaReport,
    ReplicaResources,
    ReplicaState,
    StopCommand,
    command_id,
)
from libs.schemas.scheduler import Explanation, ReplicaDevice, ReplicaView, WorkloadState, WorkloadView
from libs.schemas.workload import WorkloadSpec

SOURCE = "/scheduler"  # the CloudEvent source of the scheduler's events and commands
ACTIVE = ("placed", "starting", "running")
_ORDER = {"placed": 0, "starting": 1, "running": 2}


@dataclass
class Replica:
    replica: int
    attempt: int = 0
    state: str = "pending"
    host_id: str | None = None
    site: str | None = None
    devices: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)  # ReplicaResources as JSON ({} before placement)
    decision_id: int | None = None
    exit_code: int | None = None
    message: str | None = None
    sends: int = 0
    sent_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    ready: bool | None = None  # a service replica: readiness and base URL, as its agent last reported them
    endpoint: str | None = None
    simulated: bool = False
    dirty: bool = False

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def in_rotation(self) -> bool:
        """A service replica that takes requests: active, reported ready, with a URL."""
        return self.active and bool(self.ready) and self.endpoint is not None

    def set(self, now: datetime, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self, k, v)
        self.updated_at = now
        self.dirty = True

    def view(self, spec: WorkloadSpec) -> ReplicaView:
        # A replica waiting for placement (preempted, lost, restarting) holds nothing: the host and devices
        # of its last attempt stay on the record (its logs come from there) but are not its placement.
        placed = self.state != "pending"
        first = self.devices[0] if self.devices else None
        variant = spec.variant_key(*spec.placed_on((str(first["vendor"]), str(first["hardware_type"])) if first
                                                   else None, int(self.resources.get("alternative", 0))))
        return ReplicaView(replica=self.replica, attempt=self.attempt, state=self.state,
                           host_id=self.host_id if placed else None, site=self.site if placed else None,
                           devices=[ReplicaDevice.model_validate(d) for d in self.devices] if placed else [],
                           resources=ReplicaResources.model_validate(self.resources) if placed and self.resources
                           else None,
                           exit_code=self.exit_code, message=self.message, started_at=self.started_at,
                           finished_at=self.finished_at, ready=self.ready if self.active else None,
                           endpoint=self.endpoint if self.active else None, simulated=self.simulated,
                           variant=variant if placed else None)


@dataclass
class Workload:
    id: str
    tenant: str | None
    name: str
    spec: WorkloadSpec
    state: WorkloadState
    created_at: datetime
    updated_at: datetime
    replicas: list[Replica]
    restarts: int = 0
    reschedules: int = 0
    explanation: Explanation | None = None
    message: str | None = None
    finished_at: datetime | None = None
    endpoint_version: int = 0
    replaces: str | None = None  # a rolling update: the service this one takes over from once ready
    draining_since: datetime | None = None  # replaced: out of rotation since, stopped after the drain
    # the endpoint set last published (None: none yet); store.update_workloads publishes a new one on change
    endpoints_published: tuple[Any, ...] | None = None
    dirty: bool = False
    history: list[tuple[int | None, str | None, str, str]] = field(default_factory=list)  # replica, from, to, reason
    events: list[tuple[WorkloadState, str]] = field(default_factory=list)  # state, reason
    commands: list[LaunchCommand | StopCommand] = field(default_factory=list)

    @property
    def hardware_type(self) -> str:
        """The first alternative's type (the one a listing filters by)."""
        return str(self.spec.primary.type)

    @property
    def sites(self) -> list[str]:
        return sorted({r.site for r in self.replicas if r.active and r.site})

    def view(self) -> WorkloadView:
        return WorkloadView(
            id=self.id, name=self.name, tenant=self.tenant, state=self.state, hardware_type=self.hardware_type,
            priority=self.spec.priority, replicas=self.spec.replicas, sites=self.sites, restarts=self.restarts,
            created_at=self.created_at, updated_at=self.updated_at, spec=self.spec,
            placement=[r.view(self.spec) for r in self.replicas], explanation=self.explanation, message=self.message,
            finished_at=self.finished_at, replaces=self.replaces, draining=self.draining_since is not None)

    # -- recording -----------------------------------------------------------------------------
    def move(self, to: WorkloadState, reason: str, now: datetime) -> None:
        if to == self.state:
            return
        self.history.append((None, self.state.value, to.value, reason))
        self.events.append((to, reason))
        self.state = to
        self.updated_at = now
        self.dirty = True
        if to.terminal:
            self.finished_at = now
        if to.terminal or not any(r.state == "pending" for r in self.replicas):
            self.explanation = None

    def replica_move(self, r: Replica, to: str, reason: str, now: datetime, **changes: Any) -> None:
        if r.state != to:
            self.history.append((r.replica, r.state, to, reason))
        r.set(now, state=to, **changes)
        self.updated_at = now
        self.dirty = True


# -- commands ----------------------------------------------------------------------------------
def launch_command(wl: Workload, r: Replica, now: datetime, ttl_s: float) -> LaunchCommand:
    assert r.host_id and r.site
    return LaunchCommand(
        command_id=command_id("launch", wl.id, r.replica, r.attempt, r.sends), host_id=r.host_id, site=r.site,
        workload_id=wl.id, replica=r.replica, attempt=r.attempt, replicas=wl.spec.replicas,
        peers=[x.host_id or "" for x in wl.replicas], devices=[CommandDevice.model_validate(d) for d in r.devices],
        resources=ReplicaResources.model_validate(r.resources), spec=wl.spec, issued_at=now, expires_at=now + timedelta(seconds=ttl_s))


def stop_command(wl_id: str, r: Replica, reason: str, now: datetime, ttl_s: float,
                 attempt: int | None = None) -> StopCommand:
    assert r.host_id and r.site
    return StopCommand(
        command_id=command_id("stop", wl_id, r.replica, attempt or r.attempt, int(now.timestamp() * 1000)),
        host_id=r.host_id, site=r.site, workload_id=wl_id, replica=r.replica, attempt=attempt or r.attempt,
        reason=reason[:300], issued_at=now, expires_at=now + timedelta(seconds=ttl_s))


def command_event(cmd: LaunchCommand | StopCommand) -> CloudEvent:
    """The event a command travels in to its agent; its id is the command's, so agents drop repeats."""
    etype = EventTypes.AGENT_LAUNCH if isinstance(cmd, LaunchCommand) else EventTypes.AGENT_STOP
    return CloudEvent.new(etype, SOURCE, cmd, subject=f"{cmd.workload_id}/{cmd.replica}", id=cmd.command_id)


# -- transitions -------------------------------------------------------------------------------
def settle(wl: Workload, reason: str, now: datetime) -> None:
    """Move the workload to the state its replicas imply (terminal and queued labels are kept)."""
    if wl.state.terminal:
        return
    states = [r.state for r in wl.replicas]
    if all(s == "succeeded" for s in states):
        wl.move(WorkloadState.SUCCEEDED, reason, now)
        return
    live = [s for s in states if s != "succeeded"]
    if any(s == "pending" for s in live):
        if not wl.state.queued:
            wl.move(WorkloadState.PENDING, reason, now)
        return
    target = min(live, key=lambda s: _ORDER.get(s, 0))
    wl.move(WorkloadState(target), reason, now)


def assign(wl: Workload, placed: list[tuple[Replica, str, str, list[dict[str, Any]], ReplicaResources]],
           decision_id: int, now: datetime, ttl_s: float) -> None:
    """Place replicas (replica, host, site, devices, what they hold of the host) and launch them; launches name
    every replica's host. A placement with another than the first hardware alternative says which."""
    for r, host_id, site, devices, res in placed:
        alt = f" with alternative {res.alternative} ({wl.spec.alternatives[res.alternative].describe()})" \
            if res.alternative else ""
        if wl.spec.model is not None and res.variant is not None:
            alt += f"; {wl.spec.model} build {res.variant}"
        wl.replica_move(r, "placed", f"placed on {host_id}{alt}", now, attempt=r.attempt + 1, host_id=host_id,
                        site=site, devices=devices, resources=res.model_dump(mode="json"), decision_id=decision_id,
                        exit_code=None, message=None, sends=1, sent_at=now, started_at=None, finished_at=None,
                        ready=None, endpoint=None, simulated=False)
    for r, *_ in placed:
        wl.commands.append(launch_command(wl, r, now, ttl_s))


def resend_launch(wl: Workload, r: Replica, now: datetime, ttl_s: float) -> None:
    """Send the same attempt again (a new command id); ``updated_at`` stays: it is not a state change."""
    r.sends += 1
    r.sent_at = now
    r.dirty = True
    wl.commands.append(launch_command(wl, r, now, ttl_s))


def _stop_active(wl: Workload, targets: list[Replica], reason: str, now: datetime, ttl_s: float) -> None:
    for r in targets:
        if r.active and r.host_id and r.site:
            wl.commands.append(stop_command(wl.id, r, reason, now, ttl_s))


def end(wl: Workload, to: WorkloadState, reason: str, now: datetime, ttl_s: float,
        failed_replica: Replica | None = None) -> None:
    """Fail or stop the whole workload: every other replica is stopped."""
    _stop_active(wl, [r for r in wl.replicas if r is not failed_replica], reason, now, ttl_s)
    for r in wl.replicas:
        if r is failed_replica or r.state in ("succeeded", "failed", "stopped"):
            continue
        wl.replica_move(r, "stopped", reason, now, finished_at=now if r.active else r.finished_at)
    wl.message = reason
    wl.move(to, reason, now)


def _requeue(wl: Workload, targets: list[Replica], reason: str, now: datetime, ttl_s: float) -> None:
    _stop_active(wl, targets, reason, now, ttl_s)
    for r in targets:
        wl.replica_move(r, "pending", reason, now)


def restart(wl: Workload, r: Replica, reason: str, now: datetime, ttl_s: float) -> None:
    """A replica ended and the restart policy wants it again (the whole gang for a gang)."""
    wl.restarts += 1
    targets = [x for x in wl.replicas if x.state != "succeeded"] if wl.spec.gang else [r]
    _requeue(wl, [x for x in targets if x is not r], reason, now, ttl_s)
    wl.replica_move(r, "pending", reason, now)
    wl.move(WorkloadState.RESCHEDULED, reason, now)


def replica_ended(wl: Workload, r: Replica, ok: bool, exit_code: int | None, message: str, now: datetime,
                  ttl_s: float) -> None:
    spec = wl.spec
    if ok and spec.kind == "service":  # a service never finishes: an exit is a failure, restarted per policy
        ok, message = False, message or "the service exited"
    r.set(now, exit_code=exit_code, finished_at=now, message=message or None)
    may_restart = wl.restarts < spec.max_restarts
    if ok:
        if spec.restart_policy == "always" and may_restart:
            restart(wl, r, f"replica {r.replica} exited 0; restart_policy always", now, ttl_s)
            return
        wl.replica_move(r, "succeeded", f"replica {r.replica} exited 0", now)
        settle(wl, f"replica {r.replica} succeeded", now)
        return
    what = f"replica {r.replica} " + (f"exited with code {exit_code}" if exit_code is not None else "failed")
    if message:
        what += f": {message}"
    if spec.restart_policy != "never" and may_restart:
        restart(wl, r, f"{what}; restart {wl.restarts + 1} of {spec.max_restarts}", now, ttl_s)
        return
    wl.replica_move(r, "failed", what, now)
    end(wl, WorkloadState.FAILED, what, now, ttl_s, failed_replica=r)


def observe(wl: Workload, r: Replica, rep: ReplicaReport, now: datetime, ttl_s: float) -> bool:
    """Apply what the agent says about the replica's current attempt; True when anything changed."""
    if rep.attempt != r.attempt or not r.active or wl.state.terminal:
        return False
    noted = _note_enforcement(r, rep, now)
    if (rep.ready, rep.endpoint, rep.simulated) != (r.ready, r.endpoint, r.simulated):
        r.ready, r.endpoint, r.simulated, r.dirty = rep.ready, rep.endpoint, rep.simulated, True
        wl.dirty = noted = True
    if rep.state == ReplicaState.STARTING:
        if r.state != "placed":
            return noted
        wl.replica_move(r, "starting", "agent is starting it", now, started_at=rep.started_at)
    elif rep.state == ReplicaState.RUNNING:
        if r.state == "running":
            return noted
        wl.replica_move(r, "running", f"running on {r.host_id}", now, started_at=rep.started_at or now)
    elif rep.state == ReplicaState.SUCCEEDED:
        replica_ended(wl, r, True, rep.exit_code, rep.message, now, ttl_s)
    else:  # failed, or stopped without being asked to
        msg = rep.message or ("stopped on the host" if rep.state == ReplicaState.STOPPED else "")
        replica_ended(wl, r, False, rep.exit_code, msg, now, ttl_s)
    settle(wl, f"replica {r.replica} {r.state}", now)
    return True


def _note_enforcement(r: Replica, rep: ReplicaReport, now: datetime) -> bool:
    """Record what the agent says holds the replica to its device share (``ReplicaResources.share_enforcement``)."""
    value = str(rep.share_enforcement) if rep.share_enforcement is not None else None
    if value is None or not r.resources or r.resources.get("share_enforcement") == value:
        return False
    r.set(now, resources={**r.resources, "share_enforcement": value})
    return True


def lose(wl: Workload, lost: list[Replica], reason: str, now: datetime, ttl_s: float) -> None:
    """Replicas lost with their host or device: lost → rescheduled (or failed under 'never')."""
    if wl.state.terminal or not lost:
        return
    wl.move(WorkloadState.LOST, reason, now)
    if wl.spec.restart_policy == "never":
        _stop_active(wl, lost, reason, now, ttl_s)
        for r in lost:
            wl.replica_move(r, "failed", reason, now, finished_at=now)
        end(wl, WorkloadState.FAILED, f"{reason}; restart_policy never", now, ttl_s)
        return
    wl.reschedules += 1
    targets = [x for x in wl.replicas if x.state != "succeeded"] if wl.spec.gang else lost
    _requeue(wl, targets, reason, now, ttl_s)
    wl.move(WorkloadState.RESCHEDULED, reason, now)


def preempt(wl: Workload, reason: str, now: datetime, ttl_s: float) -> None:
    if wl.state.terminal:
        return
    active = [r for r in wl.replicas if r.active]
    wl.move(WorkloadState.PREEMPTED, reason, now)
    if wl.spec.restart_policy == "never":
        end(wl, WorkloadState.STOPPED, f"{reason}; restart_policy never", now, ttl_s)
        return
    _requeue(wl, active, reason, now, ttl_s)


def stop(wl: Workload, reason: str, now: datetime, ttl_s: float) -> None:
    if not wl.state.terminal:
        end(wl, WorkloadState.STOPPED, reason, now, ttl_s)


def scale(wl: Workload, replicas: int, now: datetime, ttl_s: float) -> tuple[list[Replica], list[Replica]]:
    """Change a running service's replica count: new pending replicas (placed by the placer), or the
    highest-numbered ones stopped and dropped. Returns (added, removed); the caller writes both."""
    have = len(wl.replicas)
    added: list[Replica] = []
    removed: list[Replica] = []
    if replicas > have:
        added = [Replica(replica=i, updated_at=now) for i in range(have, replicas)]
        wl.replicas.extend(added)
    elif replicas < have:
        removed = [r for r in wl.replicas if r.replica >= replicas]
        _stop_active(wl, removed, f"scaled to {replicas} replicas", now, ttl_s)
        wl.replicas = [r for r in wl.replicas if r.replica < replicas]
    if added or removed:
        wl.spec = wl.spec.model_copy(update={"replicas": replicas})
        wl.history.append((None, wl.state.value, wl.state.value, f"scaled from {have} to {replicas} replicas"))
        wl.updated_at, wl.dirty = now, True
        settle(wl, f"scaled to {replicas} replicas", now)
    return added, removed


def new_event_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)
