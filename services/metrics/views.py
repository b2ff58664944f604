"""Read views over the in-memory fleet: city summaries, a city's hosts, one device.

Summaries are computed with ``bincount`` over (site, hardware type) for every device at
once, so a summary of 80,000 devices costs a few milliseconds and never touches PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from libs.schemas.metrics import AlertCounts, DeviceNow, FleetSummary, HardwareSummary, HostNow, SiteSummary
from services.metrics.fleet import STATUS_DOWN, STATUS_NAMES, STATUS_UP, DeviceMeta, Fleet, HostMeta


def _hw_summary(name: str, c: dict[str, np.ndarray], i: int) -> HardwareSummary:
    rep = int(c["reporting"][i])
    return HardwareSummary(
        hardware_type=name, total=int(c["total"][i]), healthy=int(c["healthy"][i]), unhealthy=int(c["unhealthy"][i]),
        reporting=rep, allocated=round(float(c["allocated"][i]), 2),
        utilization_pct=round(float(c["util"][i]) / rep, 1) if rep else None,
        memory_used_mib=int(c["mem"][i]), memory_total_mib=int(c["mem_total"][i]), power_w=round(float(c["power"][i]), 1))


def _site_summary(site: str, hws: list[HardwareSummary], hosts: tuple[int, int, int], running: int,
                  alerts: dict[str, int]) -> SiteSummary:
    rep = sum(h.reporting for h in hws)
    util = sum((h.utilization_pct or 0.0) * h.reporting for h in hws)
    return SiteSummary(
        site=site, hosts=hosts[0], hosts_up=hosts[1], hosts_down=hosts[2], devices=sum(h.total for h in hws),
        healthy=sum(h.healthy for h in hws), unhealthy=sum(h.unhealthy for h in hws),
        allocated=round(sum(h.allocated for h in hws), 2), utilization_pct=round(util / rep, 1) if rep else None,
        memory_used_mib=sum(h.memory_used_mib for h in hws), memory_total_mib=sum(h.memory_total_mib for h in hws),
        power_w=round(sum(h.power_w for h in hws), 1), running_workloads=running,
        alerts=AlertCounts(**alerts), by_type=[h for h in hws if h.total])


def summarize(fleet: Fleet, fresh: np.ndarray, allocated: np.ndarray, running: dict[str, int],
              alerts: dict[str, dict[str, int]], sites: set[str] | None = None) -> FleetSummary:
    n = fleet.cap
    ns, nw = len(fleet.sites), len(fleet.hw)
    dev = fleet.present[:n] & (fleet.site_idx[:n] >= 0)
    combo = (fleet.site_idx[:n] * max(nw, 1) + fleet.hw_idx[:n])[dev]
    size = max(ns * nw, 1)
    eff = fleet.effective_health()[:n][dev]
    fr = fresh[:n][dev]

    def count(w: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(combo, weights=w, minlength=size)

    c = {
        "total": count(), "healthy": count((eff == 1).astype(np.float64)), "unhealthy": count((eff == 0).astype(np.float64)),
        "reporting": count(fr.astype(np.float64)), "allocated": count(allocated[:n][dev].astype(np.float64)),
        "util": count(np.where(fr, fleet.util[:n][dev], 0.0)), "mem": count(np.where(fr, fleet.mem[:n][dev], 0.0)),
        "mem_total": count(fleet.mem_total[:n][dev]), "power": count(np.where(fr, fleet.power[:n][dev], 0.0)),
    }
    host_counts: dict[str, list[int]] = {}
    for h in fleet.host_list:
        hc = host_counts.setdefault(h.site, [0, 0, 0])
        hc[0] += 1
        hc[1] += h.status == STATUS_UP
        hc[2] += h.status == STATUS_DOWN
    out: list[SiteSummary] = []
    fleet_c = {k: np.zeros(max(nw, 1)) for k in c}
    for si, site in enumerate(fleet.sites.names):
        if sites is not None and site not in sites:
            continue
        rows = slice(si * nw, (si + 1) * nw)
        for k in c:
            fleet_c[k][:nw] += c[k][rows]
        hws = [_hw_summary(fleet.hw.names[wi], c, si * nw + wi) for wi in range(nw)]
        hc = host_counts.get(site, [0, 0, 0])
        out.append(_site_summary(site, hws, (hc[0], hc[1], hc[2]), running.get(site, 0),
                                 alerts.get(site, {"critical": 0, "warning": 0})))
    out.sort(key=lambda s: s.site)
    fleet_hws = [_hw_summary(fleet.hw.names[wi], fleet_c, wi) for wi in range(nw)]
    total_alerts = {"critical": sum(s.alerts.critical for s in out), "warning": sum(s.alerts.warning for s in out)}
    totals = _site_summary("*", fleet_hws, (sum(s.hosts for s in out), sum(s.hosts_up for s in out),
                                            sum(s.hosts_down for s in out)),
                           sum(s.running_workloads for s in out), total_alerts)
    return FleetSummary(generated_at=datetime.now(UTC), sites=out, totals=totals)


def device_now(fleet: Fleet, m: DeviceMeta, fresh: np.ndarray, allocated: np.ndarray) -> DeviceNow:
    i = m.id
    has = fleet.last_ts[i] > 0
    eff = int(fleet.effective_health()[i])
    return DeviceNow(
        key=m.key, slot=m.slot, hardware_type=m.hardware_type, vendor=m.vendor, model=m.model,
        memory_total_mib=m.memory_mib, healthy=None if eff < 0 else eff == 1, fresh=bool(fresh[i]),
        util=round(float(fleet.util[i]), 1) if has else None, mem_used_mib=float(fleet.mem[i]) if has else None,
        temp_c=round(float(fleet.temp[i]), 1) if has else None, power_w=round(float(fleet.power[i]), 1) if has else None,
        allocated=round(float(allocated[i]), 2) if i < len(allocated) else 0.0,
        sample_at=datetime.fromtimestamp(float(fleet.last_ts[i]), UTC) if has else None)


def host_now(fleet: Fleet, h: HostMeta, fresh: np.ndarray, allocated: np.ndarray) -> HostNow:
    devs = [device_now(fleet, fleet.devices[d], fresh, allocated) for _, d in sorted(h.slots.items())]
    return HostNow(host_id=h.host_id, site=h.site, hostname=h.hostname, status=STATUS_NAMES.get(h.status, "unknown"),
                   cpu_pct=h.cpu_pct, mem_used_mib=h.mem_used_mib, mem_total_mib=h.mem_total_mib,
                   telemetry_at=datetime.fromtimestamp(h.telemetry_at, UTC) if h.telemetry_at else None, devices=devs)
