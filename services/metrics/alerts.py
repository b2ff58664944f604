"""Alert rules over the in-memory fleet: which alerts should fire, which firing ones resolve.

Pure evaluation (no I/O): ``AlertEngine.evaluate`` returns the transitions; the caller
writes them (alert rows + outbox events, one transaction) and only then ``apply``-s them,
so a failed write is simply evaluated again on the next tick.

``device_unhealthy`` reads the device's health as the inventory decided it (``Fleet.health``, set from
its device events by ``health.py``); the other rules read the samples.

Each alert's id is stable for what it is about — ``<rule>/<host>/<slot>`` for a device,
``<rule>/<host>`` for a host, ``<rule>/<site>`` for a site — so a restart or a repeat
evaluation never creates a second alert for the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np

from libs.config import Settings
from libs.schemas.metrics import Alert, AlertSeverity, AlertState
from services.metrics.fleet import STATUS_DOWN, Fleet

DEVICE_UNHEALTHY = "device_unhealthy"
DEVICE_HOT = "device_hot"
HOST_DOWN = "host_down"
SITE_UTILIZATION_HIGH = "site_utilization_high"
TELEMETRY_MISSING = "telemetry_missing"
SEVERITY = {DEVICE_UNHEALTHY: AlertSeverity.CRITICAL, DEVICE_HOT: AlertSeverity.WARNING,
            HOST_DOWN: AlertSeverity.CRITICAL, SITE_UTILIZATION_HIGH: AlertSeverity.WARNING,
            TELEMETRY_MISSING: AlertSeverity.WARNING}


def site_utilization(fleet: Fleet, fresh: np.ndarray) -> dict[str, float]:
    """Mean utilisation of each site's fresh devices (sites without fresh devices are absent)."""
    n = fleet.cap
    sel = fresh[:n] & (fleet.site_idx[:n] >= 0)
    ns = len(fleet.sites)
    if ns == 0 or not sel.any():
        return {}
    cnt = np.bincount(fleet.site_idx[:n][sel], minlength=ns)
    tot = np.bincount(fleet.site_idx[:n][sel], weights=fleet.util[:n][sel], minlength=ns)
    return {fleet.sites.names[i]: float(tot[i] / cnt[i]) for i in np.flatnonzero(cnt).tolist()}


class AlertEngine:
    def __init__(self, settings: Settings, started_mono: float) -> None:
        self.settings = settings
        self.cfg = settings.metrics.alerts
        self.firing: dict[str, Alert] = {}
        self.hot_since: dict[str, float] = {}
        self.started_mono = started_mono

    @property
    def stale_s(self) -> float:
        return self.cfg.telemetry_missing_intervals * self.settings.telemetry_interval_s

    def load(self, alerts: Iterable[Alert]) -> None:
        self.firing = {a.id: a for a in alerts if a.state == AlertState.FIRING}

    def evaluate(self, fleet: Fleet, now: datetime, mono: float) -> list[Alert]:
        """Transitions: new firing alerts, and firing ones that resolve."""
        cfg = self.cfg
        wall = now.timestamp()
        n = fleet.cap
        fresh = fleet.fresh_mask(self.stale_s, wall)
        present = fleet.present[:n]
        eff = fleet.effective_health()[:n]
        temp = fleet.temp[:n]
        changes: list[Alert] = []
        seen: set[str] = set()

        def new(alert_id: str) -> bool:
            seen.add(alert_id)
            return alert_id not in self.firing

        def add(alert_id: str, rule: str, site: str, host: str | None, device: str | None, summary: str,
                value: float | None = None) -> None:
            changes.append(Alert(id=alert_id, rule=rule, severity=SEVERITY[rule], state=AlertState.FIRING, site=site,
                                 host_id=host, device=device, summary=summary, value=value, started_at=now))

        for dev in np.flatnonzero(present & (eff == 0)).tolist():
            m = fleet.devices[dev]
            if new(aid := f"{DEVICE_UNHEALTHY}/{m.key}"):
                add(aid, DEVICE_UNHEALTHY, m.site, m.host_id, m.key,
                    f"Device {m.key} ({m.vendor} {m.model}) at {m.site} reports unhealthy")
        for dev in np.flatnonzero(fresh & (temp > cfg.temperature_c)).tolist():
            m, t = fleet.devices[dev], float(temp[dev])
            if new(aid := f"{DEVICE_HOT}/{m.key}"):
                add(aid, DEVICE_HOT, m.site, m.host_id, m.key,
                    f"Device {m.key} at {m.site} is at {t:.1f} °C (threshold {cfg.temperature_c:g} °C)", t)
        missing_s = self.stale_s
        for h in fleet.host_list:
            if h.status == STATUS_DOWN and new(aid := f"{HOST_DOWN}/{h.host_id}"):
                add(aid, HOST_DOWN, h.site, h.host_id, None, f"Host {h.host_id} at {h.site} is down")
            silent = mono - h.seen_mono
            if h.seen_mono > 0 and silent > missing_s and new(aid := f"{TELEMETRY_MISSING}/{h.host_id}"):
                add(aid, TELEMETRY_MISSING, h.site, h.host_id, None,
                    f"No telemetry from host {h.host_id} at {h.site} for {silent:.0f} s", round(silent, 1))
        util = site_utilization(fleet, fresh)
        for site, u in util.items():
            if u > cfg.site_utilization_pct:
                since = self.hot_since.setdefault(site, mono)
                if mono - since >= cfg.site_utilization_for_s and new(aid := f"{SITE_UTILIZATION_HIGH}/{site}"):
                    add(aid, SITE_UTILIZATION_HIGH, site, None, None,
                        f"Mean device utilisation at {site} is {u:.0f}% (over {cfg.site_utilization_pct:.0f}% "
                        f"for {cfg.site_utilization_for_s:.0f} s)", round(u, 1))
            else:
                self.hot_since.pop(site, None)
        for site in set(self.hot_since) - set(util):
            del self.hot_since[site]

        for alert_id, a in self.firing.items():
            if alert_id in seen or self._holds(a, fleet, fresh, util):
                continue
            changes.append(a.model_copy(update={"state": AlertState.RESOLVED, "resolved_at": now}))
        return changes

    def _holds(self, a: Alert, fleet: Fleet, fresh: np.ndarray, util: dict[str, float]) -> bool:
        """Whether a firing alert that no longer meets its firing condition should still stay firing."""
        if a.rule == DEVICE_HOT and a.device:
            dev = fleet.by_key.get(a.device)
            # hysteresis: resolve at or below the clear temperature; a silent device keeps its alert
            return dev is not None and bool(fleet.present[dev]) and (
                not fresh[dev] or float(fleet.temp[dev]) > self.cfg.temperature_clear_c)
        if a.rule == SITE_UTILIZATION_HIGH:
            return a.site in util and util[a.site] > self.cfg.site_utilization_pct
        if a.rule == TELEMETRY_MISSING and a.host_id:
            h = fleet.hosts.get(a.host_id)
            # loaded at start: keep until the host actually reports again
            return h is not None and h.seen_mono <= self.started_mono
        return False

    def apply(self, changes: list[Alert]) -> None:
        for a in changes:
            if a.state == AlertState.FIRING:
                self.firing[a.id] = a
            else:
                self.firing.pop(a.id, None)

    def counts_by_site(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for a in self.firing.values():
            c = out.setdefault(a.site, {"critical": 0, "warning": 0})
            c[a.severity.value] += 1
        return out
