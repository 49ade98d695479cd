// factoryflow's web UI: four pages over the /v1 control API (configuration, streams,
// status, logs). Everything it loads is served by factoryflow itself (/ui/...): it works in
// a plant without internet. With an API key set, every call carries it in X-API-Key; the
// page asks for it on the first 401 and keeps it for the browser tab (sessionStorage).

import { createEditor, getText, jumpTo, setText, showViolations } from "/ui/vendor/editor.js";

const $ = (id) => document.getElementById(id);
const KEY = "factoryflow-api-key";
const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

// ------------------------------------------------------------------ API calls

let asking = null; // the pending API-key dialog, shared by calls that hit 401 together

function askForKey(wrong) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = $("key-dialog");
      $("key-error").textContent = wrong ? "That key was refused." : "";
      $("key-input").value = "";
      dialog.showModal();
      $("key-form").onsubmit = () => {
        sessionStorage.setItem(KEY, $("key-input").value);
        asking = null;
        resolve();
      };
    });
  }
  return asking;
}

async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) headers["X-API-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401) {
      await askForKey(Boolean(key));
      continue;
    }
    const data = await response.json().catch(() => ({ success: false, error: { text: `HTTP ${response.status}` } }));
    return { status: response.status, data };
  }
}

function notice(text, isError) {
  const el = $("notice");
  el.textContent = text;
  el.className = isError ? "error" : "ok";
}

function errorText(data) {
  return (data.error && data.error.text) || (typeof data.response === "string" ? data.response : "failed");
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  return td;
}

// ------------------------------------------------------------------ configuration page

let editor = null;
let templates = [];

async function loadConfig() {
  const { data } = await api("GET", "/v1/config");
  const text = JSON.stringify(data.response, null, 2);
  if (!editor) editor = createEditor($("editor"), text);
  else setText(editor, text);
  showViolations(editor, []);
  $("violations").replaceChildren();
  $("violations-summary").textContent = "Not validated yet.";
}

function parsed() {
  try {
    return JSON.parse(getText(editor));
  } catch (error) {
    notice(`The configuration is not valid JSON: ${error.message}`, true);
    return null;
  }
}

function listViolations(violations) {
  const marked = showViolations(editor, violations);
  const list = $("violations");
  list.replaceChildren();
  for (const v of violations) {
    const item = document.createElement("li");
    item.className = v.level;
    const button = document.createElement("button");
    button.className = "link";
    button.textContent = `${v.level}: ${(v.json_path || []).join("/") || "<root>"}`;
    button.title = "Show it in the editor";
    button.onclick = () => jumpTo(editor, v.json_path || []);
    item.append(button, document.createTextNode(` ${v.description}`));
    list.append(item);
  }
  const errors = violations.filter((v) => v.level === "error").length;
  const count = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;
  $("violations-summary").textContent = violations.length
    ? `${count(errors, "error")}, ${count(violations.length - errors, "warning")}.` : "No violations.";
  return marked;
}

async function validate() {
  const config = parsed();
  if (!config) return null;
  const { data } = await api("POST", "/v1/config/validate", config);
  const violations = (data.response && data.response.violations) || [];
  listViolations(violations);
  notice(data.success ? "The configuration passed validation." : "The configuration has errors.", !data.success);
  return data.success;
}

async function save() {
  const config = parsed();
  if (!config) return;
  const { data } = await whileWaiting("Saving (a running dataflow restarts on the new config)",
                                      api("POST", "/v1/config", config));
  if (data.success) {
    listViolations((data.meta && data.meta.violations) || []);
    setText(editor, JSON.stringify(data.response, null, 2));
    notice(`Saved at ${data.meta.last_modified}.`);
  } else {
    listViolations((data.response && data.response.violations) || []);
    notice(`Not saved: ${errorText(data)}`, true);
  }
}

async function loadTemplates() {
  const { data } = await api("GET", "/v1/config/templates");
  templates = data.response || [];
  const select = $("template");
  select.replaceChildren(new Option("choose…", ""));
  templates.forEach((t, i) => select.add(new Option(t.name, String(i))));
}

function addTemplate() {
  const chosen = templates[Number($("template").value)];
  const config = chosen && parsed();
  if (!config) return;
  const part = chosen.configuration;
  for (const section of ["data_receiver", "transforms"]) {
    config[section] = [...(config[section] || []), ...(part[section] || [])];
  }
  if (!(config.data_transmit || []).length) config.data_transmit = part.data_transmit || [];
  setText(editor, JSON.stringify(config, null, 2));
  notice(`Added the ${chosen.name} template: fill in its <Please ...> placeholders, then Validate.`);
}

// ------------------------------------------------------------------ streams page

// records_per_minute: the API's samples over the last hour, oldest first (api/rates.py)
function sparkline(perMinute) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("class", "spark");
  const top = Math.max(1, ...perMinute);
  const points = perMinute.map((v, i) => `${(i / Math.max(1, perMinute.length - 1)) * 120},${22 - (v / top) * 20}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  const last = perMinute.length ? Math.round(perMinute[perMinute.length - 1]) : null;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", last === null ? "no rate yet" : `${last} records per minute, last hour`);
  return [svg, last];
}

async function loadStreams() {
  const { data } = await api("GET", "/v1/streams");
  const body = $("streams");
  body.replaceChildren();
  for (const s of data.response || []) {
    const row = body.insertRow();
    row.dataset.stream = s.stream;
    cell(row, s.data_receiver);
    cell(row, s.asset);
    cell(row, s.stream_type);
    cell(row, s.records_received, "num received");
    const delivered = Object.entries(s.records_delivered || {});
    cell(row, delivered.map(([t, n]) => `${n} ${t}`).join(", ") || "–", "num delivered");
    cell(row, s.last_timestamp);
    cell(row, s.state, `state ${s.state}`);
    const [svg, last] = sparkline(s.records_per_minute || []);
    const spark = row.insertCell();
    spark.className = "rate";
    spark.append(svg, document.createTextNode(` ${last === null ? "–" : last}`));
    const markers = row.insertCell();
    for (const m of s.markers || []) {
      const p = document.createElement("p");
      p.className = m.level;
      p.textContent = `${m.level} (${m.component}, ${m.category}): ${m.message}`;
      markers.append(p);
    }
    const button = document.createElement("button");
    button.textContent = "Restream";
    button.setAttribute("aria-label", `Restream ${s.stream}`);
    button.onclick = () => restream(s);
    row.insertCell().append(button);
  }
}

async function restream(s) {
  if (!confirm(`Restream ${s.stream} of ${s.data_receiver} from the start? Its records are read and delivered again.`)) return;
  notice(`Restreaming ${s.stream}…`);
  const { data } = await api("POST", "/v1/restream", { [s.data_receiver]: [{ asset: s.asset, stream_type: s.stream_type }] });
  notice(data.success ? `Restream of ${s.stream}: ${data.response}` : `Restream of ${s.stream} failed: ${errorText(data)}`,
         !data.success);
}

// ------------------------------------------------------------------ status page

function gb(value) {
  return `${value.toFixed(1)} GiB`;
}

// The Status page from /v1/status; returns that answer's response (undefined: refused).
async function loadStatus() {
  const { data } = await api("GET", "/v1/status");
  const s = data.response;
  if (!s) return s;
  const state = s.factorytx.status;
  const process = s.factorytx.process || {};
  $("status-state").textContent = process.action ? `${state}, ${process.action}…` : state;
  $("status-process").textContent = process.pid ? `(pid ${process.pid})` : "";
  setState(state, process.action);
  const body = $("transmits");
  body.replaceChildren();
  for (const [name, t] of Object.entries(s.last_data_transmit || {})) {
    const row = body.insertRow();
    cell(row, name);
    cell(row, t.records_delivered, "num");
    cell(row, t.outbox_records === null ? null : `${t.outbox_records} (${t.outbox_bytes} bytes)`);
    cell(row, t.last_success);
    cell(row, t.last_error ? `${t.last_error} (${t.last_error_at})` : null, t.last_error ? "error" : "");
    cell(row, t.paused ? "paused" : "no");
  }
  const m = s.machine_info;
  const rows = [
    ["CPU", `${m.cpu.percent.toFixed(0)} % of ${m.cpu.cpu_count} cores`],
    ["Memory", `${m.memory.percent_used.toFixed(0)} % used, ${gb(m.memory.available_gb)} free of ${gb(m.memory.total_gb)}`],
    ["Disk", `${m.disk.percent_used.toFixed(0)} % used, ${gb(m.disk.available_gb)} free of ${gb(m.disk.total_gb)}`],
  ];
  $("machine").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
  return s;
}

// The dataflow's state; while a request starts, stops or restarts it, that action.
function setState(state, action) {
  const pill = $("dataflow-state");
  pill.textContent = action ? `dataflow ${action}…` : `dataflow ${state}`;
  pill.className = `pill ${action || state}`;
}

// While `request` (a save, start, stop or restart) runs, say so, and every second show what
// the dataflow is doing and each transmit's last error: a stop waits for the transmits to
// finish what they hold, and a dead endpoint is then the reason to read.
async function whileWaiting(text, request) {
  notice(`${text}…`);
  let done = false;  // a tick still in flight when the request ends must not overwrite its answer
  const tick = async () => {
    const s = page() === "status" ? await loadStatus() : (await api("GET", "/v1/status")).data.response;
    if (!s || done) return;
    const action = (s.factorytx.process || {}).action;
    setState(s.factorytx.status, action);
    const errors = Object.entries(s.last_data_transmit || {}).filter(([, t]) => t.last_error)
      .map(([name, t]) => `${name}: ${t.last_error}`);
    notice(`${text}… ${action ? `The dataflow is ${action}.` : ""}` +
           `${errors.length ? ` Transmit errors: ${errors.join("; ")}` : ""}`);
  };
  const timer = setInterval(() => tick().catch(() => {}), 1000);
  try {
    return await request;
  } finally {
    done = true;
    clearInterval(timer);
  }
}

async function control(action) {
  const { data } = await whileWaiting(action === "stop" ? "Stopping" : action === "start" ? "Starting" : "Restarting",
                                      api("POST", `/v1/ftx/${action}`));
  notice(data.success ? `${action}: ${data.response}` : `${action} failed: ${errorText(data)}`, !data.success);
  await loadStatus();
}

// ------------------------------------------------------------------ logs page

let logLines = [];

function showLog() {
  const level = $("log-level").value;
  const text = $("log-filter").value.toLowerCase();
  const floor = level ? LEVELS.indexOf(level) : 0;
  const shown = logLines.filter((line) => {
    const found = line.match(/\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b/);
    const rank = found ? LEVELS.indexOf(found[1]) : 0;
    return rank >= floor && (!text || line.toLowerCase().includes(text));
  });
  const log = $("log");
  log.textContent = shown.join("\n");
  log.dataset.lines = String(shown.length);
  if ($("log-follow").checked) log.scrollTop = log.scrollHeight;
}

async function loadLog() {
  const { data } = await api("GET", "/v1/log/stream?lines=500");
  logLines = data.response || [];
  showLog();
}

// ------------------------------------------------------------------ routing and refresh

const PAGES = { config: loadConfig, streams: loadStreams, status: loadStatus, logs: loadLog };
const REFRESH = { streams: 5000, status: 5000, logs: 2000 };
let timer = null;

function page() {
  const name = location.hash.replace(/^#\//, "") || "config";
  return name in PAGES ? name : "config";
}

async function show() {
  const name = page();
  for (const other of Object.keys(PAGES)) $(`page-${other}`).hidden = other !== name;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearInterval(timer);
  await PAGES[name]();
  if (REFRESH[name]) timer = setInterval(() => PAGES[name]().catch(() => {}), REFRESH[name]);
}

window.addEventListener("hashchange", show);
window.addEventListener("DOMContentLoaded", async () => {
  $("validate").onclick = validate;
  $("save").onclick = save;
  $("reload").onclick = loadConfig;
  $("add-template").onclick = addTemplate;
  $("start").onclick = () => control("start");
  $("stop").onclick = () => control("stop");
  $("restart").onclick = () => control("restart");
  $("log-level").onchange = showLog;
  $("log-filter").oninput = showLog;
  await show();
  await loadTemplates();
  api("GET", "/v1/status").then(({ data }) => data.response
    && setState(data.response.factorytx.status, (data.response.factorytx.process || {}).action));
});
