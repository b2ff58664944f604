"""Every database function of the registry (SQLAlchemy sessions; the caller owns the transaction).

PostgreSQL keeps the record of members; the liveness table in memory (``liveness.Table``) is
the truth while the registry runs, and is read back from here at start.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db.outbox import enqueue
from libs.events import CloudEvent
from libs.schemas.registry import Member
from services.registry.liveness import Transition
from services.registry.orm import members, outbox

_UPDATED = ("name", "site", "version", "status", "interval_s", "address", "meta", "last_seen", "status_changed_at")
UPDATE_LAST_SEEN = text(
    "UPDATE registry.members AS m SET last_seen = v.ts FROM "
    "(SELECT unnest(CAST(:ids AS text[])) AS id, unnest(CAST(:ts AS timestamptz[])) AS ts) AS v "
    "WHERE m.id = v.id AND v.ts > m.last_seen")


async def list_members(session: AsyncSession) -> list[Member]:
    return [Member.model_validate(dict(row)) for row in (await session.execute(select(members))).mappings()]


async def update_members(session: AsyncSession, transitions: Sequence[Transition]) -> None:
    """Upsert the members of ``transitions`` (the latest of each) and enqueue their up/down events."""
    if not transitions:
        return
    latest = {t.member.id: t.member for t in transitions}
    stmt = insert(members).values([m.model_dump(mode="python") for m in latest.values()])
    await session.execute(stmt.on_conflict_do_update(index_elements=[members.c.id],
                                                     set_={c: stmt.excluded[c] for c in _UPDATED}))
    for t in transitions:
        if t.event_type:
            m = t.member
            event = CloudEvent.new(t.event_type, "/registry", {
                "id": m.id, "kind": m.kind, "name": m.name, "site": m.site, "version": m.version,
                "status": m.status, "last_seen": m.last_seen.isoformat()}, subject=m.id)
            await enqueue(session, outbox, event, site=m.site)


async def update_last_seen(session: AsyncSession, touched: Sequence[Member]) -> None:
    """Last-seen times of members that only heartbeated; an older time never replaces a newer one."""
    if touched:
        await session.execute(UPDATE_LAST_SEEN, {"ids": [m.id for m in touched], "ts": [m.last_seen for m in touched]})
