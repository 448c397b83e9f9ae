//! The read API against the real MariaDB through warp::test (no socket): a fresh database
//! and Redis prefix per test. Movements arrive as real signed envelopes through
//! `ingest::apply_batch`, the consumer's own transaction; `/readyz` is checked against a
//! private tansu broker and against a Redis that is not there.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_hub::config::FileConfig;
use bazaar_hub::ingest::{self, RawMessage};
use bazaar_hub::plan::Position;
use bazaar_hub::startup::Hub;
use bazaar_shared::{Envelope, Kind, Origin, SigningKey, Sku, StoreId};
use chrono::{DateTime, Utc};
use common::{config, ADMIN};
use serde_json::{json, Value};

struct App {
    hub: Arc<Hub>,
    database: String,
    keys: HashMap<String, SigningKey>,
    tokens: HashMap<String, String>,
    seqs: HashMap<String, u64>,
    offset: i64,
}

async fn spawn_app_with(tweak: impl FnOnce(&mut FileConfig)) -> App {
    let (hub, database) = common::spawn_hub("bz_reads", tweak).await;
    App {
        hub,
        database,
        keys: HashMap::new(),
        tokens: HashMap::new(),
        seqs: HashMap::new(),
        offset: 0,
    }
}

async fn spawn_app() -> App {
    spawn_app_with(|_| {}).await
}

impl App {
    async fn call(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        common::call(&self.hub, "GET", path, token, None).await
    }

    /// Asserts a JSON error with `status` and returns its message.
    async fn refused(&self, path: &str, token: Option<&str>, status: u16) -> String {
        let (got, body) = self.call(path, token).await;
        assert_eq!(got, status, "GET {path}: {body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {path}: not the JSON error: {body}"))
            .to_owned()
    }

    async fn register(&mut self, store: &str) -> String {
        let registered = common::register(&self.hub, store).await;
        self.keys.insert(store.to_owned(), registered.key);
        self.tokens
            .insert(store.to_owned(), registered.token.clone());
        registered.token
    }

    fn message(&mut self, store: &str, sku: &str, delta: i64) -> RawMessage {
        let seq = self.seqs.entry(store.to_owned()).or_insert(0);
        *seq += 1;
        let kind = if delta < 0 { Kind::Sale } else { Kind::Receipt };
        let envelope = Envelope::movement(
            StoreId::parse(store).expect("store id"),
            Origin::Store,
            *seq,
            kind,
            Sku::parse(sku).expect("sku"),
            delta,
        );
        self.raw(envelope.to_signed_bytes(&self.keys[store]).expect("signed"))
    }

    fn raw(&mut self, payload: Vec<u8>) -> RawMessage {
        self.offset += 1;
        RawMessage {
            position: Position {
                topic: "movements".into(),
                partition: 0,
                offset: self.offset,
            },
            payload,
        }
    }

    async fn apply(&self, batch: &[RawMessage]) -> ingest::BatchOutcome {
        ingest::apply_batch(&self.hub.pool, batch)
            .await
            .expect("batch applied")
    }

    /// Follows `next_cursor` from `first` to the end, returning every item.
    async fn all_pages(&self, first: &str, token: Option<&str>) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut path = first.to_owned();
        let mut pages = 0;
        loop {
            let (status, page) = self.call(&path, token).await;
            assert_eq!(status, 200, "GET {path}: {page}");
            pages += 1;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => path = with_cursor(first, cursor),
                None => return (items, pages),
            }
            assert!(pages < 1000, "pagination does not end");
        }
    }

    /// Asserts that `/metrics` has each of `lines`, exactly.
    async fn metrics_show(&self, lines: &[&str]) {
        let response = warp::test::request()
            .path("/metrics")
            .reply(&bazaar_hub::api::routes(self.hub.clone()))
            .await;
        let text = String::from_utf8_lossy(response.body());
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

fn with_cursor(path: &str, cursor: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}cursor={cursor}")
}

/// Sends every bad query the lists share and checks each is a 422 that changes nothing.
async fn bad_queries_are_refused(app: &App, base: &str) {
    let sep = if base.contains('?') { '&' } else { '?' };
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=",
        "cursor=not-a-cursor",
        // A valid cursor of another route.
        "cursor=eyJyIjoiZWxzZXdoZXJlIiwiayI6WzFdfQ",
        "colour=red",
        "limit=1&limit=2",
    ] {
        let path = format!("{base}{sep}{query}");
        app.refused(&path, Some(ADMIN), 422).await;
    }
}

#[tokio::test]
async fn stores_are_listed_in_pages_with_their_sync_health_for_the_admin_only() {
    let mut app = spawn_app().await;
    for store in ["S5", "S1", "S4", "S2", "S3"] {
        app.register(store).await;
    }
    let batch = vec![app.message("S2", "MILK", 5), app.message("S2", "MILK", -1)];
    app.apply(&batch).await;
    let (stores, pages) = app.all_pages("/v1/stores?limit=2", Some(ADMIN)).await;
    assert_eq!(pages, 3);
    let ids: Vec<&str> = stores
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["S1", "S2", "S3", "S4", "S5"]);
    let s2 = &stores[1];
    assert_eq!(
        (
            s2["last_seq"].as_u64(),
            s2["held"].as_i64(),
            s2["parked"].as_i64()
        ),
        (Some(2), Some(0), Some(0)),
        "{s2}"
    );
    assert!(
        s2["last_applied_at"].is_string() && s2["created_at"].is_string(),
        "{s2}"
    );
    assert!(stores[0]["last_applied_at"].is_null());

    let (status, one) = app.call("/v1/stores", Some(ADMIN)).await;
    assert_eq!(
        (status, one["items"].as_array().map(Vec::len)),
        (200, Some(5))
    );
    assert!(one["next_cursor"].is_null());
    let own = app.tokens["S1"].clone();
    assert!(app
        .refused("/v1/stores", Some(&own), 403)
        .await
        .contains("admin"));
    app.refused("/v1/stores", None, 401).await;
    app.refused("/v1/stores", Some("forged"), 401).await;
    bad_queries_are_refused(&app, "/v1/stores").await;

    // /metrics labels the route by its documented template, never the raw path.
    app.metrics_show(&[
        "bazaar_hub_http_requests_total{route=\"/v1/stores\",method=\"GET\",status=\"200\"} 4",
        "bazaar_hub_http_requests_total{route=\"/v1/stores\",method=\"GET\",status=\"422\"} 9",
        "bazaar_hub_http_requests_total{route=\"/v1/stores\",method=\"GET\",status=\"403\"} 1",
    ])
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_count_tokens_recognised_from_memory_and_looked_up_in_mysql() {
    let mut app = spawn_app().await;
    let own = app.register("S1").await;
    for _ in 0..3 {
        let (status, _) = app.call("/v1/stores/S1/stock", Some(&own)).await;
        assert_eq!(status, 200);
    }
    // An unknown token is remembered as unknown too: one lookup for two refusals.
    app.refused("/v1/stores/S1/stock", Some("forged"), 401)
        .await;
    app.refused("/v1/stores/S1/stock", Some("forged"), 401)
        .await;
    // The admin token never reaches the cache.
    app.call("/v1/stores", Some(ADMIN)).await;
    app.metrics_show(&[
        "bazaar_hub_token_cache_hits_total 3",
        "bazaar_hub_token_cache_misses_total 2",
    ])
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_stores_stock_pages_by_sku_and_only_for_that_store() {
    let mut app = spawn_app().await;
    let own = app.register("S1").await;
    let other = app.register("S2").await;
    let mut batch = Vec::new();
    for i in 0..25 {
        batch.push(app.message("S1", &format!("SKU-{i:02}"), i + 1));
    }
    batch.push(app.message("S2", "ONLY-S2", 3));
    app.apply(&batch).await;

    let (figures, pages) = app
        .all_pages("/v1/stores/S1/stock?limit=10", Some(&own))
        .await;
    assert_eq!(pages, 3);
    let skus: Vec<&str> = figures.iter().map(|f| f["sku"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..25).map(|i| format!("SKU-{i:02}")).collect();
    assert_eq!(skus, expected);
    assert_eq!(figures[3]["on_hand"], 4);
    assert_eq!(figures[3]["version"], 1);
    assert_eq!(figures[3]["store"], "S1");

    assert_eq!(app.call("/v1/stores/S1/stock", Some(ADMIN)).await.0, 200);
    assert_eq!(app.call("/v1/stores/S1/stock", Some(&own)).await.0, 200);
    app.refused("/v1/stores/S1/stock", Some(&other), 403).await;
    app.refused("/v1/stores/S1/stock", None, 401).await;
    app.refused("/v1/stores/NOPE/stock", Some(ADMIN), 404).await;
    app.refused("/v1/stores/bad%20id/stock", Some(ADMIN), 422)
        .await;
    bad_queries_are_refused(&app, "/v1/stores/S1/stock").await;
    // A cursor of the store list is not one of this route.
    let (_, page) = app.call("/v1/stores?limit=1", Some(ADMIN)).await;
    let cursor = page["next_cursor"].as_str().expect("a second page");
    app.refused(
        &format!("/v1/stores/S1/stock?cursor={cursor}"),
        Some(ADMIN),
        422,
    )
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn chain_wide_stock_lists_each_store_and_the_total() {
    let mut app = spawn_app().await;
    let own = app.register("S1").await;
    app.register("S2").await;
    app.register("S3").await;
    let batch = vec![
        app.message("S1", "MILK", 10),
        app.message("S2", "MILK", 4),
        app.message("S2", "MILK", -7),
        app.message("S3", "BREAD", 2),
    ];
    app.apply(&batch).await;
    sqlx::query(
        "INSERT INTO products (sku, name, created_at) VALUES ('NEW-SKU', 'Not moved yet', NOW(6))",
    )
    .execute(&app.hub.pool)
    .await
    .unwrap();

    let (status, milk) = app.call("/v1/products/MILK/stock", Some(ADMIN)).await;
    assert_eq!(status, 200, "{milk}");
    assert_eq!(milk["sku"], "MILK");
    assert_eq!(milk["total"], 7);
    let per_store: Vec<(&str, i64)> = milk["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["store"].as_str().unwrap(), s["on_hand"].as_i64().unwrap()))
        .collect();
    assert_eq!(per_store, [("S1", 10), ("S2", -3)]);

    let (status, fresh) = app.call("/v1/products/NEW-SKU/stock", Some(ADMIN)).await;
    assert_eq!(
        (status, &fresh["total"], &fresh["stores"]),
        (200, &json!(0), &json!([]))
    );
    app.refused("/v1/products/UNKNOWN/stock", Some(ADMIN), 404)
        .await;
    app.refused("/v1/products/bad%20sku/stock", Some(ADMIN), 422)
        .await;
    app.refused("/v1/products/MILK/stock", Some(&own), 403)
        .await;
    app.refused("/v1/products/MILK/stock", None, 401).await;
    app.cleanup().await;
}

fn ledger_key(m: &Value) -> (DateTime<Utc>, String, u8, u64) {
    (
        m["received_at"].as_str().unwrap().parse().unwrap(),
        m["store"].as_str().unwrap().to_owned(),
        if m["origin"] == "store" { 1 } else { 2 },
        m["seq"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn the_ledger_pages_never_skip_or_repeat_while_movements_keep_arriving() {
    let mut app = spawn_app().await;
    for store in ["S1", "S2", "S3"] {
        app.register(store).await;
    }
    // Batches mixing stores: one received_at per batch, so pages break inside ties.
    for round in 0..10 {
        let mut batch = Vec::new();
        for store in ["S3", "S1", "S2"] {
            batch.push(app.message(store, "MILK", 1));
            batch.push(app.message(store, &format!("SKU-{round}"), 2));
        }
        app.apply(&batch).await;
    }
    let existing: BTreeSet<String> = sqlx::query_scalar("SELECT id FROM movements")
        .fetch_all(&app.hub.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(existing.len(), 60);

    // Page through while new batches land between (and, from a second task, during)
    // the page reads.
    let writer = {
        let mut batches = Vec::new();
        for _ in 0..15 {
            batches.push(vec![
                app.message("S2", "MILK", 1),
                app.message("S1", "EGGS", 1),
            ]);
        }
        let pool = app.hub.pool.clone();
        tokio::spawn(async move {
            for batch in batches {
                ingest::apply_batch(&pool, &batch).await.expect("applied");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut path = "/v1/movements?limit=7".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = app.call(&path, Some(ADMIN)).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        pages += 1;
        if pages < 5 {
            let batch = vec![app.message("S3", "MILK", 1)];
            app.apply(&batch).await;
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/movements?limit=7&cursor={cursor}"),
            None => break,
        }
    }
    writer.await.unwrap();
    let ids: Vec<&str> = seen.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a movement was served twice");
    let missing: Vec<&String> = existing
        .iter()
        .filter(|id| !unique.contains(id.as_str()))
        .collect();
    assert!(missing.is_empty(), "skipped {missing:?}");
    let keys: Vec<_> = seen.iter().map(ledger_key).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "not in ledger order");
    assert!(pages >= 9, "{pages} pages");

    // Everything applied is there at the end; filters narrow it.
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM movements")
        .fetch_one(&app.hub.pool)
        .await
        .unwrap();
    let (all, _) = app.all_pages("/v1/movements?limit=1000", Some(ADMIN)).await;
    assert_eq!(all.len() as i64, total);
    let (s1_milk, _) = app
        .all_pages("/v1/movements?store=S1&sku=MILK&limit=3", Some(ADMIN))
        .await;
    assert_eq!(s1_milk.len(), 10);
    assert!(s1_milk
        .iter()
        .all(|m| m["store"] == "S1" && m["sku"] == "MILK"));
    let middle = all[all.len() / 2]["received_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (recent, _) = app
        .all_pages(
            &format!("/v1/movements?since={}&limit=5", middle.replace('+', "%2B")),
            Some(ADMIN),
        )
        .await;
    let from: DateTime<Utc> = middle.parse().unwrap();
    assert!(recent.iter().all(|m| ledger_key(m).0 >= from));
    assert_eq!(
        recent.len(),
        all.iter().filter(|m| ledger_key(m).0 >= from).count()
    );
    let first = &all[0];
    assert!(
        first["delta"].is_i64() && first["kind"].is_string() && first["occurred_at"].is_string(),
        "{first}"
    );

    bad_queries_are_refused(&app, "/v1/movements").await;
    app.refused("/v1/movements?since=yesterday", Some(ADMIN), 422)
        .await;
    app.refused("/v1/movements?store=bad%20id", Some(ADMIN), 422)
        .await;
    app.refused("/v1/movements?sku=bad%20sku", Some(ADMIN), 422)
        .await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_store_token_reads_its_own_ledger_only() {
    let mut app = spawn_app().await;
    let own = app.register("S1").await;
    app.register("S2").await;
    let batch = vec![
        app.message("S1", "MILK", 3),
        app.message("S2", "MILK", 4),
        app.message("S1", "MILK", -1),
    ];
    app.apply(&batch).await;
    let (mine, _) = app.all_pages("/v1/movements", Some(&own)).await;
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|m| m["store"] == "S1"));
    let (explicit, _) = app.all_pages("/v1/movements?store=S1", Some(&own)).await;
    assert_eq!(explicit.len(), 2);
    app.refused("/v1/movements?store=S2", Some(&own), 403).await;
    app.refused("/v1/movements", None, 401).await;
    let (everything, _) = app.all_pages("/v1/movements", Some(ADMIN)).await;
    assert_eq!(everything.len(), 3);

    // The seed's recent movements: newest first, bounded, a store's token its own.
    let (status, recent) = app.call("/audit-logs?limit=2", Some(ADMIN)).await;
    assert_eq!(status, 200, "{recent}");
    let recent = recent.as_array().expect("a list");
    assert_eq!(recent.len(), 2);
    assert!(
        ledger_key(&recent[0]) > ledger_key(&recent[1]),
        "newest first"
    );
    let (_, default) = app.call("/audit-logs", Some(ADMIN)).await;
    assert_eq!(default.as_array().map(Vec::len), Some(3));
    let (_, own_recent) = app.call("/audit-logs", Some(&own)).await;
    assert!(own_recent
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["store"] == "S1"));
    assert_eq!(own_recent.as_array().unwrap().len(), 2);
    for bad in ["0", "1001", "-3", "many", ""] {
        app.refused(&format!("/audit-logs?limit={bad}"), Some(ADMIN), 422)
            .await;
    }
    app.refused("/audit-logs?store=S2", Some(ADMIN), 422).await;
    app.refused("/audit-logs", None, 401).await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_audit_trail_filters_and_pages_newest_first() {
    let mut app = spawn_app().await;
    let own = app.register("S1").await;
    app.register("S2").await;
    let pool = app.hub.pool.clone();
    let before_threshold = Utc::now();
    for i in 0..4 {
        bazaar_hub::audit::record(
            &pool,
            "ops@example",
            "threshold.set",
            &format!("S1/SKU-{i}"),
            Some(json!({"reorder_point": i})),
            Some(json!({"reorder_point": i + 1})),
            Some("10.1.2.3:4000".parse().unwrap()),
        )
        .await;
    }
    let (entries, pages) = app.all_pages("/v1/audit?limit=2", Some(ADMIN)).await;
    assert_eq!((entries.len(), pages), (6, 3));
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let newest = &entries[0];
    assert_eq!(newest["action"], "threshold.set");
    assert_eq!(newest["target"], "S1/SKU-3");
    assert_eq!(newest["before"], json!({"reorder_point": 3}));
    assert_eq!(newest["after"], json!({"reorder_point": 4}));
    assert_eq!(newest["from"], "10.1.2.3");

    let (registered, _) = app
        .all_pages("/v1/audit?action=store.register", Some(ADMIN))
        .await;
    let targets: Vec<&str> = registered
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["S2", "S1"]);
    let (by_actor, _) = app
        .all_pages("/v1/audit?actor=ops%40example&limit=3", Some(ADMIN))
        .await;
    assert_eq!(by_actor.len(), 4);
    let since = before_threshold.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (recent, _) = app
        .all_pages(&format!("/v1/audit?since={since}"), Some(ADMIN))
        .await;
    assert_eq!(recent.len(), 4, "{since}");

    app.refused("/v1/audit", Some(&own), 403).await;
    app.refused("/v1/audit", None, 401).await;
    bad_queries_are_refused(&app, "/v1/audit").await;
    app.refused("/v1/audit?since=2026-13-01", Some(ADMIN), 422)
        .await;
    app.cleanup().await;
}

#[tokio::test]
async fn parked_events_are_visible_to_the_admin_and_to_their_own_store() {
    let mut app = spawn_app().await;
    let own = app.register("S1").await;
    let other = app.register("S2").await;
    // Signed with S2's key but claiming S1: parked, and it belongs to S1.
    let mut forged = app.message("S1", "MILK", 1);
    let envelope = Envelope::movement(
        StoreId::parse("S1").unwrap(),
        Origin::Store,
        1,
        Kind::Receipt,
        Sku::parse("MILK").unwrap(),
        1,
    );
    forged.payload = envelope.to_signed_bytes(&app.keys["S2"]).unwrap();
    let garbage = app.raw(vec![0xff, 0xfe, b'{']);
    let outcome = app.apply(&[forged, garbage]).await;
    assert_eq!(outcome.parked, 2);

    let (all, _) = app.all_pages("/v1/parked?limit=1", Some(ADMIN)).await;
    assert_eq!(all.len(), 2);
    assert!(
        all[0]["id"].as_i64() < all[1]["id"].as_i64(),
        "oldest first"
    );
    let forged = all
        .iter()
        .find(|p| p["store"] == "S1")
        .expect("the forged one");
    assert_eq!(forged["seq"], 1);
    assert!(forged["payload"].as_str().unwrap().contains("\"MILK\""));
    assert!(forged["payload_base64"].is_null());
    assert_eq!(
        (&forged["topic"], &forged["partition"]),
        (&json!("movements"), &json!(0))
    );
    let garbage = all
        .iter()
        .find(|p| p["store"].is_null())
        .expect("the malformed one");
    assert_eq!(garbage["payload_base64"], "//57");

    let (mine, _) = app.all_pages("/v1/parked", Some(&own)).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["store"], "S1");
    let (theirs, _) = app.all_pages("/v1/parked", Some(&other)).await;
    assert!(theirs.is_empty());
    app.refused("/v1/parked?store=S1", Some(&other), 403).await;
    app.refused("/v1/parked", None, 401).await;
    let (filtered, _) = app.all_pages("/v1/parked?store=S1", Some(ADMIN)).await;
    assert_eq!(filtered.len(), 1);
    bad_queries_are_refused(&app, "/v1/parked").await;
    app.cleanup().await;
}

// --- readiness ------------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private tansu broker (sqlite storage in a temporary directory), killed on drop.
struct Broker {
    port: u16,
    child: Child,
    _dir: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let binary = std::env::var("TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
                let installed = PathBuf::from(home).join(".cargo/bin/tansu");
                if installed.exists() {
                    installed
                } else {
                    "tansu".into()
                }
            });
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("bz-reads-broker-{port}"));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (scripts/stack up installs tansu, or set TANSU): {e}",
                    binary.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not open port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            port,
            child,
            _dir: dir,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

#[tokio::test]
async fn readyz_is_ready_when_every_dependency_answers() {
    let broker = Broker::start();
    let prefix = format!("bzr{}.", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let app = spawn_app_with(|f| {
        f.kafka_brokers = Some(broker.address());
        f.topic_prefix = Some(prefix.clone());
    })
    .await;
    let topic = format!("{prefix}movements");
    // Created the way `serve` creates it; the broker may need a moment after start.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = bazaar_shared::kafka::ensure_topics(&broker.address(), &[&topic], 3, 1).await
    {
        assert!(Instant::now() < deadline, "cannot create {topic}: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let (status, body) = app.call("/readyz", Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    // A hub that does not run ingest (this one is built without `serve`) has no ingest
    // check, and is not degraded for it.
    assert!(body["checks"].get("ingest").is_none(), "{body}");
    for check in ["mysql", "redis", "kafka"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
        assert!(body["checks"][check]["error"].is_null(), "{body}");
    }
    assert_eq!(body["checks"]["mysql"]["required"], true);
    assert!(
        body["checks"].get("mysql_replica").is_none(),
        "no replica configured"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Anyone else gets the status alone: no token, a store's token, a wrong one.
    let mut app = app;
    let store = app.register("S1").await;
    for token in [None, Some(store.as_str()), Some("not-a-token")] {
        let (status, body) = app.call("/readyz", token).await;
        assert_eq!(
            (status, &body),
            (200, &json!({"status": "ready"})),
            "{token:?}"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn readyz_names_what_failed_and_what_to_do() {
    let dead_redis = free_port();
    let dead_broker = free_port();
    let app = spawn_app_with(|f| {
        f.redis_url = Some(format!("redis://127.0.0.1:{dead_redis}"));
        f.kafka_brokers = Some(format!("127.0.0.1:{dead_broker}"));
    })
    .await;
    // The open view says degraded and nothing about hosts or settings.
    let (status, body) = app.call("/readyz", None).await;
    assert_eq!((status, &body), (200, &json!({"status": "degraded"})));
    let started = Instant::now();
    let (status, body) = app.call("/readyz", Some(ADMIN)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "every check is bounded"
    );
    // The hub serves without Redis and Kafka: degraded, not out of the balancer.
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("degraded")),
        "{body}"
    );
    assert_eq!(body["checks"]["mysql"]["ok"], true, "{body}");
    let redis = &body["checks"]["redis"];
    assert_eq!(
        (&redis["ok"], &redis["required"]),
        (&json!(false), &json!(false)),
        "{body}"
    );
    assert!(
        redis["error"]
            .as_str()
            .unwrap()
            .contains(&dead_redis.to_string()),
        "{body}"
    );
    assert!(
        redis["fix"]
            .as_str()
            .unwrap()
            .contains("BAZAAR_HUB_REDIS_URL"),
        "{body}"
    );
    let kafka = &body["checks"]["kafka"];
    assert_eq!(kafka["ok"], false, "{body}");
    assert!(
        kafka["fix"]
            .as_str()
            .unwrap()
            .contains("BAZAAR_HUB_KAFKA_BROKERS"),
        "{body}"
    );
    // Reads still work meanwhile.
    assert_eq!(app.call("/v1/stores", Some(ADMIN)).await.0, 200);

    // Without the primary the hub is not ready; the open view says so with the 503.
    let database = app.database.clone();
    app.hub.pool.close().await;
    let (status, body) = app.call("/readyz", None).await;
    assert_eq!((status, &body), (503, &json!({"status": "not_ready"})));
    let (status, body) = app.call("/readyz", Some(ADMIN)).await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("not_ready")),
        "{body}"
    );
    let mysql = &body["checks"]["mysql"];
    assert_eq!(mysql["ok"], false);
    assert!(
        mysql["fix"]
            .as_str()
            .unwrap()
            .contains("BAZAAR_HUB_MYSQL_URL"),
        "{body}"
    );
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/mysql")
        .await
        .unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE `{database}`"))
        .execute(&admin)
        .await;
}

/// `GET path` over a real socket, the body as text.
async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    http_get_with(address, path, None).await
}

/// `GET path` over a real socket with a bearer `token`, the whole response as text.
async fn http_get_with(address: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: hub\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

#[tokio::test]
async fn metrics_show_ingest_lag_per_partition_from_a_running_consumer() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let broker = Broker::start();
    let name = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let database = format!("bz_reads_{name}");
    let prefix = format!("bzlag{name}.");
    let topic = format!("{prefix}movements");
    let config = config(&database, |f| {
        f.kafka_brokers = Some(broker.address());
        f.topic_prefix = Some(prefix.clone());
        f.kafka_group = Some(format!("bz-lag-{name}"));
    });
    // The schema and the store first, so the consumer applies rather than parks.
    let pool = bazaar_hub::db::migrate(config.mysql_url.expose())
        .await
        .expect("migrated");
    let store = StoreId::parse("S1").unwrap();
    let credentials = bazaar_hub::stores::register(&pool, &store, None)
        .await
        .expect("registered");
    let key = SigningKey::from_base64(&credentials.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = bazaar_shared::kafka::ensure_topics(&broker.address(), &[&topic], 3, 1).await
    {
        assert!(Instant::now() < deadline, "cannot create {topic}: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(bazaar_hub::startup::run(config, listener, async move {
        let _ = stopped.await;
    }));

    let producer: FutureProducer = bazaar_shared::kafka::base_config(&broker.address())
        .set("enable.idempotence", "true")
        .create()
        .expect("a producer");
    for seq in 1..=5 {
        let envelope = Envelope::movement(
            store.clone(),
            Origin::Store,
            seq,
            Kind::Receipt,
            Sku::parse("MILK").unwrap(),
            2,
        );
        let payload = envelope.to_signed_bytes(&key).unwrap();
        producer
            .send(
                FutureRecord::to(&topic).key("S1").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }

    // librdkafka reports every second; once the five are applied, the partition they
    // went to shows high watermark 5 and no lag.
    let deadline = Instant::now() + Duration::from_secs(90);
    let metrics = loop {
        let text = http_get(address, "/metrics").await;
        let caught_up = text.contains("bazaar_hub_movements_applied_total 5\n")
            && text
                .lines()
                .any(|l| l.starts_with("bazaar_hub_ingest_high_watermark{") && l.ends_with("} 5"))
            && text
                .lines()
                .filter(|l| l.starts_with("bazaar_hub_ingest_lag_messages{"))
                .all(|l| l.ends_with("} 0"));
        if caught_up {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "ingest lag never caught up:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let lag_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("bazaar_hub_ingest_lag_messages{"))
        .collect();
    assert_eq!(
        lag_lines.len(),
        3,
        "one line per assigned partition: {lag_lines:?}"
    );
    assert!(
        lag_lines
            .iter()
            .all(|l| l.contains(&format!("topic=\"{topic}\""))),
        "{lag_lines:?}"
    );
    assert!(metrics.contains("# TYPE bazaar_hub_ingest_lag_age_seconds gauge"));
    // The hub that runs ingest reports it in /readyz: running, its last batch, no lag.
    let ready = http_get_with(address, "/readyz", Some(ADMIN)).await;
    let (_, body) = ready.split_once("\r\n\r\n").expect("a response");
    let body: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    let ingest = &body["checks"]["ingest"];
    assert_eq!(
        (&ingest["ok"], &ingest["required"]),
        (&json!(true), &json!(false)),
        "{body}"
    );
    let detail = ingest["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("running; last batch") && detail.ends_with("0 messages behind"),
        "{body}"
    );
    assert_eq!(body["status"], "ready", "{body}");

    let _ = stop.send(());
    hub.await.unwrap().expect("the hub stops cleanly");
    let _ = sqlx::query(&format!("DROP DATABASE `{database}`"))
        .execute(&pool)
        .await;
}

#[tokio::test]
async fn readyz_shows_ingest_down_in_a_hub_that_runs_it_without_a_broker() {
    let name = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let database = format!("bz_reads_{name}");
    let config = config(&database, |f| {
        f.kafka_brokers = Some(format!("127.0.0.1:{}", free_port()));
        f.topic_prefix = Some(format!("bzingest{name}."));
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("its address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(bazaar_hub::startup::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let text = http_get_with(address, "/readyz", Some(ADMIN)).await;
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            let body: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
            if body["checks"].get("ingest").is_some() {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "no ingest check: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ingest = &body["checks"]["ingest"];
    assert_eq!(
        (&ingest["ok"], &ingest["required"]),
        (&json!(false), &json!(false)),
        "{body}"
    );
    assert!(
        ingest["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not running"),
        "{body}"
    );
    assert!(
        ingest["fix"]
            .as_str()
            .unwrap()
            .contains("BAZAAR_HUB_KAFKA_BROKERS"),
        "{body}"
    );
    assert_eq!(body["status"], "degraded", "{body}");
    let open = http_get_with(address, "/readyz", None).await;
    assert!(open.starts_with("HTTP/1.1 200"), "{open}");
    assert!(open.ends_with(r#"{"status":"degraded"}"#), "{open}");
    let _ = stop.send(());
    hub.await
        .expect("the hub task")
        .expect("the hub stops cleanly");
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/mysql")
        .await
        .expect("MariaDB");
    let _ = sqlx::query(&format!("DROP DATABASE `{database}`"))
        .execute(&admin)
        .await;
}
