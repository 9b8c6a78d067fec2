// The dashboard's canvases, drawn by hand: the task stream (one lane per engine, a bar per
// attempt; `state.bars` keeps their hit boxes for clicks and hover) and the throughput and
// queue-length plots. They read `state` (dashboard.js) and draw; they change nothing else.
"use strict";

const STREAM_HEIGHT = 400;  // pixels the lanes of many engines share (at least 1 px each)

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
  // 32 px lanes for a few engines; for many they share STREAM_HEIGHT (under 1 px each
  // beyond 400 engines: a pixel row then shows how busy its engines were together).
  const n = ids.length;
  const lane = n <= 12 ? 32 : n <= 80 ? Math.floor(STREAM_HEIGHT / n) : STREAM_HEIGHT / n;
  const { ctx, width } = prepare(canvas, Math.max(90, Math.ceil(n * lane) + axis + 6));
  const left = 74, right = width - 8;
  const span = state.window;
  const t1 = nowSeconds(), t0 = t1 - span;
  const x = (t) => left + ((t - t0) / span) * (right - left);
  const laneOf = new Map(ids.map((id, i) => [id, i]));
  const gone = new Set(engines.filter((e) => isGone(e.state)).map((e) => e.engineid));

  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  if (lane < 3) {  // no stripes: they would blur into grey
    ctx.fillStyle = "#f9fafc";
    ctx.fillRect(left, 3, right - left, n * lane);
  }
  const labelEvery = lane >= 10 ? 1 : Math.ceil(40 / lane);  // labels at least 40 px apart
  ids.forEach((id, i) => {
    const y = 3 + i * lane;
    if (lane >= 3) {
      ctx.fillStyle = i % 2 ? "#f7f9fb" : "#fdfdfe";
      ctx.fillRect(left, y, right - left, lane);
    }
    if (i % labelEvery === 0) {
      ctx.fillStyle = gone.has(id) ? "#b0b9c3" : "#4a5866";
      ctx.fillText(`engine ${id}`, left - 8, lane >= 10 ? y + lane / 2 : y + 5);
    }
  });
  // time axis
  const bottom = 3 + n * lane;
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
    const pad = lane > 8 ? 3 : lane >= 3 ? 1 : 0;
    const y = 3 + i * lane + pad, h = Math.max(1, lane - 2 * pad);  // thin lanes: 1 px bars
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
  const want = Math.max(v, whole ? 4 : 1) / 4;  // (an empty plot reads 0 to 1, not 0 to 0)
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

