// Warren Control Tower. Every fragment of HTML comes from the server,
// rendered (and escaped) by html/template; this script only places it,
// listens to the server-sent events and posts the forms with the page's
// CSRF token.
"use strict";

const csrf = document.querySelector('meta[name="warren-csrf"]').content;
const $ = (id) => document.getElementById(id);

// Tabs: one section shown at a time, chosen by the URL's #fragment.
function showTab() {
  const want = (location.hash || "#agents").slice(1);
  let found = false;
  for (const s of document.querySelectorAll("section.tab")) {
    const on = s.id === "tab-" + want;
    s.hidden = !on;
    found = found || on;
  }
  if (!found) { $("tab-agents").hidden = false; }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.tab === (found ? want : "agents"));
  }
  if (want === "dlq") { loadDLQ(); }
}
window.addEventListener("hashchange", showTab);

// Live updates: each event carries a whole fragment.
const live = $("live");
const es = new EventSource("events");
for (const name of ["agents", "services", "events"]) {
  es.addEventListener(name, (e) => { $(name).innerHTML = e.data; });
}
es.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
es.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });

async function call(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-Warren-CSRF"] = csrf;
    opts.body = JSON.stringify(body);
  }
  try {
    const r = await fetch(url, opts);
    const text = await r.text();
    const type = r.headers.get("Content-Type") || "";
    if (type.startsWith("text/html")) { return text; }
    const p = document.createElement("p");
    p.className = "err";
    p.textContent = r.status + ": " + text;
    return p.outerHTML;
  } catch (err) {
    const p = document.createElement("p");
    p.className = "err";
    p.textContent = "the Tower did not answer: " + err;
    return p.outerHTML;
  }
}

// stream posts body and shows the response as it arrives: progress
// reports first, each a fragment, then the result.
async function stream(url, body, show) {
  let r;
  try {
    r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-Warren-CSRF": csrf }, body: JSON.stringify(body) });
  } catch (err) {
    const p = document.createElement("p");
    p.className = "err";
    p.textContent = "the Tower did not answer: " + err;
    show(p.outerHTML);
    return;
  }
  const type = r.headers.get("Content-Type") || "";
  if (!type.startsWith("text/html") || !r.body) {
    const p = document.createElement("p");
    p.className = "err";
    p.textContent = r.status + ": " + await r.text();
    show(p.outerHTML);
    return;
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let html = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) { break; }
    html += value;
    show(html);
  }
}

// Send.
$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData(ev.target);
  const body = {};
  for (const k of ["kind", "path", "payload", "selector", "target", "tags", "timeout"]) { body[k] = f.get(k) || ""; }
  const button = $("send-button");
  button.disabled = true;
  $("send-result").innerHTML = '<p class="note">sending…</p>';
  await stream("api/send", body, (html) => { $("send-result").innerHTML = html; });
  button.disabled = false;
});

// Dead letters.
function dlqFilter() {
  const f = new FormData($("dlq-filter"));
  return { path: f.get("path") || "", reason: f.get("reason") || "" };
}
async function loadDLQ() {
  const q = new URLSearchParams(dlqFilter());
  $("dlq").innerHTML = '<p class="note">loading…</p>';
  $("dlq").innerHTML = await call("GET", "api/dlq?" + q);
}
$("dlq-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadDLQ(); });
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-action]");
  if (!b) { return; }
  const id = b.dataset.id;
  switch (b.dataset.action) {
    case "show":
      $("letter").innerHTML = await call("GET", "api/dlq/show?" + new URLSearchParams({ id }));
      return;
    case "replay":
    case "purge":
      if (b.dataset.action === "purge" && !confirm("Purge dead letter " + id + "?")) { return; }
      $("dlq-action").innerHTML = await call("POST", "api/dlq/" + b.dataset.action, { ids: [id] });
      break;
    case "replay-all":
    case "purge-all": {
      const op = b.dataset.action.replace("-all", "");
      if (!confirm(op + " every dead letter that matches the filter?")) { return; }
      $("dlq-action").innerHTML = await call("POST", "api/dlq/" + op, Object.assign({ all: true }, dlqFilter()));
      break;
    }
    default:
      return;
  }
  $("letter").innerHTML = "";
  loadDLQ();
});

showTab();
