"""What must hold after every fault, read from the system of record (PostgreSQL) and the recorders.

* every workload a client got a 2xx for exists, and is terminal, placed/starting/running, or
  pending with an explanation (``unsettled`` lists the others);
* every workload event committed to the scheduler's outbox reached the webhook receiver and the
  SSE reader (``missing_events``; repeats are counted, not faults);
* no device holds more than one whole device's worth of active replicas (``double_booked``);
* what a simulated host really runs (its latest state report) is work the scheduler placed there
  (``unfenced``: a host that came back must not run on beside the copy that replaced it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from services.scheduler.reconcile import replay_state
from tests.faults.mesh import ACTIVE, QUEUED, TERMINAL, EventLog, FaultMesh, Load


@dataclass
class Row:
    """One line of the fault table."""

    scenario: str
    accepted: int = 0
    lost: int = 0
    missing_webhook: int = 0
    missing_sse: int = 0
    duplicates_webhook: int = 0
    duplicates_sse: int = 0
    detection_s: float | None = None
    reschedule_s: float | None = None
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)


async def unsettled(mesh: FaultMesh, accepted: Iterable[str]) -> dict[str, str]:
    """Accepted workloads that are missing, or neither terminal, active nor queued with an explanation."""
    ids = list(accepted)
    rows = await mesh.sql("SELECT id, state, explanation FROM scheduler.workloads WHERE id = ANY($1)", ids)
    found = {r["id"]: r for r in rows}
    out: dict[str, str] = {}
    for wid in ids:
        r = found.get(wid)
        if r is None:
            out[wid] = "missing"
        elif r["state"] in TERMINAL or r["state"] in ACTIVE:
            continue
        elif r["state"] in QUEUED and r["explanation"]:
            continue
        else:
            out[wid] = str(r["state"])
    return out


async def db_now(mesh: FaultMesh) -> datetime:
    """PostgreSQL's clock, the one outbox rows are stamped with."""
    rows = await mesh.sql("SELECT now() AS now")
    now: datetime = rows[0]["now"]
    return now


async def committed_events(mesh: FaultMesh, before: datetime | None = None) -> set[str]:
    """Workload events the scheduler's outbox has published (those written by ``before``, when given)."""
    rows = await mesh.sql("SELECT event_id FROM scheduler.outbox WHERE subject LIKE 'xpumesh.events.workload.%' "
                          "AND sent_at IS NOT NULL AND created_at <= coalesce($1, 'infinity'::timestamptz)", before)
    return {r["event_id"] for r in rows}


async def unsent_events(mesh: FaultMesh, before: datetime | None = None) -> int:
    rows = await mesh.sql("SELECT count(*) AS n FROM scheduler.outbox WHERE sent_at IS NULL "
                          "AND created_at <= coalesce($1, 'infinity'::timestamptz)", before)
    return int(rows[0]["n"])


async def double_booked(mesh: FaultMesh) -> list[str]:
    rows = await mesh.sql(
        "SELECT d->>'id' AS device, sum(coalesce((d->>'share')::float, 1.0)) AS used "
        "FROM scheduler.replicas r, jsonb_array_elements(r.devices) d "
        "WHERE r.state = ANY($1) GROUP BY 1 HAVING sum(coalesce((d->>'share')::float, 1.0)) > 1.0001",
        list(ACTIVE))
    return [f"{r['device']} ({r['used']:.2f})" for r in rows]


async def unfenced(mesh: FaultMesh, prefix: str, since: float) -> list[str]:
    """Live replicas the hosts starting with ``prefix`` report, in reports made after ``since`` (epoch), that
    the scheduler has not placed there (an older report does not say what runs now)."""
    reports = [r for r in await replay_state(mesh.bus, max_skew_s=3600, timeout_s=5) if r.ts.timestamp() > since]
    rows = await mesh.sql("SELECT workload_id, replica, attempt, host_id FROM scheduler.replicas "
                          "WHERE state = ANY($1) AND host_id LIKE $2", list(ACTIVE), prefix + "%")
    placed = {(r["host_id"], r["workload_id"], r["replica"], r["attempt"]) for r in rows}
    return [f"{rep.host_id}:{r.workload_id}/{r.replica}#{r.attempt}" for rep in reports
            if rep.host_id.startswith(prefix) for r in rep.replicas
            if r.state.live and (rep.host_id, r.workload_id, r.replica, r.attempt) not in placed]


async def settle(check: Callable[[], Awaitable[object]], timeout_s: float, interval_s: float = 0.5) -> object:
    """``check`` until it returns something falsy (nothing wrong) or time runs out; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        wrong = await check()
        if not wrong or time.monotonic() > deadline:
            return wrong
        await asyncio.sleep(interval_s)


async def verify(mesh: FaultMesh, load: Load, events: EventLog, row: Row, *, timeout_s: float = 30.0) -> Row:
    """Fill ``row`` with what the invariants say once the mesh has settled (waiting up to ``timeout_s``).

    The load goes on meanwhile, so the checks hold a fixed target: the workloads accepted and the events
    written to the outbox up to now. Against everything committed at each look, some events would always be
    on their way under load, and the last look would count them missing."""
    cut = await db_now(mesh)
    accepted = list(load.accepted)
    row.accepted = len(accepted)
    bad = await settle(lambda: unsettled(mesh, accepted), timeout_s)
    assert isinstance(bad, dict)
    row.lost = sum(1 for v in bad.values() if v == "missing")
    if bad:
        row.notes.append(f"unsettled: {dict(list(bad.items())[:5])}")

    async def missing() -> tuple[set[str], set[str]] | None:
        want = await committed_events(mesh, cut)
        m = (want - set(events.webhook), want - set(events.sse))
        return m if (m[0] or m[1] or await unsent_events(mesh, cut)) else None

    gaps = await settle(missing, timeout_s)
    want = await committed_events(mesh, cut)
    row.missing_webhook = len(want - set(events.webhook))
    row.missing_sse = len(want - set(events.sse))
    row.duplicates_webhook = len(events.webhook) - len(set(events.webhook))
    row.duplicates_sse = len(events.sse) - len(set(events.sse))
    if gaps:
        row.notes.append(f"unsent outbox rows: {await unsent_events(mesh, cut)}")
    lacking = sorted(want - set(events.webhook))[:5]
    if lacking:
        rows = await mesh.sql("SELECT event_id, status, attempts, last_error, stream_seq, event_subject, "
                              "leased_until, next_attempt_at FROM gateway.deliveries "
                              "WHERE event_id = ANY($1)", lacking)
        row.notes.append(f"webhook deliveries of missing events: {[tuple(r) for r in rows]} of {lacking}")
        ahead = await mesh.sql(
            "SELECT e.event_id, e.status, e.attempts, e.stream_seq, e.leased_until, e.next_attempt_at "
            "FROM gateway.deliveries d JOIN gateway.deliveries e ON e.subscription_id = d.subscription_id "
            "AND e.event_subject = d.event_subject AND e.status = 'pending' AND e.stream_seq < d.stream_seq "
            "WHERE d.event_id = ANY($1)", lacking)
        if ahead:
            row.notes.append(f"earlier pending deliveries of their subjects: {[tuple(r) for r in ahead]}")
        sent = await mesh.sql("SELECT event_id, created_at, sent_at FROM scheduler.outbox WHERE event_id = ANY($1)",
                              lacking)
        row.notes.append(f"their outbox rows (written, published): {[tuple(r) for r in sent]}")
        with contextlib.suppress(Exception):
            for info in await mesh.bus.js.consumers_info("XPUMESH_EVENTS"):
                if (info.name or "").startswith("gw_"):
                    row.notes.append(f"consumer {info.name}: pending {info.num_pending}, unacked {info.num_ack_pending}, "
                                     f"redelivered {info.num_redelivered}, ack floor {info.ack_floor}")
        subs = await mesh.sql("SELECT s.id, s.tenant, s.status, now() AS now, (SELECT count(*) FROM gateway.deliveries d "
                              "WHERE d.status = 'pending' AND d.leased_until >= now()) AS leased, "
                              "(SELECT count(*) FROM gateway.deliveries d WHERE d.status = 'pending' "
                              "AND d.next_attempt_at <= now() AND (d.leased_until IS NULL OR d.leased_until < now())) AS due "
                              "FROM gateway.subscriptions s")
        row.notes.append(f"subscriptions (id, tenant, status, now, pending leased, pending due): {[tuple(r) for r in subs]}")
        free = await mesh.sql("SELECT event_id FROM gateway.deliveries WHERE event_id = ANY($1) "
                              "FOR UPDATE SKIP LOCKED", lacking)
        if len(free) < len(rows):
            busy = await mesh.sql("SELECT pid, application_name, state, now() - xact_start AS age, left(query, 160) "
                                  "AS query FROM pg_stat_activity WHERE state <> 'idle' AND pid <> pg_backend_pid() "
                                  "AND xact_start IS NOT NULL")
            row.notes.append(f"{len(rows) - len(free)} of them locked; open transactions: {[tuple(r) for r in busy]}")
    booked = await settle(lambda: double_booked(mesh), 5)
    if booked:
        row.notes.append(f"double-booked: {booked}")
    return row


async def host_loss(mesh: FaultMesh, prefix: str, since: float, on_hosts: set[tuple[str, int]],
                    timeout_s: float = 30.0) -> tuple[float, float | None]:
    """(Seconds from ``since`` (epoch) until the registry held every ``prefix`` host down, seconds from then
    until the last replica of ``on_hosts`` that still runs was placed on another host)."""
    since_dt = datetime.fromtimestamp(since).astimezone()

    async def downs() -> list[float] | None:
        rows = await mesh.sql("SELECT status, status_changed_at FROM registry.members "
                              "WHERE kind = 'host' AND name LIKE $1", prefix + "%")
        if not rows or any(r["status"] != "down" or r["status_changed_at"] < since_dt for r in rows):
            return None
        return [r["status_changed_at"].timestamp() for r in rows]

    deadline = time.monotonic() + timeout_s
    got = None
    while got is None and time.monotonic() < deadline:
        got = await downs()
        if got is None:
            await asyncio.sleep(0.2)
    assert got is not None, f"hosts {prefix}* not declared down within {timeout_s}s"
    down_at = max(got)
    if not on_hosts:
        return down_at - since, None

    async def moved() -> float | None:
        rows = await mesh.sql(
            "SELECT h.workload_id, h.replica, min(h.at) AS at FROM scheduler.history h "
            "JOIN scheduler.replicas r ON r.workload_id = h.workload_id AND r.replica = h.replica "
            "WHERE h.to_state = 'placed' AND h.at > $1 AND r.host_id NOT LIKE $2 "
            "GROUP BY 1, 2", since_dt, prefix + "%")
        at = {(r["workload_id"], r["replica"]): r["at"].timestamp() for r in rows}
        states = await mesh.sql("SELECT workload_id, replica, state FROM scheduler.replicas "
                                "WHERE workload_id = ANY($1)", list({w for w, _ in on_hosts}))
        gone = {(r["workload_id"], r["replica"]) for r in states if r["state"] in TERMINAL}
        todo = [k for k in on_hosts if k not in gone]
        if any(k not in at for k in todo):
            return None
        return max((at[k] for k in todo), default=down_at)

    last = None
    while last is None and time.monotonic() < deadline:
        last = await moved()
        if last is None:
            await asyncio.sleep(0.2)
    return down_at - since, (None if last is None else max(0.0, last - down_at))
