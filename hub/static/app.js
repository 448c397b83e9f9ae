// Bazaar HQ dashboard: reads the hub's JSON API with the admin token and redraws every few
// seconds. Data only ever reaches the DOM as text (textContent / createTextNode), never as
// markup, so a store name or alert message cannot inject anything. Every API path is a
// template literal in a call api(method, `...`) (parameters as ${...}, the query after ?):
// hub/tests/dashboard.rs extracts them and checks each is a documented route, so keep them
// that way.
"use strict";

const REFRESH_MS = 5000;
const TOKEN_KEY = "bazaar.adminToken";
const LIST_LIMIT = 200;

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// One call to the hub; an error answer becomes an ApiError carrying its `error.message`.
async function api(method, path) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", "the hub did not answer (" + e.message + ")");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // Not JSON: reported below from the status alone.
  }
  if (!response.ok) {
    const err = body && body.error;
    throw new ApiError(
      response.status,
      err && err.code ? err.code : "http_" + response.status,
      err && err.message ? err.message : "HTTP " + response.status,
    );
  }
  return body;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) q.set(k, String(v));
  }
  return q.toString();
}

// ---- DOM helpers: text only ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function td(value, cls) {
  return el("td", cls ? { class: cls } : {}, value === null || value === undefined ? "—" : value);
}

function badge(text, cls) {
  return el("span", { class: "badge " + cls }, text);
}

function fill(tbodyId, rows, columns, emptyText) {
  const body = $(tbodyId);
  const nodes = rows.length
    ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, emptyText))];
  body.replaceChildren(...nodes);
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 60) return Math.max(seconds, 0) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

function when(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

// ---- sections ----

async function loadStores() {
  const stores = [];
  let cursor = null;
  // Every store, page by page: the chain is small next to what a page holds.
  do {
    const page = await api("GET", `/v1/stores?${query({ limit: 1000, cursor })}`);
    stores.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return stores;
}

async function loadAlerts() {
  return api("GET", `/v1/alerts?${query({ open: true, limit: LIST_LIMIT })}`);
}

async function loadReorders() {
  return api("GET", `/v1/reorders?${query({ limit: LIST_LIMIT })}`);
}

async function loadTransfers() {
  return api("GET", `/v1/transfers/suggestions?${query({ limit: LIST_LIMIT })}`);
}

// A store's health from what the hub itself reports: messages held behind a gap or parked
// need an operator; a stale_store alert means the hub's own staleness bound was crossed.
function health(store, staleStores) {
  if (store.held > 0) return badge("gap: " + store.held + " held", "bad");
  if (store.parked > 0) return badge(store.parked + " parked", "bad");
  if (staleStores.has(store.store)) return badge("stale", "warn");
  if (!store.last_seen_at) return badge("never synced", "info");
  return badge("ok", "ok");
}

function drawStores(stores, alerts) {
  const stale = new Set(alerts.filter((a) => a.kind === "stale_store" && a.store).map((a) => a.store));
  $("stores-count").textContent = "(" + stores.length + ")";
  fill(
    "stores",
    stores.map((s) =>
      el(
        "tr",
        {},
        td(s.store),
        td(s.name),
        el("td", {}, health(s, stale)),
        el("td", { title: s.last_seen_at || "" }, ago(s.last_seen_at)),
        td(s.last_seq, "num"),
        td(s.last_hub_seq, "num"),
        td(s.held, "num"),
        td(s.parked, "num"),
      ),
    ),
    8,
    "no store registered yet",
  );
}

function drawAlerts(page) {
  const alerts = page.alerts;
  $("alerts-count").textContent =
    "(" + alerts.length + (page.next_cursor ? "+, newest shown" : "") + ")";
  fill(
    "alerts",
    alerts.map((a) => {
      let action;
      if (a.acknowledged_at) {
        action = el("span", { class: "muted", title: when(a.acknowledged_at) }, "acknowledged by " + (a.acknowledged_by || "?"));
      } else {
        const button = el("button", { type: "button" }, "Acknowledge");
        button.addEventListener("click", () => acknowledge(a.id, button));
        action = button;
      }
      return el(
        "tr",
        {},
        el("td", { title: a.raised_at }, ago(a.raised_at)),
        el("td", {}, badge(a.severity, a.severity)),
        td(a.kind),
        td(a.store),
        td(a.sku),
        td(a.message),
        el("td", {}, action),
      );
    }),
    7,
    "no open alert",
  );
}

function drawReorders(page) {
  const rows = page.reorders;
  $("reorders-count").textContent = "(" + rows.length + (page.next_cursor ? "+" : "") + ")";
  fill(
    "reorders",
    rows.map((r) =>
      el(
        "tr",
        {},
        td(r.store),
        td(r.sku),
        td(r.on_hand, "num"),
        td(r.reorder_point, "num"),
        td(r.order_up_to, "num"),
        td(r.pack_size, "num"),
        td(r.lead_time_days, "num"),
        el("td", { class: "num" }, el("strong", {}, String(r.suggested_qty))),
      ),
    ),
    8,
    "nothing to buy now (or no forecast run yet)",
  );
}

function drawTransfers(page) {
  const rows = page.suggestions.filter(
    (s) => s.transfers.length || s.purchases_after_transfers.some((p) => p.qty > 0),
  );
  $("transfers-count").textContent = "(" + rows.length + (page.next_cursor ? "+" : "") + ")";
  fill(
    "transfers",
    rows.map((s) =>
      el(
        "tr",
        {},
        td(s.sku),
        td(s.transfers.length ? s.transfers.map((t) => t.quantity + " from " + t.from + " to " + t.to).join("; ") : null),
        td(
          s.purchases_after_transfers.filter((p) => p.qty > 0).map((p) => p.store + ": " + p.qty).join("; ") || "nothing",
        ),
      ),
    ),
    3,
    "no transfer to suggest",
  );
}

async function acknowledge(id, button) {
  button.disabled = true;
  try {
    await api("POST", `/v1/alerts/${encodeURIComponent(id)}/ack`);
    await refresh();
  } catch (e) {
    button.disabled = false;
    showError(e);
  }
}

// ---- stock lookup ----

async function lookUp(event) {
  event.preventDefault();
  const sku = $("sku").value.trim();
  $("stock-error").textContent = "";
  try {
    const stock = await api("GET", `/v1/products/${encodeURIComponent(sku)}/stock`);
    $("stock-sku").textContent = stock.sku;
    $("stock-total").textContent = String(stock.total);
    fill(
      "stock",
      stock.stores.map((f) =>
        el("tr", {}, td(f.store), td(f.on_hand, "num"), td(f.version, "num"), el("td", { title: f.updated_at }, when(f.updated_at))),
      ),
      4,
      "known, but no store holds it yet",
    );
    $("stock-result").hidden = false;
  } catch (e) {
    $("stock-result").hidden = true;
    if (e.status === 401) return signOut(e.message);
    $("stock-error").textContent = e.message;
  }
}

// ---- refresh loop and session ----

let timer = null;

function showError(e) {
  if (e.status === 401) {
    signOut(e.message);
    return;
  }
  $("board-error").textContent = e.message;
}

async function refresh() {
  if (!token()) return;
  clearTimeout(timer);
  try {
    // Each section stands on its own: one failing route leaves the others current.
    const [stores, alerts, reorders, transfers] = await Promise.allSettled([
      loadStores(),
      loadAlerts(),
      loadReorders(),
      loadTransfers(),
    ]);
    const failed = [stores, alerts, reorders, transfers].find((r) => r.status === "rejected");
    if (failed && failed.reason.status === 401) {
      signOut(failed.reason.message);
      return;
    }
    if (alerts.status === "fulfilled") drawAlerts(alerts.value);
    if (stores.status === "fulfilled") {
      drawStores(stores.value, alerts.status === "fulfilled" ? alerts.value.alerts : []);
    }
    if (reorders.status === "fulfilled") drawReorders(reorders.value);
    if (transfers.status === "fulfilled") drawTransfers(transfers.value);
    $("board-error").textContent = failed ? failed.reason.message : "";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } finally {
    // An acknowledge refreshes out of turn: one pending timer, whoever finishes last.
    clearTimeout(timer);
    if (token()) timer = setTimeout(refresh, REFRESH_MS);
  }
}

function showBoard(signedIn) {
  $("login").hidden = signedIn;
  $("board").hidden = !signedIn;
  $("session").hidden = !signedIn;
}

function signOut(reason) {
  clearTimeout(timer);
  sessionStorage.removeItem(TOKEN_KEY);
  showBoard(false);
  $("login-error").textContent = reason || "";
}

async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  try {
    // Admin only: a store token is refused here rather than showing a half-empty board.
    await api("GET", `/v1/stores?${query({ limit: 1 })}`);
  } catch (e) {
    signOut(e.message);
    return;
  }
  $("login-error").textContent = "";
  showBoard(true);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("stock-form").addEventListener("submit", lookUp);
  $("refresh").addEventListener("click", refresh);
  $("signout").addEventListener("click", () => signOut(""));
  if (token()) {
    showBoard(true);
    refresh();
  } else {
    showBoard(false);
  }
});
