// The dashboard: runs list, start form (default config editable), adapters, and a run page
// with a live loss chart fed by the websocket. Plain JS, same-origin API calls only.
"use strict";

const $ = (id) => document.getElementById(id);
const ACTIVE = ["pending", "running"];
const TERMINAL = ["complete", "error", "cancelled"];
const RECONNECT_LIMIT = 20;
const OBJECTIVES = ["sft", "dpo", "sft+dpo"]; // the options of #objective, as the API names them

// With API_TOKEN set on the server, the page asks for the token once and keeps it locally.
const auth = { token: localStorage.getItem("tmde-token") || "" };

async function api(method, path, body) {
  const init = { method, headers: auth.token ? { Authorization: `Bearer ${auth.token}` } : {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    const token = window.prompt("This API needs its token (API_TOKEN):");
    if (token) {
      auth.token = token.trim();
      localStorage.setItem("tmde-token", auth.token);
      return api(method, path, body);
    }
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  return { status: response.status, data };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

const fmt = {
  num: (v, digits = 4) => (typeof v === "number" ? v.toFixed(digits) : "–"),
  lr: (v) => (typeof v === "number" ? v.toExponential(2) : "–"),
  eta(seconds) {
    if (typeof seconds !== "number" || seconds < 0) return "–";
    const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  },
  time: (iso) => (iso ? new Date(iso).toLocaleString() : "–"),
  secs: (v) => (typeof v === "number" ? `${v.toFixed(0)} s` : "–"),
};

function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status }, status);
}

function setMessage(node, text, kind = "") {
  node.textContent = text;
  node.className = `message ${kind}`;
}

// --- home: runs, start, adapters ----------------------------------------------------------

const home = { timer: null, defaults: null };

async function showHome() {
  if (home.defaults === null) await resetConfig();
  await refreshRuns();
  home.timer = setInterval(refreshRuns, 3000);
}

async function resetConfig() {
  const { status, data } = await api("GET", "/api/finetune/config/default");
  if (status === 200) {
    home.defaults = data;
    $("config").value = JSON.stringify(data, null, 2);
    $("objective").value = OBJECTIVES.includes(data.objective) ? data.objective : "sft";
  }
}

// The objective has its own control and is also a field of the JSON; the two are kept in
// step so that what is shown is what is sent: choosing one rewrites the JSON's `objective`,
// typing a known one into the JSON moves the select. On start the select's value is sent.
function parseConfig() {
  try {
    const config = JSON.parse($("config").value);
    return config && typeof config === "object" && !Array.isArray(config) ? config : null;
  } catch {
    return null; // half-typed JSON: left alone, startRun reports it
  }
}

function objectiveToConfig() {
  const config = parseConfig();
  if (config === null) return;
  config.objective = $("objective").value;
  $("config").value = JSON.stringify(config, null, 2);
}

function objectiveFromConfig() {
  const config = parseConfig();
  if (config && OBJECTIVES.includes(config.objective)) $("objective").value = config.objective;
}

async function refreshRuns() {
  const { status, data } = await api("GET", "/api/finetune?limit=50");
  if (status !== 200) return;
  $("runs-total").textContent = `(${data.total})`;
  const body = $("runs").tBodies[0];
  body.replaceChildren(
    ...data.runs.map((run) => {
      const metrics = run.metrics || {};
      const row = el(
        "tr",
        { class: "clickable", "data-run-id": run.id, onclick: () => (location.hash = `#/runs/${run.id}`) },
        el("td", {}, el("a", { href: `#/runs/${run.id}` }, run.id)),
        el("td", {}, badge(run.status)),
        el("td", {}, run.baseModel),
        el("td", {}, fmt.time(run.startedAt)),
        el("td", {}, metrics.total_steps ?? "–"),
        el("td", {}, fmt.num(metrics.final_train_loss)),
      );
      return row;
    }),
  );
  $("runs-empty").hidden = data.runs.length > 0;
  await refreshAdapters();
}

// The registry: active adapter, the gate's decision per adapter, activate / roll back.
async function refreshAdapters() {
  const { status, data } = await api("GET", "/api/adapters");
  if (status !== 200) return;
  $("rollback").hidden = !data.activeId;
  $("adapters").tBodies[0].replaceChildren(
    ...data.adapters.map((a) => {
      const m = a.metrics || {};
      const gate = a.promotion ? a.promotion.decision : "–";
      const action = a.isActive
        ? el("span", { class: "badge completed", "data-active": "true" }, "active")
        : el("button", { type: "button", class: "secondary", onclick: () => activateAdapter(a.id) }, "Activate");
      return el(
        "tr",
        { "data-adapter-id": a.id, "data-run-id": a.id },
        el("td", {}, el("a", { href: `#/runs/${a.id}` }, a.id), el("div", { class: "path" }, a.path)),
        el("td", {}, `${fmt.num(m.baseValLoss)} → ${fmt.num(m.adapterValLoss)}`),
        el("td", { title: Gate.title(a.promotion) }, gate),
        el("td", {}, (a.tags || []).join(", ")),
        el("td", {}, action),
      );
    }),
  );
  $("adapters-empty").hidden = data.adapters.length > 0;
}

async function changeActive(method, path) {
  const { status, data } = await api(method, path);
  setMessage($("adapters-message"), status === 200 ? `Active: ${data.adapterId ?? "base model"}` : data.error, status === 200 ? "ok" : "error");
  await refreshAdapters();
}

const activateAdapter = (id) => changeActive("POST", `/api/adapters/${id}/activate`);
const rollbackAdapter = () => changeActive("POST", "/api/adapters/rollback");

async function startRun() {
  const message = $("start-message");
  let config;
  try {
    config = JSON.parse($("config").value);
  } catch (err) {
    setMessage(message, `The config is not valid JSON: ${err.message}`, "error");
    return;
  }
  config.objective = $("objective").value;
  $("start").disabled = true;
  try {
    const { status, data } = await api("POST", "/api/finetune", { config });
    if (status === 202) {
      setMessage(message, `Started ${data.runId}`, "ok");
      location.hash = `#/runs/${data.runId}`;
    } else if (status === 409) {
      setMessage(message, `${data.error}: ${data.activeRunId}`, "error");
    } else if (status === 422) {
      setMessage(message, shortfall(data), "error");
    } else {
      const fields = data && data.fields ? Object.entries(data.fields).map(([k, v]) => `${k}: ${v}`) : [];
      setMessage(message, [data ? data.error : `HTTP ${status}`, ...fields].join(" · "), "error");
    }
  } finally {
    $("start").disabled = false;
  }
}

// A 422: too few traces, or too few preference pairs for a DPO objective. The server's
// message names what is short and usually the figures too ("need 8, have 0"); they are
// added only when it does not, so the line says each thing once and never unit-less twice.
function shortfall(data) {
  if (typeof data.current !== "number" || typeof data.required !== "number") return data.error;
  const stated = [data.current, data.required].every((n) => data.error.includes(String(n)));
  return stated ? data.error : `${data.error} (have ${data.current}, need ${data.required})`;
}

// --- one run: history + live websocket ---------------------------------------------------

const view = { runId: null, ws: null, chart: null, lastSeq: null, ended: false, retries: 0, timer: null };

function stopRunView() {
  if (view.ws) {
    view.ws.onclose = null;
    view.ws.close();
  }
  clearTimeout(view.timer);
  Object.assign(view, { runId: null, ws: null, lastSeq: null, ended: false, retries: 0 });
}

function setStatus(status) {
  $("run-status").replaceWith(Object.assign(badge(status), { id: "run-status" }));
  $("cancel").hidden = !ACTIVE.includes(status);
}

// Runs from before preference training have no `objective`: they were SFT runs.
const objectiveOf = (run) => (run.config && run.config.objective) || "sft";

function showRunInfo(run) {
  setStatus(run.status);
  $("stat-model").textContent = run.baseModel;
  $("run-objective").textContent = objectiveOf(run);
  if (run.status === "completed" && run.loraPath) {
    const m = run.metrics || {};
    const rows = [
      ["loraPath", run.loraPath],
      ["objective", objectiveOf(run)],
      ["base val loss", fmt.num(m.base_val_loss)],
      ["adapter val loss", fmt.num(m.adapter_val_loss)],
      ["total steps", m.total_steps ?? "–"],
      ["training time", fmt.secs(m.training_time_seconds)],
      ["tokens/s", m.tokens_per_second ?? "–"],
      ["exact match base → adapter", `${fmt.num(m.base_exact_match, 2)} → ${fmt.num(m.adapter_exact_match, 2)}`],
      ["preference accuracy base → adapter", `${fmt.num(m.base_preference_accuracy, 2)} → ${fmt.num(m.adapter_preference_accuracy, 2)}`],
    ];
    // the DPO stage's reference model (the SFT adapter of an sft+dpo run): only when measured
    if (typeof m.reference_preference_accuracy === "number") {
      rows.push(["preference accuracy reference", fmt.num(m.reference_preference_accuracy, 2)]);
    }
    if (run.promotion) rows.push(["promotion", `${run.promotion.decision}: ${run.promotion.reason}`]);
    $("result-list").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("run-result").hidden = false;
    Gate.show(run); // gate.js: the gate card, the lineage and the samples
  }
  if (run.status === "failed") setMessage($("run-message"), `${run.errorCode}: ${run.errorMessage}`, "error");
  if (run.status === "cancelled") setMessage($("run-message"), run.errorMessage || "Cancelled", "");
}

// Events from before preference training have no `stage`: they were SFT steps.
const stageOf = (e) => e.stage || "sft";
const STAGED = ["progress", "eval", "training_start", "checkpoint"]; // the events that carry one

function showStep(e) {
  const step = e.step ?? 0, total = e.total_steps ?? 0;
  $("stat-stage").textContent = stageOf(e);
  $("stat-step").textContent = total ? `${step} / ${total}` : String(step);
  $("progress-bar").style.width = total ? `${Math.min(100, (100 * step) / total)}%` : "0";
  if (typeof e.loss === "number") $("stat-loss").textContent = fmt.num(e.loss);
  if (typeof e.eval_loss === "number") $("stat-eval").textContent = fmt.num(e.eval_loss);
  if (typeof e.learning_rate === "number") $("stat-lr").textContent = fmt.lr(e.learning_rate);
  if (e.eta_seconds !== undefined) $("stat-eta").textContent = fmt.eta(e.eta_seconds);
}

function logEvent(e) {
  if (e.type === "heartbeat") return;
  const parts = [e.timestamp || "", e.type];
  // SFT is the usual case, so only the DPO stage is named: its loss is a different quantity
  if (STAGED.includes(e.type) && stageOf(e) === "dpo") parts.push("[dpo]");
  if (e.step !== undefined) parts.push(`step ${e.step}`);
  if (typeof e.loss === "number") parts.push(`loss ${fmt.num(e.loss)}`);
  if (typeof e.eval_loss === "number") parts.push(`eval ${fmt.num(e.eval_loss)}`);
  if (typeof e.rewards_margins === "number") parts.push(`margin ${fmt.num(e.rewards_margins)}`);
  if (typeof e.train_count === "number") parts.push(`examples ${e.train_count} train / ${e.val_count ?? 0} val`);
  if (typeof e.train_pairs === "number") parts.push(`pairs ${e.train_pairs} train / ${e.val_pairs ?? 0} val`);
  if (e.message) parts.push(e.message);
  if (e.adapter_path) parts.push(e.adapter_path);
  const log = $("log");
  log.prepend(el("li", {}, parts.join("  ")));
  while (log.children.length > 200) log.lastChild.remove();
}

// One event from history (camelCase rows, already snake_cased) or the feed (snake_case events).
// The DPO stage's losses get their own series: a DPO loss (about 0.69 at the start) on the
// SFT loss' line would look like a cliff. The margin plotted is the training batches'; the
// eval set's is in the log line.
function applyEvent(e) {
  const dpo = stageOf(e) === "dpo";
  if (e.type === "progress") {
    view.chart.add(dpo ? "dpo" : "train", e.step, e.loss, e.total_steps);
    if (dpo) view.chart.add("margin", e.step, e.rewards_margins, e.total_steps);
  }
  if (e.type === "eval") view.chart.add(dpo ? "dpo_eval" : "eval", e.step, e.eval_loss, e.total_steps);
  if (e.type === "progress" || e.type === "eval" || e.type === "training_start") showStep(e);
}

// The API's bodies are camelCase (their models' aliases), events are the seed's snake_case:
// one rule between the two, not a table of names to keep in step.
const snakeCase = (key) => key.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());

function fromHistory(row) {
  return Object.fromEntries(Object.entries(row).map(([key, value]) => [snakeCase(key), value]));
}

async function loadHistory(runId) {
  let after = 0;
  for (let page = 0; page < 100; page++) { // bounded: 100 pages of 1000 points
    const { status, data } = await api("GET", `/api/finetune/${runId}/events?after=${after}&limit=1000`);
    if (status !== 200 || view.runId !== runId) return;
    data.events.forEach((row) => applyEvent(fromHistory(row)));
    if (data.events.length < 1000) return;
    after = data.next;
  }
}

function setFeedState(state) {
  const node = $("feed-state");
  node.textContent = state;
  node.className = `feed ${state}`;
}

function connect(runId, buffer) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const after = view.lastSeq === null ? "" : `?after=${view.lastSeq}`;
  const token = auth.token ? `${after ? "&" : "?"}access_token=${encodeURIComponent(auth.token)}` : "";
  const ws = new WebSocket(`${proto}://${location.host}/api/finetune/${runId}/ws${after}${token}`);
  view.ws = ws;
  ws.onopen = () => setFeedState("live");
  ws.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    view.retries = 0;
    if (buffer && frame.type !== "state") buffer.push(frame);
    else handleFrame(frame);
  };
  ws.onclose = (event) => {
    if (view.runId !== runId) return;
    if (view.ended || event.code === 1000) return setFeedState("closed");
    if (event.code === 4404) {
      setMessage($("run-message"), `Run not found: ${runId}`, "error");
      return setFeedState("closed");
    }
    if (++view.retries > RECONNECT_LIMIT) return setFeedState("closed");
    setFeedState("retrying");
    view.timer = setTimeout(() => connect(runId, null), Math.min(500 * 2 ** view.retries, 10000));
  };
}

function handleFrame(frame) {
  if (frame.type === "state") return showRunInfo(frame.run);
  if (frame.type === "feed_error") return setMessage($("run-message"), frame.error, "error");
  if (typeof frame.seq === "number") view.lastSeq = Math.max(view.lastSeq ?? 0, frame.seq);
  applyEvent(frame);
  logEvent(frame);
  const status = $("run-status").dataset.status;
  if (status === "pending" && frame.type !== "heartbeat" && !TERMINAL.includes(frame.type)) {
    setStatus("running"); // a worker claimed the run: its events are flowing
  }
  if (TERMINAL.includes(frame.type)) {
    view.ended = true;
    setStatus({ complete: "completed", error: "failed", cancelled: "cancelled" }[frame.type]);
    $("stat-eta").textContent = "–";
    api("GET", `/api/finetune/${view.runId}`).then(({ status, data }) => status === 200 && showRunInfo(data));
  }
}

async function showRun(runId) {
  view.runId = runId;
  $("run-id").textContent = runId;
  for (const id of ["stat-step", "stat-stage", "stat-loss", "stat-eval", "stat-lr", "stat-eta", "stat-model"]) $(id).textContent = "–";
  $("run-objective").textContent = "";
  $("progress-bar").style.width = "0";
  $("log").replaceChildren();
  $("run-result").hidden = true;
  Gate.clear();
  setMessage($("run-message"), "");
  setFeedState("connecting");
  view.chart = view.chart || new LossChart($("chart"));
  view.chart.clear();
  // The feed first (buffering), then the stored history: nothing falls between the two.
  const buffer = [];
  connect(runId, buffer);
  await loadHistory(runId);
  if (view.runId !== runId) return;
  const pending = buffer.splice(0);
  view.ws.onmessage = (message) => { view.retries = 0; handleFrame(JSON.parse(message.data)); };
  pending.forEach(handleFrame);
}

async function cancelRun() {
  $("cancel").disabled = true;
  const { status, data } = await api("POST", `/api/finetune/${view.runId}/cancel`);
  $("cancel").disabled = false;
  if (status === 202) {
    setMessage($("run-message"), data.status === "cancelled" ? "Cancelled" : "Cancelling at the next step…");
    if (data.status === "cancelled") showRunInfo(data);
  } else {
    setMessage($("run-message"), data ? data.error : `HTTP ${status}`, "error");
  }
}

// --- routing --------------------------------------------------------------------------------

function route() {
  clearInterval(home.timer);
  stopRunView();
  const match = location.hash.match(/^#\/runs\/([\w-]+)/);
  $("view-home").hidden = Boolean(match);
  $("view-run").hidden = !match;
  if (match) showRun(match[1]);
  else showHome();
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("start").addEventListener("click", startRun);
  $("reset-config").addEventListener("click", resetConfig);
  $("objective").addEventListener("change", objectiveToConfig);
  $("config").addEventListener("input", objectiveFromConfig);
  $("cancel").addEventListener("click", cancelRun);
  $("rollback").addEventListener("click", rollbackAdapter);
  route();
});
