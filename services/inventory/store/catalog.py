"""Database functions of the device-model catalog and the compatibility rules (the store's verbs).

Seeded from ``libs/catalog`` at prestart, edited by operators. Each instance keeps the models
in memory (``state.Catalog``) and reads them again after an edit and every
``inventory.catalog_refresh_s``. Apart from ``store`` (reported hosts and devices) for size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import and_, func, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.schemas.catalog import CompatRule, DeviceModel, RuntimeDriverRule
from libs.schemas.inventory import CatalogEntry, CatalogPage, CatalogQuery, RuleKind, RuleQuery, RuleSet
from services.inventory.orm import catalog, devices, rules


def _entry(row: Any) -> CatalogEntry:
    return CatalogEntry.model_validate({**row.data, "origin": row.origin, "updated_at": row.updated_at})


async def list_models(session: AsyncSession) -> list[DeviceModel]:
    rows = (await session.execute(select(catalog.c.data))).scalars().all()
    return [DeviceModel.model_validate(data) for data in rows]


async def update_seed(session: AsyncSession, models: Sequence[DeviceModel], compat: Sequence[CompatRule],
                      driver: Sequence[RuntimeDriverRule]) -> None:
    """Idempotent: insert new seed entries, refresh changed ones, never touch operator edits."""
    if models:
        stmt = insert(catalog).values([{"vendor": m.vendor, "model": m.model, "hardware_type": m.hardware_type.value,
                                        "data": m.model_dump(mode="json"), "origin": "seed"} for m in models])
        await session.execute(stmt.on_conflict_do_update(
            index_elements=[catalog.c.vendor, catalog.c.model],
            set_={"data": stmt.excluded.data, "hardware_type": stmt.excluded.hardware_type, "updated_at": func.now()},
            where=and_(catalog.c.origin == "seed", catalog.c.data != stmt.excluded.data)))
    rows = [{"kind": RuleKind.COMPAT.value, "id": r.id, "vendor": r.vendor, "data": r.model_dump(mode="json")}
            for r in compat]
    rows += [{"kind": RuleKind.DRIVER.value, "id": r.id, "vendor": r.vendor, "data": r.model_dump(mode="json")}
             for r in driver]
    if rows:
        rstmt = insert(rules).values([{**r, "origin": "seed"} for r in rows])
        await session.execute(rstmt.on_conflict_do_update(
            index_elements=[rules.c.kind, rules.c.id],
            set_={"data": rstmt.excluded.data, "vendor": rstmt.excluded.vendor, "updated_at": func.now()},
            where=and_(rules.c.origin == "seed", rules.c.data != rstmt.excluded.data)))


async def list_entries(session: AsyncSession, q: CatalogQuery) -> CatalogPage:
    stmt = select(catalog).order_by(catalog.c.vendor, catalog.c.model).limit(q.limit + 1)
    if q.vendor:
        stmt = stmt.where(catalog.c.vendor == q.vendor.lower())
    if q.hardware_type:
        stmt = stmt.where(catalog.c.hardware_type == q.hardware_type)
    if q.after:
        vendor, _, model = q.after.partition("/")
        stmt = stmt.where(or_(catalog.c.vendor > vendor, and_(catalog.c.vendor == vendor, catalog.c.model > model)))
    rows = (await session.execute(stmt)).all()
    items = [_entry(r) for r in rows[: q.limit]]
    more = len(rows) > q.limit
    return CatalogPage(items=items, next_cursor=f"{items[-1].vendor}/{items[-1].model}" if more else None)


async def read_entry(session: AsyncSession, vendor: str, model: str) -> CatalogEntry | None:
    row = (await session.execute(select(catalog).where(catalog.c.vendor == vendor.lower(),
                                                       catalog.c.model == model))).first()
    return _entry(row) if row else None


async def update_entry(session: AsyncSession, model: DeviceModel) -> bool:
    """Create or replace an entry as an operator edit; True when it was created."""
    stmt = insert(catalog).values(vendor=model.vendor, model=model.model, hardware_type=model.hardware_type.value,
                                  data=model.model_dump(mode="json"), origin="operator")
    upsert = stmt.on_conflict_do_update(
        index_elements=[catalog.c.vendor, catalog.c.model],
        set_={"data": stmt.excluded.data, "hardware_type": stmt.excluded.hardware_type, "origin": "operator",
              "updated_at": func.now()}).returning(_created())
    return bool((await session.execute(upsert)).scalar_one())


def _created() -> Any:
    # xmax is 0 for a freshly inserted row and non-zero for one updated by ON CONFLICT.
    return literal_column("(xmax = 0)")


async def list_rules(session: AsyncSession, q: RuleQuery) -> RuleSet:
    stmt = select(rules.c.kind, rules.c.data).order_by(rules.c.kind, rules.c.id)
    if q.kind:
        stmt = stmt.where(rules.c.kind == q.kind.value)
    if q.vendor:
        stmt = stmt.where(rules.c.vendor == q.vendor.lower())
    out = RuleSet()
    for kind, data in (await session.execute(stmt)).all():
        if kind == RuleKind.COMPAT.value:
            out.compat.append(CompatRule.model_validate(data))
        else:
            out.driver.append(RuntimeDriverRule.model_validate(data))
    return out


async def update_rule(session: AsyncSession, rule: CompatRule | RuntimeDriverRule) -> bool:
    kind = RuleKind.COMPAT if isinstance(rule, CompatRule) else RuleKind.DRIVER
    stmt = insert(rules).values(kind=kind.value, id=rule.id, vendor=rule.vendor, data=rule.model_dump(mode="json"),
                                origin="operator")
    upsert = stmt.on_conflict_do_update(
        index_elements=[rules.c.kind, rules.c.id],
        set_={"data": stmt.excluded.data, "vendor": stmt.excluded.vendor, "origin": "operator",
              "updated_at": func.now()}).returning(_created())
    return bool((await session.execute(upsert)).scalar_one())


async def update_device_matches(session: AsyncSession, vendor: str,
                                match: Callable[[str, str], DeviceModel | None]) -> int:
    """After a catalog edit: match every reported model of the vendor again; returns rows changed."""
    names = (await session.execute(select(devices.c.model).where(devices.c.vendor == vendor).distinct())).scalars()
    changed = 0
    for name in list(names):
        found = match(vendor, name)
        result = await session.execute(
            update(devices).where(devices.c.vendor == vendor, devices.c.model == name,
                                  or_(devices.c.catalog_model.is_distinct_from(found.model if found else None),
                                      devices.c.compute_units.is_distinct_from(found.device_compute_units if found else None)))
            .values(catalog_model=found.model if found else None,
                    compute_units=found.device_compute_units if found else None))
        changed += result.rowcount  # type: ignore[attr-defined]
    return changed
