// The taskmill dashboard: polls api/snapshot once a second (only while the tab is visible),
// keeps the attempts it has seen, and draws engines, the task stream, throughput and queue plots
// by hand on canvases. Every text that comes from the cluster goes in through textContent.
"use strict";

const POLL_MS = 1000;
const HISTORY_SECONDS = 300;
const MAX_ATTEMPTS = 4000;
const RECENT_ROWS = 10;
const STALE_MS = 5000;

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
    const r = await fetch(`api/snapshot?since=${state.seq}`, { cache: "no-store" });
    const body = await r.json().catch(() => ({}));
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
    state.lastOk = Date.now();
    render();
  } catch (e) {
    state.error = e.message || String(e);
    renderLive();
  }
  schedule();
}

function take(snap) {
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
    text.textContent = age < 2 ? "live" : `updated ${age.toFixed(0)} s ago`;
  }
}

// An engine declared dead, or retired (stopped on purpose once it held nothing): gone.
const gone = (e) => e.state === "dead" || e.state === "retired";

function renderCards(stats) {
  const engines = stats.engines;
  const alive = engines.filter((e) => !gone(e));
  const busy = alive.filter((e) => e.state === "busy").length;
  const retiring = alive.filter((e) => e.state === "retiring").length;
  const dead = engines.filter((e) => e.state === "dead").length;
  const retired = engines.length - alive.length - dead;
  $("engine-count").textContent = fmtNumber(alive.length);
  $("engine-sub").textContent =
    `${busy} busy · ${alive.length - busy - retiring} idle` +
    (retiring ? ` · ${retiring} retiring` : "") + (dead ? ` · ${dead} dead` : "") +
    (retired ? ` · ${retired} retired` : "");
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
  $("controller-info").textContent =
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

function heartbeatText(e) {
  if (gone(e)) return e.state === "dead" ? "no heartbeat" : "stopped";
  const ago = e.last_heartbeat_ago;
  return `heartbeat ${ago < 60 ? ago.toFixed(1) + " s" : fmtUptime(ago)} ago`;
}

function renderEngines(engines) {
  const grid = $("engines");
  if (!engines.length) {
    replaceIfChanged(grid, "none", () => [el("p", { class: "empty", text: "No engine has registered yet." })]);
    return;
  }
  const key = JSON.stringify(engines.map(({ last_heartbeat_ago, ...rest }) => rest));
  replaceIfChanged(grid, key, () => engines.map(engineTile));
  for (const e of engines) {
    const line = grid.querySelector(`.engine-tile[data-engineid="${e.engineid}"] .tile-hb`);
    if (line) line.textContent = heartbeatText(e);
  }
}

function engineTile(e) {
  const held = e.held || [];
  let task;
  if (gone(e)) task = el("div", { class: "tile-task", text: e.state });
  else if (e.current_task == null) task = el("div", { class: "tile-task muted", text: "waiting for a task" });
  else {
    task = el("div", { class: "tile-task" }, "running task ", taskLink(e.current_task));
    if (held.length > 1) task.append(` (+${held.length - 1} queued)`);
  }
  const props = Object.entries(e.properties || {})
    .filter(([k]) => !["engineid", "hostname", "pid"].includes(k))
    .map(([k, v]) => el("span", { class: "prop", text: `${k}=${JSON.stringify(v)}` }));
  return el("div", { class: "engine-tile", "data-state": e.state, "data-engineid": e.engineid },
    el("div", { class: "tile-head" },
      el("span", { class: "tile-name", text: `engine ${e.engineid}` }),
      el("span", { class: "badge", "data-state": e.state, text: e.state })),
    task,
    el("div", { class: "tile-line", text: `${fmtNumber(e.tasks_done)} done · ${fmtNumber(e.failures || 0)} failed` }),
    el("div", { class: "tile-line", text: `${e.hostname} · pid ${e.pid}`, title: `${e.hostname} pid ${e.pid}` }),
    el("div", { class: "tile-line tile-hb", text: heartbeatText(e) }),
    props.length ? el("div", { class: "props" }, ...props) : null);
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

// -- canvases --------------------------------------------------------------------------------
function prepare(canvas, height) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  if (height) canvas.style.height = `${height}px`;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, width, height: h };
}

function drawStream() {
  const snap = state.snap;
  if (!snap) return;
  const canvas = $("stream");
  const engines = snap.stats.engines;
  const ids = engines.map((e) => e.engineid);
  const axis = 22;
  const lane = ids.length > 12 ? Math.max(5, Math.floor(400 / ids.length)) : 32;
  const { ctx, width } = prepare(canvas, Math.max(90, ids.length * lane + axis + 6));
  const left = 74, right = width - 8;
  const span = state.window;
  const t1 = nowSeconds(), t0 = t1 - span;
  const x = (t) => left + ((t - t0) / span) * (right - left);
  const laneOf = new Map(ids.map((id, i) => [id, i]));
  const dead = new Set(engines.filter(gone).map((e) => e.engineid));

  ctx.textBaseline = "middle";
  ids.forEach((id, i) => {
    const y = 3 + i * lane;
    ctx.fillStyle = i % 2 ? "#f7f9fb" : "#fdfdfe";
    ctx.fillRect(left, y, right - left, lane);
    if (lane >= 10) {
      ctx.fillStyle = dead.has(id) ? "#b0b9c3" : "#4a5866";
      ctx.textAlign = "right";
      ctx.fillText(`engine ${id}`, left - 8, y + lane / 2);
    }
  });
  // time axis
  const bottom = 3 + ids.length * lane;
  ctx.strokeStyle = "#e1e6ec";
  ctx.fillStyle = "#66788a";
  ctx.textAlign = "center";
  const step = span <= 15 ? 5 : span <= 60 ? 10 : 60;
  for (let s = 0; s <= span; s += step) {
    const tx = x(t1 - s);
    ctx.beginPath(); ctx.moveTo(tx, 3); ctx.lineTo(tx, bottom); ctx.stroke();
    ctx.fillText(s === 0 ? "now" : `-${fmtAgo(s)}`, Math.min(tx, right - 12), bottom + 11);
  }
  if (!ids.length) {
    ctx.fillText("no engines yet", (left + right) / 2, 40);
    return;
  }
  state.bars = [];
  const bar = (a, end, status) => {
    const i = laneOf.get(a.engineid);
    if (i === undefined || end < t0) return;
    const x0 = Math.max(left, x(a.start)), x1 = Math.max(x0 + 2, Math.min(right, x(end)));
    const y = 3 + i * lane + (lane > 8 ? 3 : 1), h = lane > 8 ? lane - 6 : lane - 2;
    ctx.fillStyle = STATUS_COLORS[status] || "#9aa5b1";
    ctx.fillRect(x0, y, x1 - x0 > 3 ? x1 - x0 - 1 : x1 - x0, h);  // a gap between neighbours
    state.bars.push({ x0, x1, y, h, a, status, end });
  };
  for (const a of state.attempts) bar(a, a.end, a.status);
  for (const a of snap.running) bar(a, t1, "running");
}

function fmtAgo(s) {
  return s < 60 ? `${+s.toFixed(1)}s` : s % 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s / 60}m`;
}

// The top of a y axis with four equal steps that read well; whole steps for counts.
function axisTop(v, whole) {
  const want = Math.max(v, whole ? 4 : 1e-9) / 4;
  const p = Math.pow(10, Math.floor(Math.log10(want)));
  const steps = whole ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  const step = steps.map((m) => m * p).find((m) => m >= want - 1e-12);
  return 4 * (whole ? Math.max(1, step) : step);
}

function drawChart(canvas, series, t1, span, whole) {
  const { ctx, width, height } = prepare(canvas);
  const left = 44, right = width - 10, top = 18, bottom = height - 20;
  const t0 = t1 - span;
  const x = (t) => left + ((t - t0) / span) * (right - left);
  let max = 0;
  series = series.map((s) => ({ ...s, points: s.points.filter(([t]) => t >= t0 && t <= t1) }));
  for (const s of series) for (const [, v] of s.points) max = Math.max(max, v);
  max = axisTop(max * 1.05, whole);
  const y = (v) => bottom - (v / max) * (bottom - top);
  ctx.strokeStyle = "#e8ecf0";
  ctx.fillStyle = "#66788a";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4, ty = y(v);
    ctx.beginPath(); ctx.moveTo(left, ty); ctx.lineTo(right, ty); ctx.stroke();
    ctx.fillText(v >= 100 ? fmtNumber(Math.round(v)) : String(+v.toFixed(2)), left - 6, ty);
  }
  ctx.textAlign = "center";
  const tick = span <= 60 ? 10 : 60;
  for (let s = 0; s <= span; s += tick) {
    const tx = x(t1 - s);
    ctx.fillText(s === 0 ? "now" : `-${fmtAgo(s)}`, Math.min(tx, right - 12), bottom + 11);
  }
  series.forEach((s, k) => {
    const pts = s.points;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.8;
    ctx.beginPath();
    pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
    if (s.fill && pts.length) {
      ctx.lineTo(x(pts[pts.length - 1][0]), bottom);
      ctx.lineTo(x(pts[0][0]), bottom);
      ctx.closePath();
      ctx.globalAlpha = 0.12;
      ctx.fillStyle = s.color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
    ctx.lineWidth = 1;
    ctx.textAlign = "left";
    ctx.fillStyle = s.color;
    const lx = right - 150 + k * 80;
    ctx.fillRect(lx, 5, 10, 3);
    ctx.fillStyle = "#4a5866";
    ctx.fillText(s.name, lx + 14, 7);
  });
}

function drawPlots(snap) {
  const t1 = Math.floor(snap.now) - 1;  // the current second is not over yet
  const counts = new Map(snap.finished_per_second.map(([t, n]) => [t, n]));
  // A young controller's plots span its lifetime (at least a minute), later the last 5 minutes.
  const span = Math.min(HISTORY_SECONDS, Math.max(60, Math.ceil((t1 - snap.started) / 60) * 60));
  const first = Math.max(t1 - span, Math.floor(snap.started));
  const perSecond = [];
  for (let t = first; t <= t1; t++) perSecond.push([t, counts.get(t) || 0]);
  drawChart($("throughput-plot"), [{ name: "tasks/s", color: color("--ok"), points: perSecond, fill: true }],
    t1, span, false);
  const q = snap.queue_per_second;
  drawChart($("queue-plot"), [
    { name: "scheduled", color: color("--aborted"), points: q.map(([t, s]) => [t, s]) },
    { name: "pending", color: color("--busy"), points: q.map(([t, , p]) => [t, p]) },
  ], t1, span, true);
  $("plot-span").textContent = $("queue-span").textContent = fmtAgo(span);
}

function barAt(ev) {
  const r = $("stream").getBoundingClientRect();
  const px = ev.clientX - r.left, py = ev.clientY - r.top;
  for (let i = state.bars.length - 1; i >= 0; i--) {
    const b = state.bars[i];
    if (px >= b.x0 - 2 && px <= b.x1 + 2 && py >= b.y && py <= b.y + b.h) return b;
  }
  return null;
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

start();
