"""Subscriptions and deliveries in PostgreSQL. Functions take a session and only flush.

A delivery is pending until it succeeds, fails for good (a 410 or a ping), is dead-lettered
after the retry schedule, or is cancelled with its subscription. Within one subscription,
deliveries of the same CloudEvent subject go out in stream order: a delivery is due only
when every earlier event of the subscription is recorded (its stream sequence is at or below
the subscription's recorded floor, which the engine follows) and no earlier pending delivery
of its subject remains.

A worker leases due deliveries (``leased_until`` and a random ``lease_token``) and records an
attempt's result only under its token (``update_delivery``): once a lease expired and
another worker took the row, the first one's late result changes nothing. A tenant has at
most ``tenant_cap`` deliveries under a live lease at once, counted over every instance's
leases, so one tenant's slow targets cannot take every worker slot.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.schemas.subscriptions import (
    Delivery,
    DeliveryStatus,
    Subscription,
    SubscriptionCreate,
    SubscriptionFilters,
    SubscriptionStatus,
)
from services.gateway.orm import deliveries, subscriptions
from services.gateway.webhooks.signing import new_secret


@dataclass(frozen=True)
class SubscriptionRow:
    """A subscription as the delivery engine needs it (with its secret)."""

    id: str
    tenant: str
    scope_tenant: str | None  # the tenant its events are confined to (None: every tenant)
    url: str
    types: tuple[str, ...]
    filters: SubscriptionFilters
    secret: str
    status: SubscriptionStatus


@dataclass(frozen=True)
class DueDelivery:
    id: int
    subscription_id: str
    event_id: str
    payload: bytes
    attempts: int
    url: str
    secret: str
    lease_token: str = ""


def consumer_name(subscription_id: str) -> str:
    return f"gw_{subscription_id}"


def _public(row: Any) -> Subscription:
    return Subscription(id=row.id, tenant=row.tenant, url=row.url, types=list(row.types),
                        filters=SubscriptionFilters.model_validate(row.filters), description=row.description,
                        status=SubscriptionStatus(row.status), disabled_reason=row.disabled_reason,
                        created_at=row.created_at)


def _internal(row: Any) -> SubscriptionRow:
    return SubscriptionRow(id=row.id, tenant=row.tenant, scope_tenant=row.scope_tenant, url=row.url,
                           types=tuple(row.types), filters=SubscriptionFilters.model_validate(row.filters),
                           secret=row.secret,
                           status=SubscriptionStatus(row.status))


async def count_subscriptions(session: AsyncSession, *, tenant: str) -> int:
    return int(await session.scalar(select(func.count()).select_from(subscriptions)
                                    .where(subscriptions.c.tenant == tenant)) or 0)


async def create_subscription(session: AsyncSession, *, tenant: str, created_by: str, body: SubscriptionCreate,
                 scope_tenant: str | None) -> tuple[Subscription, str]:
    sid = "sub_" + secrets.token_hex(8)
    secret = new_secret()
    row = (await session.execute(subscriptions.insert().values(
        id=sid, tenant=tenant, created_by=created_by, url=body.url, types=body.types,
        filters=body.filters.model_dump(mode="json", exclude_none=True), scope_tenant=scope_tenant,
        description=body.description, secret=secret).returning(*subscriptions.c))).one()
    return _public(row), secret


async def read_subscription(session: AsyncSession, sid: str) -> Subscription | None:
    row = (await session.execute(select(subscriptions).where(subscriptions.c.id == sid))).one_or_none()
    return _public(row) if row is not None else None


async def read_subscription_row(session: AsyncSession, sid: str) -> SubscriptionRow | None:
    row = (await session.execute(select(subscriptions).where(subscriptions.c.id == sid))).one_or_none()
    return _internal(row) if row is not None else None


async def list_subscriptions(session: AsyncSession, *, tenant: str | None, after: str | None,
                    limit: int) -> tuple[list[Subscription], str | None]:
    q = select(subscriptions).order_by(subscriptions.c.id).limit(limit + 1)
    if tenant is not None:
        q = q.where(subscriptions.c.tenant == tenant)
    if after is not None:
        q = q.where(subscriptions.c.id > after)
    rows = (await session.execute(q)).all()
    items = [_public(r) for r in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else None)


async def list_active_subscriptions(session: AsyncSession) -> list[SubscriptionRow]:
    rows = (await session.execute(select(subscriptions).where(
        subscriptions.c.status == str(SubscriptionStatus.ACTIVE)))).all()
    return [_internal(r) for r in rows]


async def delete_subscription(session: AsyncSession, sid: str) -> bool:
    await session.execute(delete(deliveries).where(deliveries.c.subscription_id == sid))
    result = await session.execute(delete(subscriptions).where(subscriptions.c.id == sid))
    return bool(getattr(result, "rowcount", 0))


async def update_subscription_disabled(session: AsyncSession, sid: str, reason: str) -> None:
    now = datetime.now(UTC)
    await session.execute(update(subscriptions).where(subscriptions.c.id == sid).values(
        status=str(SubscriptionStatus.DISABLED), disabled_reason=reason[:256], updated_at=now))
    await session.execute(update(deliveries).where(
        deliveries.c.subscription_id == sid, deliveries.c.status == str(DeliveryStatus.PENDING)).values(
        status=str(DeliveryStatus.CANCELLED), updated_at=now, leased_until=None))


async def create_deliveries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Record accepted events (subscription_id, event_id, event_type, event_subject, stream_seq, payload); a
    redelivered event id is ignored."""
    if rows:
        await session.execute(insert(deliveries).values(rows).on_conflict_do_nothing(
            constraint="uq_deliveries_subscription_event"))


_LEASE_DUE = text("""
WITH busy AS (
  SELECT s.tenant, count(*) AS n FROM gateway.deliveries d
  JOIN gateway.subscriptions s ON s.id = d.subscription_id
  WHERE d.status = 'pending' AND d.leased_until >= now()
  GROUP BY s.tenant
), tenants AS (
  SELECT DISTINCT tenant FROM gateway.subscriptions WHERE status = 'active'
), pick AS (
  SELECT x.id, x.next_attempt_at, x.stream_seq FROM tenants t
  LEFT JOIN busy b ON b.tenant = t.tenant
  CROSS JOIN LATERAL (
    SELECT d.id, d.next_attempt_at, d.stream_seq FROM gateway.deliveries d
    JOIN gateway.subscriptions s ON s.id = d.subscription_id AND s.status = 'active' AND s.tenant = t.tenant
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.leased_until IS NULL OR d.leased_until < now())
      AND d.stream_seq <= coalesce((CAST(:floors AS jsonb) ->> d.subscription_id)::bigint, -1)
      AND NOT EXISTS (SELECT 1 FROM gateway.deliveries e
                      WHERE e.subscription_id = d.subscription_id AND e.event_subject = d.event_subject
                        AND e.status = 'pending' AND e.stream_seq < d.stream_seq)
    ORDER BY d.next_attempt_at, d.stream_seq
    LIMIT greatest(:cap - coalesce(b.n, 0), 0)
  ) x
  ORDER BY x.next_attempt_at, x.stream_seq
  LIMIT :n
), due AS (
  SELECT d.id FROM gateway.deliveries d JOIN pick p ON p.id = d.id
  WHERE d.status = 'pending' AND (d.leased_until IS NULL OR d.leased_until < now())
  FOR UPDATE OF d SKIP LOCKED
)
UPDATE gateway.deliveries AS t SET leased_until = now() + make_interval(secs => :lease),
                                   lease_token = CAST(:token AS text) || '.' || t.id::text
FROM due, gateway.subscriptions s
WHERE t.id = due.id AND s.id = t.subscription_id
RETURNING t.id, t.subscription_id, t.event_id, t.payload, t.attempts, s.url, s.secret, t.lease_token
""")


async def update_due_leases(session: AsyncSession, *, limit: int, lease_s: float, floors: dict[str, int],
                            tenant_cap: int = 1_000_000) -> list[DueDelivery]:
    """Take up to ``limit`` due deliveries for ``lease_s`` seconds (other instances skip them meanwhile), at most
    ``tenant_cap`` under live leases per tenant; each lease gets its own token. ``floors``: per subscription, the
    stream sequence up to which every event is recorded; deliveries above it (or of a subscription not in it)
    wait."""
    rows = (await session.execute(_LEASE_DUE, {"n": limit, "lease": lease_s, "cap": tenant_cap,
                                               "floors": json.dumps(floors), "token": secrets.token_hex(16)})).all()
    return [DueDelivery(r.id, r.subscription_id, r.event_id, r.payload, r.attempts, r.url, r.secret, r.lease_token)
            for r in rows]


async def update_delivery(session: AsyncSession, delivery_id: int, *, status: DeliveryStatus, attempts: int,
                 code: int | None, error: str | None, next_attempt_at: datetime | None = None,
                 lease_token: str | None = None) -> bool:
    """Record an attempt's result and end its lease. With ``lease_token``, only while the row is pending under
    that lease (False: the lease was lost to another worker, nothing changed)."""
    values: dict[str, Any] = {"status": str(status), "attempts": attempts, "last_status_code": code,
                              "last_error": (error or None) and error[:256], "leased_until": None,
                              "lease_token": None, "updated_at": datetime.now(UTC)}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    q = update(deliveries).where(deliveries.c.id == delivery_id)
    if lease_token is not None:
        q = q.where(deliveries.c.lease_token == lease_token, deliveries.c.status == str(DeliveryStatus.PENDING))
    result = await session.execute(q.values(**values))
    return bool(getattr(result, "rowcount", 0))


async def create_ping_delivery(session: AsyncSession, *, subscription_id: str, event_id: str, event_type: str,
                   payload: bytes) -> int:
    row = (await session.execute(insert(deliveries).values(
        subscription_id=subscription_id, event_id=event_id, event_type=event_type, event_subject="", stream_seq=0,
        payload=payload, status=str(DeliveryStatus.PENDING),
        leased_until=datetime.now(UTC) + timedelta(minutes=5)).returning(deliveries.c.id))).one()
    return int(row.id)


def _delivery(row: Any) -> Delivery:
    return Delivery(id=row.id, event_id=row.event_id, event_type=row.event_type, status=DeliveryStatus(row.status),
                    attempts=row.attempts,
                    next_attempt_at=row.next_attempt_at if row.status == str(DeliveryStatus.PENDING) else None,
                    last_status_code=row.last_status_code, last_error=row.last_error, created_at=row.created_at,
                    updated_at=row.updated_at)


async def read_delivery(session: AsyncSession, delivery_id: int) -> Delivery:
    row = (await session.execute(select(deliveries).where(deliveries.c.id == delivery_id))).one()
    return _delivery(row)


async def list_deliveries(session: AsyncSession, sid: str, *, status: DeliveryStatus | None, before: int | None,
                          limit: int) -> tuple[list[Delivery], int | None]:
    """Newest first."""
    q = select(deliveries).where(deliveries.c.subscription_id == sid).order_by(deliveries.c.id.desc()).limit(limit + 1)
    if status is not None:
        q = q.where(deliveries.c.status == str(status))
    if before is not None:
        q = q.where(deliveries.c.id < before)
    rows = (await session.execute(q)).all()
    items = [_delivery(r) for r in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else None)


async def delete_finished_deliveries(session: AsyncSession, keep: timedelta) -> None:
    await session.execute(delete(deliveries).where(
        deliveries.c.status != str(DeliveryStatus.PENDING), deliveries.c.updated_at < datetime.now(UTC) - keep))
