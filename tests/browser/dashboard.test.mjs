// The HQ dashboard in a real browser (issue 11), run by tests/browser/run against a real
// hub it started. Seeds a chain of 2,000 stores through the API (registration, HQ
// movements, thresholds, a forecast run), plus what only ingest from a broker would write
// (store-origin movements with their lag, held and parked messages) and a year of
// daily_sales straight into MySQL. Then, in chromium: sign in, every panel shows the API's
// figures (the DOM against JSON this script fetches itself), acknowledge changes the
// alert, the sales chart has one point per day of history, filters and paging work over
// 2,000 stores, links lead to the store or sku behind a figure, and the console stays free
// of errors. Screenshots of each panel go to $BROWSER_ARTIFACTS.
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import path from "node:path";

const HUB = process.env.BROWSER_HUB;
const ADMIN = process.env.BROWSER_ADMIN;
const DB = process.env.BROWSER_DB;
const OUT = process.env.BROWSER_ARTIFACTS;
const STORES = 2000;
const started = Date.now();
let passed = 0;
let failed = 0;

const id = (i) => "S" + String(i).padStart(4, "0");
const log = (...a) => console.log(`[browser ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);

async function call(method, p, body, headers) {
  const r = await fetch(HUB + p, {
    method,
    headers: { Authorization: "Bearer " + ADMIN, "Content-Type": "application/json", ...(headers || {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
  return json;
}
const get = (p) => call("GET", p);

function sql(text) {
  return execFileSync("mysql", ["-h127.0.0.1", "-uroot", "-N", "-B", DB], { input: text }).toString();
}

async function pool(items, width, fn) {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  }));
}

async function check(name, fn) {
  try {
    await fn();
    passed++;
    log("ok  ", name);
  } catch (e) {
    failed++;
    log("FAIL", name, "\n", e && e.stack ? e.stack : e);
  }
}

async function eventually(fn, what, ms = 15000) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try { return await fn(); } catch (e) { last = e; }
    if (Date.now() > until) throw new Error(`${what}: ${last && last.message}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---- the chain's data ----

async function seed() {
  const ids = Array.from({ length: STORES }, (_, i) => id(i));
  await pool(ids, 16, (s) => call("POST", "/v1/stores", { store: s, name: "Store " + s.slice(1) }));
  log("registered", STORES, "stores");
  // MILK received everywhere (a bar per store), more of it at some.
  await pool(ids, 16, (s, i) => call("POST", `/v1/stores/${s}/movements`, { kind: "receipt", sku: "MILK", qty: 10 + ((i * 37) % 90), ref: "seed" }, { "Idempotency-Key": "milk-" + s }));
  log("MILK received at every store");
  // Alerts of each severity, raised by the hub itself on HQ movements.
  await call("PUT", "/v1/thresholds", { sku: "BREAD", reorder_point: 10, max_stock: 50 }).catch(async () => {
    await call("POST", `/v1/stores/${id(5)}/movements`, { kind: "receipt", sku: "BREAD", qty: 1 });
    return call("PUT", "/v1/thresholds", { sku: "BREAD", reorder_point: 10, max_stock: 50 });
  });
  await call("POST", `/v1/stores/${id(3)}/movements`, { kind: "adjustment", sku: "MILK", qty: -500, reason: "damage" });
  await call("POST", `/v1/stores/${id(4)}/movements`, { kind: "count", sku: "MILK", counted: 0 });
  await call("POST", `/v1/stores/${id(5)}/movements`, { kind: "receipt", sku: "BREAD", qty: 4 });
  await call("POST", `/v1/stores/${id(6)}/movements`, { kind: "receipt", sku: "BREAD", qty: 200 });
  // The hub's outbox towards S0007 over budget (no broker: nothing is published).
  await pool(Array.from({ length: 101 }, (_, i) => i), 8, (i) =>
    call("POST", `/v1/stores/${id(7)}/movements`, { kind: "receipt", sku: "EGGS", qty: 1, ref: "e" + i }));
  log("alerts raised, outbox filled");

  // What ingest from the broker would have written: store-origin movements of S0001 over
  // the last 6 hours with a lag, messages held behind a gap at S0008, parked at S0009.
  const rows = [];
  const now = Date.now();
  for (let k = 0; k < 240; k++) {
    const received = new Date(now - (6 * 3600 - 60) * 1000 + k * 89_000);
    const lag = (k % 10) * 0.7 + (k % 37 === 0 ? 40 : 0);
    const occurred = new Date(received.getTime() - lag * 1000);
    const t = (d) => d.toISOString().replace("T", " ").replace("Z", "");
    rows.push(`('${id(1)}','store',${k + 1},UUID(),'sale','MILK',-1,NULL,0,NULL,NULL,NULL,NULL,'${t(occurred)}','${t(received)}')`);
  }
  sql(`INSERT INTO movements (store, origin, seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, to_store, from_store, occurred_at, received_at) VALUES ${rows.join(",")};
       UPDATE store_sync SET last_seq = 240, last_event_at = UTC_TIMESTAMP(6), last_applied_at = UTC_TIMESTAMP(6) WHERE store = '${id(1)}';
       UPDATE stores SET last_seen_at = UTC_TIMESTAMP(6) WHERE id = '${id(1)}';
       INSERT INTO held_events (store, origin, seq, id, payload, received_at) VALUES ('${id(8)}','store',5,UUID(),'{}',UTC_TIMESTAMP(6)),('${id(8)}','store',6,UUID(),'{}',UTC_TIMESTAMP(6));
       INSERT INTO parked_events (store, seq, event_id, reason, detail, payload, topic, kafka_partition, kafka_offset, parked_at) VALUES ('${id(9)}',3,UUID(),'bad_signature','seeded by the browser test','{}','t',0,1,UTC_TIMESTAMP(6));
       UPDATE stores SET created_at = UTC_TIMESTAMP(6) - INTERVAL 2 HOUR WHERE id IN ('${id(10)}','${id(11)}');`);

  // A year of daily sales of MILK at 20 stores (weekly seasonality), then a forecast run.
  const sales = [];
  const today = new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate()));
  for (let s = 0; s < 20; s++) {
    for (let d = 400; d >= 1; d--) {
      const day = new Date(today.getTime() - d * 86400_000);
      const dow = day.getUTCDay();
      const qty = Math.max(0, Math.round(8 + s + (dow === 6 || dow === 0 ? 6 : 0) + 3 * Math.sin(d * 1.7 + s)));
      sales.push(`('${id(s)}','MILK','${day.toISOString().slice(0, 10)}',${qty})`);
    }
  }
  sql(`INSERT INTO daily_sales (store, sku, day, qty) VALUES ${sales.join(",")};`);
  const run = await call("POST", "/v1/forecasts/run");
  await eventually(async () => {
    const r = await get(run.progress);
    if (r.status === "failed" || r.status === "abandoned") throw Object.assign(new Error("forecast run " + r.status), { fatal: true });
    assert.equal(r.status, "succeeded");
  }, "the forecast run", 90_000);
  log("forecast run done");
  // The stale check runs every 30 s: wait for the two backdated stores.
  await eventually(async () => {
    const p = await get("/v1/dashboard/stores?health=stale&limit=10");
    assert.equal(p.counts.stale, 2);
  }, "the stale check", 45_000);
  log("stale stores reported");
}

// ---- the page ----

const text = (page, sel) => page.locator(sel).innerText();
const rowsOf = (page, tbody) =>
  page.$$eval(`#${tbody} tr`, (trs) => trs.map((tr) => Array.from(tr.children).map((c) => c.innerText.trim())));

async function waitRows(page, tbody, expectFirst) {
  await page.waitForFunction(
    ([tb, first]) => {
      const tr = document.querySelector(`#${tb} tr`);
      return tr && (first === null ? true : tr.children[0].innerText.trim() === first);
    },
    [tbody, expectFirst],
    { timeout: 10000 },
  );
}

async function storesMatch(page, apiPage) {
  await eventually(async () => {
    const rows = await rowsOf(page, "stores");
    if (apiPage.items.length === 0) {
      assert.equal(rows.length, 1);
      assert.match(rows[0][0], /no store/);
      return;
    }
    assert.deepEqual(rows.map((r) => r[0]), apiPage.items.map((s) => s.store));
    rows.forEach((r, i) => {
      const s = apiPage.items[i];
      assert.equal(r[1], s.name);
      assert.equal(r[4], String(s.last_seq));
      assert.equal(r[5], String(s.last_hub_seq));
      assert.equal(r[6], String(s.held));
      assert.equal(r[7], String(s.parked));
      assert.equal(r[8], String(s.outbox_pending));
    });
  }, "the store rows are the API's");
}

async function shot(page, sel, name) {
  const file = path.join(OUT, name + ".png");
  await page.locator(sel).screenshot({ path: file });
  log("screenshot", file);
}

async function main() {
  await seed();

  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on("console", (m) => {
    // Chromium asks every page for /favicon.ico; the hub has none (a JSON 404). That is
    // the browser's request, not the dashboard's.
    if (m.type() === "error" && !(m.location().url || "").endsWith("/favicon.ico")) consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push("page error: " + e.message));

  await page.goto(HUB + "/");
  await check("sign in with the admin token", async () => {
    await page.fill("#token", "wrong");
    await page.click("#login-form button[type=submit]");
    await page.waitForFunction(() => document.getElementById("login-error").innerText.length > 0);
    assert.equal(await page.locator("#board").isHidden(), true);
    // The refused token's 401 is logged by chromium as a failed resource: expected here.
    await page.waitForTimeout(100);
    consoleErrors.splice(0, consoleErrors.length, ...consoleErrors.filter((m) => !m.includes("401")));
    await page.fill("#token", ADMIN);
    await page.click("#login-form button[type=submit]");
    await page.waitForSelector("#board", { state: "visible" });
  });

  await check("stores: the first page and the health counts are the API's", async () => {
    const t0 = Date.now();
    const api = await get("/v1/dashboard/stores?limit=50");
    log(`GET /v1/dashboard/stores with counts over ${STORES} stores: ${Date.now() - t0} ms`);
    await waitRows(page, "stores", api.items[0].store);
    await storesMatch(page, api);
    assert.equal(api.counts.all, STORES);
    const chips = await page.$$eval("#stores-health .chip", (cs) => cs.map((c) => [c.dataset.health, c.innerText]));
    for (const [h, label] of chips) {
      const n = h === "all" ? api.counts.all : api.counts[h];
      assert.ok(label.endsWith(" " + n), `${h}: ${label} vs ${n}`);
    }
    assert.equal(await text(page, "#stores-page"), "stores 1–50 of 2000");
    // The problems are where they were put.
    const all = await get("/v1/stores?limit=1000");
    assert.equal(api.counts.held, 1);
    assert.equal(api.counts.parked, 1);
    assert.equal(api.counts.outbox_over_budget, 1);
    assert.equal(api.counts.stale, 2);
    assert.ok(all.items.find((s) => s.store === id(8)).held === 2);
  });

  await check("stores: paging forward and back over 2,000 stores", async () => {
    const p1 = await get("/v1/dashboard/stores?limit=50");
    const p2 = await get("/v1/dashboard/stores?limit=50&cursor=" + encodeURIComponent(p1.next_cursor));
    const p3 = await get("/v1/dashboard/stores?limit=50&cursor=" + encodeURIComponent(p2.next_cursor));
    await page.click("#stores-next");
    await waitRows(page, "stores", p2.items[0].store);
    await storesMatch(page, p2);
    await page.click("#stores-next");
    await waitRows(page, "stores", p3.items[0].store);
    await storesMatch(page, p3);
    assert.equal(await text(page, "#stores-page"), "stores 101–150 of 2000");
    await page.click("#stores-prev");
    await waitRows(page, "stores", p2.items[0].store);
    await page.click("#stores-prev");
    await waitRows(page, "stores", p1.items[0].store);
    assert.equal(await page.locator("#stores-prev").isDisabled(), true);
  });

  await check("stores: each health filter shows the API's stores", async () => {
    for (const [h, expected] of [["held", [id(8)]], ["parked", [id(9)]], ["outbox_over_budget", [id(7)]], ["stale", [id(10), id(11)]]]) {
      const api = await get(`/v1/dashboard/stores?health=${h}&limit=50`);
      assert.deepEqual(api.items.map((s) => s.store), expected, h);
      await page.click(`#stores-health .chip[data-health=${h}]`);
      await waitRows(page, "stores", expected[0]);
      await storesMatch(page, api);
      const badges = await page.$$eval("#stores tr td:nth-child(3)", (tds) => tds.map((t) => t.innerText));
      assert.ok(badges.every((b) => b.length > 0 && b !== "ok"), h + ": " + badges);
      if (h === "held") await shot(page, "#panel-stores", "stores-held");
    }
    const ok = await get("/v1/dashboard/stores?health=ok&limit=50");
    await page.click("#stores-health .chip[data-health=ok]");
    await waitRows(page, "stores", ok.items[0].store);
    await storesMatch(page, ok);
    assert.equal(ok.counts.ok, STORES - 5);
    assert.equal(await text(page, "#stores-page"), `stores 1–50 of ${STORES - 5}`);
    const okNext = await get("/v1/dashboard/stores?health=ok&limit=50&cursor=" + encodeURIComponent(ok.next_cursor));
    await page.click("#stores-next");
    await waitRows(page, "stores", okNext.items[0].store);
    await storesMatch(page, okNext);
    await page.click("#stores-health .chip[data-health=all]");
  });

  await check("stores: search by id prefix", async () => {
    await page.fill("#stores-prefix", "S19");
    const api = await get("/v1/dashboard/stores?prefix=S19&limit=50");
    assert.equal(api.counts.all, 100);
    await waitRows(page, "stores", "S1900");
    await storesMatch(page, api);
    assert.equal(await text(page, "#stores-page"), "stores 1–50 of 100");
    await page.click("#stores-next");
    await waitRows(page, "stores", "S1950");
    assert.equal(await page.locator("#stores-next").isDisabled(), true);
    await page.fill("#stores-prefix", "S000");
    await waitRows(page, "stores", "S0000");
    await shot(page, "#panel-stores", "stores");
    await page.fill("#stores-prefix", "");
    await waitRows(page, "stores", "S0000");
  });

  await check("alerts: the open alerts are the API's, and filter by kind, severity and store", async () => {
    const api = await get("/v1/dashboard/alerts?open=true&limit=50");
    assert.ok(api.alerts.length >= 5, JSON.stringify(api.alerts.map((a) => a.kind)));
    const compare = async (apiPage) => eventually(async () => {
      const rows = await rowsOf(page, "alerts");
      if (!apiPage.alerts.length) return assert.match(rows[0][0], /no alert/);
      assert.deepEqual(rows.map((r) => [r[1], r[2], r[3], r[4], r[5]]), apiPage.alerts.map((a) => [a.severity, a.kind, a.store || "—", a.sku || "—", a.message]));
    }, "alert rows are the API's");
    await compare(api);
    await page.selectOption("#alerts-severity", "critical");
    const critical = await get("/v1/dashboard/alerts?open=true&severity=critical&limit=50");
    assert.ok(critical.alerts.length >= 1 && critical.alerts.every((a) => a.severity === "critical"));
    await compare(critical);
    await page.selectOption("#alerts-severity", "");
    await page.selectOption("#alerts-kind", "overstock");
    const over = await get("/v1/dashboard/alerts?open=true&kind=overstock&limit=50");
    assert.deepEqual(over.alerts.map((a) => a.store), [id(6)]);
    await compare(over);
    await page.selectOption("#alerts-kind", "");
    await page.fill("#alerts-store", id(3));
    const s3 = await get(`/v1/dashboard/alerts?open=true&store=${id(3)}&limit=50`);
    assert.ok(s3.alerts.length >= 1);
    await compare(s3);
    await page.fill("#alerts-store", "");
    await compare(api);
    await shot(page, "#panel-alerts", "alerts");
  });

  await check("alerts: acknowledge changes the alert", async () => {
    const before = await get("/v1/dashboard/alerts?open=true&limit=50");
    const target = before.alerts.find((a) => !a.acknowledged_at);
    assert.ok(target);
    await page.click(`#alerts tr[data-alert="${target.id}"] button.ack`);
    await page.waitForFunction((aid) => {
      const td = document.querySelector(`#alerts tr[data-alert="${aid}"] .acked`);
      return td && td.innerText.includes("acknowledged by admin");
    }, String(target.id), { timeout: 10000 });
    const after = await get(`/v1/dashboard/alerts?open=true&limit=50`);
    const changed = after.alerts.find((a) => a.id === target.id);
    assert.ok(changed.acknowledged_at, "acknowledged at the hub");
    assert.equal(changed.acknowledged_by, "admin");
  });

  await check("reorders and transfers are the API's", async () => {
    const api = await get("/v1/reorders?limit=200");
    await eventually(async () => {
      const rows = await rowsOf(page, "reorders");
      if (!api.reorders.length) return assert.match(rows[0][0], /nothing/);
      assert.deepEqual(rows.map((r) => [r[0], r[1], r[2], r[3], r[4], r[7]]), api.reorders.map((r) => [r.store, r.sku, String(r.on_hand), String(r.reorder_point), String(r.order_up_to), String(r.suggested_qty)]));
    }, "reorder rows");
    const tr = await get("/v1/transfers/suggestions?limit=200");
    const shown = tr.suggestions.filter((s) => s.transfers.length || s.purchases_after_transfers.some((p) => p.qty > 0));
    await eventually(async () => {
      const rows = await rowsOf(page, "transfers");
      if (!shown.length) return assert.match(rows[0][0], /no transfer/);
      assert.deepEqual(rows.map((r) => r[0]), shown.map((s) => s.sku));
    }, "transfer rows");
    await shot(page, "#panel-reorders", "reorders");
    await shot(page, "#panel-transfers", "transfers");
  });

  await check("chain stock of a sku by store: one bar per store, the total and the table", async () => {
    await page.fill("#sku", "MILK");
    await page.click("#stock-form button[type=submit]");
    await page.waitForFunction(() => location.hash === "#/sku/MILK");
    const api = await get("/v1/products/MILK/stock");
    assert.equal(api.stores.length, STORES);
    await page.waitForFunction((n) => document.querySelectorAll("#stock-chart rect.bar").length === n, STORES, { timeout: 10000 });
    assert.equal(await text(page, "#stock-total"), String(api.total));
    const bars = await page.$$eval("#stock-chart rect.bar", (rs) => rs.map((r) => [r.dataset.store, Number(r.dataset.onHand)]));
    const byStore = new Map(api.stores.map((s) => [s.store, s.on_hand]));
    for (const [s, v] of bars) assert.equal(v, byStore.get(s), s);
    const rows = await rowsOf(page, "stock");
    assert.deepEqual(rows.map((r) => [r[0], r[1]]), api.stores.slice(0, 50).map((s) => [s.store, String(s.on_hand)]));
    await page.click("#stock-next");
    await waitRows(page, "stock", api.stores[50].store);
    assert.equal(await text(page, "#stock-page"), "page 2 of " + Math.ceil(STORES / 50));
    // The bars stand on the zero line: a negative figure hangs below it.
    const zeroOk = await page.$$eval("#stock-chart rect.bar", (rs) => {
      const pos = rs.filter((r) => Number(r.dataset.onHand) > 0).map((r) => Number(r.getAttribute("y")) + Number(r.getAttribute("height")));
      const neg = rs.filter((r) => Number(r.dataset.onHand) < 0).map((r) => Number(r.getAttribute("y")));
      const base = pos[0];
      return pos.every((b) => Math.abs(b - base) < 0.01) && neg.every((t) => Math.abs(t - base) < 0.01);
    });
    assert.ok(zeroOk, "every bar starts at 0");
    await shot(page, "#panel-sku-stock", "sku-stock");
    // A bar links to its store.
    await page.locator(`#stock-chart a[href="#/store/${id(1)}"]`).dispatchEvent("click");
    await page.waitForFunction((s) => location.hash === "#/store/" + s, id(1));
  });

  await check("a store's sync lag and hub outbox depth are the API's buckets", async () => {
    await page.waitForSelector("#view-store", { state: "visible" });
    const api = await get(`/v1/stores/${id(1)}/sync-history?hours=6`);
    assert.equal(api.buckets.length, 36);
    await page.waitForFunction((n) => document.querySelectorAll("#flow-chart rect.bar").length === n, api.buckets.length, { timeout: 10000 });
    const total = api.buckets.reduce((n, b) => n + b.movements, 0);
    assert.ok(total >= 230, "movements in the window: " + total);
    assert.equal(await text(page, "#sync-movements"), String(total));
    assert.equal(await text(page, "#sync-outbox"), String(api.hub_outbox_pending));
    const bars = await page.$$eval("#flow-chart rect.bar", (rs) => rs.map((r) => Number(r.dataset.movements)));
    assert.deepEqual(bars, api.buckets.map((b) => b.movements));
    const lagPoints = await page.$$eval("#lag-chart circle.lag-p50", (cs) => cs.length);
    assert.equal(lagPoints, api.buckets.filter((b) => b.lag_p50_secs !== null).length);
    const worst = Math.max(...api.buckets.map((b) => b.lag_max_secs || 0));
    assert.equal(await text(page, "#sync-worst"), worst.toFixed(2));
    await shot(page, "#panel-sync", "store-sync");
    const s7 = await get(`/v1/stores/${id(7)}/sync-history?hours=1`);
    const unpublished = Number(sql(`SELECT COUNT(*) FROM outbox WHERE store = '${id(7)}' AND published_at IS NULL`).trim());
    assert.ok(unpublished > 101, "S0007's outbox: " + unpublished);
    assert.equal(s7.hub_outbox_pending, unpublished);
    assert.equal(s7.buckets[s7.buckets.length - 1].hub_outbox_depth, unpublished);
  });

  await check("sales history with the forecast, its band and the reorder point: one point per day", async () => {
    const api = await get(`/v1/forecasts/${id(2)}/MILK`);
    await page.evaluate((s) => { location.hash = "#/forecast/" + s + "/MILK"; }, id(2));
    await page.waitForFunction((n) => document.querySelectorAll("#sales-chart .history-points circle").length === n, api.history.length, { timeout: 10000 });
    assert.ok(api.history.length >= 28, "days of history: " + api.history.length);
    const dates = await page.$$eval("#sales-chart .history-points circle", (cs) => cs.map((c) => [c.dataset.date, Number(c.dataset.qty)]));
    assert.deepEqual(dates, api.history.map((d) => [d.date, d.qty]));
    assert.equal(await page.locator("#sales-chart path.band").count(), 1);
    assert.equal(await page.locator("#sales-chart circle.fpoint").count(), api.forecast.length);
    assert.equal(await text(page, "#fc-days"), String(api.history.length));
    assert.ok(api.reorder, "reorder figures");
    assert.equal(await text(page, "#fc-reorder-point"), String(api.reorder.reorder_point));
    assert.equal(await text(page, "#fc-on-hand"), String(api.reorder.on_hand));
    assert.equal(await text(page, "#fc-buy"), String(api.reorder.suggested_qty));
    assert.equal(await page.locator("#position-chart line.reorder-point").count(), 1);
    await shot(page, "#panel-forecast", "forecast");
  });

  await check("every figure links to its store or sku", async () => {
    await page.click("#crumbs a[href='#/']");
    await page.waitForSelector("#view-chain", { state: "visible" });
    await waitRows(page, "stores", "S0000");
    await page.click(`#stores a[href="#/store/${id(1)}"]`);
    await page.waitForFunction((s) => location.hash === "#/store/" + s, id(1));
    await page.goBack();
    await page.waitForSelector("#view-chain", { state: "visible" });
    await page.waitForSelector("#alerts a.sku-link");
    const href = await page.locator("#alerts a.sku-link").first().getAttribute("href");
    assert.match(href, /^#\/(forecast\/[^/]+\/|sku\/)[A-Za-z0-9_-]+$/);
    await page.locator("#alerts a.store-link").first().click();
    await page.waitForFunction(() => location.hash.startsWith("#/store/"));
    await page.goto(HUB + "/#/");
    await waitRows(page, "stores", "S0000");
    await page.screenshot({ path: path.join(OUT, "chain.png"), fullPage: true });
  });

  await check("no console errors", async () => {
    assert.deepEqual(consoleErrors, []);
  });

  await browser.close();
  log(`${passed} passed, ${failed} failed`);
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error("[browser] setup failed:", e);
  console.log(`browser: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
