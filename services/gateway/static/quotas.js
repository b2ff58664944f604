// The quotas view: per tenant and resource the guarantee (min), the limit (max), what is held and what of
// it is borrowed above the guarantee, the workloads that borrow (preemptible ones may be reclaimed for a
// tenant below its min) and the dominant share that orders borrowers. Data: GET /v1/quotas.

import { h } from "./charts.js";

const NAMES = { compute_units: "compute units", cpu: "CPUs", memory_gib: "memory GiB" };

function num(v) {
  if (v === null || v === undefined) return "—";
  return Number.isInteger(v) ? v.toLocaleString("en-US") : v.toLocaleString("en-US", { maximumFractionDigits: 2 });
}

// One bar: the part within min (green), the part borrowed above it (amber), the max as the whole.
function usageBar(r) {
  const whole = Math.max(r.max ?? 0, r.used, r.min, 1e-9);
  const own = Math.min(r.used, r.min) / whole * 100;
  const lent = r.borrowed / whole * 100;
  const mark = r.min > 0 ? h("span", { class: "quota-min", style: `left:${(r.min / whole) * 100}%` }) : "";
  return h("span", { class: "quota-bar", title: `min ${num(r.min)} · max ${num(r.max)} · used ${num(r.used)}` },
    h("span", { class: "quota-own", style: `width:${own}%` }),
    h("span", { class: "quota-lent", style: `width:${lent}%` }), mark);
}

function tenantRows(u) {
  const names = Object.keys(u.resources);
  if (!names.length) {
    return [h("tr", { "data-tenant": u.tenant }, h("td", {}, h("b", {}, u.tenant)),
      h("td", { colspan: 6 }, "no quota, nothing held"))];
  }
  return names.map((name, i) => {
    const r = u.resources[name];
    return h("tr", { "data-tenant": u.tenant, "data-resource": name, class: r.borrowed > 0 ? "borrowing" : "" },
      h("td", {}, i ? "" : h("b", {}, u.tenant)),
      h("td", {}, NAMES[name] || name),
      h("td", { class: "n" }, num(r.min)), h("td", { class: "n" }, num(r.max)),
      h("td", { class: "n q-used" }, num(r.used)), h("td", { class: "n q-lent" }, num(r.borrowed)),
      h("td", {}, usageBar(r)));
  });
}

export function quotasView({ items, me }) {
  const scope = me && !me.sees_all_tenants ? `Quota of tenant ${me.tenant}` : "Quotas of every tenant";
  const panel = h("section", { class: "panel" }, h("h2", {}, scope));
  if (!items) {
    panel.append(h("p", { class: "state state-loading" }, "Loading…"));
    return h("div", { class: "quotas" }, panel);
  }
  if (!items.length) {
    panel.append(h("p", { class: "state state-empty" }, "No tenant has a quota or running work. Admins set one "
      + "with PUT /v1/tenants/{tenant}/quota."));
    return h("div", { class: "quotas" }, panel);
  }
  panel.append(h("table", { class: "quota-table" },
    h("thead", {}, h("tr", {}, ["tenant", "resource", "min", "max", "used", "borrowed", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, items.flatMap(tenantRows))));
  panel.append(h("ul", { class: "quota-notes" }, items.map((u) => h("li", { "data-tenant": u.tenant },
    h("b", {}, u.tenant), `: dominant share ${(u.dominant_share * 100).toFixed(1)} %`,
    u.borrowing.length ? ` · ${u.borrowing.length} workload${u.borrowing.length === 1 ? "" : "s"} borrowing `
      + "(reclaimable while preemptible)" : " · nothing borrowed"))));
  return h("div", { class: "quotas" }, panel);
}
