// The services view: every service endpoint the key may see, its traffic as this gateway forwarded it
// (GET /v1/endpoint-stats: request rate, error ratio and latency p50/p99 over the last window, totals since
// the gateway started) and its replicas by host and chip from each service's placement (GET
// /v1/workloads/{id}): state, readiness, whether the simulator answers for it, and what it runs. Chip
// models come from the inventory (GET /v1/hosts/{id}), read once per host and kept (they do not change).

import { fmtNum, h } from "./charts.js";

const MAX_HOST_LOOKUPS = 64; // per refresh; the rest are read on the next ones

// What the page needs: the stats, each service's workload view, and the inventory's devices by id.
export async function loadServices(get, ApiError, hostDevices) {
  const stats = await get("/v1/endpoint-stats");
  const ids = [...new Set(stats.items.flatMap((e) => e.workloads))];
  const views = await Promise.all(ids.map((id) => get(`/v1/workloads/${encodeURIComponent(id)}`).catch((err) => {
    if (err instanceof ApiError && err.status === 404) return null; // ended between the two reads
    throw err;
  })));
  const workloads = new Map(ids.map((id, i) => [id, views[i]]));
  const hosts = [...new Set(views.flatMap((v) => (v ? v.placement : [])).map((p) => p.host_id).filter(Boolean))]
    .filter((id) => !hostDevices.has(id)).slice(0, MAX_HOST_LOOKUPS);
  await Promise.all(hosts.map(async (id) => {
    try {
      const host = await get(`/v1/hosts/${encodeURIComponent(id)}`);
      hostDevices.set(id, new Map(host.devices.map((d) => [d.id, d])));
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) throw err;
      hostDevices.set(id, new Map()); // not in the inventory (yet): chips show their ids only
    }
  }));
  return { stats, workloads };
}

function ms(v) {
  if (v === null || v === undefined) return "—";
  return `${v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US")} ms`;
}

function rate(v) { return `${v < 10 ? v.toFixed(2) : v.toFixed(1)}/s`; }

function ratio(v) {
  if (v === null || v === undefined) return "—";
  return `${(v * 100).toFixed(v && v < 0.01 ? 2 : 1)}%`;
}

function figure(label, value, cls, title) {
  return h("div", { class: `stat ${cls || ""}`, title }, h("b", {}, value), h("span", {}, label));
}

// What a replica runs. The model catalog is to add the model and the build chosen per replica to the
// placement (e.g. p.model, p.build); until the placement carries them, the variant of the spec that the
// replica's hardware chose is what there is, with its image or command.
function runs(p, spec) {
  if (p.model || p.build) return h("span", { class: "runs" }, [p.model, p.build].filter(Boolean).join(" · "));
  if (!p.variant) return h("span", { class: "runs muted" }, p.state === "pending" ? "—" : "as submitted");
  const v = spec.variants?.[p.variant] || {};
  const what = v.image || (v.command || []).join(" ");
  return h("span", { class: "runs", title: what || null }, h("b", {}, p.variant),
    what ? h("small", {}, ` ${what.length > 48 ? `${what.slice(0, 47)}…` : what}`) : "");
}

function chips(p, devices) {
  if (!p.devices.length) return h("span", { class: "muted" }, p.host_id ? "CPU only" : "—");
  return p.devices.map((d) => {
    const inv = devices?.get(d.id);
    const label = [d.hardware_type, inv?.model].filter(Boolean).join(" · ");
    const share = d.share < 1 ? ` ×${d.share}` : "";
    const text = [h("code", {}, d.id), " ", h("small", {}, `${label}${share}`)];
    return inv ? h("a", { class: "dev", href: `#/device/${encodeURIComponent(p.host_id)}/${inv.slot}`, "data-device": d.id }, text)
      : h("span", { class: "dev", "data-device": d.id }, text);
  });
}

function readiness(p) {
  if (p.ready === true) return h("span", { class: "pill ok" }, "ready");
  if (p.ready === false) return h("span", { class: "pill warn" }, "not ready");
  return h("span", { class: "muted" }, "—");
}

function replicaRows(wid, view, hostDevices) {
  if (!view) return [h("tr", {}, h("td", { colspan: 7, class: "muted" }, `${wid}: ended`))];
  const tag = view.draining ? h("span", { class: "pill warn" }, "draining") : view.replaces ? h("span", { class: "pill" }, "update") : "";
  return view.placement.map((p, i) => h("tr", { "data-replica": `${wid}/${p.replica}`, class: p.simulated ? "sim" : "" },
    h("td", {}, h("b", {}, `#${p.replica}`), i ? "" : [" ", h("small", { title: "the service (workload) behind it" }, wid), tag ? " " : "", tag]),
    h("td", {}, h("span", { class: `pill state-${p.state}` }, p.state)),
    h("td", { class: "r-ready" }, readiness(p)),
    h("td", { class: "r-host" }, p.host_id ? [p.site ? h("a", { href: `#/site/${encodeURIComponent(p.site)}` }, p.site) : "",
      p.site ? " · " : "", p.host_id] : h("span", { class: "muted" }, "not placed")),
    h("td", { class: "r-chips" }, chips(p, hostDevices.get(p.host_id))),
    h("td", { class: "r-runs" }, runs(p, view.spec)),
    h("td", { class: "r-sim" }, p.simulated ? h("span", { class: "pill sim", title: "answered by the simulator's built-in responder" }, "simulated")
      : p.host_id ? h("span", { class: "muted" }, "real") : "")));
}

function serviceCard(e, workloads, hostDevices) {
  const views = e.workloads.map((id) => workloads.get(id));
  const wanted = views.reduce((n, v) => n + (v && !v.draining ? v.replicas : 0), 0);
  const head = h("h2", {}, h("span", { class: "svc-name" }, e.name), h("small", {}, e.tenant || "—"),
    h("code", { class: "svc-url" }, e.url),
    h("span", { class: `pill ${e.replicas_ready ? "ok" : "bad"} svc-ready` }, `${e.replicas_ready} ready${wanted ? ` of ${wanted}` : ""}`),
    e.simulated ? h("span", { class: "pill sim svc-sim" }, `${e.simulated} simulated`) : "");
  const errCls = e.error_ratio ? (e.error_ratio >= 0.05 ? "bad" : "warn") : "";
  const stats = h("div", { class: "stats svc-stats" },
    figure("requests/s", rate(e.rate_per_s), "s-rate", `over the last ${Math.round(e.window_s)} s`),
    figure("errors", ratio(e.error_ratio), `s-errors ${errCls}`, `${fmtNum(e.errors)} of ${fmtNum(e.requests)} in the last ${Math.round(e.window_s)} s`),
    figure("latency p50", ms(e.latency_p50_ms), "s-p50", "time to the replica's response headers"),
    figure("latency p99", ms(e.latency_p99_ms), "s-p99"),
    figure("requests", fmtNum(e.requests_total), "s-requests", "since this gateway instance started"),
    figure("failed", fmtNum(e.errors_total), `s-failed ${e.errors_total ? "warn" : ""}`, "5xx answers and broken streams since it started"));
  const table = h("table", { class: "replica-table" },
    h("thead", {}, h("tr", {}, ["replica", "state", "ready", "host", "chips", "runs", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, e.workloads.flatMap((id) => replicaRows(id, workloads.get(id), hostDevices))));
  return h("section", { class: "panel service", "data-endpoint": `${e.tenant || ""}:${e.name}` }, head, stats, table);
}

export function servicesView({ data, me, hostDevices }) {
  const scope = me && !me.sees_all_tenants ? `Services of tenant ${me.tenant}` : "Services of every tenant";
  const root = h("div", { class: "services" });
  const intro = h("section", { class: "panel" }, h("h2", {}, scope));
  root.append(intro);
  if (!data) {
    intro.append(h("p", { class: "state state-loading" }, "Loading…"));
    return root;
  }
  const { stats, workloads } = data;
  intro.append(h("p", { class: "svc-note" }, `Traffic as gateway instance ${stats.instance} forwarded it: rates, errors and `
    + "latency over the last minute, totals since it started. Each gateway instance counts its own."));
  if (!stats.items.length) {
    intro.append(h("p", { class: "state state-empty" }, "No service is running. Submit one with kind \"service\" "
      + "(POST /v1/workloads); it is called through /v1/endpoints/{name}/."));
    return root;
  }
  root.append(...stats.items.map((e) => serviceCard(e, workloads, hostDevices)));
  return root;
}
