// The dashboard: sign-in, routing (#/, #/site/<id>, #/device/<host>/<slot>, #/workloads, #/services, #/quotas),
// data refresh and live updates.
//
// Live: events come from GET /v1/events (Server-Sent Events, read with fetch so the key travels
// in the Authorization header); an alert, device, host or workload event refreshes what is on
// screen at once. Utilisation is not an event, so the summary is also polled every 5 s; while
// the event stream is unavailable everything is polled every 5 s and the header says so.

import { ApiError, get, session, stream } from "./api.js";
import { quotasView } from "./quotas.js";
import { loadServices, servicesView } from "./services.js";
import { RANGES, deviceView, overview, siteView, state as stateEl, totalsBar, workloadsView } from "./views.js";

const POLL_MS = 5000;
const CHART_MS = 30000;
const EVENT_TYPES = ["io.xpumesh.alert.*", "io.xpumesh.device.*", "io.xpumesh.host.*", "io.xpumesh.workload.*"];
const $ = (id) => document.getElementById(id);
const TABS = ["workloads", "services", "quotas"];
const data = { me: null, sites: null, summary: null, alerts: null, typeSeries: null, typeSeriesAt: 0,
  hostDevices: new Map() }; // host id → its devices by id (models for the services view), kept: they do not change
const page = { route: null, hosts: null, cursor: null, siteSeries: null, device: null, series: null, range: "1h",
  workloads: null, wlCursor: null, wlFilter: "", quotas: null, services: null };
let streamAbort = null;
let refreshTimer = null;
let pollTimer = null;

// --- sign-in --------------------------------------------------------------------------
function askForKey(message) {
  const dialog = $("signin");
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  $("key").focus();
}

async function whoAmI() {
  const me = await get("/v1/me");
  return { ...me, sees_all_tenants: me.role === "admin" || me.role === "operator" };
}

async function signIn(key) {
  session.key = key;
  try {
    data.me = await whoAmI();
  } catch (err) {
    session.key = null;
    throw err;
  }
}

function signOut(message) {
  session.key = null;
  data.me = null;
  stopLive();
  $("who").textContent = "";
  $("signout").hidden = true;
  setLive("offline");
  $("view").replaceChildren(stateEl("Signed out."));
  askForKey(message);
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  $("signin-submit").disabled = true;
  try {
    await signIn(key);
    $("signin").close();
    $("key").value = "";
    start();
  } catch (err) {
    askForKey(err instanceof ApiError && err.status === 401 ? "That key was not accepted." : describe(err));
  } finally {
    $("signin-submit").disabled = false;
  }
});
$("signin").addEventListener("cancel", (e) => e.preventDefault());
$("signout").addEventListener("click", () => signOut());

// --- errors ---------------------------------------------------------------------------
function describe(err) {
  if (err instanceof ApiError) return err.detail ? `${err.title} — ${err.detail}` : err.title;
  return "Something went wrong; retrying.";
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) { signOut("Your key is no longer accepted; sign in again."); return; }
  const banner = $("banner");
  banner.textContent = `${describe(err)} (retrying every ${POLL_MS / 1000} s)`;
  banner.hidden = false;
}

function clearError() { $("banner").hidden = true; }

// --- data -----------------------------------------------------------------------------
async function loadSites() {
  try {
    const body = await get("/v1/sites", { limit: 500 });
    data.sites = (Array.isArray(body) ? body : body.items || []).map((x) => ({ id: x.id ?? x.site, city: x.city,
      lat: x.lat, lon: x.lon }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) throw err;
    data.sites = []; // no site catalogue: cities still appear, laid out without coordinates
  }
}

async function refreshFleet() {
  const [summary, alerts] = await Promise.all([get("/v1/metrics/summary"), get("/v1/alerts", { limit: 200 })]);
  data.summary = summary;
  data.alerts = alerts;
  $("totals").replaceChildren(...totalsBar(summary));
  if (Date.now() - data.typeSeriesAt > CHART_MS) await refreshTypeSeries();
}

async function refreshTypeSeries() {
  const types = (data.summary?.totals.by_type || []).map((t) => t.hardware_type);
  const start = new Date(Date.now() - 3600_000).toISOString();
  data.typeSeries = await Promise.all(types.map((t) =>
    get("/v1/metrics/series", { scope: "hardware_type", key: t, start, step: 60 })));
  data.typeSeriesAt = Date.now();
}

async function refreshPage(full) {
  const r = page.route;
  if (r.name === "site") {
    const start = new Date(Date.now() - 3600_000).toISOString();
    const [hosts, series] = await Promise.all([
      get(`/v1/metrics/sites/${encodeURIComponent(r.site)}/hosts`, { limit: Math.max(100, page.hosts?.length || 0) }),
      full || !page.siteSeries ? get("/v1/metrics/series", { scope: "site", key: r.site, start, step: 60 }).catch(() => null)
        : page.siteSeries]);
    page.hosts = hosts.items;
    page.cursor = hosts.next_cursor;
    page.siteSeries = series;
  } else if (r.name === "device") {
    const [span, step] = RANGES[page.range];
    const start = new Date(Date.now() - span * 1000).toISOString();
    const [detail, series] = await Promise.all([
      get(`/v1/metrics/devices/${encodeURIComponent(r.host)}/${r.slot}`),
      get("/v1/metrics/series", { scope: "device", key: `${r.host}/${r.slot}`, start, step })]);
    page.device = detail;
    page.series = series;
  } else if (r.name === "workloads") {
    const body = await get("/v1/metrics/workloads", { state: page.wlFilter, limit: Math.max(100, page.workloads?.length || 0) });
    page.workloads = body.items;
    page.wlCursor = body.next_cursor;
  } else if (r.name === "quotas") {
    page.quotas = (await get("/v1/quotas")).items;
  } else if (r.name === "services") {
    page.services = await loadServices(get, ApiError, data.hostDevices);
  }
}

// --- rendering ------------------------------------------------------------------------
function go(hash) { if (location.hash !== hash) location.hash = hash; else route(); }

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "site" && parts[1]) return { name: "site", site: parts[1] };
  if (parts[0] === "device" && parts[1] && /^\d+$/.test(parts[2] || "")) return { name: "device", host: parts[1], slot: Number(parts[2]) };
  if (parts[0] === "workloads") return { name: "workloads" };
  if (parts[0] === "quotas") return { name: "quotas" };
  if (parts[0] === "services") return { name: "services" };
  return { name: "overview" };
}

function render() {
  const r = page.route;
  let node;
  if (r.name === "site") {
    node = siteView(r.site, { sites: data.sites, summary: data.summary, hosts: page.hosts, series: page.siteSeries, more: !!page.cursor },
      go, loadMoreHosts);
  } else if (r.name === "device") {
    node = page.device ? deviceView(page.device, page.series, page.range, go, setRange) : stateEl("Loading…", "loading");
  } else if (r.name === "workloads") {
    node = workloadsView({ items: page.workloads, more: !!page.wlCursor, me: data.me, filter: page.wlFilter }, setFilter, loadMoreWorkloads);
  } else if (r.name === "quotas") {
    node = quotasView({ items: page.quotas, me: data.me });
  } else if (r.name === "services") {
    node = servicesView({ data: page.services, me: data.me, hostDevices: data.hostDevices });
  } else {
    node = overview(data, go);
  }
  const y = window.scrollY;
  $("view").replaceChildren(node);
  window.scrollTo(0, y);
  for (const a of document.querySelectorAll(".tabs a")) {
    a.classList.toggle("on", a.dataset.tab === (TABS.includes(r.name) ? r.name : "overview"));
  }
}

async function route() {
  const r = parseRoute();
  const same = page.route && JSON.stringify(page.route) === JSON.stringify(r);
  page.route = r;
  if (!same) Object.assign(page, { hosts: null, cursor: null, siteSeries: null, device: null, series: null, workloads: null, wlCursor: null, quotas: null, services: null });
  render();
  try {
    await refreshPage(true);
    clearError();
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && r.name === "device") {
      $("view").replaceChildren(stateEl(`No device ${r.host}/${r.slot} — it may have been removed.`, "error"));
      return;
    }
    showError(err);
  }
  if (page.route === r) render();
}

async function loadMoreHosts() {
  try {
    const body = await get(`/v1/metrics/sites/${encodeURIComponent(page.route.site)}/hosts`, { cursor: page.cursor, limit: 100 });
    page.hosts = [...page.hosts, ...body.items];
    page.cursor = body.next_cursor;
    render();
  } catch (err) { showError(err); }
}

async function loadMoreWorkloads() {
  try {
    const body = await get("/v1/metrics/workloads", { state: page.wlFilter, cursor: page.wlCursor, limit: 100 });
    page.workloads = [...page.workloads, ...body.items];
    page.wlCursor = body.next_cursor;
    render();
  } catch (err) { showError(err); }
}

function setRange(r) { page.range = r; page.series = null; route(); }
function setFilter(f) { page.wlFilter = f; page.workloads = null; route(); }

// --- live -----------------------------------------------------------------------------
function setLive(mode) {
  const el = $("live");
  el.textContent = mode === "sse" ? "live" : mode === "poll" ? `polling every ${POLL_MS / 1000} s` : "offline";
  el.className = `live live-${mode}`;
}

async function tick(full = false) {
  if (!session.key) return;
  try {
    await refreshFleet();
    await refreshPage(full);
    clearError();
    render();
  } catch (err) {
    showError(err);
  }
}

function soon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => tick(), 250);
}

async function follow() {
  streamAbort = new AbortController();
  try {
    await stream("/v1/events", { type: EVENT_TYPES }, (ev) => {
      let type = ev.event;
      try { type = JSON.parse(ev.data).type || type; } catch (_) { /* keep the SSE event name */ }
      if (/\.(alert|device|host|workload)\./.test(type)) soon();
    }, { signal: streamAbort.signal, onOpen: () => setLive("sse") });
  } finally {
    streamAbort = null;
  }
}

async function liveLoop() {
  while (session.key) {
    try {
      await follow();
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err instanceof ApiError && err.status === 401) return;
    }
    setLive("poll");
    await new Promise((res) => setTimeout(res, 10_000)); // retry the stream; polling carries on meanwhile
  }
}

function stopLive() {
  clearInterval(pollTimer);
  if (streamAbort) streamAbort.abort();
}

async function start() {
  $("who").textContent = `${data.me.role} · ${data.me.tenant}`;
  $("signout").hidden = false;
  setLive("poll");
  try {
    await loadSites();
    await refreshFleet();
    clearError();
  } catch (err) {
    showError(err);
  }
  await route();
  pollTimer = setInterval(() => tick(), POLL_MS);
  liveLoop();
}

window.addEventListener("hashchange", () => { if (session.key) route(); });
document.addEventListener("visibilitychange", () => { if (!document.hidden && session.key) tick(); });

(async function boot() {
  if (!session.key) { askForKey(); return; }
  try {
    data.me = await whoAmI();
    start();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signOut("Your key is no longer accepted; sign in again.");
    else { showError(err); askForKey(describe(err)); }
  }
})();

