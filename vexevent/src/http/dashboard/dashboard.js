// The vexevent dashboard: follows the analyse stage's window summaries (Server-Sent Events from
// /dashboard/events: the kept history first, then one per window) and draws them with uPlot.
"use strict";

const POINTS = 600;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

// A time chart whose series appear as their names first show up.
class Chart {
  constructor(id) {
    this.el = document.getElementById(id);
    this.names = [];
    this.data = [[]];
    this.plot = null;
  }
  push(time, values) {
    for (const name of Object.keys(values)) {
      if (!this.names.includes(name)) {
        this.names.push(name);
        this.data.push(this.data[0].map(() => null));
        this.rebuild();
      }
    }
    this.data[0].push(time);
    this.names.forEach((name, i) => this.data[i + 1].push(name in values ? values[name] : null));
    if (this.data[0].length > POINTS) this.data.forEach((column) => column.shift());
  }
  rebuild() {
    if (this.plot) this.plot.destroy();
    const width = Math.max(this.el.clientWidth, 300);
    const series = [{}].concat(this.names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 1.5 })));
    this.plot = new uPlot({ width, height: 200, series, axes: [{}, { size: 60 }] }, this.data, this.el);
  }
  draw() {
    if (!this.plot) this.rebuild();
    this.plot.setData(this.data);
  }
}

const charts = {
  types: new Chart("chart-types"),
  loss: new Chart("chart-loss"),
  delivery: new Chart("chart-delivery"),
  operations: new Chart("chart-operations"),
  fuse: new Chart("chart-fuse"),
  daemon: new Chart("chart-daemon"),
};
const anomalies = [];

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

function fill(id, rows, columns) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of rows) {
    const row = document.createElement("tr");
    for (const [field, className] of columns) cell(row, typeof field === "function" ? field(item) : item[field], className);
    body.appendChild(row);
  }
}

const topColumns = [["key", "key"], ["count", "n"], ["bytes", "n"], ["errors", "n"], ["time_us", "n"], ["p99_us", "n"]];

function show(frame) {
  const time = frame.wall_ms / 1000;
  const perSecond = (n) => n / frame.window_secs;
  const types = {};
  for (const [name, count] of Object.entries(frame.by_type)) types[name] = perSecond(count);
  charts.types.push(time, types);
  charts.loss.push(time, { lost: frame.lost, late: frame.late, evicted: frame.evicted });
  charts.delivery.push(time, { p50: frame.kernel_to_sink.p50_us, p99: frame.kernel_to_sink.p99_us });
  const operations = {};
  for (const row of frame.operations.slice(0, 8)) operations[row.name] = row.p99_us;
  charts.operations.push(time, operations);
  const stages = {};
  for (const row of frame.fuse_stages) stages[row.name] = row.p99_us;
  charts.fuse.push(time, stages);
  const functions = {};
  for (const row of frame.daemon_functions.slice(0, 8)) functions[row.name] = row.p99_us;
  charts.daemon.push(time, functions);
  for (const anomaly of frame.anomalies) anomalies.unshift(Object.assign({ at: new Date(frame.wall_ms).toLocaleTimeString() }, anomaly));
  anomalies.splice(50);
}

function showTables(frame) {
  const top = frame.top;
  fill("top-files", top.path || [], topColumns);
  fill("top-processes", top.pid || [], topColumns);
  fill("top-dirs", top.dir || [], topColumns);
  fill("top-cgroups", top.cgroup || [], topColumns);
  fill("top-total", (frame.top_total.path || []), [["key", "key"], ["count", "n"], ["error", "n"]]);
  fill("slowest", frame.slowest, [["operation"], ["path", "key"], ["comm"], ["pid", "n"], ["duration_us", "n"]]);
  fill("anomalies", anomalies, [["at"], [(a) => a.dimension + " " + a.name], ["key", "key"], [(a) => a.baseline.toFixed(1), "n"], [(a) => a.observed.toFixed(1), "n"], [(a) => a.z.toFixed(1), "n"]]);
  fill("health", frame.health.checks, [["name"], [(c) => (c.ok ? "ok" : "FAILING")], ["reason"]]);
  fill("sinks", Object.entries(frame.sinks).map(([name, s]) => Object.assign({ name }, s)), [["name"], ["delivered", "n"], ["queued", "n"], ["dropped", "n"], [(s) => (s.down ? "DOWN" : "up")]]);
  const status = document.getElementById("status");
  status.replaceChildren();
  const state = document.createElement("span");
  state.className = frame.health.ready ? "ok" : "bad";
  state.textContent = frame.health.ready ? "ready" : "NOT READY";
  status.appendChild(state);
  status.appendChild(document.createTextNode(
    ` · window ending ${new Date(frame.wall_ms).toLocaleTimeString()}: ` +
    `${frame.events} events, ${frame.errors} errors, ${frame.lost} lost`));
  status.dataset.events = frame.events;
}

let pending = null;
function render() {
  if (!pending) return;
  Object.values(charts).forEach((chart) => chart.draw());
  showTables(pending);
  pending = null;
}

const source = new EventSource("/dashboard/events");
source.onmessage = (message) => {
  const frame = JSON.parse(message.data);
  show(frame);
  pending = frame;
};
source.addEventListener("lagged", () => { document.getElementById("status").classList.add("bad"); });
source.onerror = () => { document.getElementById("status").textContent = "disconnected; retrying…"; };
setInterval(render, 250);
