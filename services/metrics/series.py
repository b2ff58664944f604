"""Time series for a device, host, site or hardware type over a window, at a step.

Resolution follows the step: raw samples for a device at steps under a minute (short
windows only), 1-minute rollups under an hour, 1-hour rollups above. Minutes not yet
written (open, or being written) are merged in from memory, so a series is current.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np

from libs.bus.errors import InvalidRequest, NotFound
from libs.config import MetricsSettings
from libs.schemas.metrics import Scope, Series, SeriesPoint, SeriesQuery
from services.metrics import store
from services.metrics.fleet import Fleet
from services.metrics.rollups import (
    SCOPE_DEVICE,
    SCOPE_HOST,
    SCOPE_HW,
    SCOPE_SITE,
    SCOPE_SITE_HW,
    Agg,
    Rollups,
)


def resolve(req: SeriesQuery, fleet: Fleet) -> tuple[int, str, np.ndarray]:
    """(rollup scope, rollup key, device ids) of a query; NotFound when the key is unknown."""
    n = fleet.cap
    if req.scope == Scope.DEVICE:
        dev = fleet.by_key.get(req.key)
        if dev is None:
            raise NotFound(f"no device {req.key!r} (expected '<host>/<slot>')")
        return SCOPE_DEVICE, str(dev), np.array([dev], dtype=np.int64)
    if req.scope == Scope.HOST:
        h = fleet.hosts.get(req.key)
        if h is None:
            raise NotFound(f"no host {req.key!r}")
        return SCOPE_HOST, h.host_id, np.array(sorted(h.slots.values()), dtype=np.int64)
    if req.scope == Scope.SITE:
        si = fleet.sites.index.get(req.key)
        if si is None:
            raise NotFound(f"no site {req.key!r}")
        return SCOPE_SITE, req.key, np.flatnonzero(fleet.present[:n] & (fleet.site_idx[:n] == si))
    wi = fleet.hw.index.get(req.key)
    if wi is None:
        raise NotFound(f"no hardware type {req.key!r} in the fleet")
    mask = fleet.present[:n] & (fleet.hw_idx[:n] == wi)
    if req.site is None:
        return SCOPE_HW, req.key, np.flatnonzero(mask)
    si = fleet.sites.index.get(req.site)
    if si is None:
        raise NotFound(f"no site {req.site!r}")
    return SCOPE_SITE_HW, f"{req.site}/{req.key}", np.flatnonzero(mask & (fleet.site_idx[:n] == si))


def _point(t: float, a: Agg) -> SeriesPoint:
    n = max(a.n, 1)
    return SeriesPoint(t=datetime.fromtimestamp(t, UTC), samples=a.n, util_avg=round(a.util_sum / n, 2),
                       util_max=round(a.util_max, 2), mem_used_avg_mib=round(a.mem_sum / n, 1),
                       temp_avg_c=round(a.temp_sum / n, 2), temp_max_c=round(a.temp_max, 2),
                       power_avg_w=round(a.power_sum / n, 2), unhealthy_samples=a.unhealthy)


async def query(req: SeriesQuery, fleet: Fleet, rollups: Rollups, pool: asyncpg.Pool, settings: MetricsSettings,
                lock: asyncio.Lock) -> Series:
    start, end = req.start.astimezone(UTC), req.end.astimezone(UTC)
    window = (end - start).total_seconds()
    if math.ceil(window / req.step_s) > settings.series_max_points:
        raise InvalidRequest(f"window / step gives more than {settings.series_max_points} points; use a larger step",
                             errors=[{"loc": "step_s", "msg": "too many points"}])
    scope, key, dev_ids = resolve(req, fleet)
    raw = req.scope == Scope.DEVICE and req.step_s < 60 and window <= settings.raw_series_max_s
    resolution = "raw" if raw else ("1m" if req.step_s < 3600 else "1h")
    bins: dict[float, Agg] = {}
    lo = start if resolution != "1h" else start - timedelta(seconds=start.timestamp() % 3600)
    async with lock:
        async with pool.acquire() as conn:
            if raw:
                rows = await store.list_raw_series_rows(conn, int(dev_ids[0]), start, end, req.step_s)
            else:
                rows = await store.list_series_rows(conn, "rollup_1m" if resolution == "1m" else "rollup_1h",
                                                    scope, key, lo, end, req.step_s)
        for r in rows:
            bins[float(r["t"])] = Agg(int(r["n"]), float(r["util_sum"]), float(r["util_max"]), float(r["mem_sum"]),
                                      float(r["temp_sum"]), float(r["temp_max"]), float(r["power_sum"]),
                                      int(r["unhealthy"]))
        if not raw:
            s0 = lo.timestamp()
            for bucket, a in rollups.agg(dev_ids, s0, end.timestamp()).items():
                t = s0 + ((bucket - s0) // req.step_s) * req.step_s
                if t in bins:
                    bins[t].merge(a)
                else:
                    bins[t] = a
    points = [_point(t, bins[t]) for t in sorted(bins) if bins[t].n > 0]
    return Series(scope=req.scope, key=req.key, site=req.site, step_s=req.step_s, resolution=resolution, points=points)
