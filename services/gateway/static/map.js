// The overview map: every city at its latitude/longitude (equirectangular projection, scaled by
// cos(mean latitude)), sized by device count, coloured by utilisation, with health and alert badges.
// Labels are placed greedily (below, right, left, above) so neighbouring cities do not overlap.

import { fmtNum, fmtPct, s, utilColor } from "./charts.js";

const W = 960, H = 600, PAD = 90;

function project(sites) {
  const geo = sites.filter((x) => Number.isFinite(x.lat) && Number.isFinite(x.lon));
  const out = new Map();
  if (geo.length) {
    const latMid = geo.reduce((a, x) => a + x.lat, 0) / geo.length;
    const k = Math.cos((latMid * Math.PI) / 180);
    const xs = geo.map((x) => x.lon * k), ys = geo.map((x) => -x.lat);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const span = Math.max(x1 - x0, y1 - y0, 0.01);
    const scale = Math.min((W - 2 * PAD) / Math.max(x1 - x0, span * 0.2), (H - 2 * PAD - 40) / Math.max(y1 - y0, span * 0.2));
    const ox = (W - (x1 - x0) * scale) / 2, oy = (H - 40 - (y1 - y0) * scale) / 2;
    geo.forEach((x, i) => out.set(x.id, [ox + (xs[i] - x0) * scale, oy + (ys[i] - y0) * scale]));
  }
  const rest = sites.filter((x) => !out.has(x.id));
  rest.forEach((x, i) => out.set(x.id, [PAD + ((W - 2 * PAD) * (i + 0.5)) / rest.length, H - 36]));
  return out;
}

function overlap(a, b) {
  const dx = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const dy = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  return dx > 0 && dy > 0 ? dx * dy : 0;
}

// The label position around a city that overlaps least with what is already drawn (and stays inside).
function bestBox(cx, cy, r, w, hgt, placed) {
  let best = null;
  for (const gap of [4, 16, 34]) {
    const d = r + gap;
    const candidates = [[cx - w / 2, cy + d], [cx + d, cy - hgt / 2], [cx - d - w, cy - hgt / 2], [cx - w / 2, cy - d - hgt],
      [cx + d * 0.7, cy + d * 0.7], [cx - d * 0.7 - w, cy + d * 0.7], [cx + d * 0.7, cy - d * 0.7 - hgt],
      [cx - d * 0.7 - w, cy - d * 0.7 - hgt]];
    for (const [x, y] of candidates) {
      const b = { x, y, w, h: hgt };
      const outside = (x < 0 || y < 0 || x + w > W || y + hgt > H) ? 1e6 : 0;
      const score = outside + placed.reduce((a, p) => a + overlap(p, b), 0) + gap * 2;
      if (!best || score < best.score) best = { ...b, score };
    }
    if (best.score < 100) break;
  }
  return best;
}

// sites: [{id, city, lat, lon}], bySite: Map(id → SiteSummary)
export function cityMap(sites, bySite, onSelect) {
  const pos = project(sites);
  const maxDevices = Math.max(1, ...sites.map((x) => bySite.get(x.id)?.devices || 0));
  const root = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "map", role: "group", "aria-label": "Cities" });
  for (let gx = 0; gx <= W; gx += 80) root.append(s("line", { x1: gx, x2: gx, y1: 0, y2: H, class: "graticule" }));
  for (let gy = 0; gy <= H; gy += 80) root.append(s("line", { x1: 0, x2: W, y1: gy, y2: gy, class: "graticule" }));
  const hub = sites.find((x) => x.id === "hangzhou") || null;
  if (hub && pos.has(hub.id)) {
    const [hx, hy] = pos.get(hub.id);
    for (const x of sites) {
      if (x.id === hub.id) continue;
      const [cx, cy] = pos.get(x.id);
      root.append(s("line", { x1: hx, y1: hy, x2: cx, y2: cy, class: "hub-link" }));
    }
  }
  const placed = [];
  const nodes = [];
  for (const site of sites) {
    const [cx, cy] = pos.get(site.id);
    const sum = bySite.get(site.id);
    const r = 11 + 17 * Math.sqrt((sum?.devices || 0) / maxDevices);
    placed.push({ x: cx - r, y: cy - r, w: 2 * r, h: 2 * r });
    nodes.push({ site, sum, cx, cy, r });
  }
  const drawn = nodes.map((n) => n);
  nodes.sort((a, b) => (b.sum?.devices || 0) - (a.sum?.devices || 0));
  const groups = new Map(nodes.map((n) => [n.site.id, cityNode(n, placed, onSelect)]));
  for (const n of drawn) root.append(groups.get(n.site.id)[0]); // dots first, labels above every dot
  for (const n of drawn) root.append(groups.get(n.site.id)[1]);
  return root;
}

function cityNode({ site, sum, cx, cy, r }, placed, onSelect) {
  let box;
  const util = sum?.utilization_pct ?? null;
  const alerts = (sum?.alerts?.critical || 0) + (sum?.alerts?.warning || 0);
  const types = (sum?.by_type || []).slice().sort((a, b) => b.total - a.total);
  const typeLine = types.length ? types.slice(0, 3).map((t) => `${t.hardware_type} ${fmtNum(t.total)}`).join(" · ")
    : sum ? `${fmtNum(sum.hosts)} host${sum.hosts === 1 ? "" : "s"}, no accelerators` : "no telemetry yet";
  const health = sum?.unhealthy ? `${sum.unhealthy} unhealthy` : "all healthy";
  const lines = [site.city || site.id, typeLine, sum?.devices ? `${fmtPct(util)} used · ${health}` : sum ? "CPU only" : "—"];
  const w = Math.max(...lines.map((l, i) => l.length * (i ? 6.3 : 7.6))) + 12, hgt = 46;
  box = bestBox(cx, cy, r, w, hgt, placed);
  placed.push(box);
  const g = s("g", { class: "city", tabindex: 0, role: "button", "data-site": site.id,
    "aria-label": `${site.city || site.id}: ${lines.slice(1).join(", ")}${alerts ? `, ${alerts} alerts` : ""}`,
    onclick: () => onSelect(site.id), onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") onSelect(site.id); } });
  g.append(s("circle", { cx, cy, r: r + 5, class: "halo", fill: utilColor(util) }));
  g.append(s("circle", { cx, cy, r, class: sum?.unhealthy ? "dot dot-unhealthy" : "dot", fill: utilColor(util) }));
  g.append(s("text", { x: cx, y: cy + 4, class: "dot-label", "text-anchor": "middle" },
    util === null ? "–" : `${Math.round(util)}`));
  if (alerts) {
    const crit = sum.alerts.critical > 0;
    g.append(s("g", { class: crit ? "badge badge-critical" : "badge badge-warning", "data-alerts": alerts },
      s("circle", { cx: cx + r * 0.75, cy: cy - r * 0.75, r: 9 }),
      s("text", { x: cx + r * 0.75, y: cy - r * 0.75 + 4, "text-anchor": "middle" }, alerts > 99 ? "99+" : alerts)));
  }
  const label = s("g", { class: "city-label", "data-site": site.id, onclick: () => onSelect(site.id) });
  label.append(s("rect", { x: box.x, y: box.y, width: box.w, height: box.h, rx: 6 }));
  lines.forEach((text, i) => label.append(s("text", { x: box.x + 6, y: box.y + 14 + i * 14, class: i ? "sub" : "name" }, text)));
  g.append(s("title", {}, `${site.city || site.id} — open the city`));
  return [g, label];
}
