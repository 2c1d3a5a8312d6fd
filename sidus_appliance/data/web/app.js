// The management page: a live table of machines and the timeline of one machine's last boot.
// Plain JS, no build step. Data: server-sent events from api/events (a snapshot, then one row per
// change); rows are described in observe-spec.md. DOM contract (tests rely on it):
//   <tr data-mac="..." data-state="booted"> with <td data-phase="kernel"> among its cells,
//   <div id="timeline" data-mac="..."> holding one <div class="bar" data-phase="..."> per phase.
"use strict";

const PHASES = ["pxe-dhcp", "loader", "menu", "kernel", "initrd", "system-dhcp"];
const PHASE_NAMES = {
  "pxe-dhcp": "PXE DHCP", "loader": "Loader", "menu": "Menu",
  "kernel": "Kernel", "initrd": "Initrd", "system-dhcp": "System DHCP",
};
const ARCH_NAMES = { 0: "BIOS", 6: "UEFI 32", 7: "UEFI 64", 9: "UEFI 64", 10: "ARM 32", 11: "ARM 64", 16: "UEFI HTTP" };
const COLUMNS = ["name", "mac", "address", "firmware", "loader", "profile", "phase", "state", "duration", "last_seen"];
const RETRY_MAX_MS = 15000;

const token = new URLSearchParams(location.search).get("token");
const machines = new Map();     // mac -> row, as the server sent it
const rowElements = new Map();  // mac -> <tr>
let clockOffset = 0;            // server epoch seconds minus ours
let filter = "all";
let chosen = null;              // mac the user clicked; null: follow the most recently seen machine
let renderQueued = false;
let source = null;
let retryMs = 1000;

function api(path) {
  return token ? `${path}?token=${encodeURIComponent(token)}` : path;
}

function serverNow() {
  return Date.now() / 1000 + clockOffset;
}

// ------------------------------------------------------------------ formatting

function seconds(value) {
  if (value == null || !isFinite(value)) return "–";
  if (value < 0.05) return "0 s";
  if (value < 100) return `${value.toFixed(1)} s`;
  const minutes = Math.floor(value / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.round(value % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

function ago(epoch) {
  if (epoch == null) return "–";
  const age = Math.max(0, serverNow() - epoch);
  if (age < 2) return "just now";
  if (age < 60) return `${Math.floor(age)} s ago`;
  if (age < 3600) return `${Math.floor(age / 60)} min ago`;
  if (age < 86400) return `${Math.floor(age / 3600)} h ago`;
  return new Date(epoch * 1000).toLocaleString();
}

function bytes(count) {
  if (!count) return "";
  const units = ["B", "kB", "MB", "GB"];
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(value < 10 && unit ? 1 : 0)} ${units[unit]}`;
}

function firmware(row) {
  const arch = row.arch == null ? "" : (ARCH_NAMES[row.arch] || `arch ${row.arch}`);
  return [row.firmware, arch].filter(Boolean).join(" · ") || "–";
}

// How long this boot has taken: to `booted`, or still counting while booting.
function bootSeconds(row) {
  if (row.state === "booting" && row.started != null) return Math.max(row.duration || 0, serverNow() - row.started);
  return row.duration;
}

// ------------------------------------------------------------------ the table

function cellText(row, column) {
  switch (column) {
    case "firmware": return firmware(row);
    case "phase": return PHASE_NAMES[row.phase] || row.phase || "–";
    case "duration": return seconds(bootSeconds(row));
    case "last_seen": return ago(row.last_seen);
    default: return row[column] == null || row[column] === "" ? "–" : String(row[column]);
  }
}

function makeRow(mac) {
  const tr = document.createElement("tr");
  tr.dataset.mac = mac;
  tr.tabIndex = 0;
  for (const column of COLUMNS) {
    const td = document.createElement("td");
    td.dataset.col = column;
    if (column === "state") {
      const pill = document.createElement("span");
      pill.className = "pill";
      td.append(pill);
    }
    if (column === "duration" || column === "last_seen") td.className = "num";
    if (column === "mac" || column === "address" || column === "loader") td.classList.add("mono");
    tr.append(td);
  }
  tr.addEventListener("click", () => select(mac));
  tr.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") select(mac); });
  return tr;
}

function fillRow(tr, row) {
  tr.dataset.state = row.state;
  tr.hidden = filter !== "all" && row.state !== filter;
  for (const td of tr.children) {
    const column = td.dataset.col;
    if (column === "state") {
      const pill = td.firstChild;
      pill.textContent = row.state;
      pill.dataset.state = row.state;
      pill.title = row.state === "stuck" && row.stuck_at != null ? `stuck at ${stuckAt(row.stuck_at)}` : "";
    } else {
      td.textContent = cellText(row, column);
    }
    if (column === "phase") td.dataset.phase = row.phase || "";
  }
}

function stuckAt(value) {
  return typeof value === "number" ? new Date(value * 1000).toLocaleTimeString() : (PHASE_NAMES[value] || value);
}

function addressKey(row) {
  const parts = (row.address || "").split(".").map(Number);
  return parts.length === 4 && parts.every((n) => n >= 0) ? parts.reduce((a, n) => a * 256 + n, 0) : Infinity;
}

function byAddress(a, b) {
  return addressKey(a) - addressKey(b) || String(a.name || "").localeCompare(String(b.name || "")) ||
    a.mac.localeCompare(b.mac);
}

function renderTable() {
  const tbody = document.querySelector("#machines tbody");
  for (const [mac, tr] of rowElements) {
    if (!machines.has(mac)) { tr.remove(); rowElements.delete(mac); }
  }
  const rows = [...machines.values()].sort(byAddress);
  const counts = { all: rows.length, booting: 0, booted: 0, stuck: 0 };
  rows.forEach((row, index) => {
    counts[row.state] = (counts[row.state] || 0) + 1;
    let tr = rowElements.get(row.mac);
    if (!tr) { tr = makeRow(row.mac); rowElements.set(row.mac, tr); }
    fillRow(tr, row);
    tr.classList.toggle("selected", row.mac === selectedMac());
    tr.setAttribute("aria-selected", String(row.mac === selectedMac()));
    if (tbody.children[index] !== tr) tbody.insertBefore(tr, tbody.children[index] || null);
  });
  for (const span of document.querySelectorAll("#filter .count")) span.textContent = counts[span.dataset.count] || 0;
  const shown = rows.filter((row) => filter === "all" || row.state === filter).length;
  const empty = document.getElementById("empty");
  empty.hidden = shown > 0;
  empty.textContent = rows.length ? `No machine is ${filter} right now.` : "No machine has asked for a network boot yet.";
}

// ------------------------------------------------------------------ the timeline

function selectedMac() {
  if (chosen && machines.has(chosen)) return chosen;
  let latest = null;
  for (const row of machines.values()) {
    if (!latest || (row.last_seen || 0) > (latest.last_seen || 0)) latest = row;
  }
  return latest ? latest.mac : null;
}

function select(mac) {
  chosen = mac;
  scheduleRender();
}

function niceStep(span) {
  const raw = span / 6;
  for (const step of [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600]) if (step >= raw) return step;
  return 7200;
}

function tickLabel(t, step) {
  if (t < 60 || step < 60) return step < 1 ? `${t.toFixed(1)} s` : `${Math.round(t)} s`;
  return t % 3600 === 0 ? `${t / 3600} h` : `${Math.round(t / 60)} min`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function renderTimeline() {
  const timeline = document.getElementById("timeline");
  const summary = document.getElementById("timeline-summary");
  const title = document.getElementById("timeline-title");
  const mac = selectedMac();
  const row = mac ? machines.get(mac) : null;
  timeline.dataset.mac = mac || "";
  timeline.replaceChildren();
  if (!row) {
    title.textContent = "Last boot";
    summary.textContent = "";
    timeline.append(element("p", "empty", "No boot to show yet."));
    return;
  }
  title.textContent = `Last boot of ${row.name || row.mac}`;
  const total = bootSeconds(row);
  const verdict = row.state === "booted" ? `booted in ${seconds(total)}`
    : row.state === "stuck" ? `stuck after ${seconds(total)}` : `booting for ${seconds(total)}`;
  summary.textContent = [row.mac, row.address, firmware(row), verdict].filter(Boolean).join("  ·  ");

  const phases = (row.phases || []).slice().sort((a, b) => PHASES.indexOf(a.phase) - PHASES.indexOf(b.phase));
  const start = row.started != null ? row.started : Math.min(...phases.map((p) => p.start));
  const lastEnd = Math.max(0, ...phases.map((p) => (p.end == null ? p.start : p.end) - start));
  const span = Math.max(total || 0, lastEnd, 1);
  const step = niceStep(span);
  const axisEnd = Math.ceil(span / step) * step;
  const pct = (t) => `${(100 * t) / axisEnd}%`;

  const chart = element("div", "chart");
  const grid = element("div", "grid");
  for (let t = 0; t <= axisEnd + 1e-9; t += step) {
    const line = element("div", "gridline");
    line.style.left = pct(t);
    grid.append(line);
  }
  chart.append(grid);

  for (const phase of phases) {
    const from = phase.start - start;
    const to = (phase.end == null ? phase.start : phase.end) - start;
    const length = Math.max(0, to - from);
    const lane = element("div", "lane");
    lane.append(element("div", "lane-label", PHASE_NAMES[phase.phase] || phase.phase));
    const track = element("div", "track");
    const bar = element("div", "bar");
    bar.dataset.phase = phase.phase;
    bar.style.left = pct(from);
    bar.style.width = `max(4px, ${pct(length)})`;
    const details = [seconds(length), bytes(phase.bytes), phase.transport || "",
      phase.retransmits ? `${phase.retransmits} resent` : ""].filter(Boolean);
    bar.title = `${PHASE_NAMES[phase.phase] || phase.phase}: ${details.join(", ")} (from ${seconds(from)})`;
    // The lane names the phase on screen; the label repeats it for screen readers and copy/paste.
    const label = element("span", "bar-label");
    label.append(element("span", "sr-only", `${PHASE_NAMES[phase.phase] || phase.phase} `), details.join(" · "));
    const widthShare = length / axisEnd;
    if (widthShare < 0.3) {  // too narrow to hold its label: beside it, on the side with room
      label.classList.add(to / axisEnd > 0.65 ? "before" : "after");
    }
    if (phase.retransmits) bar.classList.add("retransmits");
    bar.append(label);
    track.append(bar);
    lane.append(track);
    chart.append(lane);
  }

  if (row.state === "booted" && total != null) {
    const mark = element("div", "marker booted");
    mark.style.left = pct(total);
    mark.title = `booted at ${seconds(total)}`;
    grid.append(mark);
  } else if (row.state === "stuck") {
    const mark = element("div", "marker stuck");
    mark.style.left = pct(Math.min(lastEnd, axisEnd));
    mark.title = `no progress since ${seconds(lastEnd)}`;
    grid.append(mark);
  } else if (row.state === "booting") {
    const mark = element("div", "marker now");
    mark.style.left = pct(Math.min(total || 0, axisEnd));
    mark.title = "now";
    grid.append(mark);
  }

  const axis = element("div", "axis");
  axis.append(element("div", "lane-label"));
  const ticks = element("div", "ticks");
  for (let t = 0; t <= axisEnd + 1e-9; t += step) {
    const tick = element("span", "tick", tickLabel(t, step));
    tick.style.left = pct(t);
    ticks.append(tick);
  }
  axis.append(ticks);
  timeline.append(chart, axis);
}

// ------------------------------------------------------------------ updates

function render() {
  renderQueued = false;
  renderTable();
  renderTimeline();
}

function scheduleRender() {
  if (!renderQueued) { renderQueued = true; setTimeout(render, 30); }
}

function connection(state, text) {
  const box = document.getElementById("connection");
  box.dataset.state = state;
  box.querySelector(".text").textContent = text;
}

function connect() {
  if (source) source.close();
  connection("connecting", "connecting…");
  source = new EventSource(api("api/events"));
  source.addEventListener("open", () => { retryMs = 1000; connection("live", "live"); });
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    clockOffset = data.now - Date.now() / 1000;
    machines.clear();
    for (const row of data.machines) machines.set(row.mac, row);
    connection("live", "live");
    scheduleRender();
  });
  source.addEventListener("machine", (event) => {
    const row = JSON.parse(event.data);
    machines.set(row.mac, row);
    scheduleRender();
  });
  source.addEventListener("gone", (event) => {
    machines.delete(JSON.parse(event.data).mac);
    scheduleRender();
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {
      connection("retrying", "reconnecting…");  // the browser retries by itself
      return;
    }
    // Refused (401, 503 when too many pages are open, the appliance restarting): retry ourselves.
    source.close();
    explainFailure();
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  });
}

async function explainFailure() {
  let text = "offline, retrying…";
  try {
    const response = await fetch(api("api/machines"), { cache: "no-store" });
    if (response.status === 401) text = "token required: open this page with ?token=…";
    else if (response.ok) text = "busy, retrying…";
  } catch (error) {
    // unreachable: keep "offline"
  }
  connection("offline", text);
}

function setFilter(value) {
  filter = value;
  for (const button of document.querySelectorAll("#filter button")) {
    button.setAttribute("aria-pressed", String(button.dataset.filter === value));
  }
  history.replaceState(null, "", value === "all" ? location.pathname + location.search : `#${value}`);
  scheduleRender();
}

function init() {
  for (const button of document.querySelectorAll("#filter button")) {
    button.addEventListener("click", () => setFilter(button.dataset.filter));
  }
  const wanted = location.hash.slice(1);
  if (["booting", "booted", "stuck"].includes(wanted)) setFilter(wanted);
  document.getElementById("api-link").href = api("api/machines");
  document.getElementById("metrics-link").href = api("metrics");
  setInterval(scheduleRender, 1000);  // "last seen" and running boot times move on their own
  render();
  connect();
}

init();
