// The buildd dashboard: one page over the same API and event stream the terminal
// client uses. Everything shown is put in the page as text (textContent), never as
// markup, so a task title or a runner's output cannot run in the browser.
"use strict";

const TOKEN_KEY = "buildd.token";
const STATUSES = ["blocked", "pending", "assigned", "running", "waiting_input", "planned", "completed", "failed", "cancelled"];
// Statuses in which a task has a live run, whose progress line is news.
const ACTIVE = ["assigned", "running", "waiting_input"];

const state = {
  token: null,
  me: null,
  workspaces: new Map(),
  tasks: new Map(),
  workers: new Map(),
  accounts: [],
  filter: { workspace: "", status: "", q: "" },
  // The task list as the server pages it (newest first): ids shown, the next page's
  // cursor, and the exact counts per status.
  list: { ids: [], next: null, key: null, counts: null },
  // The worker whose output is on screen, and the last message number shown.
  output: { workerId: null, seq: 0, el: null },
  lastEventId: null,
  stream: null,
};

// ---------- small DOM helpers (text only) ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const badge = (s) => h("span", { class: `badge s-${s}` }, s.replace("_", " "));
const money = (n) => (n ? `$${Number(n).toFixed(2)}` : "$0.00");

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

// Only web links become links: a `javascript:` URL reported by a worker stays text.
function safeLink(url, text) {
  try {
    const u = new URL(url);
    if (u.protocol === "https:" || u.protocol === "http:") {
      return h("a", { href: u.href, target: "_blank", rel: "noopener noreferrer" }, text || url);
    }
  } catch (_) { /* not a URL */ }
  return document.createTextNode(url);
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign(
      { Authorization: `Bearer ${state.token}` },
      body === undefined ? {} : { "Content-Type": "application/json" },
    ),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401) signOut("That token was not accepted.");
    throw new ApiError(res.status, (data && data.error) || res.statusText);
  }
  return data;
}

// ---------- signing in ----------

function tokenFromHash() {
  const m = location.hash.match(/^#token=(.+)$/);
  if (!m) return;
  localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + "#/");
}

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.stream) state.stream.abort();
  showSignIn(message);
}

function showSignIn(message) {
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  setLive("offline");
  const input = h("input", { type: "password", name: "token", placeholder: "buildd_admin_… or an account key", autocomplete: "off", required: true });
  const form = h("form", { class: "stack panel signin", onsubmit: (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    start();
  } },
  h("h1", {}, "Sign in to buildd"),
  h("label", {}, "Token", input),
  message ? h("p", { class: "error" }, message) : null,
  h("p", { class: "muted" }, "The admin token (in the server's admin-token file) or an account key. It is kept in this browser only."),
  h("button", { class: "primary", type: "submit" }, "Sign in"));
  $("main").replaceChildren(form);
  input.focus();
}

// ---------- loading and live updates ----------

async function load() {
  const [me, ws] = await Promise.all([api("GET", "/api/me"), api("GET", "/api/workspaces")]);
  state.me = me;
  state.workspaces = new Map(ws.workspaces.map((w) => [w.id, w]));
  state.list.key = null;
  if (me.admin) state.accounts = await everyPage("/api/accounts?limit=1000", "accounts");
}

// Every item of a list, following `nextCursor`.
async function everyPage(path, field) {
  const all = [];
  let cursor = null;
  do {
    const page = await api("GET", cursor ? `${path}&cursor=${encodeURIComponent(cursor)}` : path);
    all.push(...page[field]);
    cursor = page.nextCursor;
  } while (cursor);
  return all;
}

// The query of the task list the filters ask for.
function listQuery() {
  const q = new URLSearchParams();
  if (state.filter.workspace) q.set("workspaceId", state.filter.workspace);
  if (state.filter.status) q.set("status", state.filter.status);
  if (state.filter.q) q.set("q", state.filter.q);
  return q;
}

// Reads the first page of the task list (or the next, with `more`) from the server.
async function loadTasks(more) {
  const key = listQuery().toString();
  const q = listQuery();
  q.set("limit", "100");
  if (more && state.list.next) q.set("cursor", state.list.next);
  const page = await api("GET", `/api/tasks?${q}`);
  if (listQuery().toString() !== key) return; // the filters changed meanwhile
  for (const t of page.tasks) state.tasks.set(t.id, t);
  const ids = page.tasks.map((t) => t.id);
  state.list.ids = more ? state.list.ids.concat(ids.filter((id) => !state.list.ids.includes(id))) : ids;
  state.list.next = page.nextCursor;
  state.list.key = key;
  scheduleRender();
}

// Counts per status, from the server; at most once a second while events arrive.
let countsTimer = null;
function loadCounts(soon) {
  if (soon) {
    if (!countsTimer) countsTimer = setTimeout(() => { countsTimer = null; loadCounts(false); }, 1000);
    return;
  }
  const ws = state.filter.workspace;
  api("GET", `/api/tasks/counts${ws ? `?workspaceId=${encodeURIComponent(ws)}` : ""}`).then((counts) => {
    if (ws !== state.filter.workspace) return;
    state.list.counts = counts;
    scheduleRender();
  }, () => {});
}

// Whether a task belongs in the list the filters ask for.
function listed(t) {
  const q = state.filter.q.toLowerCase();
  return (!state.filter.workspace || t.workspaceId === state.filter.workspace)
    && (!state.filter.status || t.status === state.filter.status)
    && (!q || t.title.toLowerCase().includes(q) || (t.description || "").toLowerCase().includes(q));
}

function setLive(mode) {
  const el = $("live");
  el.className = `live ${mode === "live" ? "on" : mode === "reconnecting" ? "retry" : ""}`;
  el.textContent = mode;
}

// Reads `GET /api/events` with fetch (EventSource cannot send a token), resuming after
// the last event seen whenever the connection drops, with a growing pause.
async function follow() {
  const controller = new AbortController();
  state.stream = controller;
  let pause = 500;
  while (!controller.signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${state.token}` };
      if (state.lastEventId !== null) headers["Last-Event-ID"] = String(state.lastEventId);
      const res = await fetch("/api/events", { headers, signal: controller.signal });
      if (res.status === 401) return signOut("That token was not accepted.");
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setLive("live");
      pause = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          onBlock(block);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    setLive("reconnecting");
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 10000);
  }
}

function onBlock(block) {
  let id = null, name = null, data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) id = Number(line.slice(3).trim());
    else if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
  }
  if (id === null || !name) return;
  state.lastEventId = id;
  let payload;
  try { payload = JSON.parse(data); } catch (_) { return; }
  // Retention deleted events this page never saw: read everything afresh.
  if (name === "stream.reset") {
    load().then(route, () => {});
    return;
  }
  if (name === "task.created" || name === "task.updated") {
    state.tasks.set(payload.task.id, payload.task);
    if (name === "task.created" && listed(payload.task) && !state.list.ids.includes(payload.task.id)) {
      state.list.ids.unshift(payload.task.id);
    }
    loadCounts(true);
  }
  else if (name === "worker.updated") state.workers.set(payload.worker.id, payload.worker);
  else if (name === "worker.message") {
    if (payload.workerId === state.output.workerId) appendOutput([{ message: payload.message }]);
    return;
  }
  scheduleRender();
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderData(); });
}

// ---------- views ----------

// A view is built once per route (so forms keep what a person typed) and has a
// `data` part that is rebuilt on every change.
let view = { data: () => {} };

// Views whose data comes without events (agents) poll; a new route stops them.
let polling = null;

function route() {
  if (!state.token) return;
  clearInterval(polling);
  const hash = location.hash || "#/";
  state.output = { workerId: null, seq: 0, el: null };
  let m;
  if ((m = hash.match(/^#\/tasks\/(.+)$/))) view = taskView(decodeURIComponent(m[1]));
  else if (hash === "#/new") view = newTaskView();
  else if (hash === "#/accounts") view = accountsView();
  else if (hash === "#/schedules") view = schedulesView();
  else if (hash === "#/agents") view = agentsView();
  else view = tasksView();
  renderData();
}

function renderData() {
  view.data();
}

function workspaceName(id) {
  const w = state.workspaces.get(id);
  return w ? w.name : id;
}

function workersOf(taskId) {
  return [...state.workers.values()]
    .filter((w) => w.taskId === taskId)
    .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
}

function taskCost(taskId) {
  return workersOf(taskId).reduce((sum, w) => sum + (w.costUsd || 0), 0);
}

function tasksView() {
  const tabs = h("div", { class: "toolbar tabs" });
  const wsSelect = h("select", { "aria-label": "workspace", onchange: (e) => { state.filter.workspace = e.target.value; refilter(); } });
  const search = h("input", { type: "search", name: "q", placeholder: "Search titles and descriptions", value: state.filter.q, autocomplete: "off" });
  const searchForm = h("form", { class: "row search", onsubmit: (e) => { e.preventDefault(); state.filter.q = search.value.trim(); refilter(); } },
    search, h("button", { type: "submit" }, "Search"));
  const table = h("div", { id: "tasks" });
  const more = h("div", { class: "actions more" });
  const moreErr = h("p", { class: "error", role: "alert" });
  $("main").replaceChildren(
    h("div", { class: "toolbar" }, h("h1", {}, "Tasks"), wsSelect, searchForm),
    tabs,
    table,
    more,
  );
  function refilter() {
    state.list.ids = [];
    state.list.next = null;
    loadTasks(false).catch((e) => table.replaceChildren(h("p", { class: "error" }, e.message)));
    loadCounts(false);
  }
  if (state.list.key !== listQuery().toString()) refilter();
  else loadCounts(false);
  return {
    data() {
      wsSelect.replaceChildren(
        h("option", { value: "" }, "All workspaces"),
        ...[...state.workspaces.values()].map((w) => h("option", { value: w.id, selected: w.id === state.filter.workspace }, w.name)),
      );
      const counts = state.list.counts;
      const count = (s) => (counts ? (counts.byStatus.find((c) => c.status === s) || { count: 0 }).count : "…");
      tabs.replaceChildren(
        h("button", { class: state.filter.status ? "" : "on", onclick: () => { state.filter.status = ""; refilter(); } }, `All ${counts ? counts.total : "…"}`),
        ...STATUSES.map((s) => h("button", {
          class: state.filter.status === s ? "on" : "", "data-status": s,
          onclick: () => { state.filter.status = s; refilter(); },
        }, `${s.replace("_", " ")} ${count(s)}`)),
      );
      const rows = state.list.ids.map((id) => state.tasks.get(id)).filter((t) => t && listed(t));
      more.replaceChildren(...(state.list.next ? [action("Load more", "", () => loadTasks(true), moreErr)] : []), moreErr);
      if (state.list.key === null) {
        table.replaceChildren(h("p", { class: "muted panel" }, "Loading…"));
        return;
      }
      if (!rows.length) {
        table.replaceChildren(h("p", { class: "muted panel" }, state.filter.q ? `No task matches “${state.filter.q}”.` : "No tasks here yet. ", state.filter.q ? null : h("a", { href: "#/new" }, "Create one.")));
        return;
      }
      table.replaceChildren(h("table", {},
        h("thead", {}, h("tr", {}, ["Title", "Status", "Workspace", "Runner", "Priority", "Age", "Attempts"].map((c, i) => h("th", { class: i >= 4 && i !== 5 ? "num" : "" }, c)))),
        h("tbody", {}, rows.map((t) => h("tr", { "data-task": t.id },
          h("td", { class: "title", "data-label": "Title" }, h("a", { href: `#/tasks/${encodeURIComponent(t.id)}` }, t.title),
            t.progress && ACTIVE.includes(t.status) ? h("div", { class: "muted progress" }, t.progress) : null),
          h("td", { "data-label": "Status" }, badge(t.status)),
          h("td", { "data-label": "Workspace" }, workspaceName(t.workspaceId)),
          h("td", { "data-label": "Runner" }, runnerLabel(t)),
          h("td", { class: "num", "data-label": "Priority" }, t.priority),
          h("td", { "data-label": "Age", title: t.createdAt }, ago(t.createdAt)),
          h("td", { class: "num", "data-label": "Attempts" }, `${t.attempts}/${t.maxAttempts}`),
        ))),
      ));
    },
  };
}

// Who runs a task (its runner preference), and what runs it when it names a runner.
function runnerLabel(t) {
  return t.runner ? `${t.runnerPreference} · ${t.runner}` : t.runnerPreference;
}

// What a worker ran: its runner, and the model when it said.
function workerRunner(w) {
  return [w.runner, w.model].filter(Boolean).join(" · ");
}

function newTaskView() {
  const creatable = [...state.workspaces.values()];
  const msg = h("p", {});
  const form = h("form", { class: "stack panel", onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = {
      workspaceId: f.get("workspaceId"),
      title: f.get("title"),
      description: f.get("description"),
      runnerPreference: f.get("runnerPreference"),
      priority: Number(f.get("priority") || 0),
      dependsOn: String(f.get("dependsOn") || "").split(/[\s,]+/).filter(Boolean),
      mode: f.get("plan") ? "plan" : "run",
    };
    if (f.get("baseBranch")) body.baseBranch = f.get("baseBranch");
    for (const k of ["runner", "model", "fallbackRunner"]) if (f.get(k)) body[k] = f.get(k);
    try {
      const task = await api("POST", "/api/tasks", body);
      state.tasks.set(task.id, task);
      location.hash = `#/tasks/${encodeURIComponent(task.id)}`;
    } catch (err) {
      msg.className = "error";
      msg.textContent = err.message;
    }
  } },
  h("h1", {}, "New task"),
  h("label", {}, "Workspace", h("select", { name: "workspaceId", required: true }, creatable.map((w) => h("option", { value: w.id }, w.name)))),
  h("label", {}, "Title", h("input", { name: "title", required: true, maxlength: 500 })),
  h("label", {}, "Description", h("textarea", { name: "description", placeholder: "What should the agent do?" })),
  h("label", {}, "Runs on", h("select", { name: "runnerPreference" }, ["any", "user", "service", "action"].map((r) => h("option", { value: r }, r)))),
  h("datalist", { id: "runner-names" }, ["claude", "codex", "gemini"].map((r) => h("option", { value: r }))),
  h("label", {}, "Coding agent", h("input", { name: "runner", list: "runner-names", autocomplete: "off", placeholder: "any the agent has (claude, codex, gemini, …)" })),
  h("label", {}, "Model", h("input", { name: "model", autocomplete: "off", placeholder: "the agent's default" })),
  h("label", {}, "Fallback coding agent (when the first runs out of quota or budget)", h("input", { name: "fallbackRunner", list: "runner-names", autocomplete: "off" })),
  h("label", {}, "Priority (higher runs first)", h("input", { name: "priority", type: "number", value: 0, step: 1 })),
  h("label", {}, "Depends on (task ids, comma-separated)", h("input", { name: "dependsOn", autocomplete: "off" })),
  h("label", {}, "Base branch", h("input", { name: "baseBranch", autocomplete: "off", placeholder: "the checkout's current commit" })),
  h("label", { class: "row" }, h("input", { name: "plan", type: "checkbox" }), "Plan first: the agent proposes steps for you to approve"),
  msg,
  h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Create task"), h("a", { href: "#/" }, "Cancel")));
  $("main").replaceChildren(creatable.length ? form : h("p", { class: "panel muted" }, "There is no workspace you can create tasks in."));
  return { data() {} };
}

// One action button: runs `fn`, shows its error beside the buttons.
function action(label, cls, fn, errorEl) {
  return h("button", { class: cls, onclick: async (e) => {
    e.target.disabled = true;
    errorEl.textContent = "";
    try { await fn(); } catch (err) { errorEl.textContent = err.message; }
    e.target.disabled = false;
  } }, label);
}

function taskView(id) {
  const head = h("div", {});
  const workersEl = h("div", {});
  const err = h("p", { class: "error", role: "alert" });
  const replyInput = h("input", { name: "reply", placeholder: "Your answer", autocomplete: "off" });
  const replyForm = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    err.textContent = "";
    try {
      const task = await api("POST", `/api/tasks/${encodeURIComponent(id)}/reply`, { message: replyInput.value });
      state.tasks.set(task.id, task);
      replyInput.value = "";
      renderData();
    } catch (e2) { err.textContent = e2.message; }
  } }, replyInput, h("button", { class: "primary", type: "submit" }, "Answer"));
  const outputTitle = h("h2", {}, "Output");
  const output = h("pre", { class: "output", id: "output" });
  const workflowEl = h("div", { id: "workflow" });
  const artifactsEl = h("div", { id: "artifacts" });
  const changeEl = h("div", { id: "change" });
  $("main").replaceChildren(h("p", {}, h("a", { href: "#/" }, "← Tasks")), head, err, workflowEl, workersEl, artifactsEl, changeEl, outputTitle, output);
  // The task's workers, every attempt (the event stream keeps them current after).
  everyPage(`/api/workers?taskId=${encodeURIComponent(id)}&limit=1000`, "workers").then((ws) => {
    for (const w of ws) if (!state.workers.has(w.id)) state.workers.set(w.id, w);
    scheduleRender();
  }, (e) => { err.textContent = e.message; });
  const review = reviewPanel(id, err);
  // The runners of the connected agents, looked at every few seconds while the task
  // waits for a runner: agents report without events. `null` until read (or when the
  // caller may not list agents), which claims nothing.
  let connectedRunners = null;
  async function readAgents() {
    const task = state.tasks.get(id);
    if (task && !(task.status === "pending" && task.runner)) return;
    try {
      const { agents } = await api("GET", "/api/agents");
      connectedRunners = new Set(agents.flatMap((a) => a.runners));
      scheduleRender();
    } catch { connectedRunners = null; }
  }
  readAgents();
  polling = setInterval(readAgents, 5000);
  const unrunnable = (task) => task.status === "pending" && task.runner && connectedRunners !== null && !connectedRunners.has(task.runner);
  // One instruction form per worker, kept across renders so that what a person types
  // stays.
  const instructForms = new Map();

  // The task's dependencies and children come from GET /api/tasks/:id; they are read
  // again whenever one of them (or a new child) shows up changed in the event stream.
  let links = { dependencies: [], children: [] };
  let linksSeen = null;
  async function refreshLinks(task) {
    const seen = JSON.stringify([task.status,
      ...[...state.tasks.values()].filter((t) => t.parentId === id || (task.dependsOn || []).includes(t.id)).map((t) => [t.id, t.status])]);
    if (seen === linksSeen) return;
    linksSeen = seen;
    try {
      const detail = await api("GET", `/api/tasks/${encodeURIComponent(id)}`);
      links = { dependencies: detail.dependencies || [], children: detail.children || [] };
      renderWorkflow(state.tasks.get(id) || detail);
    } catch (e) { err.textContent = e.message; }
  }

  // What the task's runs produced (links and files they recorded, branches, commits,
  // pull requests): read again when one of its workers reports.
  let artifactsSeen = null;
  async function refreshArtifacts(workers) {
    const seen = JSON.stringify(workers.map((w) => [w.id, w.heartbeatAt, w.status]));
    if (seen === artifactsSeen) return;
    artifactsSeen = seen;
    try {
      const list = await everyPage(`/api/tasks/${encodeURIComponent(id)}/artifacts?limit=1000`, "artifacts");
      const shown = list.filter((a) => ["link", "file", "merged"].includes(a.kind));
      artifactsEl.replaceChildren(...(shown.length ? [h("h2", {}, "Artifacts"), h("ul", { class: "links" },
        shown.map((a) => h("li", { "data-artifact": a.kind }, h("span", { class: "muted" }, `${a.kind} `),
          a.kind === "link" || a.kind === "merged" ? safeLink(a.value) : a.value))) ] : []));
    } catch (e) { err.textContent = e.message; }
  }

  function taskLink(t) {
    const live = state.tasks.get(t.id) || t;
    return h("li", { "data-linked": t.id }, badge(live.status), " ", h("a", { href: `#/tasks/${encodeURIComponent(t.id)}` }, live.title));
  }

  // Made once, so that what a person types survives the renders around it.
  const feedback = h("textarea", { name: "feedback", placeholder: "What should change in the plan?" });
  const message = h("textarea", { name: "followup", placeholder: "What next? The follow-up starts from this task's branch and session." });

  function renderWorkflow(task) {
    const parts = [];
    if (links.dependencies.length) parts.push(h("h2", {}, "Depends on"), h("ul", { class: "links" }, links.dependencies.map(taskLink)));
    if (task.parentId) parts.push(h("p", {}, "Part of ", h("a", { href: `#/tasks/${encodeURIComponent(task.parentId)}` }, (state.tasks.get(task.parentId) || { title: task.parentId }).title)));
    if (links.children.length) parts.push(h("h2", {}, "Subtasks and follow-ups"), h("ul", { class: "links", id: "children" }, links.children.map(taskLink)));
    const plan = task.result && task.result.plan;
    if (task.status === "planned" && plan) {
      parts.push(h("div", { class: "panel", id: "plan" },
        h("h2", {}, "Plan"),
        h("ol", {}, plan.steps.map((step) => h("li", {},
          h("strong", {}, step.title), step.dependsOn && step.dependsOn.length ? h("span", { class: "muted" }, ` (after ${step.dependsOn.join(", ")})`) : null,
          step.description ? h("div", { class: "muted", style: "white-space: pre-wrap" }, step.description) : null))),
        h("div", { class: "actions" },
          action("Approve", "primary", async () => {
            const approved = await api("POST", `/api/tasks/${encodeURIComponent(id)}/approve`, {});
            state.tasks.set(approved.task.id, approved.task);
            for (const c of approved.children) state.tasks.set(c.id, c);
            linksSeen = null;
            renderData();
          }, err),
          action("Reject", "danger", async () => {
            const t = await api("POST", `/api/tasks/${encodeURIComponent(id)}/reject`, {});
            state.tasks.set(t.id, t);
            renderData();
          }, err)),
        feedback,
        h("div", { class: "actions" }, action("Revise", "", async () => {
          const t = await api("POST", `/api/tasks/${encodeURIComponent(id)}/revise`, { feedback: feedback.value });
          state.tasks.set(t.id, t);
          renderData();
        }, err)),
      ));
    }
    if (["completed", "failed", "cancelled"].includes(task.status)) {
      parts.push(h("div", { class: "panel", id: "followup" }, h("h2", {}, "Follow up"), message,
        h("div", { class: "actions" },
          action("Follow up", "primary", async () => {
            const t = await api("POST", `/api/tasks/${encodeURIComponent(id)}/followup`, { message: message.value });
            state.tasks.set(t.id, t);
            location.hash = `#/tasks/${encodeURIComponent(t.id)}`;
          }, err),
          task.status !== "completed" ? action("Retry", "", async () => {
            const t = await api("POST", `/api/tasks/${encodeURIComponent(id)}/retry`, {});
            state.tasks.set(t.id, t);
            renderData();
          }, err) : null)));
    }
    workflowEl.replaceChildren(...parts);
  }

  let fetched = false;
  return {
    async data() {
      let task = state.tasks.get(id);
      if (!task && !fetched) {
        fetched = true;
        try { task = await api("GET", `/api/tasks/${encodeURIComponent(id)}`); state.tasks.set(id, task); } catch (e) { head.replaceChildren(h("p", { class: "error" }, e.message)); return; }
      }
      if (!task) return;
      renderWorkflow(task);
      refreshLinks(task);
      const workers = workersOf(id);
      refreshArtifacts(workers);
      const current = workers.find((w) => w.id === task.workerId) || workers[workers.length - 1];
      const waiting = current && current.status === "waiting_input";
      const ended = ["completed", "failed", "cancelled"].includes(task.status);
      head.replaceChildren(
        h("h1", {}, task.title, " ", badge(task.status)),
        h("div", { class: "panel" },
          h("dl", { class: "facts" },
            h("dt", {}, "Id"), h("dd", {}, task.id),
            h("dt", {}, "Workspace"), h("dd", {}, workspaceName(task.workspaceId)),
            h("dt", {}, "Runner"), h("dd", {}, runnerLabel(task), task.model ? ` (${task.model})` : "",
              task.fallbackRunner ? `, falls back to ${task.fallbackRunner}` : ""),
            unrunnable(task) ? [h("dt", {}, "Waiting"), h("dd", { class: "error", id: "no-runner" },
              `No connected agent runs ${task.runner}: start one that has it (buildd agent --runners lists what a machine has).`)] : null,
            h("dt", {}, "Priority"), h("dd", {}, task.priority),
            h("dt", {}, "Attempts"), h("dd", {}, `${task.attempts} of ${task.maxAttempts}`),
            h("dt", {}, "Cost"), h("dd", {}, money(taskCost(id)), task.maxCostUsd ? ` (cap ${money(task.maxCostUsd)})` : ""),
            h("dt", {}, "Created"), h("dd", { title: task.createdAt }, ago(task.createdAt)),
            task.baseBranch ? [h("dt", {}, "Base branch"), h("dd", {}, task.baseBranch)] : null,
            task.branch ? [h("dt", {}, "Works on"), h("dd", {}, task.branch)] : null,
            task.progress ? [h("dt", {}, "Progress"), h("dd", { id: "progress" }, task.progress)] : null,
            task.error ? [h("dt", {}, "Error"), h("dd", {}, task.error)] : null,
            task.description ? [h("dt", {}, "Description"), h("dd", { style: "white-space: pre-wrap" }, task.description)] : null,
            task.result ? [h("dt", {}, "Result"), h("dd", { style: "white-space: pre-wrap" }, typeof task.result.text === "string" ? task.result.text : JSON.stringify(task.result))] : null,
          ),
          waiting ? h("div", { class: "question" }, h("strong", {}, "Question: "), current.question || "") : null,
          waiting ? replyForm : null,
          current && ["idle", "starting", "running", "waiting_input", "paused"].includes(current.status) ? instructForm(current.id) : null,
          h("div", { class: "actions", style: "margin-top:10px" },
            ended ? null : action("Cancel task", "danger", async () => {
              const t = await api("POST", `/api/tasks/${encodeURIComponent(id)}/cancel`, {});
              state.tasks.set(t.id, t);
              renderData();
            }, err)),
        ),
      );
      workersEl.replaceChildren(
        h("h2", {}, "Workers"),
        workers.length ? h("table", {},
          h("thead", {}, h("tr", {}, ["Worker", "Status", "Runner", "Branch", "Commit", "PR", "Turns", "Cost", "Started", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, workers.map((w) => h("tr", { "data-worker": w.id },
            h("td", { "data-label": "Worker" }, h("button", { class: "link", onclick: () => { showOutput(w.id); review.show(w, true); } }, w.id)),
            h("td", { "data-label": "Status" }, badge(w.status), w.error ? h("div", { class: "muted" }, w.error) : null,
              w.progress ? h("div", { class: "muted progress" }, w.progress) : null),
            h("td", { "data-label": "Runner" }, workerRunner(w)),
            h("td", { "data-label": "Branch" }, w.branch || ""),
            h("td", { "data-label": "Commit" }, w.commitSha ? w.commitSha.slice(0, 10) : ""),
            h("td", { "data-label": "PR" }, w.prUrl ? safeLink(w.prUrl, "pull request") : ""),
            h("td", { class: "num", "data-label": "Turns" }, w.turns),
            h("td", { class: "num", "data-label": "Cost" }, money(w.costUsd)),
            h("td", { "data-label": "Started", title: w.startedAt }, ago(w.startedAt)),
            h("td", {}, h("div", { class: "actions" },
              ["idle", "starting", "running", "waiting_input"].includes(w.status)
                ? action("Pause", "", async () => { state.workers.set(w.id, await api("POST", `/api/workers/${w.id}/pause`, {})); renderData(); }, err) : null,
              w.status === "paused"
                ? action("Start", "", async () => { state.workers.set(w.id, await api("POST", `/api/workers/${w.id}/start`, {})); renderData(); }, err) : null,
            )),
          ))),
        ) : h("p", { class: "muted" }, "No agent has claimed this task yet."),
      );
      if (current) review.show(current);
      if (current && state.output.workerId === null) showOutput(current.id);
      if (!current) outputTitle.hidden = output.hidden = true;
      else outputTitle.hidden = output.hidden = false;
    },
  };

  function instructForm(workerId) {
    if (!instructForms.has(workerId)) instructForms.set(workerId, makeInstructForm(workerId));
    return instructForms.get(workerId);
  }
  function makeInstructForm(workerId) {
    const input = h("input", { name: "instruct", placeholder: "An instruction for the running agent", autocomplete: "off" });
    return h("form", { class: "row", id: "instruct", onsubmit: async (e) => {
      e.preventDefault();
      err.textContent = "";
      try {
        state.workers.set(workerId, await api("POST", `/api/workers/${encodeURIComponent(workerId)}/instruct`, { message: input.value }));
        input.value = "";
      } catch (e2) { err.textContent = e2.message; }
    } }, input, h("button", { type: "submit" }, "Instruct"));
  }

  async function showOutput(workerId) {
    state.output = { workerId, seq: 0, el: output };
    output.replaceChildren();
    outputTitle.textContent = `Output of ${workerId}`;
    let after = 0;
    for (;;) {
      const page = await api("GET", `/api/workers/${encodeURIComponent(workerId)}/messages?after=${after}&limit=1000`);
      if (state.output.workerId !== workerId) return;
      appendOutput(page.messages);
      if (page.messages.length < 1000) break;
      after = page.messages[page.messages.length - 1].seq;
    }
  }
}

// What a worker's run changed, and a review of it: comments on lines of the diff
// (added or kept lines, numbered as in the changed file), sent together as one review
// that a follow-up addresses.
function reviewPanel(taskId, err) {
  const el = () => document.getElementById("change");
  let shown = null; // { workerId, status, diff }
  let comments = [];
  const summary = h("textarea", { name: "summary", placeholder: "Overall (optional)" });

  async function show(worker, picked) {
    const task = state.tasks.get(taskId);
    // A planning run changes nothing: it has no diff to show.
    const finished = ["completed", "error"].includes(worker.status) && !(task && task.mode === "plan");
    if (shown && shown.workerId === worker.id && shown.status === worker.status && !picked) return;
    if (shown && shown.workerId !== worker.id && !picked && shown.diff) return; // keep what a person picked
    shown = { workerId: worker.id, status: worker.status, diff: null };
    comments = [];
    if (!finished && !picked) { el().replaceChildren(); return; }
    try {
      shown.diff = await api("GET", `/api/workers/${encodeURIComponent(worker.id)}/diff`);
    } catch (e) {
      el().replaceChildren(h("h2", {}, "Change"), h("p", { class: "muted" }, e.status === 404 ? `${worker.id} recorded no change.` : e.message));
      return;
    }
    render();
  }

  function render() {
    const diff = shown.diff;
    const files = h("table", { class: "files" },
      h("tbody", {}, diff.files.map((f) => h("tr", {},
        h("td", { class: "title" }, f.oldPath ? `${f.oldPath} → ${f.path}` : f.path),
        h("td", { class: "num" }, f.binary ? "binary" : h("span", {}, h("span", { class: "add" }, `+${f.added}`), " ", h("span", { class: "del" }, `−${f.removed}`)))))));
    const pending = h("ul", { class: "links", id: "review-comments" }, comments.map((c, i) => h("li", {},
      h("code", {}, `${c.path}:${c.line}`), " ", c.body, " ",
      h("button", { class: "link", onclick: () => { comments.splice(i, 1); render(); } }, "remove"))));
    el().replaceChildren(
      h("h2", {}, `Change of ${diff.workerId}`, h("span", { class: "muted" }, ` · ${diff.files.length} file(s), +${diff.added} −${diff.removed}`)),
      files,
      ...(diff.truncated ? [h("p", { class: "muted" }, "The diff was cut at 1 MiB; every file is counted above.")] : []),
      h("div", { class: "diff", id: "diff" }, patchLines(diff.patch)),
      h("div", { class: "panel", id: "review" },
        h("h2", {}, "Review"),
        comments.length ? pending : h("p", { class: "muted" }, "Click a line of the diff to comment on it."),
        summary,
        h("div", { class: "actions" }, action("Send review", "primary", async () => {
          const sent = await api("POST", `/api/workers/${encodeURIComponent(diff.workerId)}/review`, { comments, summary: summary.value || undefined });
          state.tasks.set(sent.followup.id, sent.followup);
          comments = [];
          summary.value = "";
          location.hash = `#/tasks/${encodeURIComponent(sent.followup.id)}`;
        }, err))),
    );
  }

  // The patch as rows: each line coloured, added and kept lines numbered in the new
  // file and open to a comment.
  function patchLines(patch) {
    const rows = [];
    let path = null, line = 0;
    for (const text of patch.split("\n")) {
      let cls = "", number = null;
      if (text.startsWith("diff --git")) { cls = "file"; path = null; }
      else if (text.startsWith("+++ ")) { cls = "file"; path = text.slice(4).replace(/^b\//, ""); }
      else if (text.startsWith("--- ") || text.startsWith("index ") || text.startsWith("new file") || text.startsWith("deleted file") || text.startsWith("similarity") || text.startsWith("rename ")) cls = "file";
      else if (text.startsWith("@@")) {
        cls = "hunk";
        const m = text.match(/\+(\d+)/);
        line = m ? Number(m[1]) : 0;
      } else if (text.startsWith("+")) { cls = "add"; number = line++; }
      else if (text.startsWith("-")) cls = "del";
      else if (text.startsWith(" ")) number = line++;
      const at = path && number !== null ? { path, line: number } : null;
      rows.push(h("div", {
        class: `l ${cls}${at ? " open" : ""}`,
        "data-path": at ? at.path : null, "data-line": at ? at.line : null,
        onclick: at ? (e) => comment(e.currentTarget, at) : null,
      }, h("span", { class: "n" }, number === null ? "" : number), h("span", { class: "c" }, text || " ")));
    }
    return rows;
  }

  function comment(row, at) {
    if (row.nextSibling && row.nextSibling.classList && row.nextSibling.classList.contains("comment-form")) return;
    const input = h("textarea", { name: "comment", placeholder: `Comment on ${at.path}:${at.line}` });
    const form = h("form", { class: "comment-form", onsubmit: (e) => {
      e.preventDefault();
      if (!input.value.trim()) return;
      comments.push({ path: at.path, line: at.line, body: input.value });
      render();
    } }, input, h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Add comment"),
      h("button", { type: "button", onclick: () => form.remove() }, "Cancel")));
    row.after(form);
    input.focus();
  }

  return { show };
}

// Appends messages (`{seq?, message}`) to the output on screen, skipping any already
// shown (a live event may race the initial page).
function appendOutput(entries) {
  const out = state.output;
  if (!out.el) return;
  const atBottom = out.el.scrollHeight - out.el.scrollTop - out.el.clientHeight < 40;
  for (const entry of entries) {
    if (entry.seq !== undefined) {
      if (entry.seq <= out.seq) continue;
      out.seq = entry.seq;
    }
    out.el.append(describe(entry.message), "\n");
  }
  if (atBottom) out.el.scrollTop = out.el.scrollHeight;
}

// One runner message as a readable line (Claude Code's stream-json, or plain output).
function describe(m) {
  const span = (cls, text) => h("span", { class: cls }, text);
  if (!m || typeof m !== "object") return String(m);
  switch (m.type) {
    case "system": return span("k", `● session ${m.session_id || ""} ${m.model || ""}`.trim());
    case "assistant": {
      const parts = ((m.message && m.message.content) || []).map((b) => {
        if (b.type === "text") return b.text;
        if (b.type === "tool_use") return span("t", `→ ${b.name} ${JSON.stringify(b.input).slice(0, 300)}`);
        return "";
      });
      return h("span", {}, ...parts);
    }
    case "user": {
      const results = ((m.message && m.message.content) || []).filter((b) => b.type === "tool_result");
      if (!results.length) return span("k", "(user)");
      return span("k", results.map((r) => `← ${(typeof r.content === "string" ? r.content : JSON.stringify(r.content)).slice(0, 300)}`).join("\n"));
    }
    case "result": return span("r", `■ ${m.subtype || "result"}: ${m.result || ""}${m.total_cost_usd !== undefined ? ` (${money(m.total_cost_usd)})` : ""}`);
    case "user_reply": return span("r", `you: ${m.text}`);
    case "user_instruction": return span("r", `instruction: ${m.text}`);
    case "output": return m.text;
    case "buildd_cut": return h("span", {}, span("k", `✂ a ${m.originalType || "line"} of ${m.originalBytes} bytes, cut: `), m.text || "");
    case "buildd_notice": return span("k", `! ${m.text}`);
    default: return JSON.stringify(m);
  }
}

function accountsView() {
  const body = h("div", {});
  $("main").replaceChildren(h("h1", {}, "Accounts"), body);
  // Usage is the server's own count (GET /api/accounts/:id/usage), read when the view
  // opens and again when one of the account's workers changes.
  const usage = new Map();
  let seen = null;
  async function refresh() {
    const now = JSON.stringify([...state.workers.values()].map((w) => [w.id, w.status, w.costUsd]));
    if (now === seen) return;
    seen = now;
    const read = await Promise.all(state.accounts.map((a) => api("GET", `/api/accounts/${encodeURIComponent(a.id)}/usage`).catch(() => null)));
    read.forEach((u, i) => { if (u) usage.set(state.accounts[i].id, u); });
    scheduleRender();
  }
  return {
    data() {
      if (!state.me || !state.me.admin) {
        body.replaceChildren(h("p", { class: "muted" }, "Only the admin sees accounts."));
        return;
      }
      refresh();
      body.replaceChildren(h("table", {},
        h("thead", {}, h("tr", {}, ["Account", "Type", "Auth", "Workers", "", "Cost today", "", "Repo"].map((c) => h("th", {}, c)))),
        h("tbody", {}, state.accounts.map((a) => {
          const u = usage.get(a.id);
          const active = u ? u.activeWorkers : null;
          const cost = u ? u.costToday : null;
          const bar = (used, max) => {
            if (!max) return h("span", { class: "muted" }, "no limit");
            if (used === null) return h("span", { class: "muted" }, "…");
            const pct = Math.min(100, (100 * used) / max);
            return h("div", { class: "bar", title: `${Math.round(pct)}%` }, h("span", { class: pct >= 100 ? "full" : "", style: `width:${pct}%` }));
          };
          return h("tr", { "data-account": a.id },
            h("td", { "data-label": "Account" }, a.name, h("div", { class: "muted" }, a.id)),
            h("td", { "data-label": "Type" }, a.type),
            h("td", { "data-label": "Auth" }, a.authType),
            h("td", { class: "num", "data-label": "Workers", "data-usage": u ? "server" : "" }, `${active === null ? "…" : active} / ${a.maxConcurrentWorkers}`),
            h("td", {}, bar(active, a.maxConcurrentWorkers)),
            h("td", { class: "num", "data-label": "Cost today" }, cost === null ? "…" : money(cost), a.maxCostPerDay ? ` / ${money(a.maxCostPerDay)}` : ""),
            h("td", {}, bar(cost, a.maxCostPerDay)),
            h("td", { "data-label": "Repo" }, a.githubRepo || ""),
          );
        })),
      ));
    },
  };
}

// Schedules: their cadence, next and last runs, skips, and a pause or resume button.
// Read when the view opens, again when a task is created (a run), and after a button.
function schedulesView() {
  const body = h("div", {});
  const err = h("p", { class: "error", role: "alert" });
  $("main").replaceChildren(h("h1", {}, "Schedules"), err, body);
  let schedules = null;
  let seenTasks = null;
  async function refresh() {
    try {
      schedules = (await api("GET", "/api/schedules")).schedules;
      scheduleRender();
    } catch (e) { err.textContent = e.message; }
  }
  const when = (iso) => (iso ? h("span", { title: iso }, new Date(iso).toLocaleString()) : h("span", { class: "muted" }, "—"));
  return {
    data() {
      const tasks = state.tasks.size;
      if (tasks !== seenTasks) { seenTasks = tasks; refresh(); }
      if (schedules === null) { body.replaceChildren(h("p", { class: "muted" }, "Loading…")); return; }
      if (!schedules.length) {
        body.replaceChildren(h("p", { class: "muted panel" }, "No schedules yet. Make one with ",
          h("code", {}, "buildd schedule create"), " or POST /api/schedules."));
        return;
      }
      body.replaceChildren(h("table", {},
        h("thead", {}, h("tr", {}, ["Task", "Cadence", "Workspace", "Next run", "Last run", "Runs", "Skipped", ""].map((c) => h("th", {}, c)))),
        h("tbody", {}, schedules.map((s) => h("tr", { "data-schedule": s.id },
          h("td", { "data-label": "Task" }, s.task.title, h("div", { class: "muted" }, s.id)),
          h("td", { "data-label": "Cadence" }, h("code", {}, s.cron), h("div", { class: "muted" }, s.timezone)),
          h("td", { "data-label": "Workspace" }, workspaceName(s.workspaceId)),
          h("td", { "data-label": "Next run", class: "next" }, s.paused
            ? h("span", { class: "muted" }, s.pausedReason || "paused")
            : when(s.nextRunAt)),
          h("td", { "data-label": "Last run" }, when(s.lastRunAt),
            s.lastTaskId ? h("div", {}, h("a", { href: `#/tasks/${encodeURIComponent(s.lastTaskId)}` }, "its task")) : null),
          h("td", { class: "num", "data-label": "Runs" }, s.runs),
          h("td", { class: "num", "data-label": "Skipped", title: "runs skipped while the previous task had not ended" }, s.skipped),
          h("td", {}, action(s.paused ? "Resume" : "Pause", "", async () => {
            await api("POST", `/api/schedules/${encodeURIComponent(s.id)}/${s.paused ? "resume" : "pause"}`, {});
            await refresh();
          }, err)),
        ))),
      ));
    },
  };
}

const AGENT_STATES = {
  working: "working",
  waiting: "waiting for a task",
  outside_hours: "outside its hours",
  person_active: "its person is at the machine",
};

function agentsView() {
  const body = h("div", {});
  const err = h("p", { class: "error", role: "alert" });
  $("main").replaceChildren(h("h1", {}, "Agents"), err, body);
  let agents = null;
  async function refresh() {
    try {
      agents = (await api("GET", "/api/agents")).agents;
      err.textContent = "";
      scheduleRender();
    } catch (e) { err.textContent = e.message; }
  }
  refresh();
  // Agents report without events: look again every few seconds.
  polling = setInterval(refresh, 5000);
  return {
    data() {
      if (agents === null) { body.replaceChildren(h("p", { class: "muted" }, "Loading…")); return; }
      if (!agents.length) {
        body.replaceChildren(h("p", { class: "muted panel" }, "No agent is connected. Start one with ",
          h("code", {}, "buildd agent"), " or ", h("code", {}, "buildd agent service install"), "."));
        return;
      }
      body.replaceChildren(h("table", {},
        h("thead", {}, h("tr", {}, ["Host", "Account", "State", "Running", "Runners", "Version", "Connected", "Seen"].map((c) => h("th", {}, c)))),
        h("tbody", {}, agents.map((a) => h("tr", { "data-agent": a.id },
          h("td", { "data-label": "Host" }, a.hostname, h("div", { class: "muted" }, a.id)),
          h("td", { "data-label": "Account" }, a.accountId),
          h("td", { "data-label": "State" }, h("span", { class: `badge agent-${a.state}` }, AGENT_STATES[a.state] || a.state)),
          h("td", { "data-label": "Running" }, a.running.length
            ? a.running.map((id) => h("div", {}, h("a", { href: `#/tasks/${encodeURIComponent(id)}` }, state.tasks.get(id)?.title || id)))
            : h("span", { class: "muted" }, "—")),
          h("td", { "data-label": "Runners" }, a.runners.join(", ")),
          h("td", { "data-label": "Version" }, a.version),
          h("td", { "data-label": "Connected" }, ago(a.connectedAt)),
          h("td", { "data-label": "Seen" }, ago(a.lastSeenAt)),
        ))),
      ));
    },
  };
}

// ---------- start ----------

async function start() {
  state.token = localStorage.getItem(TOKEN_KEY);
  if (!state.token) return showSignIn();
  try {
    await load();
  } catch (e) {
    if (e.status !== 401) showSignIn(`Cannot load: ${e.message}`);
    return;
  }
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("nav-accounts").hidden = !state.me.admin;
  $("who").textContent = state.me.admin ? "admin" : `${state.me.name} (${state.me.type})`;
  route();
  follow();
}

window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#token=")) {
    if (state.stream) state.stream.abort();
    tokenFromHash();
    start();
  } else {
    route();
  }
});
document.addEventListener("DOMContentLoaded", () => {
  $("sign-out").addEventListener("click", () => signOut());
  tokenFromHash();
  start();
});
// Ages on screen stay true without events.
setInterval(() => { if (state.token) scheduleRender(); }, 30000);
