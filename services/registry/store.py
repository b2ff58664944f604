"""Registry state: a liveness table in memory, the record in PostgreSQL.

Heartbeats only touch memory; a writer flushes status transitions (with their events,
through the outbox, in one transaction) at once and last-seen times in batches. At start
the table is read back from PostgreSQL, and members that were up get a fresh grace period
so that a registry restart does not declare the whole fleet down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.db.outbox import enqueue
from libs.events import CloudEvent, EventTypes
from libs.schemas.registry import Heartbeat, Member, MemberKind, MemberQuery, MemberStatus
from services.registry.orm import members, outbox


@dataclass
class Live:
    """One member's liveness, kept in memory."""

    member: Member
    seen_mono: float
    dirty: bool = False


@dataclass
class Transition:
    member: Member
    event_type: str | None


@dataclass
class Table:
    """All members by id, plus what is waiting to be written."""

    live: dict[str, Live] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)

    def heartbeat(self, hb: Heartbeat, now: datetime | None = None) -> Transition | None:
        now = now or datetime.now(UTC)
        mono = time.monotonic()
        cur = self.live.get(hb.id)
        if cur is None:
            m = Member(kind=hb.kind, id=hb.id, name=hb.name, site=hb.site, version=hb.version, status=MemberStatus.UP,
                       interval_s=hb.interval_s, address=hb.address, meta=hb.meta, first_seen=now, last_seen=now,
                       status_changed_at=now)
            self.live[hb.id] = Live(m, mono)
            return self._transition(m, up=True)
        m = cur.member
        changed = (m.name, m.site, m.version, m.interval_s, m.address, m.meta) != (
            hb.name, hb.site, hb.version, hb.interval_s, hb.address, hb.meta)
        came_back = m.status == MemberStatus.DOWN
        cur.member = m = m.model_copy(update={
            "name": hb.name, "site": hb.site, "version": hb.version, "interval_s": hb.interval_s,
            "address": hb.address, "meta": hb.meta, "last_seen": now,
            **({"status": MemberStatus.UP, "status_changed_at": now} if came_back else {})})
        cur.seen_mono = mono
        if came_back:
            return self._transition(m, up=True)
        if changed:
            t = Transition(m, None)
            self.transitions.append(t)
            return t
        cur.dirty = True
        return None

    def _transition(self, m: Member, *, up: bool) -> Transition:
        if m.kind == MemberKind.HOST:
            etype = EventTypes.HOST_UP if up else EventTypes.HOST_DOWN
        else:
            etype = EventTypes.SERVICE_UP if up else EventTypes.SERVICE_DOWN
        t = Transition(m, etype)
        self.transitions.append(t)
        return t

    def sweep(self, missed: int, now_mono: float | None = None) -> list[Transition]:
        """Mark down every up member silent for more than ``missed`` of its own intervals."""
        now_mono = now_mono or time.monotonic()
        now = datetime.now(UTC)
        out = []
        for live in self.live.values():
            m = live.member
            if m.status == MemberStatus.UP and now_mono - live.seen_mono > missed * m.interval_s:
                live.member = m.model_copy(update={"status": MemberStatus.DOWN, "status_changed_at": now})
                out.append(self._transition(live.member, up=False))
        return out

    def take_writes(self, *, include_touched: bool = True) -> tuple[list[Transition], list[Member]]:
        transitions, self.transitions = self.transitions, []
        touched: list[Member] = []
        for live in self.live.values() if include_touched else ():
            if live.dirty:
                live.dirty = False
                touched.append(live.member)
        return transitions, touched

    def query(self, q: MemberQuery) -> tuple[list[Member], str | None]:
        items = sorted((lv.member for lv in self.live.values()
                        if (q.kind is None or lv.member.kind == q.kind)
                        and (q.status is None or lv.member.status == q.status)
                        and (q.site is None or lv.member.site == q.site)
                        and (q.name is None or lv.member.name == q.name)
                        and (q.after is None or lv.member.id > q.after)), key=lambda m: m.id)
        page = items[: q.limit]
        return page, (page[-1].id if len(items) > q.limit else None)


def _row(m: Member) -> dict[str, object]:
    return m.model_dump(mode="python")


async def write(session: AsyncSession, transitions: list[Transition], touched: list[Member]) -> None:
    """Persist transitions (upsert + outbox event) and last-seen times; the caller commits."""
    if transitions:
        latest = {t.member.id: t.member for t in transitions}
        stmt = insert(members).values([_row(m) for m in latest.values()])
        stmt = stmt.on_conflict_do_update(index_elements=[members.c.id], set_={
            c: stmt.excluded[c] for c in ("name", "site", "version", "status", "interval_s", "address", "meta",
                                          "last_seen", "status_changed_at")})
        await session.execute(stmt)
        for t in transitions:
            if t.event_type:
                m = t.member
                event = CloudEvent.new(t.event_type, "/registry", {
                    "id": m.id, "kind": m.kind, "name": m.name, "site": m.site, "version": m.version,
                    "status": m.status, "last_seen": m.last_seen.isoformat()}, subject=m.id)
                await enqueue(session, outbox, event, site=m.site)
    if touched:
        await session.execute(
            text("UPDATE registry.members AS m SET last_seen = v.ts FROM "
                 "(SELECT unnest(CAST(:ids AS text[])) AS id, unnest(CAST(:ts AS timestamptz[])) AS ts) AS v "
                 "WHERE m.id = v.id AND v.ts > m.last_seen"),
            {"ids": [m.id for m in touched], "ts": [m.last_seen for m in touched]})


async def load(session: AsyncSession) -> Table:
    """Read every member back; up members get a fresh grace period from now."""
    table = Table()
    mono = time.monotonic()
    for row in (await session.execute(select(members))).mappings():
        m = Member.model_validate(dict(row))
        table.live[m.id] = Live(m, mono)
    return table
