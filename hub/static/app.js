// Bazaar HQ dashboard: reads the hub's JSON API with the admin token and redraws every few
// seconds. Data only ever reaches the DOM as text (textContent / createTextNode), never as
// markup, so a store name or alert message cannot inject anything. Charts are SVG drawn
// here, no library. Every API path is a template literal in a call api(method, `...`)
// (parameters as ${...}, the query after ?): hub/tests/dashboard.rs extracts them and
// checks each is a documented route, so keep them that way.
//
// Views (hash routing, every figure links to the store or sku behind it):
//   #/                       the chain: stores (paged, health filter, id search), alerts
//                            (kind, severity, store, state), reorders, transfers
//   #/store/{store}          a store's sync lag and the hub's outbox depth over hours
//   #/sku/{sku}              a sku's stock by store across the chain
//   #/forecast/{store}/{sku} daily sales, forecast with its band, reorder point
"use strict";

const REFRESH_MS = 5000;
const TOKEN_KEY = "bazaar.adminToken";
const LIST_LIMIT = 200;
const STORE_PAGE = 50;
const ALERT_PAGE = 50;
const STOCK_PAGE = 50;
const SVG_NS = "http://www.w3.org/2000/svg";
const HEALTH = ["all", "ok", "stale", "held", "parked", "outbox_over_budget"];

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
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
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

const enc = encodeURIComponent;
const storeHref = (store) => "#/store/" + enc(store);
const skuHref = (sku) => "#/sku/" + enc(sku);
const forecastHref = (store, sku) => "#/forecast/" + enc(store) + "/" + enc(sku);

function link(href, text, cls) {
  return el("a", cls ? { href, class: cls } : { href }, text);
}

function storeLink(store) {
  return store ? link(storeHref(store), store, "store-link") : null;
}

function skuLink(sku) {
  return sku ? link(skuHref(sku), sku, "sku-link") : null;
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

function fmt(x, digits) {
  if (x === null || x === undefined) return "—";
  return Number(x).toFixed(digits === undefined ? 1 : digits);
}

// ---- SVG charts ----

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgLink(href, ...children) {
  const a = svg("a", {}, ...children);
  a.setAttribute("href", href);
  return a;
}

// A frame: width/height, margins, the y scale from 0 to max (rounded up) and its ticks.
function frame(width, height, maxY, opts) {
  const m = { l: 48, r: (opts && opts.right) || 12, t: 10, b: 28 };
  const min = opts && opts.min < 0 ? opts.min : 0;
  const bottom = min < 0 ? -niceMax(-min) : 0;
  const top = maxY > 0 || bottom === 0 ? niceMax(maxY) : 0;
  const y = (v) => m.t + (height - m.t - m.b) * ((top - v) / (top - bottom));
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width: "100%",
    class: "plot",
    role: "img",
    preserveAspectRatio: "xMidYMid meet",
  });
  for (let i = 0; i <= 4; i++) {
    const v = bottom + ((top - bottom) * i) / 4;
    root.appendChild(svg("line", { x1: m.l, x2: width - m.r, y1: y(v), y2: y(v), class: "grid" }));
    root.appendChild(svg("text", { x: m.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, shortNum(v)));
  }
  if (bottom < 0) root.appendChild(svg("line", { x1: m.l, x2: width - m.r, y1: y(0), y2: y(0), class: "zero" }));
  return { root, m, y, top, plotW: width - m.l - m.r, height, width };
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const f of [1, 2, 2.5, 5, 10]) if (v <= f * p) return f * p;
  return 10 * p;
}

function shortNum(v) {
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function path(points) {
  return points.map(([x, y], i) => (i ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1)).join(" ");
}

function legend(root, x, items) {
  let at = x;
  for (const [cls, text] of items) {
    root.appendChild(svg("rect", { x: at, y: 2, width: 10, height: 10, class: "key " + cls }));
    root.appendChild(svg("text", { x: at + 14, y: 11, class: "tick" }, text));
    at += 24 + text.length * 6.5;
  }
}

// Daily sales (one point per day of history), the forecast's mean, its interval band.
function drawSalesChart(fc) {
  const days = fc.history.length + fc.forecast.length;
  const maxY = Math.max(1, ...fc.history.map((d) => d.qty), ...fc.forecast.map((d) => d.hi));
  const f = frame(900, 300, maxY);
  const step = f.plotW / Math.max(days - 1, 1);
  const x = (i) => f.m.l + i * step;
  const n = fc.history.length;
  if (fc.forecast.length) {
    const upper = fc.forecast.map((d, i) => [x(n + i), f.y(d.hi)]);
    const lower = fc.forecast.map((d, i) => [x(n + i), f.y(d.lo)]).reverse();
    f.root.appendChild(svg("path", { d: path(upper.concat(lower)) + " Z", class: "band" }, svg("title", {}, Math.round(fc.level * 100) + "% interval")));
    f.root.appendChild(svg("path", { d: path(fc.forecast.map((d, i) => [x(n + i), f.y(d.mean)])), class: "forecast-line" }));
    f.root.appendChild(svg("line", { x1: x(n) - step / 2, x2: x(n) - step / 2, y1: f.m.t, y2: f.height - f.m.b, class: "today" }));
  }
  f.root.appendChild(svg("path", { d: path(fc.history.map((d, i) => [x(i), f.y(d.qty)])), class: "history-line" }));
  const points = svg("g", { class: "history-points" });
  fc.history.forEach((d, i) => {
    points.appendChild(svg("circle", { cx: x(i), cy: f.y(d.qty), r: 2.5, class: "point", "data-date": d.date, "data-qty": d.qty }, svg("title", {}, d.date + ": " + d.qty + " sold")));
  });
  f.root.appendChild(points);
  fc.forecast.forEach((d, i) => {
    f.root.appendChild(svg("circle", { cx: x(n + i), cy: f.y(d.mean), r: 1.5, class: "fpoint", "data-date": d.date }, svg("title", {}, d.date + ": " + fmt(d.mean) + " expected (" + fmt(d.lo) + "–" + fmt(d.hi) + ")")));
  });
  const all = fc.history.map((d) => d.date).concat(fc.forecast.map((d) => d.date));
  for (let i = 0; i < all.length; i += 7) {
    f.root.appendChild(svg("text", { x: x(i), y: f.height - 8, class: "tick", "text-anchor": "middle" }, all[i].slice(5)));
  }
  legend(f.root, f.m.l + 8, [["history", "sold per day"], ["forecast", "forecast mean"], ["band", Math.round(fc.level * 100) + "% interval"]]);
  $("sales-chart").replaceChildren(f.root);
}

// On hand against the reorder point and the order-up-to level (a bullet chart).
function drawPositionChart(fc) {
  const r = fc.reorder;
  if (!r) {
    $("position-chart").replaceChildren(el("p", { class: "muted" }, "no reorder figures for this pair"));
    return;
  }
  const max = niceMax(Math.max(r.order_up_to, r.on_hand, r.reorder_point, 1) * 1.1);
  const w = 900, h = 70, l = 48, rr = 12;
  const x = (v) => l + ((w - l - rr) * Math.max(v, 0)) / max;
  const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", class: "plot", role: "img" });
  root.appendChild(svg("rect", { x: l, y: 14, width: x(r.order_up_to) - l, height: 24, class: "range" }, svg("title", {}, "order-up-to " + r.order_up_to)));
  root.appendChild(svg("rect", { x: l, y: 20, width: x(r.on_hand) - l, height: 12, class: r.on_hand <= r.reorder_point ? "onhand low" : "onhand" }, svg("title", {}, "on hand " + r.on_hand)));
  root.appendChild(svg("line", { x1: x(r.reorder_point), x2: x(r.reorder_point), y1: 8, y2: 44, class: "reorder-point" }, svg("title", {}, "reorder point " + r.reorder_point)));
  root.appendChild(svg("text", { x: x(r.reorder_point), y: 58, class: "tick", "text-anchor": "middle" }, "reorder point " + r.reorder_point));
  root.appendChild(svg("text", { x: l, y: 10, class: "tick" }, "on hand " + r.on_hand + " · order-up-to " + r.order_up_to));
  $("position-chart").replaceChildren(root);
}

// Lag p50/p99/max per bucket (lines), and movements (bars) with the hub outbox depth (step).
function drawSyncCharts(h) {
  const b = h.buckets;
  const maxLag = Math.max(0.001, ...b.map((x) => x.lag_max_secs || 0));
  const f = frame(900, 220, maxLag);
  const step = f.plotW / Math.max(b.length, 1);
  const x = (i) => f.m.l + (i + 0.5) * step;
  for (const [key, cls] of [["lag_max_secs", "lag-max"], ["lag_p99_secs", "lag-p99"], ["lag_p50_secs", "lag-p50"]]) {
    const pts = [];
    b.forEach((bucket, i) => {
      if (bucket[key] !== null && bucket[key] !== undefined) pts.push([x(i), f.y(bucket[key])]);
    });
    if (pts.length) f.root.appendChild(svg("path", { d: path(pts), class: "line " + cls }));
    b.forEach((bucket, i) => {
      if (bucket[key] === null || bucket[key] === undefined) return;
      f.root.appendChild(svg("circle", { cx: x(i), cy: f.y(bucket[key]), r: 2.5, class: "point " + cls }, svg("title", {}, timeLabel(bucket.start) + " " + key.replace("_secs", "").replace("lag_", "") + ": " + fmt(bucket[key], 2) + " s")));
    });
  }
  timeTicks(f, b, x);
  legend(f.root, f.m.l + 8, [["lag-p50", "p50"], ["lag-p99", "p99"], ["lag-max", "max"]]);
  $("lag-chart").replaceChildren(f.root);

  const maxN = Math.max(1, ...b.map((x) => Math.max(x.movements, x.hub_outbox_depth)));
  const g = frame(900, 180, maxN);
  const bw = Math.max(1, step * 0.7);
  b.forEach((bucket, i) => {
    g.root.appendChild(svg("rect", { x: x(i) - bw / 2, y: g.y(bucket.movements), width: bw, height: g.y(0) - g.y(bucket.movements), class: "bar movements", "data-movements": bucket.movements }, svg("title", {}, timeLabel(bucket.start) + ": " + bucket.movements + " movements")));
  });
  const depth = [];
  b.forEach((bucket, i) => {
    depth.push([x(i) - step / 2, g.y(bucket.hub_outbox_depth)], [x(i) + step / 2, g.y(bucket.hub_outbox_depth)]);
  });
  if (depth.length) g.root.appendChild(svg("path", { d: path(depth), class: "line outbox" }));
  timeTicks(g, b, x);
  legend(g.root, g.m.l + 8, [["movements", "movements received"], ["outbox", "hub outbox depth"]]);
  $("flow-chart").replaceChildren(g.root);
}

function timeLabel(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
}

function timeTicks(f, buckets, x) {
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  for (let i = 0; i < buckets.length; i += every) {
    f.root.appendChild(svg("text", { x: x(i), y: f.height - 8, class: "tick", "text-anchor": "middle" }, timeLabel(buckets[i].start)));
  }
}

// One bar per store, largest first, each a link to the store.
function drawStockChart(stock) {
  const rows = stock.stores.slice().sort((a, b) => b.on_hand - a.on_hand || (a.store < b.store ? -1 : 1));
  const maxY = Math.max(1, ...rows.map((r) => r.on_hand));
  const minY = Math.min(0, ...rows.map((r) => r.on_hand));
  const f = frame(900, 240, maxY, { min: minY });
  const zero = (v) => f.y(v);
  const step = f.plotW / Math.max(rows.length, 1);
  const bars = svg("g", { class: "stock-bars" });
  rows.forEach((r, i) => {
    const y0 = zero(0), y1 = zero(r.on_hand);
    const bar = svg("rect", {
      x: f.m.l + i * step + step * 0.1,
      y: Math.min(y0, y1),
      width: Math.max(step * 0.8, 0.5),
      height: Math.max(Math.abs(y0 - y1), 0.5),
      class: r.on_hand < 0 ? "bar negative" : "bar",
      "data-store": r.store,
      "data-on-hand": r.on_hand,
    }, svg("title", {}, r.store + ": " + r.on_hand));
    bars.appendChild(svgLink(storeHref(r.store), bar));
  });
  f.root.appendChild(bars);
  if (rows.length && rows.length <= 40) {
    rows.forEach((r, i) => f.root.appendChild(svg("text", { x: f.m.l + (i + 0.5) * step, y: f.height - 8, class: "tick", "text-anchor": "middle" }, r.store)));
  } else if (rows.length) {
    f.root.appendChild(svg("text", { x: f.m.l, y: f.height - 8, class: "tick" }, rows.length + " stores, most stock first (hover a bar for its store, click to open it)"));
  }
  $("stock-chart").replaceChildren(f.root);
}

// ---- state ----

const state = {
  stores: { health: "all", prefix: "", cursors: [null], page: 0 },
  alerts: { kind: "", severity: "", store: "", open: "true", cursors: [null], page: 0 },
  stock: { page: 0 },
};

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "store" && parts[1]) return { view: "store", store: parts[1] };
  if (parts[0] === "sku" && parts[1]) return { view: "sku", sku: parts[1] };
  if (parts[0] === "forecast" && parts[1] && parts[2]) return { view: "forecast", store: parts[1], sku: parts[2] };
  return { view: "chain" };
}

function showView(r) {
  for (const v of ["chain", "store", "sku", "forecast"]) $("view-" + v).hidden = v !== r.view;
  const crumbs = $("crumbs");
  const items = [link("#/", "Chain")];
  if (r.store) items.push(" › ", link(storeHref(r.store), "store " + r.store));
  if (r.sku) items.push(" › ", link(skuHref(r.sku), "sku " + r.sku));
  crumbs.replaceChildren(...items);
  crumbs.hidden = r.view === "chain";
}

// ---- the chain view ----

async function loadStores() {
  const s = state.stores;
  return api("GET", `/v1/dashboard/stores?${query({
    health: s.health === "all" ? null : s.health,
    prefix: s.prefix,
    cursor: s.cursors[s.page],
    limit: STORE_PAGE,
  })}`);
}

async function loadAlerts() {
  const a = state.alerts;
  return api("GET", `/v1/dashboard/alerts?${query({
    kind: a.kind,
    severity: a.severity,
    store: a.store,
    open: a.open,
    cursor: a.cursors[a.page],
    limit: ALERT_PAGE,
  })}`);
}

async function loadReorders() {
  return api("GET", `/v1/reorders?${query({ limit: LIST_LIMIT })}`);
}

async function loadTransfers() {
  return api("GET", `/v1/transfers/suggestions?${query({ limit: LIST_LIMIT })}`);
}

function healthBadges(store) {
  const out = el("span", { class: "health" });
  if (!store.problems.length) {
    out.appendChild(store.last_seen_at ? badge("ok", "ok") : badge("ok, never synced", "info"));
    return out;
  }
  for (const p of store.problems) {
    if (p === "held") out.appendChild(badge("gap: " + store.held + " held", "bad"));
    else if (p === "parked") out.appendChild(badge(store.parked + " parked", "bad"));
    else if (p === "stale") out.appendChild(badge("stale", "warn"));
    else if (p === "outbox_over_budget") out.appendChild(badge("outbox over budget", "warn"));
    else out.appendChild(badge(p, "info"));
  }
  return out;
}

function drawHealthChips(counts) {
  const s = state.stores;
  const chips = HEALTH.map((h) => {
    const n = counts ? counts[h] : null;
    const label = (h === "all" ? "all" : h.replace(/_/g, " ")) + (n === null || n === undefined ? "" : " " + n);
    const button = el("button", { type: "button", class: "chip" + (s.health === h ? " active" : ""), "data-health": h, "aria-pressed": String(s.health === h) }, label);
    button.addEventListener("click", () => {
      s.health = h;
      s.cursors = [null];
      s.page = 0;
      refresh();
    });
    return button;
  });
  $("stores-health").replaceChildren(...chips);
}

function drawStores(page) {
  const s = state.stores;
  s.cursors[s.page + 1] = page.next_cursor;
  const matching = s.health === "all" ? page.counts.all : page.counts[s.health];
  const first = s.page * STORE_PAGE;
  $("stores-count").textContent = "(" + page.counts.all + (s.prefix ? " matching " + s.prefix + "…" : "") + ")";
  $("stores-page").textContent = page.items.length
    ? "stores " + (first + 1) + "–" + (first + page.items.length) + " of " + matching
    : "no store on this page";
  $("stores-prev").disabled = s.page === 0;
  $("stores-next").disabled = !page.next_cursor;
  drawHealthChips(page.counts);
  fill(
    "stores",
    page.items.map((st) =>
      el(
        "tr",
        { "data-store": st.store },
        el("td", {}, storeLink(st.store)),
        td(st.name),
        el("td", {}, healthBadges(st)),
        el("td", { title: st.last_seen_at || "" }, ago(st.last_seen_at)),
        td(st.last_seq, "num"),
        td(st.last_hub_seq, "num"),
        td(st.held, "num"),
        td(st.parked, "num"),
        td(st.outbox_pending, "num"),
      ),
    ),
    9,
    s.health === "all" && !s.prefix ? "no store registered yet" : "no store matches",
  );
}

function drawAlerts(page) {
  const a = state.alerts;
  a.cursors[a.page + 1] = page.next_cursor;
  const alerts = page.alerts;
  $("alerts-count").textContent = "(" + alerts.length + (page.next_cursor ? "+" : "") + " on this page)";
  $("alerts-page").textContent = "page " + (a.page + 1);
  $("alerts-prev").disabled = a.page === 0;
  $("alerts-next").disabled = !page.next_cursor;
  fill(
    "alerts",
    alerts.map((al) => {
      let action;
      if (al.acknowledged_at) {
        action = el("span", { class: "muted acked", title: when(al.acknowledged_at) }, "acknowledged by " + (al.acknowledged_by || "?"));
      } else {
        const button = el("button", { type: "button", class: "ack" }, "Acknowledge");
        button.addEventListener("click", () => acknowledge(al.id, button));
        action = button;
      }
      return el(
        "tr",
        { "data-alert": String(al.id) },
        el("td", { title: al.raised_at }, ago(al.raised_at)),
        el("td", {}, badge(al.severity, al.severity)),
        td(al.kind),
        el("td", {}, storeLink(al.store) || "—"),
        el("td", {}, al.store && al.sku ? link(forecastHref(al.store, al.sku), al.sku, "sku-link") : skuLink(al.sku) || "—"),
        td(al.message),
        el("td", {}, action),
      );
    }),
    7,
    "no alert matches",
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
        el("td", {}, storeLink(r.store)),
        el("td", {}, link(forecastHref(r.store, r.sku), r.sku, "sku-link")),
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
  const joined = (items) => {
    const span = el("span");
    items.forEach((node, i) => {
      if (i) span.appendChild(document.createTextNode("; "));
      span.appendChild(node);
    });
    return span;
  };
  fill(
    "transfers",
    rows.map((s) =>
      el(
        "tr",
        {},
        el("td", {}, skuLink(s.sku)),
        el("td", {}, s.transfers.length
          ? joined(s.transfers.map((t) => el("span", {}, t.quantity + " from ", storeLink(t.from), " to ", storeLink(t.to))))
          : "—"),
        el("td", {}, s.purchases_after_transfers.some((p) => p.qty > 0)
          ? joined(s.purchases_after_transfers.filter((p) => p.qty > 0).map((p) => el("span", {}, storeLink(p.store), ": " + p.qty)))
          : "nothing"),
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

async function refreshChain() {
  // Each section stands on its own: one failing route leaves the others current.
  const results = await Promise.allSettled([loadStores(), loadAlerts(), loadReorders(), loadTransfers()]);
  const [stores, alerts, reorders, transfers] = results;
  const failed = results.find((r) => r.status === "rejected");
  if (failed && failed.reason.status === 401) throw failed.reason;
  if (stores.status === "fulfilled") drawStores(stores.value);
  if (alerts.status === "fulfilled") drawAlerts(alerts.value);
  if (reorders.status === "fulfilled") drawReorders(reorders.value);
  if (transfers.status === "fulfilled") drawTransfers(transfers.value);
  if (failed) throw failed.reason;
}

// ---- the sku view ----

async function refreshSku(sku) {
  $("stock-sku").textContent = sku;
  try {
    const stock = await api("GET", `/v1/products/${encodeURIComponent(sku)}/stock`);
    $("stock-error").textContent = "";
    $("stock-sku").textContent = stock.sku;
    $("stock-total").textContent = String(stock.total);
    $("stock-stores").textContent = "(" + stock.stores.length + " stores)";
    drawStockChart(stock);
    const pages = Math.max(1, Math.ceil(stock.stores.length / STOCK_PAGE));
    state.stock.page = Math.min(state.stock.page, pages - 1);
    const first = state.stock.page * STOCK_PAGE;
    const shown = stock.stores.slice(first, first + STOCK_PAGE);
    $("stock-page").textContent = "page " + (state.stock.page + 1) + " of " + pages;
    $("stock-prev").disabled = state.stock.page === 0;
    $("stock-next").disabled = state.stock.page >= pages - 1;
    fill(
      "stock",
      shown.map((f) =>
        el("tr", { "data-store": f.store }, el("td", {}, storeLink(f.store)), td(f.on_hand, "num"), td(f.version, "num"), el("td", { title: f.updated_at }, when(f.updated_at))),
      ),
      4,
      "known, but no store holds it yet",
    );
  } catch (e) {
    if (e.status === 401) throw e;
    $("stock-error").textContent = e.message;
    $("stock-total").textContent = "—";
    $("stock-chart").replaceChildren();
    fill("stock", [], 4, "nothing to show");
  }
}

// ---- the store view ----

async function refreshStore(store) {
  $("sync-store").textContent = store;
  const hours = $("sync-hours").value;
  const [history, reorders] = await Promise.allSettled([
    api("GET", `/v1/stores/${encodeURIComponent(store)}/sync-history?${query({ hours })}`),
    api("GET", `/v1/reorders?${query({ store, limit: LIST_LIMIT })}`),
  ]);
  for (const r of [history, reorders]) if (r.status === "rejected" && r.reason.status === 401) throw r.reason;
  if (history.status === "fulfilled") {
    const h = history.value;
    $("sync-error").textContent = "";
    const total = h.buckets.reduce((n, b) => n + b.movements, 0);
    const worst = Math.max(0, ...h.buckets.map((b) => b.lag_max_secs || 0));
    $("sync-summary").replaceChildren(
      el("span", { id: "sync-movements" }, String(total)), " movements received in " + h.buckets.length + " buckets of " + h.bucket_seconds / 60 + " min; worst lag ",
      el("span", { id: "sync-worst" }, fmt(worst, 2)), " s; hub outbox towards the store now: ",
      el("span", { id: "sync-outbox" }, String(h.hub_outbox_pending)), ".",
    );
    drawSyncCharts(h);
  } else {
    $("sync-error").textContent = history.reason.message;
    $("sync-summary").textContent = "";
    $("lag-chart").replaceChildren();
    $("flow-chart").replaceChildren();
  }
  if (reorders.status === "fulfilled") {
    const rows = reorders.value.reorders;
    $("store-reorders-count").textContent = "(" + rows.length + (reorders.value.next_cursor ? "+" : "") + ")";
    fill(
      "store-reorders",
      rows.map((r) =>
        el("tr", {}, el("td", {}, link(forecastHref(r.store, r.sku), r.sku, "sku-link")), td(r.on_hand, "num"), td(r.reorder_point, "num"), td(r.order_up_to, "num"), el("td", { class: "num" }, el("strong", {}, String(r.suggested_qty)))),
      ),
      5,
      "nothing to buy here now",
    );
  } else {
    fill("store-reorders", [], 5, reorders.reason.message);
  }
}

// ---- the forecast view ----

async function refreshForecast(store, sku) {
  $("fc-store").replaceChildren(storeLink(store));
  $("fc-sku").replaceChildren(skuLink(sku));
  try {
    const fc = await api("GET", `/v1/forecasts/${encodeURIComponent(store)}/${encodeURIComponent(sku)}`);
    $("fc-error").textContent = "";
    const bt = fc.backtest && fc.backtest.rmsse !== null && fc.backtest.rmsse !== undefined ? ", backtest RMSSE " + fmt(fc.backtest.rmsse, 2) : "";
    $("fc-summary").replaceChildren(
      el("span", { id: "fc-days" }, String(fc.history.length)), " days of history, ",
      el("span", { id: "fc-horizon" }, String(fc.forecast.length)), " days forecast by " + fc.model + bt + "; computed " + ago(fc.computed_at) + ".",
    );
    drawSalesChart(fc);
    drawPositionChart(fc);
    const r = fc.reorder;
    $("fc-reorder").replaceChildren(
      ...(r
        ? ["On hand ", el("strong", { id: "fc-on-hand" }, String(r.on_hand)), ", reorder point ", el("strong", { id: "fc-reorder-point" }, String(r.reorder_point)),
          ", order-up-to ", el("strong", { id: "fc-order-up-to" }, String(r.order_up_to)), " (demand over the " + r.lead_time_days + "-day lead time " + fmt(r.demand_over_lead_time) + ", safety stock " + fmt(r.safety_stock) + "): buy ",
          el("strong", { id: "fc-buy" }, String(r.suggested_qty)), "."]
        : ["No reorder figures."]),
    );
  } catch (e) {
    if (e.status === 401) throw e;
    $("fc-error").textContent = e.message;
    $("fc-summary").textContent = "";
    $("sales-chart").replaceChildren();
    $("position-chart").replaceChildren();
    $("fc-reorder").textContent = "";
  }
}

// ---- refresh loop and session ----

let timer = null;
let generation = 0;

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
  const mine = ++generation;
  const r = route();
  showView(r);
  try {
    if (r.view === "chain") await refreshChain();
    else if (r.view === "sku") await refreshSku(r.sku);
    else if (r.view === "store") await refreshStore(r.store);
    else await refreshForecast(r.store, r.sku);
    if (mine === generation) {
      $("board-error").textContent = "";
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    }
  } catch (e) {
    showError(e);
  } finally {
    // Out-of-turn refreshes (a filter, an acknowledge): one pending timer, whoever ends last.
    if (mine === generation) {
      clearTimeout(timer);
      if (token()) timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

function showBoard(signedIn) {
  $("login").hidden = signedIn;
  $("board").hidden = !signedIn;
  $("session").hidden = !signedIn;
  if (!signedIn) $("crumbs").hidden = true;
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

function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

function pager(prefix, stateOf) {
  $(prefix + "-prev").addEventListener("click", () => {
    const s = stateOf();
    if (s.page > 0) s.page -= 1;
    refresh();
  });
  $(prefix + "-next").addEventListener("click", () => {
    const s = stateOf();
    if (s.cursors === undefined || s.cursors[s.page + 1]) s.page += 1;
    refresh();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("stock-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const sku = $("sku").value.trim();
    if (sku) location.hash = skuHref(sku);
  });
  $("refresh").addEventListener("click", refresh);
  $("signout").addEventListener("click", () => signOut(""));
  const validOrEmpty = (input) => input.checkValidity();
  $("stores-filter").addEventListener("submit", (e) => e.preventDefault());
  $("stores-prefix").addEventListener("input", debounce(() => {
    const input = $("stores-prefix");
    if (!validOrEmpty(input)) return;
    state.stores.prefix = input.value.trim();
    state.stores.cursors = [null];
    state.stores.page = 0;
    refresh();
  }, 250));
  $("alerts-filter").addEventListener("submit", (e) => e.preventDefault());
  const alertFilter = () => {
    const a = state.alerts;
    const storeInput = $("alerts-store");
    if (!validOrEmpty(storeInput)) return;
    a.kind = $("alerts-kind").value;
    a.severity = $("alerts-severity").value;
    a.store = storeInput.value.trim();
    a.open = $("alerts-open").value;
    a.cursors = [null];
    a.page = 0;
    refresh();
  };
  for (const id of ["alerts-kind", "alerts-severity", "alerts-open"]) $(id).addEventListener("change", alertFilter);
  $("alerts-store").addEventListener("input", debounce(alertFilter, 250));
  pager("stores", () => state.stores);
  pager("alerts", () => state.alerts);
  pager("stock", () => state.stock);
  $("sync-hours").addEventListener("change", refresh);
  window.addEventListener("hashchange", () => {
    state.stock.page = 0;
    window.scrollTo(0, 0);
    refresh();
  });
  drawHealthChips(null);
  if (token()) {
    showBoard(true);
    refresh();
  } else {
    showBoard(false);
  }
});
