// The podpost console's page: plain JavaScript, no build step, no dependencies.
// Every value from the bus is shown with textContent (never innerHTML); a mail's HTML is
// only ever the src of a sandboxed iframe served under a script-free CSP.
"use strict";

const state = { namespace: null, search: {}, open: null, token: sessionStorage.getItem("podpost-token") || "" };
const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (state.token) opts.headers["Authorization"] = "Bearer " + state.token;
  if (opts.json !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const response = await fetch(path, opts);
  const type = response.headers.get("Content-Type") || "";
  const body = type.startsWith("application/json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((body && body.detail) || response.statusText);
  return body;
}

// --- inbox -------------------------------------------------------------------------------

async function loadInbox() {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(state.search)) if (v) params.set(k, v);
  const all = await api("/api/caught?" + params.toString());
  if (state.namespace) params.set("namespace", state.namespace);
  const data = state.namespace ? await api("/api/caught?" + params.toString()) : all;
  renderInboxes(all.inboxes);
  const body = $("mails").tBodies[0];
  body.replaceChildren();
  for (const row of data.rows) {
    const tr = el("tr", null, { "data-seq": row.seq });
    tr.append(el("td", when(row.caught_at), { title: row.caught_at }),
      el("td", row.subject || "(no subject)", { class: "subject" }), el("td", row.mail_from),
      el("td", row.rcpt_to.join(", ")), el("td", row.pod, { title: row.namespace }));
    if (state.open === row.seq) tr.classList.add("active");
    tr.addEventListener("click", () => openMail(row.seq));
    body.append(tr);
  }
  $("mails-empty").hidden = data.rows.length > 0;
}

function renderInboxes(inboxes) {
  const list = $("inboxes");
  list.replaceChildren();
  const total = inboxes.reduce((n, box) => n + box.count, 0);
  const entries = [{ namespace: null, label: "all", count: total }]
    .concat(inboxes.map((box) => ({ namespace: box.namespace, label: box.namespace, count: box.count })));
  for (const entry of entries) {
    const li = el("li", null, { "data-namespace": entry.namespace || "" });
    li.append(el("span", entry.label), el("span", entry.count, { class: "muted count" }));
    if (entry.namespace === state.namespace) li.classList.add("active");
    li.addEventListener("click", () => { state.namespace = entry.namespace; loadInbox(); });
    list.append(li);
  }
}

async function openMail(seq) {
  state.open = seq;
  const data = await api("/api/caught/" + seq);
  const row = data.row, msg = data.message;
  $("mail").hidden = false;
  $("mail").setAttribute("data-seq", seq);
  $("mail-subject").textContent = msg.subject || "(no subject)";
  const meta = $("mail-meta");
  meta.replaceChildren();
  const fields = [["From", msg.from || row.mail_from], ["To", (msg.to.length ? msg.to : row.rcpt_to).join(", ")],
    ["Envelope", row.mail_from + " → " + row.rcpt_to.join(", ")], ["Date", when(msg.date || row.received_at)],
    ["Namespace", row.namespace], ["Policy", row.policy], ["Pod", row.pod || "-"], ["Mail id", row.mail_id]];
  for (const [k, v] of fields) meta.append(el("dt", k), el("dd", v));
  const files = $("attachments");
  files.replaceChildren();
  for (const part of msg.attachments) {
    const a = el("a", part.filename, { href: "/api/caught/" + seq + "/attachments/" + part.index, download: part.filename });
    const li = el("li");
    li.append(a, el("span", " " + part.content_type + ", " + part.size + " bytes", { class: "muted" }));
    files.append(li);
  }
  $("mail-text").textContent = msg.text;
  const headers = $("mail-headers").tBodies[0];
  headers.replaceChildren();
  for (const [k, v] of msg.headers) { const tr = el("tr"); tr.append(el("th", k), el("td", v)); headers.append(tr); }
  $("mail-raw").textContent = "";
  $("mail-status").textContent = "";
  showPart(msg.html !== null ? "html" : "text", msg.html !== null);
  for (const tr of $("mails").tBodies[0].rows) tr.classList.toggle("active", tr.dataset.seq === String(seq));
}

function showPart(part, hasHtml) {
  const seq = state.open;
  for (const b of document.querySelectorAll(".part")) b.classList.toggle("active", b.dataset.part === part);
  const frame = $("mail-html");
  frame.hidden = part !== "html";
  if (part === "html") {
    frame.src = hasHtml === false ? "about:blank" : "/api/caught/" + seq + "/html" + ($("remote").checked ? "?remote=true" : "");
  }
  $("mail-text").hidden = part !== "text";
  $("mail-headers").hidden = part !== "headers";
  $("mail-raw").hidden = part !== "raw";
  if (part === "raw") api("/api/caught/" + seq + "/raw").then((text) => { $("mail-raw").textContent = text; });
}

async function loadUpstreams() {
  const select = $("release-to");
  select.replaceChildren();
  for (const up of await api("/api/upstreams")) select.append(el("option", up.key + " (" + up.host + ":" + up.port + ")", { value: up.key }));
}

async function act(statusId, work) {
  try { $(statusId).textContent = await work(); } catch (err) { $(statusId).textContent = "error: " + err.message; }
}

// --- queue and dead letters ------------------------------------------------------------

async function loadQueue() {
  const rows = await api("/api/queue");
  const body = $("queue").tBodies[0];
  body.replaceChildren();
  for (const row of rows) { const tr = el("tr"); tr.append(el("td", row.upstream), el("td", row.policy), el("td", row.queued)); body.append(tr); }
  $("queue-empty").hidden = rows.length > 0;
}

async function loadDead() {
  const data = await api("/api/dead");
  const body = $("dead").tBodies[0];
  body.replaceChildren();
  for (const row of data.rows) {
    const tr = el("tr", null, { "data-seq": row.seq });
    const replay = el("button", "Replay", { class: "replay" });
    replay.addEventListener("click", () => act("dead-status", async () => {
      const r = await api("/api/dead/" + row.seq + "/replay", { method: "POST", json: {} });
      loadDead();
      return "dead letter " + row.seq + ": " + r.outcome + " for " + r.to_upstream;
    }));
    const purge = el("button", "Purge", { class: "purge danger" });
    purge.addEventListener("click", () => act("dead-status", async () => {
      const r = await api("/api/dead/" + row.seq, { method: "DELETE" });
      loadDead();
      return "dead letter " + row.seq + ": " + r.outcome;
    }));
    const cell = el("td");
    cell.append(replay, " ", purge);
    tr.append(el("td", row.seq), el("td", when(row.dead_at)), el("td", row.upstream), el("td", row.policy),
      el("td", row.rcpt_to.join(", ")), el("td", (row.code || "") + " " + (row.reply || row.reason || row.fate)), cell);
    body.append(tr);
  }
  $("dead-empty").hidden = data.rows.length > 0;
}

// --- session, live updates, wiring -----------------------------------------------------

async function loadSession() {
  const s = await api("/api/session");
  $("session").textContent = s.read_only ? "read-only console" : (s.actions ? "actions allowed" : "read-only (no token)");
  $("session").dataset.actions = String(s.actions);
}

function connectLive() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { $("live").textContent = "live"; $("live").classList.add("on"); });
  source.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").classList.remove("on"); });
  source.addEventListener("caught", () => loadInbox());
  source.addEventListener("resync", () => { loadInbox(); loadDead(); });
  for (const kind of ["dead", "replayed", "purged"]) source.addEventListener(kind, () => { loadDead(); loadQueue(); });
}

function showView(view) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.view === view);
  for (const name of ["inbox", "queue", "dead"]) $("view-" + name).hidden = name !== view;
  if (view === "queue") loadQueue();
  if (view === "dead") loadDead();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = state.token;
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("podpost-token", state.token);
    loadSession();
  });
  $("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    state.search = {};
    for (const [k, v] of form.entries()) if (v) state.search[k] = k === "since" ? new Date(v).toISOString() : v;
    loadInbox();
  });
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showView(b.dataset.view));
  for (const b of document.querySelectorAll(".part")) b.addEventListener("click", () => showPart(b.dataset.part));
  $("remote").addEventListener("change", () => showPart("html"));
  $("release").addEventListener("click", () => act("mail-status", async () => {
    const upstream = $("release-to").value;
    const r = await api("/api/caught/" + state.open + "/release", { method: "POST", json: { upstream } });
    return "released to " + r.to_upstream + ": " + r.outcome;
  }));
  $("delete").addEventListener("click", () => act("mail-status", async () => {
    await api("/api/caught/" + state.open, { method: "DELETE" });
    $("mail").hidden = true;
    state.open = null;
    loadInbox();
    return "deleted";
  }));
  loadSession(); loadInbox(); loadUpstreams(); connectLive();
});
