"""Prometheus text exposition at ``http://<host>:<metrics_port>/metrics``.

Two parts in one scrape:
- per-device gauges (utilisation, memory used, temperature, power, health) labelled with
  site, host, hardware_type, vendor, model and device (the slot), built from the in-memory
  fleet and reused for ``scrape_cache_s``;
- every service's own metrics, gathered with one ``xpumesh.ctl.metrics`` scatter, parsed,
  merged by family and labelled with ``instance`` (the instance ids of the process that
  answered), so one target shows the whole mesh. Scrape with ``honor_labels: true``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from libs.bus.connection import Bus
from libs.bus.subjects import CTL_METRICS
from services.metrics.fleet import STATUS_NAMES, Fleet

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEVICE_GAUGES = (
    ("xpumesh_device_utilization_percent", "Device utilisation in percent (latest fresh sample).", "util", 1.0),
    ("xpumesh_device_memory_used_bytes", "Device memory in use (latest fresh sample).", "mem", 1024.0 * 1024.0),
    ("xpumesh_device_temperature_celsius", "Device temperature (latest fresh sample).", "temp", 1.0),
    ("xpumesh_device_power_watts", "Device power draw (latest fresh sample).", "power", 1.0),
)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Parsed:
    """A collector over already-parsed families (so prometheus_client writes the merged text)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge_expositions(texts: list[bytes]) -> bytes:
    """Merge the text expositions of many processes: one family per name, ``instance`` on every sample."""
    merged: dict[str, Metric] = {}
    seen: set[str] = set()
    for i, raw in enumerate(texts):
        try:
            families = list(text_string_to_metric_families(raw.decode()))
        except (ValueError, UnicodeDecodeError, IndexError, TypeError):
            log.warning("a service's metrics could not be parsed; skipped")
            continue
        instances = sorted({s.labels.get("instance", "") for f in families if f.name == "xpumesh_service_up"
                            for s in f.samples if s.value == 1 and s.labels.get("instance")})
        identity = ",".join(instances) or f"process-{i}"
        if identity in seen:  # several services in one process answer with the same registry
            continue
        seen.add(identity)
        for f in families:
            target = merged.get(f.name)
            if target is None:
                target = merged[f.name] = Metric(f.name, f.documentation, f.type, f.unit)
            elif target.type != f.type:
                continue
            for s in f.samples:
                labels = s.labels if "instance" in s.labels else {**s.labels, "instance": identity}
                target.samples.append(s._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Parsed(list(merged.values())))
    return generate_latest(registry)


class DeviceText:
    """The per-device part, rebuilt at most every ``cache_s``."""

    def __init__(self, fleet: Fleet, fresh: Callable[[], Any], extra: Callable[[], str], cache_s: float) -> None:
        self.fleet, self.fresh, self.extra, self.cache_s = fleet, fresh, extra, cache_s
        self._labels: tuple[int, dict[int, str]] = (-1, {})
        self._text: tuple[float, bytes] = (0.0, b"")

    def labels(self) -> dict[int, str]:
        if self._labels[0] != self.fleet.version:
            out = {}
            for dev_id, m in self.fleet.devices.items():
                out[dev_id] = (f'site="{_esc(m.site)}",host="{_esc(m.host_id)}",hardware_type="{_esc(m.hardware_type)}",'
                               f'vendor="{_esc(m.vendor)}",model="{_esc(m.model)}",device="{m.slot}"')
            self._labels = (self.fleet.version, out)
        return self._labels[1]

    def render(self) -> bytes:
        now = time.monotonic()
        if self._text[1] and now - self._text[0] < self.cache_s:
            return self._text[1]
        fleet, labels = self.fleet, self.labels()
        fresh = self.fresh()
        present = [d for d in labels if fleet.present[d]]
        live = [d for d in present if fresh[d]]
        parts: list[str] = []
        for name, doc, attr, scale in DEVICE_GAUGES:
            values = (getattr(fleet, attr)[live].astype(float) * scale).tolist() if live else []
            parts.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
            parts.append("".join(f"{name}{{{labels[d]}}} {v!r}\n" for d, v in zip(live, values, strict=True)))
        health = fleet.effective_health()
        parts.append("# HELP xpumesh_device_healthy 1 when the inventory holds the device healthy, 0 when unhealthy.\n"
                     "# TYPE xpumesh_device_healthy gauge\n")
        parts.append("".join(f"xpumesh_device_healthy{{{labels[d]}}} {int(health[d])}\n" for d in present if health[d] >= 0))
        parts.append("# HELP xpumesh_host_up 1 while the registry reports the host up.\n# TYPE xpumesh_host_up gauge\n")
        parts.append("".join(f'xpumesh_host_up{{site="{_esc(h.site)}",host="{_esc(h.host_id)}"}} '
                             f"{1 if STATUS_NAMES[h.status] == 'up' else 0}\n" for h in fleet.host_list if h.status))
        parts.append(self.extra())
        text = "".join(parts).encode()
        self._text = (now, text)
        return text


async def render_all(bus: Bus, devices: DeviceText, window_s: float) -> bytes:
    replies = await bus.scatter(CTL_METRICS, window_s=window_s)
    return merge_expositions([r.data for r in replies]) + devices.render()


def asgi_app(render: Callable[[], Awaitable[bytes]]) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Callable[..., Awaitable[Any]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        status, ctype, body = 404, "text/plain; charset=utf-8", b"not found; try /metrics\n"
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            try:
                status, ctype, body = 200, CONTENT_TYPE, await render()
            except Exception:
                log.exception("scrape failed")
                status, body = 500, b"scrape failed\n"
        elif scope["path"] == "/healthz":
            status, body = 200, b"ok\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
    return app


