/* parascribe console: the key, the API client, the router and the jobs table.
 *
 * Every node is built with document.createElement and textContent: nothing from the API
 * (file names, URLs, reasons, transcripts) is ever parsed as HTML.
 */
"use strict";

const PS = (window.PS = {});
const KEY_ITEM = "parascribe.api_key";
const ACTIVE = new Set(["accepted", "ingesting", "submitted", "queued", "transcribing"]);
let viewTimer = null;
let viewToken = 0;

/** Build an element: el("a", {href: "#", class: "x"}, "text", child, ...). */
PS.el = function (tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

PS.clear = function (node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
};

PS.key = () => sessionStorage.getItem(KEY_ITEM);

class Unauthorized extends Error {}

/** GET/POST a /v1 endpoint with the key; JSON answers. A 401 shows the sign-in form. */
PS.api = async function (path, options) {
  const key = PS.key();
  if (!key) throw new Unauthorized("no key");
  const response = await fetch(path, {
    ...(options || {}),
    headers: { Authorization: "Bearer " + key, Accept: "application/json" },
    cache: "no-store",
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_ITEM);
    showLogin("The API refused the key (revoked or mistyped). Enter it again.");
    throw new Unauthorized("401");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || "HTTP " + response.status);
    error.status = response.status;
    throw error;
  }
  return body;
};

PS.flash = function (text) {
  const flash = document.getElementById("flash");
  flash.textContent = text || "";
  flash.hidden = !text;
};

PS.fmtDuration = function (seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
};

PS.fmtUsd = function (value) {
  if (value === null || value === undefined) return "—";
  const digits = Math.abs(value) >= 1 ? 2 : 4;
  return (value < 0 ? "-$" : "$") + Math.abs(value).toFixed(digits);
};

PS.fmtAge = function (iso) {
  if (!iso) return "—";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.floor(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
};

/** What a person calls a job: its title, its file name, its URL, or its id. */
PS.jobName = function (job) {
  if (job.title) return job.title;
  if (job.source && job.source.name) return job.source.name.split("/").pop();
  return job.url || job.request_id || job.job_id || "?";
};

PS.jobId = (job) => job.request_id || job.job_id;

/** Run fn now and every ms until the view changes; fn returns false to stop. */
PS.poll = function (fn, ms) {
  const token = viewToken;
  const tick = async () => {
    if (token !== viewToken) return;
    let again = true;
    try {
      again = (await fn()) !== false;
    } catch (err) {
      if (err instanceof Unauthorized) return;
      PS.flash("Could not reach the API: " + err.message + " (retrying)");
    }
    if (again && token === viewToken) viewTimer = setTimeout(tick, ms);
  };
  tick();
};

PS.current = () => viewToken;

function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("signout").hidden = name === "login";
}

function showLogin(message) {
  viewToken += 1;
  clearTimeout(viewTimer);
  showView("login");
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("login-key").focus();
}

PS.route = () => route();

function route() {
  viewToken += 1;
  clearTimeout(viewTimer);
  PS.flash("");
  if (!PS.key()) return showLogin();
  const hash = location.hash || "#/jobs";
  const job = hash.match(/^#\/job\/([A-Za-z0-9_-]+)$/);
  if (job) {
    showView("job");
    PS.showJob(job[1]);
  } else if (hash === "#/metrics") {
    showView("metrics");
    PS.showMetrics();
  } else {
    showView("jobs");
    showJobs();
  }
  document.getElementById("main").focus({ preventScroll: true });
}

/* ---- the jobs table ---- */

const rows = new Map();

function stateCell(job) {
  const cell = PS.el("td", { "data-label": "State" });
  const state = job.state || "?";
  cell.append(PS.el("span", { class: "state state-" + state, "data-state": state }, state));
  if (state === "transcribing" && job.chunks_total) {
    cell.append(" ", PS.el("progress", { value: job.chunks_done, max: job.chunks_total,
      "aria-label": `${job.chunks_done} of ${job.chunks_total} chunks` }),
      PS.el("span", { class: "count" }, ` ${job.chunks_done}/${job.chunks_total}`));
  }
  if (state === "failed" && job.reason) cell.append(PS.el("div", { class: "reason" }, job.reason));
  return cell;
}

function jobRow(job) {
  const id = PS.jobId(job);
  const summary = job.summary || {};
  const engines = (summary.engines && summary.engines.length ? summary.engines : job.engines) || [];
  const cells = [
    PS.el("td", { "data-label": "Source", class: "name" },
      PS.el("a", { href: "#/job/" + encodeURIComponent(id) }, PS.jobName(job))),
    PS.el("td", { "data-label": "Duration" }, PS.fmtDuration(summary.duration_s)),
    stateCell(job),
    PS.el("td", { "data-label": "Engines" }, engines.join(", ") || "—"),
    PS.el("td", { "data-label": "Cost" }, job.summary ? PS.fmtUsd(summary.cost_usd) : "—"),
    PS.el("td", { "data-label": "Savings" }, job.summary ? PS.fmtUsd(summary.savings_usd) : "—"),
    PS.el("td", { "data-label": "Age", title: job.created_at || "" }, PS.fmtAge(job.created_at)),
  ];
  return { id, cells, state: job.state };
}

function renderJobs(jobs) {
  const body = document.getElementById("jobs-body");
  const filter = document.getElementById("state-filter").value;
  const seen = new Set();
  let shown = 0;
  jobs.forEach((job, index) => {
    const { id, cells, state } = jobRow(job);
    seen.add(id);
    let row = rows.get(id);
    if (!row) {
      row = PS.el("tr", { dataset: { id } });
      rows.set(id, row);
    }
    row.dataset.state = state;
    // Update cell by cell, and only what changed, so that focus and selection survive a refresh.
    cells.forEach((cell, i) => {
      const old = row.children[i];
      if (!old) row.append(cell);
      else if (old.textContent !== cell.textContent) row.replaceChild(cell, old);
    });
    if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
    const visible = !filter || (filter === "active" ? ACTIVE.has(state) : state === filter);
    row.hidden = !visible;
    if (visible) shown += 1;
  });
  for (const [id, row] of rows) if (!seen.has(id)) { row.remove(); rows.delete(id); }
  document.getElementById("jobs-empty").hidden = jobs.length > 0;
  document.getElementById("jobs-table").hidden = jobs.length === 0;
  document.getElementById("jobs-none").hidden = jobs.length === 0 || shown > 0;
  document.getElementById("jobs-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function fillEmptyState() {
  const origin = location.origin;
  document.getElementById("empty-cli").textContent =
    "parascribe submit talk.mp3 --wait\n" +
    `PARASCRIBE_API_URL=${origin} PARASCRIBE_API_KEY=$KEY parascribe submit talk.mp3`;
  document.getElementById("empty-curl").textContent =
    `curl -X POST ${origin}/v1/jobs -H "Authorization: Bearer $KEY" \\\n` +
    `     -H "Content-Type: application/json" -d '{"url": "https://example.com/talk.mp3"}'`;
}

let lastJobs = [];

function showJobs() {
  fillEmptyState();
  // A filter is applied by the API too, so older jobs in that state show; such a page reads up to 500 jobs
  // on the server, so it is fetched less often.
  const filter = document.getElementById("state-filter").value;
  const query = "/v1/jobs?limit=50" + (filter ? "&state=" + encodeURIComponent(filter) : "");
  PS.poll(async () => {
    const page = await PS.api(query);
    lastJobs = page.jobs;
    renderJobs(lastJobs);
    PS.flash("");
    return true;
  }, filter ? 10000 : 2000);
}

/** Fetch the jobs again at once with the new filter, keeping the focus where it is. */
function refilterJobs() {
  renderJobs(lastJobs);
  viewToken += 1;
  clearTimeout(viewTimer);
  showJobs();
}

function start() {
  const match = location.hash.match(/^#key=([^&]+)/);
  if (match) {
    sessionStorage.setItem(KEY_ITEM, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search + "#/jobs");
  }
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("login-key");
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    input.value = "";
    try {
      await PS.api("/v1/jobs?limit=1");
      route();
    } catch (err) {
      if (!(err instanceof Unauthorized)) showLogin("Could not reach the API: " + err.message);
    }
  });
  document.getElementById("signout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    showLogin("Signed out.");
  });
  document.getElementById("state-filter").addEventListener("change", refilterJobs);
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", start);
