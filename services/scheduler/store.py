"""Every database function of the scheduler: workloads (with their replicas, history, events and
commands), the reads behind the API, the placement queue, allocations, decisions and the
persisted fleet view.

One verb set: ``create_``, ``read_``, ``update_`` (upserts and batch writes, a list at a time),
``delete_``, ``list_``, ``count_``. One driver style: SQLAlchemy Core on the caller's
``AsyncSession``; functions only flush, the caller owns the transaction. Workload events and
agent commands go to the outbox in that same transaction. The in-memory records and their
state machine are in ``lifecycle``; the tenant quota table is read and written in ``quotas``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.bus.errors import Conflict
from libs.bus.subjects import agent_command_subject, event_subject
from libs.db.outbox import outbox_row
from libs.events import CloudEvent, EventTypes
from libs.schemas.commands import LaunchCommand, StopCommand
from libs.schemas.scheduler import (
    Explanation,
    HistoryEntry,
    WorkloadPage,
    WorkloadQuery,
    WorkloadState,
    WorkloadSummary,
    WorkloadView,
    event_data,
)
from libs.schemas.workload import WorkloadSpec
from services.scheduler import endpoints
from services.scheduler.fleet import HostView
from services.scheduler.lifecycle import ACTIVE, SOURCE, Replica, Workload, command_event, new_event_id
from services.scheduler.orm import decisions, history, hosts, outbox, replicas, workloads

QUEUED = tuple(s.value for s in WorkloadState if s.queued)


def new_workload_id() -> str:
    """Sortable by creation time: 'wl_' + 16 hex digits of nanoseconds + 8 random hex digits."""
    return f"wl_{time.time_ns():016x}{os.urandom(4).hex()}"


def _digest(spec_json: dict[str, Any], tenant: str | None) -> str:
    body = json.dumps({"spec": spec_json, "tenant": tenant}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


# -- loading and saving ----------------------------------------------------------------------------
def _replica(row: Any) -> Replica:
    return Replica(replica=row.replica, attempt=row.attempt, state=row.state, host_id=row.host_id, site=row.site,
                   devices=list(row.devices or []), resources=dict(row.resources or {}), decision_id=row.decision_id,
                   exit_code=row.exit_code,
                   message=row.message, sends=row.sends, sent_at=row.sent_at, started_at=row.started_at,
                   finished_at=row.finished_at, updated_at=row.updated_at, ready=row.ready, endpoint=row.endpoint,
                   simulated=row.simulated)


def _workload(row: Any, reps: list[Replica]) -> Workload:
    wl = Workload(id=row.id, tenant=row.tenant, name=row.name, spec=WorkloadSpec.model_validate(row.spec),
                  state=WorkloadState(row.state), created_at=row.created_at, updated_at=row.updated_at,
                  replicas=sorted(reps, key=lambda r: r.replica), restarts=row.restarts,
                  reschedules=row.reschedules,
                  explanation=Explanation.model_validate(row.explanation) if row.explanation else None,
                  message=row.message, finished_at=row.finished_at, endpoint_version=row.endpoint_version,
                  replaces=row.replaces, draining_since=row.draining_since)
    if row.endpoint_version:  # a set was published: the one these rows imply
        wl.endpoints_published = endpoints.signature(wl)
    return wl


async def read_workloads(session: AsyncSession, ids: Iterable[str], *, lock: bool = True) -> dict[str, Workload]:
    """Workloads with their replicas; ``lock`` takes row locks (in id order, so concurrent callers never deadlock)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    q = select(workloads).where(workloads.c.id.in_(wanted)).order_by(workloads.c.id)
    rows = (await session.execute(q.with_for_update() if lock else q)).all()
    reps: dict[str, list[Replica]] = {}
    for r in (await session.execute(select(replicas).where(replicas.c.workload_id.in_(wanted)))).all():
        reps.setdefault(r.workload_id, []).append(_replica(r))
    return {row.id: _workload(row, reps.get(row.id, [])) for row in rows}


def _event_site(wl: Workload) -> str | None:
    sites = wl.sites or sorted({r.site for r in wl.replicas if r.site})
    return sites[0] if sites else wl.spec.placement.data_site


def _command_row(cmd: LaunchCommand | StopCommand) -> dict[str, Any]:
    return outbox_row(command_event(cmd), agent_command_subject(cmd.site, cmd.host_id))


_WL_UPDATE = update(workloads).where(workloads.c.id == bindparam("b_id"))
_REPLICA_UPDATE = update(replicas).where((replicas.c.workload_id == bindparam("b_wid"))
                                         & (replicas.c.replica == bindparam("b_replica")))


async def update_workloads(session: AsyncSession, wls: Iterable[Workload], now: datetime, *,
                           rows: bool = True) -> int:
    """Write what changed on these workloads: their rows, replicas, history, events and commands, in a few
    statements (one per table, each an executemany). Rows are updated in id order; outbox rows keep each
    workload's order (its events, then its commands). ``rows=False``: the workload rows themselves are new
    and need no update. Returns outbox rows added."""
    wl_rows: list[dict[str, Any]] = []
    rep_rows: list[dict[str, Any]] = []
    hist_rows: list[dict[str, Any]] = []
    out_rows: list[dict[str, Any]] = []
    for wl in wls:
        publish = endpoints.changed(wl)
        if rows or publish:
            wl_rows.append({"b_id": wl.id, "state": wl.state.value, "restarts": wl.restarts,
                            "reschedules": wl.reschedules, "sites": wl.sites,
                            "explanation": wl.explanation.model_dump(mode="json") if wl.explanation else None,
                            "message": wl.message, "updated_at": wl.updated_at, "finished_at": wl.finished_at,
                            "endpoint_version": wl.endpoint_version, "draining_since": wl.draining_since})
        for r in wl.replicas:
            if r.dirty:
                rep_rows.append({"b_wid": wl.id, "b_replica": r.replica, "attempt": r.attempt, "state": r.state,
                                 "host_id": r.host_id, "site": r.site, "devices": r.devices, "resources": r.resources,
                                 "decision_id": r.decision_id, "exit_code": r.exit_code, "message": r.message,
                                 "sends": r.sends, "sent_at": r.sent_at, "started_at": r.started_at,
                                 "finished_at": r.finished_at, "updated_at": r.updated_at or now, "ready": r.ready,
                                 "endpoint": r.endpoint, "simulated": r.simulated})
                r.dirty = False
        hist_rows += [{"workload_id": wl.id, "replica": rep, "from_state": frm, "to_state": to,
                       "reason": reason[:2000], "at": now} for rep, frm, to, reason in wl.history]
        if wl.events:
            view = wl.view()
            subject_site = _event_site(wl)
            for state, reason in wl.events:
                data = event_data(view, state=state.value, reason=reason)
                event = CloudEvent.new(EventTypes.workload(state.value), SOURCE, data, subject=wl.id,
                                       id=new_event_id())
                out_rows.append(outbox_row(event, event_subject(event.type, subject_site)))
        if publish:
            event = CloudEvent.new(EventTypes.ENDPOINT_CHANGED, SOURCE, endpoints.endpoint_set(wl), subject=wl.id,
                                   id=new_event_id())
            out_rows.append(outbox_row(event, event_subject(event.type, _event_site(wl))))
        out_rows += [_command_row(cmd) for cmd in wl.commands]
        wl.history, wl.events, wl.commands, wl.dirty = [], [], [], False
    # rows are locked as they are updated: in id order (workloads, then replicas), like read_workloads takes
    # them, so two transactions updating overlapping workloads wait for each other instead of deadlocking
    wl_rows.sort(key=lambda r: r["b_id"])
    rep_rows.sort(key=lambda r: (r["b_wid"], r["b_replica"]))
    for stmt, params in ((_WL_UPDATE, wl_rows), (_REPLICA_UPDATE, rep_rows), (insert(history), hist_rows),
                         (insert(outbox), out_rows)):
        if params:
            await session.execute(stmt, params)
    return len(out_rows)


def _new_workload(spec: WorkloadSpec, tenant: str | None, idempotency_key: str | None,
                  now: datetime, replaces: str | None = None) -> tuple[Workload, dict[str, Any]]:
    """A pending workload and its row, not yet written (``replaces``: the service a rolling update takes over)."""
    spec_json = spec.model_dump(mode="json")
    wl = Workload(id=new_workload_id(), tenant=tenant, name=spec.name, spec=spec, state=WorkloadState.PENDING,
                  created_at=now, updated_at=now, replicas=[Replica(replica=i) for i in range(spec.replicas)],
                  replaces=replaces)
    values = {"id": wl.id, "tenant": tenant, "name": spec.name, "spec": spec_json, "state": wl.state.value,
              "hardware_type": wl.hardware_type, "priority": spec.priority, "replicas": spec.replicas,
              "kind": spec.kind, "replaces": replaces,
              "idempotency_key": idempotency_key, "request_hash": _digest(spec_json, tenant),
              "created_at": now, "updated_at": now}
    return wl, values


async def _write_new(session: AsyncSession, wls: list[Workload], now: datetime) -> None:
    """The replicas, history and submitted events of workloads whose rows were just inserted."""
    await session.execute(insert(replicas), [{"workload_id": wl.id, "replica": r.replica, "state": "pending",
                                              "updated_at": now} for wl in wls for r in wl.replicas])
    for wl in wls:
        wl.history.append((None, None, WorkloadState.PENDING.value, "submitted"))
        wl.events.append((WorkloadState.PENDING, "submitted"))
    await update_workloads(session, wls, now, rows=False)


def _insert_keyed(rows: list[dict[str, Any]]) -> Any:
    return pg_insert(workloads).values(rows).on_conflict_do_nothing(
        index_elements=[workloads.c.tenant, workloads.c.idempotency_key],
        index_where=workloads.c.idempotency_key.isnot(None)).returning(workloads.c.id)


async def create_workload(session: AsyncSession, spec: WorkloadSpec, tenant: str | None, idempotency_key: str | None,
                 now: datetime, *, replaces: str | None = None) -> tuple[Workload, bool]:
    """Insert a pending workload, or return the one an earlier submit with this key created.

    With a tenant and a key, one ``INSERT … ON CONFLICT DO NOTHING`` decides: a retry (or a
    concurrent twin, whose commit it waits for) inserts nothing and finds the first one."""
    wl, values = _new_workload(spec, tenant, idempotency_key, now, replaces)
    if idempotency_key is not None and tenant is not None:
        inserted = (await session.execute(_insert_keyed([values]))).scalar_one_or_none()
        if inserted is None:
            existing = await _read_by_key(session, tenant, idempotency_key, values["request_hash"])
            if existing is None:  # the row that conflicted is gone again (its workload was deleted)
                raise Conflict("a request with this Idempotency-Key is still being decided; retry",
                               title="Request in progress")
            return existing, False
    else:
        if idempotency_key is not None:
            existing = await _read_by_key(session, tenant, idempotency_key, values["request_hash"])
            if existing is not None:
                return existing, False
        await session.execute(insert(workloads).values(values))
    await _write_new(session, [wl], now)
    return wl, True


def batch_key(idempotency_key: str, index: int) -> str:
    """The key item ``index`` of a keyed batch is stored under."""
    return f"{idempotency_key}#{index}"


async def create_workloads(session: AsyncSession, specs: Sequence[WorkloadSpec], tenant: str | None,
                           idempotency_key: str | None, now: datetime) -> tuple[list[Workload], bool]:
    """Insert a batch of pending workloads in a few statements, or return the batch an earlier
    request with this key created (all or nothing: a batch found only in part is a conflict).

    Item ``i`` of a keyed batch is stored under ``batch_key(key, i)``, so a retry, or a concurrent
    twin whose commit the insert waits for, inserts nothing and finds every item."""
    built = [_new_workload(spec, tenant, batch_key(idempotency_key, i) if idempotency_key else None, now)
             for i, spec in enumerate(specs)]
    wls = [wl for wl, _ in built]
    rows = [values for _, values in built]
    if idempotency_key is None:
        await session.execute(insert(workloads), rows)
    else:
        inserted = len((await session.execute(_insert_keyed(rows))).scalars().all()) if tenant is not None else 0
        if inserted < len(rows):
            found = [await _read_by_key(session, tenant, r["idempotency_key"], r["request_hash"]) for r in rows]
            earlier = [wl for wl in found if wl is not None]
            if inserted == 0 and len(earlier) == len(rows):
                return earlier, False
            if inserted or earlier:
                raise Conflict("part of this batch was created by an earlier request with this Idempotency-Key; "
                               "retry that request as it was", title="Idempotency-Key reused")
            if tenant is not None:  # the rows that conflicted are gone again (their workloads were deleted)
                raise Conflict("a request with this Idempotency-Key is still being decided; retry",
                               title="Request in progress")
            await session.execute(insert(workloads), rows)
    await _write_new(session, wls, now)
    return wls, True


async def _read_by_key(session: AsyncSession, tenant: str | None, key: str, digest: str) -> Workload | None:
    tenant_match = workloads.c.tenant.is_(None) if tenant is None else workloads.c.tenant == tenant
    row = (await session.execute(select(workloads.c.id, workloads.c.request_hash).where(
        tenant_match & (workloads.c.idempotency_key == key)))).one_or_none()
    if row is None:
        return None
    if row.request_hash != digest:
        raise Conflict("this Idempotency-Key was used with a different workload", title="Idempotency-Key reused")
    return (await read_workloads(session, [row.id], lock=False))[row.id]


# -- API reads -------------------------------------------------------------------------------------
def _visible(tenant: str | None) -> Any:
    return workloads.c.tenant == tenant if tenant is not None else true()


async def read_workload_view(session: AsyncSession, wid: str, tenant: str | None, history_limit: int) -> WorkloadView | None:
    found = await read_workloads(session, [wid], lock=False)
    wl = found.get(wid)
    if wl is None or (tenant is not None and wl.tenant != tenant):
        return None
    view = wl.view()
    rows = (await session.execute(select(history).where(history.c.workload_id == wid)
                                  .order_by(history.c.id.desc()).limit(history_limit))).all()
    view.history = [HistoryEntry(at=h.at, from_state=h.from_state, to_state=h.to_state, replica=h.replica,
                                 reason=h.reason) for h in reversed(rows)]
    return view


async def list_workloads(session: AsyncSession, q: WorkloadQuery) -> WorkloadPage:
    cond = _visible(q.tenant)
    if q.state is not None:
        cond = cond & (workloads.c.state == q.state.value)
    if q.hardware_type is not None:
        cond = cond & (workloads.c.hardware_type == q.hardware_type)
    if q.site is not None:
        cond = cond & workloads.c.sites.any(q.site)
    if q.after is not None:
        cond = cond & (workloads.c.id < q.after)
    rows = (await session.execute(select(workloads).where(cond).order_by(workloads.c.id.desc())
                                  .limit(q.limit + 1))).all()
    items = [WorkloadSummary(id=r.id, name=r.name, tenant=r.tenant, state=WorkloadState(r.state),
                             hardware_type=r.hardware_type, priority=r.priority, replicas=r.replicas,
                             sites=list(r.sites or []), restarts=r.restarts, created_at=r.created_at,
                             updated_at=r.updated_at) for r in rows[: q.limit]]
    return WorkloadPage(items=items, next_cursor=items[-1].id if len(rows) > q.limit else None)


async def read_replica_location(session: AsyncSession, wid: str, tenant: str | None, replica: int) -> Any:
    return (await session.execute(
        select(replicas.c.host_id, replicas.c.site, replicas.c.attempt, workloads.c.tenant)
        .join(workloads, workloads.c.id == replicas.c.workload_id)
        .where((replicas.c.workload_id == wid) & (replicas.c.replica == replica) & _visible(tenant)))).one_or_none()


async def list_tenant_devices(session: AsyncSession, tenant: str) -> list[Any]:
    """The devices (a list per row) the tenant's active replicas hold."""
    return list((await session.execute(
        select(replicas.c.devices).join(workloads, workloads.c.id == replicas.c.workload_id)
        .where((workloads.c.tenant == tenant) & replicas.c.state.in_(ACTIVE)))).all())


# -- scheduling reads ------------------------------------------------------------------------------
async def list_queued_ids(session: AsyncSession, limit: int) -> list[str]:
    """Workloads waiting for placement: highest priority first, then oldest."""
    rows = (await session.execute(select(workloads.c.id).where(workloads.c.state.in_(QUEUED))
                                  .order_by(workloads.c.priority.desc(), workloads.c.id).limit(limit))).all()
    return [r.id for r in rows]


async def list_active_replicas(session: AsyncSession, host_ids: Sequence[str] | None = None,
                               tenant: str | None = None) -> list[Any]:
    """Placed/starting/running replicas with what allocations need, optionally only on some hosts or of one
    tenant; oldest workload first."""
    cond: Any = replicas.c.state.in_(ACTIVE)
    if host_ids is not None:
        cond = cond & replicas.c.host_id.in_(list(host_ids))
    if tenant is not None:
        cond = cond & (workloads.c.tenant == tenant)
    return list((await session.execute(
        select(replicas.c.workload_id, replicas.c.replica, replicas.c.attempt, replicas.c.state, replicas.c.host_id,
               replicas.c.devices, replicas.c.resources, replicas.c.sent_at, replicas.c.updated_at,
               replicas.c.ready, replicas.c.endpoint, replicas.c.simulated, workloads.c.priority,
               workloads.c.tenant, workloads.c.spec["preemptible"].astext.label("preemptible"))
        .join(workloads, workloads.c.id == replicas.c.workload_id).where(cond)
        .order_by(replicas.c.workload_id, replicas.c.replica))).all())


# -- services --------------------------------------------------------------------------------------
async def update_workload_replicas(session: AsyncSession, wl: Workload, added: Sequence[Replica],
                                   removed: Sequence[Replica], now: datetime) -> int:
    """A scaled service: its spec and replica count, new pending replica rows, dropped ones, and what
    ``lifecycle.scale`` recorded (stops, history, events). Returns outbox rows added."""
    await session.execute(update(workloads).where(workloads.c.id == wl.id).values(
        spec=wl.spec.model_dump(mode="json"), replicas=wl.spec.replicas))
    if removed:
        await session.execute(delete(replicas).where((replicas.c.workload_id == wl.id)
                                                     & replicas.c.replica.in_([r.replica for r in removed])))
    if added:
        await session.execute(insert(replicas), [{"workload_id": wl.id, "replica": r.replica, "state": "pending",
                                                  "updated_at": now} for r in added])
    return await update_workloads(session, [wl], now)


async def list_rollouts(session: AsyncSession) -> list[tuple[str, str]]:
    """(new, old) of rolling updates whose new service runs on while the old one has not ended."""
    old = workloads.alias("old")
    live = ("succeeded", "failed", "stopped")
    rows = (await session.execute(
        select(workloads.c.id, workloads.c.replaces).join(old, old.c.id == workloads.c.replaces)
        .where(workloads.c.replaces.isnot(None) & workloads.c.state.notin_(live) & old.c.state.notin_(live)))).all()
    return [(r.id, r.replaces) for r in rows]


async def list_services(session: AsyncSession, tenant: str | None = None) -> list[Workload]:
    """Service workloads that have not ended (one tenant's, or every tenant's)."""
    cond = (workloads.c.kind == "service") & workloads.c.state.notin_(("succeeded", "failed", "stopped"))
    if tenant is not None:
        cond = cond & (workloads.c.tenant == tenant)
    ids = [r.id for r in (await session.execute(select(workloads.c.id).where(cond))).all()]
    return list((await read_workloads(session, ids, lock=False)).values())


async def create_decision(session: AsyncSession, **values: Any) -> int:
    return int((await session.execute(insert(decisions).values(**values).returning(decisions.c.id))).scalar_one())


async def delete_decisions(session: AsyncSession, older_than: datetime) -> None:
    """Placement decisions recorded before ``older_than``."""
    await session.execute(delete(decisions).where(decisions.c.created_at < older_than))


# -- fleet view ------------------------------------------------------------------------------------
async def update_hosts(session: AsyncSession, views: Iterable[HostView]) -> None:
    """Upsert the fleet view of these hosts (in id order, the order the upsert locks their rows in)."""
    rows = [v.to_row() for _, v in sorted({v.id: v for v in views}.items())]
    if not rows:
        return
    stmt = pg_insert(hosts).values(rows)
    await session.execute(stmt.on_conflict_do_update(index_elements=[hosts.c.id], set_={
        c: stmt.excluded[c] for c in ("site", "generation", "report", "reported_at", "up", "liveness_at",
                                      "device_health")}))


async def list_hosts(session: AsyncSession) -> list[HostView]:
    return [HostView.from_row(r) for r in (await session.execute(select(hosts))).mappings()]

