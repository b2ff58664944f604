"""The registry's liveness table: every member in memory, and the writes waiting for PostgreSQL.

Heartbeats only touch this table. A heartbeat that brings a member up (or back), or changes
what the member says about itself, queues a ``Transition``; one that changes nothing marks
the member dirty (its last-seen time is written in the next batch). ``sweep`` marks members
down that missed too many of their own intervals.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from libs.events import EventTypes
from libs.schemas.registry import Heartbeat, Member, MemberKind, MemberQuery, MemberStatus


@dataclass
class Live:
    """One member's liveness, kept in memory."""

    member: Member
    seen_mono: float
    dirty: bool = False


@dataclass
class Transition:
    """A member to write; ``event_type`` is the up/down event it implies (None: its details changed)."""

    member: Member
    event_type: str | None


@dataclass
class Table:
    """All members by id, plus what is waiting to be written."""

    live: dict[str, Live] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)

    @classmethod
    def of(cls, members: Iterable[Member]) -> Table:
        """The table read back at start: every member gets a fresh grace period from now, so that a
        registry restart does not declare the whole fleet down."""
        mono = time.monotonic()
        return cls(live={m.id: Live(m, mono) for m in members})

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
        """The transitions waiting, and (with ``include_touched``) the members only heartbeating since the last take."""
        transitions, self.transitions = self.transitions, []
        touched: list[Member] = []
        for live in self.live.values() if include_touched else ():
            if live.dirty:
                live.dirty = False
                touched.append(live.member)
        return transitions, touched

    def put_back(self, transitions: list[Transition], touched: list[Member]) -> None:
        """Writes taken but not stored: they wait again, ahead of anything queued since."""
        self.transitions[:0] = transitions
        for m in touched:
            self.live[m.id].dirty = True

    def query(self, q: MemberQuery) -> tuple[list[Member], str | None]:
        items = sorted((lv.member for lv in self.live.values()
                        if (q.kind is None or lv.member.kind == q.kind)
                        and (q.status is None or lv.member.status == q.status)
                        and (q.site is None or lv.member.site == q.site)
                        and (q.name is None or lv.member.name == q.name)
                        and (q.after is None or lv.member.id > q.after)), key=lambda m: m.id)
        page = items[: q.limit]
        return page, (page[-1].id if len(items) > q.limit else None)
