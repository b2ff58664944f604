"""Desired (the replicas rows) against actual (agents' state reports), per host.

For every replica the scheduler wants on a host:

* the agent reports its attempt → its state follows the report (starting, running, exited);
* the agent's report is newer than the last send and does not show it → the launch was lost
  (or the agent restarted before running it): send it again once ``resend_after_s`` passed;
* it was starting or running and a newer report does not show it → it is gone from the host:
  lost, and rescheduled per the restart policy.

Whatever an agent runs that nobody wants (an older attempt, a stopped or rescheduled
workload, work adopted after a restart that moved elsewhere meanwhile) gets a stop,
repeated every ``orphan_stop_interval_s`` while it runs; what still runs and is wanted is
simply adopted. A report only testifies about changes that happened before it was made,
so stale reports (after a restart, or delayed) never undo newer knowledge.

``lose_replicas`` is the other way work leaves a host: the host went down, or one of its
devices turned unhealthy or left. It locks every workload one transaction's losses touch in a
single read, in id order (as every other writer of workloads does), so a transaction that
loses work on several hosts cannot deadlock with the placer or another loss.

``replay_state`` reads every host's latest state report back from ``XPUMESH_HOSTS`` when the
scheduler starts (reports live only in memory), so a restarted scheduler knows at once what
agents run, unwanted work and the devices it holds included, instead of after their next
periodic report.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncSession

from libs.bus import subjects
from libs.bus.connection import STREAM_HOSTS, Bus
from libs.bus.consumer import Batch, PullConsumer, envelope
from libs.bus.outcomes import each_valid
from libs.config import SchedulerSettings
from libs.events import CloudEvent
from libs.schemas.commands import ActualStateReport, ReplicaReport, StopCommand, command_id
from libs.schemas.hostevents import ReportBounds
from services.scheduler import lifecycle, store
from services.scheduler.lifecycle import Replica, Workload

log = logging.getLogger(__name__)
Key = tuple[str, int, int]  # workload, replica, attempt


class Actual:
    """The latest state report per host, and stop rate limits for unwanted work."""

    def __init__(self, max_hosts: int = 1_000_000) -> None:
        self.reports: dict[str, ActualStateReport] = {}
        self.stops_sent: dict[tuple[str, str, int, int], float] = {}
        self.max_hosts = max_hosts

    def newer(self, report: ActualStateReport, than: ActualStateReport | None = None) -> bool:
        """Whether a report is newer than the host's known one (or ``than``) and there is room for it."""
        cur = than or self.reports.get(report.host_id)
        if cur is not None:
            return report.seq > cur.seq if report.boot_id == cur.boot_id else report.ts > cur.ts
        return len(self.reports) < self.max_hosts

    def fresh(self, reports: Iterable[ActualStateReport]) -> dict[str, ActualStateReport]:
        """The newest of these reports per host, where newer than the known one (not kept yet: ``keep``
        them once what they imply is committed, so a failed write leaves them to be reconciled again)."""
        out: dict[str, ActualStateReport] = {}
        for rep in reports:
            if self.newer(rep) and (rep.host_id not in out or self.newer(rep, out[rep.host_id])):
                out[rep.host_id] = rep
        return out

    def keep(self, reports: dict[str, ActualStateReport]) -> None:
        self.reports.update(reports)

    def orphans(self, desired: set[Key]) -> list[tuple[str, ReplicaReport]]:
        out = []
        for host_id, rep in self.reports.items():
            for r in rep.replicas:
                if r.state.live and (r.workload_id, r.replica, r.attempt) not in desired:
                    out.append((host_id, r))
        return out

    def stop_due(self, host_id: str, r: ReplicaReport, interval_s: float) -> bool:
        key = (host_id, r.workload_id, r.replica, r.attempt)
        now = time.monotonic()
        last = self.stops_sent.get(key)
        if last is not None and now - last < interval_s:
            return False
        self.stops_sent[key] = now
        if len(self.stops_sent) > 100_000:  # bounded: forget the oldest half
            for k in list(self.stops_sent)[: len(self.stops_sent) // 2]:
                del self.stops_sent[k]
        return True


def _report_index(report: ActualStateReport) -> dict[Key, ReplicaReport]:
    return {(r.workload_id, r.replica, r.attempt): r for r in report.replicas}


def _needs_look(row: Any, seen: ReplicaReport | None, report: ActualStateReport, now: datetime,
                resend_after_s: float) -> bool:
    if seen is not None:
        if (seen.ready, seen.endpoint, seen.simulated) != (row.ready, row.endpoint, row.simulated):
            return True  # a service replica came into or left rotation
        return {"placed": "", "starting": "starting", "running": "running"}.get(row.state) != seen.state.value
    if row.updated_at is not None and report.ts <= row.updated_at:
        return False  # the report predates the last change: it cannot tell
    if row.state == "placed":
        sent = row.sent_at or row.updated_at
        return sent is None or (report.ts > sent and (now - sent).total_seconds() >= resend_after_s)
    return True


def _apply(wl: Workload, r: Replica, report: ActualStateReport, now: datetime, resend_after_s: float,
           ttl_s: float) -> None:
    seen = _report_index(report).get((wl.id, r.replica, r.attempt))
    if seen is not None:
        lifecycle.observe(wl, r, seen, now, ttl_s)
        return
    if r.updated_at is not None and report.ts <= r.updated_at:
        return
    if r.state == "placed":
        sent = r.sent_at or r.updated_at
        if sent is None or (report.ts > sent and (now - sent).total_seconds() >= resend_after_s):
            log.info("launch of %s/%d attempt %d not seen on %s; sending it again", wl.id, r.replica, r.attempt,
                     r.host_id)
            lifecycle.resend_launch(wl, r, now, ttl_s)
        return
    lifecycle.lose(wl, [r], f"host {r.host_id} no longer runs replica {r.replica}", now, ttl_s)


async def reconcile_hosts(session: AsyncSession, reports: Mapping[str, ActualStateReport], *, resend_after_s: float,
                          ttl_s: float) -> tuple[int, list[tuple[str, ReplicaReport]]]:
    """Bring desired and actual (the hosts' ``reports``) together. Returns (outbox rows added, unwanted live
    work)."""
    host_ids = sorted(reports)
    if not host_ids:
        return 0, []
    now = lifecycle.utcnow()
    rows = await store.list_active_replicas(session, host_ids)
    desired: dict[str, set[Key]] = {}
    look: set[str] = set()
    for row in rows:
        report = reports[row.host_id]
        desired.setdefault(row.host_id, set()).add((row.workload_id, row.replica, row.attempt))
        seen = _report_index(report).get((row.workload_id, row.replica, row.attempt))
        if _needs_look(row, seen, report, now, resend_after_s):
            look.add(row.workload_id)
    added = 0
    if look:
        wls = await store.read_workloads(session, look)
        for wl in wls.values():
            for r in wl.replicas:
                seen_by = reports.get(r.host_id or "")
                if r.active and seen_by is not None:
                    _apply(wl, r, seen_by, now, resend_after_s, ttl_s)
        added = await store.update_workloads(
            session, [wl for wl in wls.values() if wl.dirty or wl.history or wl.commands or wl.events], now)
    unwanted = []
    for host_id in host_ids:
        mine = desired.get(host_id, set())
        for rep in reports[host_id].replicas:
            if rep.state.live and (rep.workload_id, rep.replica, rep.attempt) not in mine:
                unwanted.append((host_id, rep))
    return added, unwanted


async def stop_unwanted(bus: Bus, actual: Actual, unwanted: list[tuple[str, ReplicaReport]],
                        s: SchedulerSettings) -> None:
    """Tell agents to stop work nobody wants, at most every ``orphan_stop_interval_s`` per replica attempt.
    Sent directly, not through the outbox: a stop that is lost is sent again after the next report."""
    now = lifecycle.utcnow()
    for host_id, rep in unwanted:
        if not actual.stop_due(host_id, rep, s.orphan_stop_interval_s):
            continue
        site = actual.reports[host_id].site
        cmd = StopCommand(command_id=command_id("stop", rep.workload_id, rep.replica, rep.attempt,
                                                int(now.timestamp() * 1000)),
                          host_id=host_id, site=site, workload_id=rep.workload_id, replica=rep.replica,
                          attempt=rep.attempt, reason="not wanted by the scheduler", issued_at=now,
                          expires_at=now + timedelta(seconds=s.command_ttl_s))
        try:
            await bus.publish_event(lifecycle.command_event(cmd), subject=subjects.agent_command_subject(site, host_id))
            log.info("stopping unwanted %s/%d attempt %d on %s", rep.workload_id, rep.replica, rep.attempt, host_id)
        except Exception as exc:  # the next report repeats it
            log.warning("stop for unwanted work on %s not sent: %s", host_id, type(exc).__name__)


@dataclass(frozen=True)
class Loss:
    """Work to move off a host (``device`` None: the whole host), and why."""

    host_id: str
    reason: str
    device: str | None = None

    def hits(self, host_id: str | None, devices: Iterable[Mapping[str, Any]]) -> bool:
        return host_id == self.host_id and (self.device is None or any(d["id"] == self.device for d in devices))


async def lose_replicas(session: AsyncSession, losses: Sequence[Loss], *, ttl_s: float) -> tuple[int, int]:
    """Replicas on lost hosts or devices: lost, then rescheduled or failed per restart policy, one loss after
    the other. The workloads hit are locked in one read (id order) rather than a read per loss, whose locks
    together would come in no order. Returns (outbox rows added, workloads that lost replicas)."""
    if not losses:
        return 0, 0
    now = lifecycle.utcnow()
    rows = await store.list_active_replicas(session, sorted({x.host_id for x in losses}))
    wls = await store.read_workloads(session, {r.workload_id for r in rows
                                               if any(x.hits(r.host_id, r.devices) for x in losses)})
    for loss in losses:
        for wl in wls.values():
            lifecycle.lose(wl, [r for r in wl.replicas if r.active and loss.hits(r.host_id, r.devices)], loss.reason,
                           now, ttl_s)
    return await store.update_workloads(session, wls.values(), now), len(wls)


async def replay_state(bus: Bus, *, max_skew_s: float, timeout_s: float) -> list[ActualStateReport]:
    """Every host's latest state report in ``XPUMESH_HOSTS`` (read by an ephemeral consumer, last per subject);
    what arrived within ``timeout_s`` when the stream is slow."""
    name = "scheduler_replay_" + secrets.token_hex(6)
    config = ConsumerConfig(name=name, ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                            filter_subject=subjects.HOST_STATE_ALL, inactive_threshold=30.0, mem_storage=True,
                            num_replicas=1)
    info = await bus.js.add_consumer(STREAM_HOSTS, config)
    reports: list[ActualStateReport] = []
    if not info.num_pending:
        await bus.js.delete_consumer(STREAM_HOSTS, name)
        return reports
    bounds = ReportBounds(max_skew_s).context()

    async def take(batch: Batch[CloudEvent]) -> None:
        reports.extend(rep for _, rep in each_valid(batch.items, ActualStateReport, service="scheduler",
                                                    handler="replay_state", context=bounds))

    consumer = PullConsumer(bus, stream=STREAM_HOSTS, durable=name, handle=take, decode=envelope,
                            service="scheduler", name="replay_state", batch=1024, dedupe=0)
    await consumer.start()
    run = asyncio.create_task(consumer.run(), name="replay_state")
    try:
        deadline = time.monotonic() + timeout_s
        # polled: malformed messages count as received but never reach the handler, which could not say
        while consumer.stats.received < info.num_pending and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if consumer.stats.received < info.num_pending:
            log.warning("state reports read back: %d of %d within %.0f s", consumer.stats.received,
                        info.num_pending, timeout_s)
    finally:
        await consumer.stop()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        try:
            await bus.js.delete_consumer(STREAM_HOSTS, name)
        except Exception as exc:  # it goes by itself after 30 s idle
            log.debug("replay consumer not deleted: %s", type(exc).__name__)
    return reports
