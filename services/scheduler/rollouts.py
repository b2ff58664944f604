"""Rolling updates of services: a new version takes over from the running one without a failed request.

``PATCH /v1/workloads/{id}`` with a changed spec submits a new service that ``replaces`` the
running one (same name, so both sit behind one endpoint and the gateways pool their ready
replicas). Every ``scheduler.rollout_interval_s`` each such pair is looked at: once every replica
of the new service is in rotation, the old one starts draining (its set is published empty, so
the gateways stop sending it requests, while its replicas still run); after
``scheduler.rollout_drain_s`` it is stopped. If the new service fails or is stopped, the old one
simply keeps serving; stopping the old one by hand ends the rollout.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from libs.config import SchedulerSettings
from services.scheduler import endpoints, lifecycle, store

log = logging.getLogger(__name__)


async def advance(session: AsyncSession, s: SchedulerSettings) -> int:
    """One look at every rollout in progress; returns outbox rows added."""
    now = lifecycle.utcnow()
    changed = []
    for new_id, old_id in await store.list_rollouts(session):
        found = await store.read_workloads(session, [new_id, old_id])
        new, old = found.get(new_id), found.get(old_id)
        if new is None or old is None or old.state.terminal:
            continue
        if len(endpoints.in_rotation(new)) < new.spec.replicas:
            continue
        if old.draining_since is None:
            log.info("rollout: %s is ready; %s leaves rotation", new.id, old.id)
            old.draining_since, old.dirty = now, True
            changed.append(old)
        elif (now - old.draining_since).total_seconds() >= s.rollout_drain_s:
            log.info("rollout: %s drained; stopping it", old.id)
            lifecycle.stop(old, f"replaced by {new.id} (rolling update)", now, s.command_ttl_s)
            changed.append(old)
    return await store.update_workloads(session, changed, now) if changed else 0
