// The taskmill dashboard: polls api/snapshot once a second (only while the tab is visible),
// keeps the attempts it has seen, and draws engines, the task stream, throughput and queue plots
// by hand on canvases. Every text that comes from the cluster goes in through textContent.
// This file: the shared state and helpers, polling, the figures, tables and task detail, and
// the wiring (run at DOMContentLoaded, after the deferred engines.js and charts.js, which draw
// the engines panel and the canvases). Each poll's fetch and render times are kept in
// `window.dashboardTimings` (milliseconds, the latest last; the browser test reads them).
"use strict";

const POLL_MS = 1000;
const HISTORY_SECONDS = 300;
const MAX_ATTEMPTS = 4000;
const RECENT_ROWS = 10;
const STALE_MS = 5000;
const TIMINGS_KEPT = 30;
const GONE_STATES = new Set(["dead", "retired"]);  // the other states count as alive

function isGone(engineState) { return GONE_STATES.has(engineState); }

const css = getComputedStyle(document.documentElement);
const color = (name) => css.getPropertyValue(name).trim();
const STATUS_COLORS = {
  ok: color("--ok"), error: color("--error"), aborted: color("--aborted"),
  unmet_timeout: color("--aborted"), dependency: color("--aborted"), died: color("--died"),
  running: color("--running"), rejected: color("--rejected"), moved: "#9aa5b1",
};
const STATUS_WORDS = {
  ok: "ok", error: "failed", aborted: "aborted", unmet_timeout: "unmet depend",
  dependency: "dependency failed", died: "engine died", running: "running",
  rejected: "rejected", moved: "moved",
};

const state = {
  seq: 0,            // the highest attempt number seen
  started: null,     // the controller's start time: a new one means a restarted controller
  attempts: [],      // finished attempts, oldest first
  snap: null,        // the latest snapshot
  offset: 0,         // controller clock minus this browser's clock, in seconds
  lastOk: 0,         // Date.now() of the latest good snapshot
  error: null,       // why the latest poll failed
  stale: null,       // why the latest snapshot is old (the server's fetches failed), or null
  selected: null,    // the taskid shown in the detail panel
  window: 60,        // seconds the task stream shows
  bars: [],          // hit boxes of the stream's bars, for clicks and hover
  timer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function nowSeconds() { return Date.now() / 1000 + state.offset; }

function fmtNumber(n) { return Number(n).toLocaleString("en-US"); }

function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "–";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
  if (s < 60) return `${s.toFixed(2)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function fmtClock(t) {
  if (t == null) return "–";
  return new Date((t - state.offset) * 1000).toLocaleTimeString("en-GB");
}

function fmtUptime(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  const h = Math.floor(s / 3600);
  return h < 48 ? `${h}h ${Math.floor((s % 3600) / 60)}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
}

// -- polling ---------------------------------------------------------------------------------
function schedule(ms = POLL_MS) {
  clearTimeout(state.timer);
  state.timer = setTimeout(poll, ms);
}

async function poll() {
  if (document.hidden) return;  // visibilitychange polls again when the tab is shown
  try {
    const t0 = performance.now();
    const r = await fetch(`api/snapshot?since=${state.seq}&engines=columns`, { cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    const t1 = performance.now();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    if (state.started !== null && body.started !== state.started) {
      state.attempts = [];  // a restarted controller numbers its attempts anew
      state.seq = 0;
      state.started = body.started;
      schedule(0);
      return;
    }
    state.started = body.started;
    take(body);
    state.error = null;
    // The snapshot's own age: the server answers at once with the latest it holds, which
    // grows old while the controller does not answer (body.error then says why).
    state.lastOk = Date.now() - 1000 * (body.age || 0);
    state.stale = body.error || null;
    render();
    recordTiming(t0, t1, performance.now(), body.stats.engines.length);
  } catch (e) {
    state.error = e.message || String(e);
    renderLive();
  }
  schedule();
}

// One poll's times: fetch (request, answer and JSON), render (this script's work), and frame
// (until the browser has laid out and painted what render changed: the next frame).
function recordTiming(t0, t1, t2, engines) {
  requestAnimationFrame(() => setTimeout(() => {
    const t3 = performance.now();
    const times = window.dashboardTimings || (window.dashboardTimings = []);
    times.push({ fetch: t1 - t0, render: t2 - t1, frame: t3 - t2, total: t3 - t0, engines });
    if (times.length > TIMINGS_KEPT) times.shift();
  }, 0));
}

// The engine list comes as columns (?engines=columns, 40% of the bytes of one object per
// engine): back to one object per engine, as statistics() has them.
function engineRows(table) {
  const { columns, rows } = table;
  return rows.map((r) => {
    const e = {};
    for (let i = 0; i < columns.length; i++) e[columns[i]] = r[i];
    return e;
  });
}

function take(snap) {
  if (!Array.isArray(snap.stats.engines)) snap.stats.engines = engineRows(snap.stats.engines);
  state.offset = snap.now - Date.now() / 1000;
  for (const a of snap.attempts) if (a.seq > state.seq) state.attempts.push(a);
  state.seq = Math.max(state.seq, snap.seq);
  const oldest = snap.now - HISTORY_SECONDS;
  let drop = 0;
  while (drop < state.attempts.length && (state.attempts.length - drop > MAX_ATTEMPTS
         || state.attempts[drop].end < oldest)) drop++;
  if (drop) state.attempts.splice(0, drop);
  state.snap = snap;
}

// -- rendering -------------------------------------------------------------------------------
function render() {
  const snap = state.snap;
  if (!snap) return;
  renderLive();
  renderCards(snap.stats);
  renderEngines(snap.stats.engines);
  renderRecent(snap);
  renderFailures(snap.failures);
  drawStream();
  drawPlots(snap);
}

function renderLive() {
  const live = $("live");
  const text = $("live-text");
  if (state.error) {
    live.dataset.state = "down";
    text.textContent = `not answering: ${state.error}`;
  } else if (!state.lastOk) {
    live.dataset.state = "connecting";
    text.textContent = "connecting…";
  } else {
    const age = (Date.now() - state.lastOk) / 1000;
    live.dataset.state = age * 1000 > STALE_MS ? "stale" : "live";
    text.textContent = age < 2 ? "live" : `updated ${age.toFixed(0)} s ago` +
      (state.stale ? ` (${state.stale})` : "");
  }
}

function renderCards(stats) {
  const counts = countStates(stats.engines);
  let alive = 0;
  for (const [s, n] of counts) if (!isGone(s)) alive += n;
  $("engine-count").textContent = fmtNumber(alive);
  const others = [...counts].filter(([s]) => s !== "busy" && s !== "idle");
  $("engine-sub").textContent = [`${fmtNumber(counts.get("busy") || 0)} busy`,
    `${fmtNumber(counts.get("idle") || 0)} idle`, ...others.map(([s, n]) => `${fmtNumber(n)} ${s}`),
  ].join(" · ");
  $("throughput").textContent = stats.tasks_per_second.toFixed(stats.tasks_per_second < 10 ? 2 : 1);
  const q = stats.queue;
  $("queued").textContent = fmtNumber(q.scheduled + q.pending);
  $("queue-sub").textContent = `${fmtNumber(q.scheduled)} scheduled · ${fmtNumber(q.pending)} pending`;
  $("finished").textContent = fmtNumber(q.succeeded + q.failed);
  $("finished-sub").textContent = `${fmtNumber(q.succeeded)} succeeded · ${fmtNumber(q.failed)} failed`;
  const refused = Object.entries(stats.refused || {}).filter(([, n]) => n > 0);
  $("refused").textContent = fmtNumber(refused.reduce((s, [, n]) => s + n, 0));
  $("refused-sub").textContent = refused.length
    ? refused.map(([k, n]) => `${k} ${n}`).join(" · ") : "none";
  // The store not writing refuses every submit: said first (statistics' store_problem).
  const store = stats.store_problem == null ? "" : "task store NOT WRITING" +
    (stats.store_down_for == null ? "" : ` for ${fmtUptime(stats.store_down_for)}`) +
    `: ${stats.store_problem} · `;
  $("controller-info").textContent = store +
    `controller up ${fmtUptime(stats.uptime)} · ${fmtNumber(stats.submitted)} submitted · ` +
    `${fmtNumber(stats.messages_in)} messages in`;
}

function taskLink(tid) {
  const a = el("a", { href: `#task=${tid}`, text: String(tid) });
  a.addEventListener("click", (ev) => { ev.preventDefault(); showTask(tid); });
  return a;
}

// Rebuild a container only when what it shows has changed, so that a row or tile under the
// pointer is not replaced while someone clicks it.
const shownKeys = new WeakMap();
function replaceIfChanged(container, key, build) {
  if (shownKeys.get(container) === key) return;
  shownKeys.set(container, key);
  container.replaceChildren(...build());
}

function statusBadge(status) {
  return el("span", { class: "badge", "data-status": status, text: STATUS_WORDS[status] || status });
}

function row(tid, cells) {
  const tr = el("tr", { "data-tid": tid });
  if (tid === state.selected) tr.classList.add("selected");
  for (const c of cells) tr.append(el("td", {}, c));
  tr.addEventListener("click", () => showTask(tid));
  return tr;
}

function renderRecent(snap) {
  const shown = [...snap.running].sort((a, b) => b.start - a.start).slice(0, RECENT_ROWS);
  for (let i = state.attempts.length - 1; i >= 0 && shown.length < RECENT_ROWS; i--) {
    shown.push(state.attempts[i]);
  }
  const body = $("recent-tasks").tBodies[0];
  replaceIfChanged(body, JSON.stringify(shown), () => shown.map((a) => {
    if (a.end == null) {  // running: its time so far is kept up to date by tick()
      const tr = row(a.tid, [String(a.tid), String(a.engineid), statusBadge("running"), "",
        fmtClock(a.start)]);
      tr.dataset.status = "running";
      tr.cells[3].className = "elapsed";
      tr.cells[3].dataset.start = a.start;
      return tr;
    }
    const tr = row(a.tid, [String(a.tid), String(a.engineid), statusBadge(a.status),
      fmtDuration(a.end - a.start), fmtClock(a.end)]);
    tr.dataset.status = a.status;
    return tr;
  }));
  updateElapsed();
  $("recent-empty").classList.toggle("hidden", shown.length > 0);
}

function updateElapsed() {
  const now = nowSeconds();
  for (const cell of document.querySelectorAll("td.elapsed")) {
    cell.textContent = fmtDuration(Math.max(0, now - Number(cell.dataset.start)));
  }
}

function renderFailures(failures) {
  replaceIfChanged($("failures").tBodies[0], JSON.stringify(failures), () => [...failures].reverse().map((f) => {
    const error = el("span", {}, el("span", { class: "errtype", text: f.type || f.status }), f.message);
    const tr = row(f.tid, [String(f.tid), f.engineid == null ? "–" : String(f.engineid), error,
      fmtClock(f.time)]);
    tr.cells[2].className = "message";
    tr.cells[2].title = `${f.type}: ${f.message}`;
    return tr;
  }));
  $("failures-empty").classList.toggle("hidden", failures.length > 0);
}

// -- task detail -----------------------------------------------------------------------------
async function showTask(tid) {
  state.selected = tid;
  $("task-input").value = String(tid);
  history.replaceState(null, "", `#task=${tid}`);
  document.querySelectorAll("tr.selected").forEach((tr) => tr.classList.remove("selected"));
  document.querySelectorAll(`tr[data-tid="${tid}"]`).forEach((tr) => tr.classList.add("selected"));
  const box = $("task-detail");
  box.replaceChildren(el("p", { class: "empty", text: `loading task ${tid}…` }));
  let info;
  try {
    const r = await fetch(`api/task/${encodeURIComponent(tid)}`, { cache: "no-store" });
    info = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(info.error || `HTTP ${r.status}`);
  } catch (e) {
    if (state.selected === tid) box.replaceChildren(el("p", { class: "notice", text: e.message }));
    return;
  }
  if (state.selected !== tid) return;
  renderTask(info);
}

function renderTask(t) {
  const fields = [
    ["engine", t.engineid == null ? "–" : String(t.engineid)],
    ["kind", t.kind === "string" ? "StringTask" : t.kind === "map" ? "MapTask" : (t.kind || "–")],
    ["attempts", t.attempts == null ? "–" : String(t.attempts)],
    ["duration", t.duration == null ? "–" : fmtDuration(t.duration)],
    ["submitted", fmtClock(t.submitted)],
    ["started", fmtClock(t.started)],
    ["completed", fmtClock(t.completed)],
  ];
  const dl = el("dl", { class: "fields" });
  for (const [k, v] of fields) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  const parts = [
    el("div", { class: "detail-title" }, el("span", { text: `Task ${t.tid}` }),
      statusBadge(t.status && t.state === "failed" ? t.status : t.state)),
    dl,
  ];
  const err = t.error;
  if (err) {
    parts.push(el("div", { class: "detail-error" },
      el("span", { class: "errtype", text: err.type || "error" }), err.message || ""));
    if (err.traceback) parts.push(el("pre", { class: "traceback", text: err.traceback }));
  }
  for (const name of ["stdout", "stderr"]) {
    if (t[name]) parts.push(el("div", { class: "detail-label", text: name }), el("pre", { text: t[name] }));
  }
  if (t.story && t.story.length) {
    // The scheduler's newest moves of this task, oldest first: why it is where it is.
    const rows = t.story.map((s) => el("tr", {},
      el("td", { text: s.event }), el("td", { text: `${s.from} → ${s.to}` }), el("td", { text: s.why })));
    parts.push(el("div", { class: "detail-label", text: "story" }),
      el("table", { class: "story" }, el("tbody", {}, ...rows)));
  }
  $("task-detail").replaceChildren(...parts);
}

// -- wiring ----------------------------------------------------------------------------------
function start() {
  setupEngines();
  const canvas = $("stream");
  canvas.addEventListener("click", (ev) => { const b = barAt(ev); if (b) showTask(b.a.tid); });
  canvas.addEventListener("mousemove", (ev) => {
    const b = barAt(ev);
    canvas.title = b ? `task ${b.a.tid} on engine ${b.a.engineid}: ${STATUS_WORDS[b.status] || b.status}, ` +
      `${fmtDuration(b.end - b.a.start)}` : "";
  });
  for (const button of document.querySelectorAll("#stream-window button")) {
    button.addEventListener("click", () => {
      state.window = Number(button.dataset.seconds);
      document.querySelectorAll("#stream-window button").forEach(
        (b) => b.classList.toggle("active", b === button));
      $("stream-span").textContent = fmtAgo(state.window);
      drawStream();
    });
  }
  $("task-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("task-input").value.trim();
    if (!/^\d+$/.test(text)) {
      $("task-detail").replaceChildren(el("p", { class: "notice", text: `a taskid is an int >= 0, not "${text}"` }));
      return;
    }
    showTask(Number(text));
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
  window.addEventListener("resize", () => { drawStream(); if (state.snap) drawPlots(state.snap); });
  setInterval(() => { if (!document.hidden) { drawStream(); renderLive(); updateElapsed(); } }, 250);
  const m = /^#task=(\d+)$/.exec(location.hash);
  if (m) showTask(Number(m[1]));
  poll();
}

document.addEventListener("DOMContentLoaded", start);  // after every deferred script ran
