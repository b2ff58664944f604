// The views: overview (map, fleet chart, alerts, city cards), one city, one device, workloads.
// Each takes the data it shows and returns DOM; app.js fetches and decides when to redraw.

import { bar, fmtAgo, fmtMiB, fmtNum, fmtPct, fmtPower, h, legend, lineChart, PALETTE, utilColor } from "./charts.js";
import { cityMap } from "./map.js";

export function plural(n, word) {
  return `${fmtNum(n)} ${word}${n === 1 ? "" : "s"}`;
}

export function state(text, kind = "empty") {
  return h("p", { class: `state state-${kind}` }, text);
}

export function totalsBar(summary) {
  if (!summary) return [];
  const t = summary.totals;
  const alerts = t.alerts.critical + t.alerts.warning;
  const item = (label, value, extra) => h("span", { class: `total ${extra || ""}` }, h("b", {}, value), label);
  return [
    item("cities", fmtNum(summary.sites.length)),
    item(`hosts${t.hosts_down ? ` (${t.hosts_down} down)` : ""}`, fmtNum(t.hosts), t.hosts_down ? "warn" : ""),
    item("devices", fmtNum(t.devices)),
    item("unhealthy", fmtNum(t.unhealthy), t.unhealthy ? "bad" : ""),
    item("used", fmtPct(t.utilization_pct)),
    item("power", fmtPower(t.power_w)),
    item("running", fmtNum(t.running_workloads)),
    item("alerts", fmtNum(alerts), t.alerts.critical ? "bad" : alerts ? "warn" : ""),
  ];
}

// sites: [{id, city, lat, lon}] from /v1/sites, completed with every site the summary knows.
export function mergedSites(sites, summary) {
  const out = new Map((sites || []).map((x) => [x.id, x]));
  for (const x of summary?.sites || []) if (!out.has(x.site)) out.set(x.site, { id: x.site, city: x.site });
  return [...out.values()].sort((a, b) => (a.city || a.id).localeCompare(b.city || b.id));
}

export function overview({ sites, summary, alerts, typeSeries }, go) {
  const bySite = new Map((summary?.sites || []).map((x) => [x.site, x]));
  const all = mergedSites(sites, summary);
  const map = h("section", { class: "panel map-panel", id: "map" }, h("h2", {}, "Every city at once"));
  if (!all.length) {
    map.append(state("No hosts have reported yet. Start agents (xpumesh agent) or the simulated fleet (xpumesh up --demo)."));
  } else {
    map.append(cityMap(all, bySite, (id) => go(`#/site/${encodeURIComponent(id)}`)), utilLegend());
  }
  return h("div", { class: "overview" },
    map,
    h("aside", { class: "side" }, alertsPanel(alerts, go), fleetChart(typeSeries)),
    h("section", { class: "panel cities", id: "cities" }, h("h2", {}, "Cities"),
      all.length ? h("div", { class: "cards" }, all.map((x) => cityCard(x, bySite.get(x.id), go))) : state("No cities yet.")));
}

function utilLegend() {
  return h("div", { class: "scale" }, "utilisation",
    [0, 25, 50, 75, 100].map((p) => h("span", {}, h("i", { style: `background:${utilColor(p)}` }), `${p}%`)),
    h("span", {}, h("i", { class: "ring" }), "unhealthy devices"));
}

export function alertsPanel(alerts, go) {
  const panel = h("section", { class: "panel alerts", id: "alerts" });
  const n = alerts ? alerts.total : null;
  panel.append(h("h2", {}, "Firing alerts ", n === null ? "" : h("span", { class: "count" }, fmtNum(n))));
  if (!alerts) { panel.append(state("Loading…", "loading")); return panel; }
  if (!alerts.items.length) { panel.append(state("No firing alerts. All quiet.")); return panel; }
  panel.append(h("ul", { class: "alert-list" }, alerts.items.slice(0, 60).map((a) => {
    const target = a.device ? `#/device/${a.device.split("/").map(encodeURIComponent).join("/")}` : `#/site/${encodeURIComponent(a.site)}`;
    return h("li", { class: `alert sev-${a.severity}`, "data-alert": a.id },
      h("a", { href: target },
        h("span", { class: "sev" }, a.severity),
        h("span", { class: "when" }, `${a.site} · ${fmtAgo(a.started_at)}`),
        h("span", { class: "what" }, a.summary)));
  })));
  if (alerts.items.length > 60) panel.append(h("p", { class: "more" }, `and ${alerts.items.length - 60} more`));
  return panel;
}

function fleetChart(typeSeries) {
  const panel = h("section", { class: "panel chart-panel", id: "fleet-chart" }, h("h2", {}, "Utilisation by hardware type, last hour"));
  if (!typeSeries) { panel.append(state("Loading…", "loading")); return panel; }
  const lines = typeSeries.map((ts, i) => ({ name: ts.key, color: PALETTE[i % PALETTE.length],
    points: ts.points.map((p) => [Date.parse(p.t), p.util_avg]) }));
  panel.append(lineChart(lines, { yMax: 100, unit: "%", width: 380, height: 200 }), legend(lines));
  return panel;
}

function cityCard(site, sum, go) {
  const alerts = sum ? sum.alerts.critical + sum.alerts.warning : 0;
  const card = h("a", { class: "card", href: `#/site/${encodeURIComponent(site.id)}`, "data-site": site.id },
    h("header", {}, h("span", { class: "swatch", style: `background:${utilColor(sum?.utilization_pct)}` }),
      h("b", {}, site.city || site.id),
      alerts ? h("span", { class: `pill ${sum.alerts.critical ? "bad" : "warn"}` }, `${alerts} alert${alerts > 1 ? "s" : ""}`) : ""),
    sum ? h("p", { class: "card-sum" }, `${plural(sum.hosts, "host")} · ${plural(sum.devices, "device")} · ${fmtPct(sum.utilization_pct)} used · ${fmtPower(sum.power_w)}`)
      : h("p", { class: "card-sum" }, "no telemetry yet"));
  if (sum?.by_type.length) card.append(typeTable(sum.by_type));
  else if (sum) card.append(h("p", { class: "card-note" }, "CPU-only hosts: no accelerators reported."));
  card.addEventListener("click", (e) => { e.preventDefault(); go(`#/site/${encodeURIComponent(site.id)}`); });
  return card;
}

function typeTable(byType) {
  return h("table", { class: "types" },
    h("thead", {}, h("tr", {}, ["type", "devices", "healthy", "allocated", "used"].map((c) => h("th", {}, c)))),
    h("tbody", {}, byType.map((t) => h("tr", { "data-type": t.hardware_type },
      h("td", {}, t.hardware_type), h("td", {}, fmtNum(t.total)),
      h("td", { class: t.unhealthy ? "bad nowrap" : "nowrap" }, fmtNum(t.healthy), t.unhealthy ? h("small", { class: "bad" }, ` · ${t.unhealthy} unhealthy`) : ""),
      h("td", {}, fmtNum(t.allocated)), h("td", {}, h("span", { class: "used" }, bar(t.utilization_pct), fmtPct(t.utilization_pct)))))));
}

export function siteView(id, { sites, summary, hosts, series, more }, go, loadMore) {
  const site = (sites || []).find((x) => x.id === id) || { id, city: id };
  const sum = summary?.sites.find((x) => x.site === id);
  const root = h("div", { class: "site" },
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "All cities"), " › ", h("b", {}, site.city || id)));
  if (summary && !sum) { root.append(state(`No host in ${site.city || id} has reported yet.`)); return root; }
  if (sum) {
    root.append(h("section", { class: "panel stats" },
      stat("hosts", `${fmtNum(sum.hosts_up)} up / ${fmtNum(sum.hosts)}`, sum.hosts_down ? "warn" : ""),
      stat("devices", fmtNum(sum.devices)), stat("unhealthy", fmtNum(sum.unhealthy), sum.unhealthy ? "bad" : ""),
      stat("used", fmtPct(sum.utilization_pct)), stat("memory", `${fmtMiB(sum.memory_used_mib)} / ${fmtMiB(sum.memory_total_mib)}`),
      stat("power", fmtPower(sum.power_w)), stat("running workloads", fmtNum(sum.running_workloads)),
      stat("alerts", fmtNum(sum.alerts.critical + sum.alerts.warning), sum.alerts.critical ? "bad" : "")),
    h("div", { class: "two" },
      h("section", { class: "panel" }, h("h2", {}, "Devices by hardware type"), typeTable(sum.by_type)),
      h("section", { class: "panel" }, h("h2", {}, "Utilisation, last hour"),
        series ? siteChart(series) : state("Loading…", "loading"))));
  }
  const table = h("section", { class: "panel hosts", id: "hosts" }, h("h2", {}, "Hosts"));
  if (!hosts) table.append(state("Loading…", "loading"));
  else if (!hosts.length) table.append(state("No hosts."));
  else {
    table.append(h("table", { class: "host-table" },
      h("thead", {}, h("tr", {}, ["host", "status", "cpu", "devices (colour: utilisation, red ring: unhealthy)"].map((c) => h("th", {}, c)))),
      h("tbody", {}, hosts.map((x) => h("tr", { "data-host": x.host_id },
        h("td", {}, x.host_id), h("td", {}, h("span", { class: `pill ${x.status === "up" ? "ok" : x.status === "down" ? "bad" : ""}` }, x.status)),
        h("td", {}, fmtPct(x.cpu_pct)),
        h("td", { class: "chips" }, x.devices.map((d) => deviceChip(x, d))))))));
    if (more) table.append(h("button", { type: "button", class: "more-btn", onclick: loadMore }, "Load more hosts"));
  }
  root.append(table);
  return root;
}

function siteChart(series) {
  const lines = [{ name: "mean utilisation", color: PALETTE[0], points: series.points.map((p) => [Date.parse(p.t), p.util_avg]) },
    { name: "busiest device", color: PALETTE[3], points: series.points.map((p) => [Date.parse(p.t), p.util_max]) }];
  return [lineChart(lines, { yMax: 100, unit: "%" }), legend(lines)];
}

function stat(label, value, cls) {
  return h("div", { class: `stat ${cls || ""}` }, h("b", {}, value), h("span", {}, label));
}

function deviceChip(host, d) {
  const cls = ["chip", d.healthy === false ? "chip-unhealthy" : "", d.fresh ? "" : "chip-stale"].join(" ");
  return h("a", { class: cls, href: `#/device/${encodeURIComponent(host.host_id)}/${d.slot}`, "data-device": d.key,
    style: `background:${d.healthy === false ? "#5a2128" : d.fresh ? utilColor(d.util) : "#3a4557"}`,
    title: `${d.key} ${d.vendor} ${d.model}: ${d.fresh ? `${fmtPct(d.util)}, ${d.temp_c} °C` : "no fresh sample"}${d.healthy === false ? ", UNHEALTHY" : ""}` },
  d.hardware_type.slice(0, 1));
}

export const RANGES = { "15m": [900, 10], "1h": [3600, 60], "24h": [86400, 900], "7d": [604800, 3600] };

export function deviceView(detail, series, range, go, setRange) {
  const d = detail.device;
  const root = h("div", { class: "device" },
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "All cities"), " › ",
      h("a", { href: `#/site/${encodeURIComponent(detail.site)}` }, detail.site), " › ", detail.host_id, " › ", h("b", {}, `device ${d.slot}`)));
  const health = d.healthy === null ? "unknown" : d.healthy ? "healthy" : "unhealthy";
  root.append(h("section", { class: "panel stats" },
    stat("health", health, d.healthy === false ? "bad" : ""), stat("used", d.fresh ? fmtPct(d.util) : "no fresh sample"),
    stat("memory", `${fmtMiB(d.mem_used_mib)} / ${fmtMiB(d.memory_total_mib)}`), stat("temperature", d.temp_c === null ? "—" : `${d.temp_c} °C`),
    stat("power", fmtPower(d.power_w)), stat("allocated", d.allocated ? `${d.allocated}` : "free")));
  const facts = [["hardware type", d.hardware_type], ["vendor", d.vendor], ["model", d.model],
    ["driver", detail.driver_version || "—"], ["runtimes", Object.entries(detail.runtimes).map(([k, v]) => `${k} ${v}`).join(", ") || "—"],
    ["firmware", detail.firmware_version || "—"], ["uuid / serial", detail.uuid || "—"], ["host", detail.hostname || detail.host_id],
    ["last sample", d.sample_at ? fmtAgo(d.sample_at) : "never"]];
  const lines = series ? [
    { name: "utilisation %", color: PALETTE[0], points: series.points.map((p) => [Date.parse(p.t), p.util_avg]) },
    { name: "temperature °C", color: PALETTE[3], points: series.points.map((p) => [Date.parse(p.t), p.temp_avg_c]) }] : [];
  root.append(h("div", { class: "two" },
    h("section", { class: "panel" }, h("h2", {}, "Device"), h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
    h("section", { class: "panel" }, h("h2", {}, "History ",
      h("span", { class: "ranges" }, Object.keys(RANGES).map((r) => h("button", { type: "button", class: r === range ? "on" : "",
        onclick: () => setRange(r) }, r)))),
    series ? [lineChart(lines, { yMax: 100 }), legend(lines),
      lineChart([{ name: "power W", color: PALETTE[2], points: series.points.map((p) => [Date.parse(p.t), p.power_avg_w]) }], { unit: "W", height: 120 })]
      : state("Loading…", "loading"))));
  root.append(h("div", { class: "two" },
    h("section", { class: "panel" }, h("h2", {}, "Workloads on this device"),
      detail.workloads.length ? workloadTable(detail.workloads) : state("No workload holds this device.")),
    alertsPanel({ items: detail.alerts, total: detail.alerts.length }, go)));
  return root;
}

export function workloadTable(items) {
  return h("table", { class: "workload-table" },
    h("thead", {}, h("tr", {}, ["workload", "tenant", "state", "placement", "updated"].map((c) => h("th", {}, c)))),
    h("tbody", {}, items.map((w) => h("tr", { "data-workload": w.id },
      h("td", {}, h("b", {}, w.name || w.id), w.name ? h("small", {}, ` ${w.id}`) : ""), h("td", {}, w.tenant || "—"),
      h("td", {}, h("span", { class: `pill state-${w.state}` }, w.state)),
      h("td", {}, w.placements.length ? w.placements.map((p) => h("div", {},
        h("a", { href: `#/site/${encodeURIComponent(p.site || "")}` }, p.site || ""), p.site ? " · " : "", p.host_id, ": ",
        p.devices.map((dev, i) => [i ? ", " : "", dev.includes("/") && !dev.includes("?")
          ? h("a", { href: `#/device/${dev.split("/").map(encodeURIComponent).join("/")}` }, dev) : dev]))) : "—"),
      h("td", {}, fmtAgo(w.updated_at))))));
}

export function workloadsView({ items, more, me, filter }, setFilter, loadMore) {
  const scope = me && !me.sees_all_tenants ? `Workloads of tenant ${me.tenant}` : "Workloads of every tenant";
  const select = h("select", { "aria-label": "state", onchange: (e) => setFilter(e.target.value) },
    ["", "pending", "placed", "running", "succeeded", "failed", "preempted"].map((st) =>
      h("option", { value: st, selected: st === filter ? true : null }, st || "any state")));
  const panel = h("section", { class: "panel" }, h("h2", {}, scope, " ", select));
  if (!items) panel.append(state("Loading…", "loading"));
  else if (!items.length) panel.append(state("No workloads yet. Submit one with POST /v1/workloads or `xpumesh submit`."));
  else {
    panel.append(workloadTable(items));
    if (more) panel.append(h("button", { type: "button", class: "more-btn", onclick: loadMore }, "Load more"));
  }
  return h("div", { class: "workloads" }, panel);
}
