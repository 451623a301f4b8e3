// The operator's console. Everything shown comes from the REST API (/v1),
// called with the token kept in this browser (localStorage) as
// "Authorization: Bearer <token>". The active tab is refreshed every
// REFRESH_MS; the monitoring endpoints may not exist yet (404: "no data yet").
"use strict";

const REFRESH_MS = 3000;
const TOKEN_KEY = "legateToken";
const METRICS = ["rps", "error_rate", "p99_ms"];
const ui = { tab: "fleet", service: null, diffFor: null, armed: null, me: null, charts: {}, problems: [] };

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const cell = (html, cls) => `<td${cls ? ` class="${cls}"` : ""}>${html}</td>`;
const dash = '<span class="muted">–</span>';
const row = (cols, html) => `<tr><td colspan="${cols}" class="muted">${html}</td></tr>`;
const num = (v, digits) => (v === null || v === undefined || Number.isNaN(v) ? dash : Number(v).toFixed(digits ?? 0));
const pct = (v) => (v === null || v === undefined ? dash : (100 * v).toFixed(2) + " %");
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
// What an empty table says: `none` when the API answered, else why not.
const emptyRow = (cols, r, path, none) => row(cols, r.status === 200 ? none : `cannot read ${path} (${r.status || "no answer"})`);
const ago = (ms) => (ms ? `${Math.max(0, Math.round((Date.now() - ms) / 1000))} s ago` : dash);

// One API call: {status, body}. 401 and 403 are noted for the banner; other
// failures are returned for the caller to show (404: the endpoint is not there).
async function api(path, options) {
  const token = localStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token) headers.Authorization = "Bearer " + token;
  let r;
  try {
    r = await fetch(path, Object.assign({}, options || {}, { headers }));
  } catch (e) {
    ui.problems.push(`cannot reach the API (${path}): ${e.message}`);
    return { status: 0, body: null };
  }
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (r.status === 401 || r.status === 403) {
    const msg = (body && body.message) || r.statusText;
    ui.problems.push(`${r.status} ${r.status === 401 ? "unauthenticated" : "forbidden"}: ${msg}` +
      (r.status === 401 ? " — enter a token above (legate ctl token create --role viewer)" : ""));
  }
  return { status: r.status, body };
}

// A list out of an answer that is either a list or an object holding one.
function listOf(body, key) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body[key])) return body[key];
  if (body && Array.isArray(body.items)) return body.items;
  return [];
}

function showProblems() {
  const unique = [...new Set(ui.problems)];
  $("problem").hidden = unique.length === 0;
  $("problem").innerHTML = unique.map((p) => `<div>${esc(p)}</div>`).join("");
  ui.problems = [];
}

// ---- who is calling --------------------------------------------------------

async function refreshMe() {
  const r = await api("/v1/whoami");
  ui.me = r.status === 200 ? r.body : null;
  const who = ui.me ? (ui.me.open ? "open API (no tokens yet)" : `${ui.me.name} · ${ui.me.role}`) : "not signed in";
  $("who").textContent = who;
  document.body.dataset.role = ui.me ? ui.me.role : "";
}

const may = (what) => Boolean(ui.me && ui.me.may && ui.me.may[what]);

// ---- fleet -----------------------------------------------------------------

function typeLine(kind, t) {
  const synced = t.sent_version && t.sent_version === t.acked_version;
  const acked = t.acked_version ? esc(t.acked_version.slice(0, 10)) : "none";
  const state = synced ? '<span class="ok">✓</span>' : `<span class="warn">/ ${esc((t.sent_version || "").slice(0, 10))}</span>`;
  const rev = t.acked_revision ? ` <span class="muted">r${t.acked_revision}</span>` : "";
  return `<div><code>${esc(kind)}</code> <code class="acked">${acked}</code> ${state}${rev} <span class="muted">(${t.resources})</span></div>`;
}

// The revision the proxy holds (the oldest over its types) and how far
// behind the current revision that is.
function proxyState(p, current) {
  const types = Object.values(p.types || {});
  const held = types.length ? Math.min(...types.map((t) => t.acked_revision || 0)) : 0;
  const lag = current !== null && held ? current - held : null;
  const at = held ? `<div class="muted small">holds r${held}${lag ? ` · ${plural(lag, "revision", "revisions")} behind` : ""}</div>` : "";
  if (types.some((t) => t.last_nack && t.acked_version !== t.sent_version)) return `<span class="nack">NACK</span>${at}`;
  const behind = types.filter((t) => t.sent_version !== t.acked_version).length;
  if (behind) return `<span class="warn">${behind} type(s) waiting for ACK</span>${at}`;
  return (lag ? `<span class="warn">lagging</span>` : '<span class="ok">in sync</span>') + at;
}

function proxyRow(p, reports, current) {
  const types = Object.entries(p.types || {});
  const nack = types.filter(([, t]) => t.last_nack)
    .map(([k, t]) => `<div class="nack"><code>${esc(k)}</code> ${esc(t.last_nack.at)}: ${esc(t.last_nack.error)}</div>`).join("") || dash;
  const rep = reports.get(p.node.id);
  const report = rep ? `${ago(rep.last_report_ms)} <span class="muted">(${esc(rep.source)}, ${num(rep.rps, 1)} rps)</span>` : '<span class="muted">no data yet</span>';
  return `<tr data-node="${esc(p.node.id)}">` + cell(`<b>${esc(p.node.id)}</b>`) + cell(esc(p.node.cluster)) +
    cell(esc(p.node.user_agent)) + cell(esc(p.mode)) + cell(esc(p.connected_since), "time") +
    cell(types.map(([k, t]) => typeLine(k, t)).join("")) + cell(proxyState(p, current)) + cell(nack) + cell(report) + "</tr>";
}

async function renderFleet() {
  const [p, top, rep] = await Promise.all([api("/v1/proxies"), api("/v1/top/proxies?window=5m"), api("/v1/replica")]);
  const current = rep.status === 200 ? rep.body.revision : null;
  const reports = new Map(listOf(top.status === 200 ? top.body : null, "proxies").map((r) => [r.node, r]));
  const proxies = p.status === 200 ? listOf(p.body, "proxies") : [];
  $("proxies").innerHTML = proxies.map((x) => proxyRow(x, reports, current)).join("") || emptyRow(9, p, "/v1/proxies", "no proxy connected");
}

// ---- services and their charts --------------------------------------------

function serviceRow(s) {
  const sel = s.service === ui.service ? " selected" : "";
  const errCls = s.error_rate > 0.05 ? "bad" : "";
  return `<tr class="pick${sel}" data-service="${esc(s.service)}">` + cell(`<b>${esc(s.service)}</b>`) +
    cell(num(s.proxies)) + cell(num(s.requests)) + cell(num(s.rps, 2)) + cell(num(s.errors)) + cell(pct(s.error_rate), errCls) +
    cell(`${num(s.rq_2xx)} / ${num(s.rq_4xx)} / ${num(s.rq_5xx)}`) +
    cell(`${num(s.p50_ms, 1)} / ${num(s.p90_ms, 1)} / ${num(s.p99_ms, 1)}`) + cell(num(s.retries)) + cell(num(s.timeouts)) +
    cell(`${num(s.active_rq)} / ${num(s.active_cx)}`) + cell(`${num(s.ejected)} / ${num(s.unhealthy)}`) + "</tr>";
}

// Service names from the configuration, for when no figures exist yet.
async function configuredServices() {
  const r = await api("/v1/envoy/Cluster");
  return r.status === 200 ? listOf(r.body, "items").map((i) => i.name) : [];
}

async function renderServices() {
  const top = await api("/v1/top/services?window=5m");
  let services = top.status === 200 ? listOf(top.body, "services") : [];
  let figures = true;
  if (!services.length) {
    figures = false;
    services = (await configuredServices()).map((name) => ({ service: name }));
  }
  if (!ui.service || !services.some((s) => s.service === ui.service)) ui.service = services.length ? services[0].service : null;
  $("services").innerHTML = figures ? services.map(serviceRow).join("") :
    services.map((s) => `<tr class="pick${s.service === ui.service ? " selected" : ""}" data-service="${esc(s.service)}">` +
      cell(`<b>${esc(s.service)}</b>`) + `<td colspan="11" class="muted">no data yet</td></tr>`).join("") ||
    row(12, "no service yet");
  $("charts-title").textContent = ui.service ? `${ui.service} · last 15 minutes` : "";
  await Promise.all(METRICS.map((m) => renderChart(m)));
}

function chartBox(metric) {
  return document.querySelector(`.chart[data-metric="${metric}"]`);
}

function dropChart(metric) {
  if (ui.charts[metric]) ui.charts[metric].plot.destroy();
  delete ui.charts[metric];
}

async function renderChart(metric) {
  const box = chartBox(metric);
  const plotDiv = box.querySelector(".plot");
  if (!ui.service) { dropChart(metric); plotDiv.innerHTML = '<div class="empty muted">no service yet</div>'; return; }
  const q = `service=${encodeURIComponent(ui.service)}&metric=${metric}&window=15m&step=10s`;
  const r = await api("/v1/series?" + q);
  const points = r.status === 200 && r.body && Array.isArray(r.body.points) ? r.body.points : null;
  box.dataset.points = points ? points.length : 0;
  box.dataset.values = points ? points.filter((p) => p.v !== null && p.v !== undefined).length : 0;
  box.dataset.service = ui.service;
  if (!points || !points.length) {
    dropChart(metric);
    plotDiv.innerHTML = `<div class="empty muted">no data yet${r.status && r.status !== 200 ? ` (${r.status})` : ""}</div>`;
    return;
  }
  drawChart(metric, plotDiv, points);
}

function drawChart(metric, plotDiv, points) {
  const data = [points.map((p) => p.t / 1000), points.map((p) => (p.v === undefined ? null : p.v))];
  const existing = ui.charts[metric];
  if (existing && existing.service === ui.service) { existing.plot.setData(data); return; }
  dropChart(metric);
  plotDiv.innerHTML = "";
  const colors = { rps: "#2f6fdf", error_rate: "#b3261e", p99_ms: "#a15c00" };
  const width = Math.max(320, plotDiv.clientWidth || 380);
  const opts = {
    width, height: 170, legend: { show: true },
    scales: { x: { time: true } },
    series: [{}, { label: metric, stroke: colors[metric], width: 2, fill: colors[metric] + "22", spanGaps: false }],
    axes: [{}, { size: 55 }],
  };
  ui.charts[metric] = { plot: new uPlot(opts, data, plotDiv), service: ui.service };
}

// ---- endpoints -------------------------------------------------------------

const healthClass = (h) => (h === "HEALTHY" || h === "UNKNOWN" ? "ok" : h === "DEGRADED" ? "warn" : "bad");

function endpointRows(cla) {
  const spec = cla.resource || {};
  const rows = [];
  (spec.endpoints || []).forEach((group) => {
    const loc = group.locality ? [group.locality.region, group.locality.zone, group.locality.sub_zone].filter(Boolean).join("/") : "";
    (group.lb_endpoints || []).forEach((e) => {
      const sa = (((e.endpoint || {}).address || {}).socket_address) || {};
      const health = e.health_status || "UNKNOWN";
      rows.push(`<tr data-cluster="${esc(spec.cluster_name || cla.name)}">` + cell(esc(spec.cluster_name || cla.name)) +
        cell(`<code>${esc(sa.address)}:${esc(sa.port_value)}</code>`) +
        cell(esc(health === "UNKNOWN" ? "healthy (not checked)" : health.toLowerCase()), healthClass(health)) +
        cell(num(e.load_balancing_weight || 1)) + cell(num(group.priority || 0)) + cell(esc(loc) || dash) + "</tr>");
    });
  });
  return rows.join("");
}

async function renderEndpoints() {
  const [c, i, l] = await Promise.all([api("/v1/envoy/ClusterLoadAssignment"), api("/v1/instances"), api("/v1/load")]);
  $("endpoints").innerHTML = listOf(c.body, "items").map(endpointRows).join("") ||
    emptyRow(6, c, "/v1/envoy/ClusterLoadAssignment", "no load assignment");
  $("instances").innerHTML = listOf(i.body, "instances").map((x) => "<tr>" + cell(esc(x.service)) + cell(esc(x.id)) +
    cell(`<code>${esc(x.address)}:${esc(x.port)}</code>`) +
    cell(esc(Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ")) || dash) +
    cell(esc(x.registered_at)) + cell(`${num(x.expires_in, 1)} s`) + "</tr>").join("") ||
    emptyRow(6, i, "/v1/instances", "no registered instance");
  $("load").innerHTML = l.status === 200 ? `<pre>${esc(JSON.stringify(l.body, null, 1))}</pre>` : "no data yet";
}

// ---- revisions, diff and rollback -----------------------------------------

function rollbackButton(rev, current) {
  if (!may("rollback") || rev === current) return "";
  const armed = ui.armed === rev;
  return `<button class="rollback${armed ? " confirm" : ""}" data-rollback="${rev}">${armed ? `confirm roll back to ${rev}` : `roll back to ${rev}`}</button>`;
}

async function renderRevisions() {
  const r = await api("/v1/revisions");
  const revs = r.status === 200 ? listOf(r.body, "revisions") : [];
  const current = revs.length ? revs[0].revision : null;
  $("revisions").innerHTML = revs.map((v) =>
    `<tr class="pick${v.revision === ui.diffFor ? " selected" : ""}" data-revision="${v.revision}">` +
    cell(`<b>${v.revision}</b>${v.revision === current ? ' <span class="ok small">current</span>' : ""}`) +
    cell(esc(v.created_at), "time") + cell(esc(v.author)) + cell(esc(v.message)) + cell(esc((v.changes || []).join(", "))) +
    cell(rollbackButton(v.revision, current)) + "</tr>").join("") || emptyRow(6, r, "/v1/revisions", "no revision yet");
  $("rollback-note").textContent = ui.me && !may("rollback") ? `· role ${ui.me.role} may not roll back` : "";
  if (ui.diffFor === null && current !== null) ui.diffFor = current;
  if (ui.diffFor !== null) await renderDiff(ui.diffFor);
}

const showValue = (v) => (v === null || v === undefined ? "∅" : JSON.stringify(v));

async function renderDiff(rev) {
  $("diff-title").textContent = `revision ${rev}: what changed from ${rev - 1}`;
  if (rev <= 1) { $("diff").innerHTML = '<div class="muted">the first revision</div>'; return; }
  const r = await api(`/v1/diff?from=${rev - 1}&to=${rev}`);
  const changes = r.status === 200 ? listOf(r.body, "changes") : [];
  $("diff").innerHTML = changes.map((c) => `<div class="diff-change"><b>${esc(c.change)}</b> <code>${esc(c.resource)}</code>` +
    (c.fields || []).map((f) => `<div class="diff-field"><code>${esc(f.path)}</code>: <span class="from">${esc(showValue(f.from))}</span> → <span class="to">${esc(showValue(f.to))}</span></div>`).join("") +
    "</div>").join("") || `<div class="muted">${r.status === 200 ? "no change" : `cannot read the diff (${r.status})`}</div>`;
}

async function rollback(rev) {
  const r = await api("/v1/rollback", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ revision: rev, message: `rollback to ${rev} from the console` }),
  });
  ui.armed = null;
  if (r.status !== 200 && r.status !== 401 && r.status !== 403) ui.problems.push(`rollback failed (${r.status}): ${(r.body && r.body.message) || ""}`);
  ui.diffFor = null;
}

// ---- alerts ----------------------------------------------------------------

async function renderAlerts() {
  const r = await api("/v1/alerts");
  if (r.status !== 200) {
    const why = `no data yet${r.status === 404 ? "" : ` (${r.status})`}`;
    $("alert-rules").innerHTML = row(8, why);
    $("alert-history").innerHTML = row(5, why);
    return;
  }
  const rules = listOf(r.body, "rules");
  const order = { firing: 0, pending: 1, inactive: 2 };
  rules.sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3));
  $("alert-rules").innerHTML = rules.map((a) => `<tr data-rule="${esc(a.name)}">` + cell(`<b>${esc(a.name)}</b>`) + cell(esc(a.service)) +
    cell(esc(a.metric)) + cell(esc(a.severity)) + cell(esc(a.state), a.state) + cell(num(a.value, 3)) + cell(num(a.threshold, 3)) +
    cell(esc(a.since) || dash) + "</tr>").join("") || row(8, "no alert rule");
  $("alert-history").innerHTML = listOf(r.body, "history").map((h) => "<tr>" + cell(esc(h.at)) + cell(esc(h.rule)) +
    cell(esc(h.status), h.status) + cell(esc(h.severity)) + cell(num(h.value, 3)) + "</tr>").join("") || row(5, "nothing yet");
}

// ---- the frame: summary, tabs, token, refresh ------------------------------

async function renderSummary() {
  const [rep, p] = await Promise.all([api("/v1/replica"), api("/v1/proxies")]);
  if (rep.status !== 200) { $("summary").textContent = "no access to the API"; return; }
  const proxies = listOf(p.body, "proxies");
  const nacks = proxies.filter((x) => Object.values(x.types || {}).some((t) => t.last_nack && t.acked_version !== t.sent_version)).length;
  $("summary").textContent = `revision ${rep.body.revision} · ${plural(proxies.length, "proxy", "proxies")} · ${nacks} with a NACK · store ${rep.body.store}`;
}

const RENDER = { fleet: renderFleet, services: renderServices, endpoints: renderEndpoints, revisions: renderRevisions, alerts: renderAlerts };
let running = null;

// Redraws the frame and the active tab; overlapping calls share one run.
function refresh() {
  if (running) return running;
  running = (async () => {
    try {
      await refreshMe();
      // Not signed in: one call said so; the rest would only be refused too.
      if (ui.me) await Promise.all([renderSummary(), RENDER[ui.tab]()]);
    } catch (e) {
      ui.problems.push("the console failed: " + e.message);
    }
    showProblems();
    document.body.dataset.rendered = String(Date.now());
    document.body.dataset.tab = ui.tab;
  })().finally(() => { running = null; });
  return running;
}

function selectTab() {
  const want = (location.hash || "#fleet").slice(1);
  ui.tab = RENDER[want] ? want : "fleet";
  document.querySelectorAll("section.tab").forEach((s) => { s.hidden = s.id !== "tab-" + ui.tab; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === ui.tab));
  refresh();
}

function onClick(ev) {
  const button = ev.target.closest("button[data-rollback]");
  if (button) {
    const rev = Number(button.dataset.rollback);
    if (ui.armed === rev) rollback(rev).then(refresh); else { ui.armed = rev; refresh(); }
    ev.stopPropagation();
    return;
  }
  const svc = ev.target.closest("tr[data-service]");
  if (svc) { ui.service = svc.dataset.service; refresh(); return; }
  const rev = ev.target.closest("tr[data-revision]");
  if (rev) { ui.diffFor = Number(rev.dataset.revision); ui.armed = null; refresh(); }
}

function setup() {
  $("token").value = localStorage.getItem(TOKEN_KEY) || "";
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  $("token-clear").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); $("token").value = ""; refresh(); });
  document.querySelector("main").addEventListener("click", onClick);
  window.addEventListener("hashchange", selectTab);
  window.consoleRefresh = refresh;
  selectTab();
  // Refreshed while signed in; without a token, after one is entered.
  setInterval(() => { if (ui.me) refresh(); }, REFRESH_MS);
}

setup();
