// The engines panel. A few engines are shown as cards; more than GRID_ABOVE as a grid of small
// cells coloured by state (the toggle picks either), with the count of each state in the legend.
// Hovering a cell shows that engine's card beside the grid, clicking one keeps it there.
// The grid is updated in place: a poll changes only the class of a cell whose state changed
// (and adds or removes the cells of engines that came or went), so 1,000 engines cost 1,000
// comparisons, not 1,000 new elements. Cards are built only while the cards view is on.
// Reads `state.snap` and the helpers of dashboard.js.
"use strict";

const GRID_ABOVE = 64;
const KNOWN_STATES = ["busy", "idle", "retiring", "dead", "retired"];  // the legend's order

const engineView = {
  mode: "auto",       // "auto": cards up to GRID_ABOVE engines, else the grid; or "grid", "cards"
  cells: new Map(),   // engineid -> its cell in the grid
  rows: new Map(),    // engineid -> its latest row of statistics()["engines"]
  hovered: null,      // engineid under the pointer
  pinned: null,       // engineid clicked
};

// A state as a class name: "state-busy"; a state this page does not know gets its own class too
// (grey, by the style sheet's default) and its own legend entry.
function stateClass(engineState) {
  return `state-${String(engineState).replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

function countStates(engines) {
  const counts = new Map();
  for (const e of engines) counts.set(e.state, (counts.get(e.state) || 0) + 1);
  const known = KNOWN_STATES.filter((s) => counts.has(s)).map((s) => [s, counts.get(s)]);
  const other = [...counts].filter(([s]) => !KNOWN_STATES.includes(s)).sort();
  return new Map([...known, ...other]);
}

function heartbeatText(e) {
  if (isGone(e.state)) return e.state === "dead" ? "no heartbeat" : "stopped";
  const ago = e.last_heartbeat_ago;
  return `heartbeat ${ago < 60 ? ago.toFixed(1) + " s" : fmtUptime(ago)} ago`;
}

function useGrid(n) {
  return engineView.mode === "grid" || (engineView.mode === "auto" && n > GRID_ABOVE);
}

function renderEngines(engines) {
  engineView.rows = new Map(engines.map((e) => [e.engineid, e]));
  const counts = countStates(engines);
  replaceIfChanged($("engine-states"), JSON.stringify([...counts]), () => [...counts].map(
    ([s, n]) => el("span", { class: "key", "data-state": s },
      el("i", { class: `swatch ${stateClass(s)}` }), `${s} `,
      el("b", { class: "count", text: fmtNumber(n) }))));
  const grid = useGrid(engines.length);
  for (const b of document.querySelectorAll("#engine-mode button")) {
    b.classList.toggle("active", b.dataset.mode === (grid ? "grid" : "cards"));
  }
  $("engine-compact").classList.toggle("hidden", !grid);
  $("engines").classList.toggle("hidden", grid);
  if (!engines.length) {
    replaceIfChanged($("engines"), "none", () => [el("p", { class: "empty", text: "No engine has registered yet." })]);
    $("engine-compact").classList.add("hidden");
    $("engines").classList.remove("hidden");
  } else if (grid) {
    updateCells(engines);
    renderEngineCard();
  } else {
    renderTiles(engines);
  }
}

// The grid: one cell per engine, kept from poll to poll; only changed classes are written.
function updateCells(engines) {
  const box = $("engine-cells");
  const cells = engineView.cells;
  const added = document.createDocumentFragment();
  const seen = new Set();
  for (const e of engines) {
    const id = e.engineid;
    seen.add(id);
    let cell = cells.get(id);
    if (cell === undefined) {
      cell = document.createElement("span");
      cell.dataset.engineid = id;
      cells.set(id, cell);
      added.append(cell);
    }
    const cls = `cell ${stateClass(e.state)}${id === engineView.pinned ? " pinned" : ""}`;
    if (cell.className !== cls) {
      cell.className = cls;
      cell.dataset.state = e.state;
    }
  }
  if (added.childNodes.length) box.append(added);
  if (seen.size !== cells.size) {
    for (const [id, cell] of cells) {
      if (!seen.has(id)) { cell.remove(); cells.delete(id); }
    }
  }
}

// The card of the engine under the pointer, else of the one clicked, beside the grid.
function renderEngineCard() {
  const box = $("engine-card");
  const id = engineView.hovered ?? engineView.pinned;
  const e = id == null ? undefined : engineView.rows.get(id);
  if (e === undefined) {
    replaceIfChanged(box, "hint", () => [el("p", { class: "empty",
      text: "Point at a cell to see its engine; click one to keep it here." })]);
    return;
  }
  const { last_heartbeat_ago, ...rest } = e;
  replaceIfChanged(box, JSON.stringify([rest, id === engineView.pinned]), () => [engineTile(e)]);
  const line = box.querySelector(".tile-hb");
  if (line) line.textContent = heartbeatText(e);
}

// The cards view: one card per engine, rebuilt when what they show changed.
function renderTiles(engines) {
  const grid = $("engines");
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
  if (isGone(e.state)) task = el("div", { class: "tile-task", text: e.state });
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

function cellEngine(ev) {
  const cell = ev.target.closest && ev.target.closest(".cell");
  return cell ? Number(cell.dataset.engineid) : null;
}

function setupEngines() {
  const box = $("engine-cells");
  box.addEventListener("mouseover", (ev) => {
    const id = cellEngine(ev);
    if (id !== null && id !== engineView.hovered) { engineView.hovered = id; renderEngineCard(); }
  });
  box.addEventListener("mouseleave", () => { engineView.hovered = null; renderEngineCard(); });
  box.addEventListener("click", (ev) => {
    const id = cellEngine(ev);
    if (id === null) return;
    const old = engineView.cells.get(engineView.pinned);
    if (old) old.classList.remove("pinned");
    engineView.pinned = id === engineView.pinned ? null : id;
    const cell = engineView.cells.get(engineView.pinned);
    if (cell) cell.classList.add("pinned");
    engineView.hovered = null;  // the click shows the pinned card at once
    renderEngineCard();
  });
  for (const button of document.querySelectorAll("#engine-mode button")) {
    button.addEventListener("click", () => {
      engineView.mode = button.dataset.mode;
      if (state.snap) renderEngines(state.snap.stats.engines);
    });
  }
}
