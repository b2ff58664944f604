"""Sites (cities) and the links between them: the built-in demo region and link derivation.

The demo fleet spans the 11 prefecture-level cities of Zhejiang. Where no measured link
is configured, bandwidth and round-trip latency are derived from the great-circle
distance: light in fibre covers about 200 km per millisecond, real routes run about 1.5x
the straight line, and each end adds about 0.25 ms of switching; the provincial hub
(Hangzhou) has the widest links.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.schemas.inventory import Site, SiteLink

DEMO_REGION = "zhejiang"
HUB = "hangzhou"

DEMO_SITES: tuple[Site, ...] = tuple(
    Site(id=sid, city=city, region=DEMO_REGION, lat=lat, lon=lon)
    for sid, city, lat, lon in (
        ("hangzhou", "Hangzhou", 30.2741, 120.1551),
        ("ningbo", "Ningbo", 29.8683, 121.5440),
        ("wenzhou", "Wenzhou", 27.9943, 120.6994),
        ("shaoxing", "Shaoxing", 30.0023, 120.5810),
        ("huzhou", "Huzhou", 30.8943, 120.0868),
        ("jiaxing", "Jiaxing", 30.7461, 120.7555),
        ("jinhua", "Jinhua", 29.0790, 119.6474),
        ("quzhou", "Quzhou", 28.9359, 118.8594),
        ("zhoushan", "Zhoushan", 29.9853, 122.2072),
        ("taizhou", "Taizhou", 28.6564, 121.4208),
        ("lishui", "Lishui", 28.4676, 119.9229),
    )
)

FIBRE_KM_PER_MS = 200.0
ROUTE_FACTOR = 1.5
SWITCHING_MS = 0.5


def distance_km(a: Site, b: Site) -> float:
    """Great-circle (haversine) distance; 0 when either site has no coordinates."""
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return 0.0
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def derive_link(a: Site, b: Site, hub: str | None = HUB) -> SiteLink:
    d = distance_km(a, b)
    rtt = 2 * d * ROUTE_FACTOR / FIBRE_KM_PER_MS + SWITCHING_MS
    if hub in (a.id, b.id):
        bandwidth = 400.0
    elif d < 150:
        bandwidth = 200.0
    else:
        bandwidth = 100.0
    return SiteLink(a=a.id, b=b.id, bandwidth_gbps=bandwidth, latency_ms=round(rtt, 2))


def full_mesh(sites: Iterable[Site], measured: Iterable[SiteLink] = (), hub: str | None = HUB) -> list[SiteLink]:
    """A link for every pair of sites: measured where given, derived from distance otherwise."""
    ordered = sorted(sites, key=lambda s: s.id)
    known = {(lk.a, lk.b): lk for lk in measured}
    out = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            out.append(known.get((a.id, b.id)) or derive_link(a, b, hub))
    return out


class SitesFile(BaseModel):
    """The ``XPUMESH_INVENTORY__SITES_FILE`` format."""

    model_config = ConfigDict(extra="forbid")

    hub: str | None = Field(default=None, description="Site whose links get the widest bandwidth when derived.")
    sites: list[Site] = Field(min_length=1, max_length=1000)
    links: list[SiteLink] = Field(default_factory=list, description="Measured links; missing pairs are derived.")


def load_sites(path: Path | None) -> tuple[list[Site], list[SiteLink]]:
    """The configured sites and a full mesh of links (the demo region when ``path`` is None)."""
    if path is None:
        return list(DEMO_SITES), full_mesh(DEMO_SITES)
    try:
        raw = yaml.safe_load(path.read_text())
        spec = SitesFile.model_validate(raw)
    except OSError as exc:
        raise ValueError(f"sites file {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise ValueError(f"sites file {path}: not valid YAML") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"sites file {path}: {where}: {first['msg']}") from None
    ids = {s.id for s in spec.sites}
    for link in spec.links:
        if link.a not in ids or link.b not in ids:
            raise ValueError(f"sites file {path}: link {link.a}-{link.b} names an unknown site")
    return spec.sites, full_mesh(spec.sites, spec.links, spec.hub)
