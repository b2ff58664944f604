// DOM and SVG helpers, the utilisation colour scale, and a small line chart. No libraries.

const SVG = "http://www.w3.org/2000/svg";

// h("div", {class: "x", onclick: f}, "text", child…): elements without innerHTML.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; // CSSOM, which the page's CSP allows (inline style attributes it does not)
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// 0 % green → 60 % amber → 100 % red; grey when unknown.
export function utilColor(pct) {
  if (pct === null || pct === undefined || Number.isNaN(pct)) return "#5b6b82";
  const stops = [[0, [47, 158, 111]], [60, [224, 179, 65]], [100, [224, 82, 82]]];
  const p = Math.max(0, Math.min(100, pct));
  for (let i = 1; i < stops.length; i++) {
    const [p1, c1] = stops[i];
    const [p0, c0] = stops[i - 1];
    if (p <= p1) {
      const t = (p - p0) / (p1 - p0);
      return `rgb(${c0.map((c, j) => Math.round(c + (c1[j] - c) * t)).join(",")})`;
    }
  }
  return "rgb(224,82,82)";
}

export const PALETTE = ["#4fd1a5", "#6aa9ff", "#f2c14e", "#e07b9a", "#b18cff", "#5fd0e0", "#f59a5b", "#c8d36b"];

export function fmtPct(v) { return v === null || v === undefined ? "—" : `${v.toFixed(v < 10 ? 1 : 0)}%`; }
export function fmtNum(v) { return v === null || v === undefined ? "—" : Math.round(v).toLocaleString("en-US"); }
export function fmtPower(w) {
  if (w === null || w === undefined) return "—";
  return w >= 1e6 ? `${(w / 1e6).toFixed(2)} MW` : w >= 1e3 ? `${(w / 1e3).toFixed(1)} kW` : `${Math.round(w)} W`;
}
export function fmtMiB(mib) {
  if (mib === null || mib === undefined) return "—";
  const gib = mib / 1024;
  return gib >= 1024 ? `${(gib / 1024).toFixed(1)} TiB` : `${gib.toFixed(gib < 10 ? 1 : 0)} GiB`;
}
export function fmtTime(t, seconds = false) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}${seconds ? `:${p(d.getSeconds())}` : ""}`;
}
export function fmtAgo(t) {
  const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

// lineChart([{name, color, points: [[ms, value], …]}], {yMax, unit, height}) → <svg>
export function lineChart(lines, { yMax = null, unit = "", width = 640, height = 180, empty = "No data in this window yet" } = {}) {
  const W = width, H = height, L = 40, R = 10, T = 10, B = 24;
  const all = lines.flatMap((l) => l.points);
  const root = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": lines.map((l) => l.name).join(", ") || "chart" });
  if (!all.length) {
    root.append(s("text", { x: W / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle" }, empty));
    return root;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]), t0 + 60_000);
  const top = yMax ?? niceMax(Math.max(...all.map((p) => p[1])));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - Math.min(v, top) / (top || 1)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    root.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, `${Math.round(v)}${unit}`));
  }
  const ticks = W < 500 ? 2 : 4; // narrow charts: fewer time labels, so they never collide
  for (let i = 0; i <= ticks; i++) {
    const t = t0 + ((t1 - t0) * i) / ticks;
    root.append(s("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" },
      fmtTime(t, t1 - t0 < 600_000)));
  }
  for (const l of lines) {
    if (!l.points.length) continue;
    const d = l.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    root.append(s("path", { d, class: "line", stroke: l.color }, s("title", {}, l.name)));
    const last = l.points[l.points.length - 1];
    root.append(s("circle", { cx: x(last[0]), cy: y(last[1]), r: 3, fill: l.color }));
  }
  return root;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= v) return m * mag;
  return 10 * mag;
}

export function legend(lines) {
  return h("ul", { class: "legend" },
    lines.map((l) => h("li", {}, h("i", { style: `background:${l.color}` }), l.name)));
}

// A horizontal bar: used, of total.
export function bar(pct, label) {
  const p = pct === null || pct === undefined ? 0 : Math.max(0, Math.min(100, pct));
  return h("span", { class: "bar", title: label || fmtPct(pct) },
    h("span", { class: "bar-fill", style: `width:${p}%;background:${utilColor(pct)}` }));
}
