//! Thresholds, alerts, the forecast job and its endpoints, against the real MariaDB and
//! Redis through warp::test (no socket). Each test gets a fresh database and Redis prefix.
//! Movements go through `ingest::apply_batch` followed by the alerting hook, the two steps
//! the consumer loop takes after each batch.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bazaar_hub::config::HubConfig;
use bazaar_hub::ingest::{self, RawMessage};
use bazaar_hub::lease::{Attempt, Lease};
use bazaar_hub::plan::Position;
use bazaar_hub::startup::{build, Hub};
use bazaar_shared::{Envelope, Kind, Origin, SigningKey, Sku, StoreId};
use chrono::{Days, Utc};
use common::{call, ADMIN};
use serde_json::{json, Value};

struct App {
    hub: Arc<Hub>,
    database: String,
    keys: std::collections::HashMap<String, (String, SigningKey)>,
    seqs: std::collections::HashMap<String, u64>,
    offset: i64,
}

fn config(database: &str, push: bool) -> HubConfig {
    common::config(database, |f| f.push_thresholds = Some(push))
}

async fn spawn_app_with(push: bool) -> App {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,bazaar_hub=info")
        .with_test_writer()
        .try_init();
    let (hub, database) = common::spawn_hub("bz_intel", |f| f.push_thresholds = Some(push)).await;
    App {
        hub,
        database,
        keys: Default::default(),
        seqs: Default::default(),
        offset: 0,
    }
}

async fn spawn_app() -> App {
    spawn_app_with(false).await
}

impl App {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.hub, method, path, token, body).await
    }

    async fn register(&mut self, store: &str) -> String {
        let registered = common::register(&self.hub, store).await;
        self.keys
            .insert(store.into(), (registered.token.clone(), registered.key));
        registered.token
    }

    async fn product(&self, sku: &str, lead_time_days: i32, pack_size: i32) {
        sqlx::query(
            "INSERT INTO products (sku, lead_time_days, pack_size, created_at) VALUES (?, ?, ?, NOW(6))",
        )
        .bind(sku)
        .bind(lead_time_days)
        .bind(pack_size)
        .execute(&self.hub.pool)
        .await
        .unwrap();
    }

    /// One movement from `store`'s agent, through ingest and the alerting hook.
    async fn movement(&mut self, store: &str, kind: Kind, sku: &str, delta: i64) -> RawMessage {
        let seq = self.seqs.entry(store.into()).or_insert(0);
        *seq += 1;
        let envelope = Envelope::movement(
            StoreId::parse(store).unwrap(),
            Origin::Store,
            *seq,
            kind,
            Sku::parse(sku).unwrap(),
            delta,
        );
        self.offset += 1;
        let raw = RawMessage {
            position: Position {
                topic: "t".into(),
                partition: 0,
                offset: self.offset,
            },
            payload: envelope.to_signed_bytes(&self.keys[store].1).unwrap(),
        };
        self.ingest(std::slice::from_ref(&raw)).await;
        raw
    }

    async fn ingest(&self, batch: &[RawMessage]) {
        let outcome = ingest::apply_batch(&self.hub.pool, batch).await.unwrap();
        self.hub.alerting.after_change(&outcome.touched).await;
    }

    async fn on_hand(&self, store: &str, sku: &str) -> i64 {
        common::on_hand(&self.hub, store, sku)
            .await
            .unwrap_or_else(|| panic!("no stock row for ({store}, {sku})"))
    }

    /// (kind, open?) of every alert of (store, sku), oldest first.
    async fn alerts(&self, store: &str, sku: &str) -> Vec<(String, bool)> {
        sqlx::query_as::<_, (String, bool)>(
            "SELECT kind, resolved_at IS NULL FROM alerts WHERE store = ? AND sku = ? ORDER BY id",
        )
        .bind(store)
        .bind(sku)
        .fetch_all(&self.hub.pool)
        .await
        .unwrap()
    }

    async fn open_kinds(&self, store: &str, sku: &str) -> BTreeSet<String> {
        self.alerts(store, sku)
            .await
            .into_iter()
            .filter(|a| a.1)
            .map(|a| a.0)
            .collect()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.hub.pool)
            .await
            .unwrap()
    }

    /// Constant daily sales for the `days` days up to yesterday.
    async fn daily_sales(&self, store: &str, sku: &str, per_day: i64, days: u64) {
        let yesterday = Utc::now().date_naive() - Days::new(1);
        for back in 0..days {
            sqlx::query("INSERT INTO daily_sales (store, sku, day, qty) VALUES (?, ?, ?, ?)")
                .bind(store)
                .bind(sku)
                .bind(yesterday - Days::new(back))
                .bind(per_day)
                .execute(&self.hub.pool)
                .await
                .unwrap();
        }
    }

    async fn stock(&self, store: &str, sku: &str, on_hand: i64) {
        sqlx::query(
            "INSERT INTO stock (store, sku, on_hand, version, updated_at) VALUES (?, ?, ?, 1, NOW(6))
             ON DUPLICATE KEY UPDATE on_hand = VALUES(on_hand), version = version + 1",
        )
        .bind(store)
        .bind(sku)
        .bind(on_hand)
        .execute(&self.hub.pool)
        .await
        .unwrap();
    }

    /// Starts a run and waits for it to finish; returns the run.
    async fn forecast_run(&self) -> Value {
        let (status, started) = self
            .call("POST", "/v1/forecasts/run", Some(ADMIN), None)
            .await;
        assert_eq!(status, 202, "{started}");
        wait_for_run(&self.hub, started["id"].as_str().unwrap()).await
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

async fn wait_for_run(hub: &Arc<Hub>, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, run) = call(
            hub,
            "GET",
            &format!("/v1/forecasts/runs/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
        assert_eq!(status, 200, "{run}");
        if run["status"] != "running" {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} still running: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

#[tokio::test]
async fn thresholds_resolve_by_precedence_are_versioned_announced_and_audited() {
    let mut app = spawn_app().await;
    let s1 = app.register("S1").await;
    let s2 = app.register("S2").await;
    app.product("MILK", 7, 1).await;
    app.stock("S1", "MILK", 20).await;
    app.stock("S1", "BREAD", 20).await;
    app.stock("S2", "MILK", 20).await;

    let put = |body: Value| app.call("PUT", "/v1/thresholds", Some(ADMIN), Some(body));
    assert_eq!(
        put(json!({"store": "S1", "reorder_point": 5, "max_stock": 100}))
            .await
            .0,
        200
    );
    let (_, doc_before) = app
        .call("GET", "/v1/stores/S1/thresholds", Some(&s1), None)
        .await;
    assert_eq!(
        put(json!({"sku": "MILK", "reorder_point": 10})).await.0,
        200
    );
    let (status, body) = put(json!({"store": "S1", "sku": "MILK", "max_stock": 50})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["scope"].as_str(), body["announced_to"].as_i64()),
        (Some("store_sku"), Some(1))
    );

    // Field by field: the reorder point from the chain-wide row, the maximum from the pair.
    let (status, got) = app
        .call("GET", "/v1/thresholds?store=S1&sku=MILK", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{got}");
    let e = &got["effective"];
    assert_eq!(
        (
            e["reorder_point"].as_i64(),
            e["reorder_point_source"].as_str()
        ),
        (Some(10), Some("sku"))
    );
    assert_eq!(
        (e["max_stock"].as_i64(), e["max_stock_source"].as_str()),
        (Some(50), Some("store_sku"))
    );
    assert_eq!(got["thresholds"].as_array().unwrap().len(), 3, "{got}");

    // The stores' documents: the same resolution, a version that moved with each change.
    let (status, doc) = app
        .call("GET", "/v1/stores/S1/thresholds", Some(&s1), None)
        .await;
    assert_eq!(status, 200, "{doc}");
    let line = |doc: &Value, sku: &str| {
        doc["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["sku"] == sku)
            .map(|l| (l["reorder_point"].as_i64(), l["max_stock"].as_i64()))
    };
    assert_eq!(line(&doc, "MILK"), Some((Some(10), Some(50))));
    assert_eq!(line(&doc, "BREAD"), Some((Some(5), Some(100))));
    assert_eq!(
        doc["default"],
        json!({"reorder_point": 5, "max_stock": 100})
    );
    assert!(
        doc["version"].as_u64().unwrap() > doc_before["version"].as_u64().unwrap(),
        "{doc_before} → {doc}"
    );
    let (_, doc2) = app
        .call("GET", "/v1/stores/S2/thresholds", Some(&s2), None)
        .await;
    assert_eq!(line(&doc2, "MILK"), Some((Some(10), None)));
    // Version = hub_seq of the last thresholds notice, so an agent holding that notice can
    // tell the document is current.
    let last_notice: u64 = sqlx::query_scalar(
        "SELECT MAX(hub_seq) FROM outbox WHERE store = 'S1' AND kind = 'bulk_state'",
    )
    .fetch_one(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(doc["version"].as_u64(), Some(last_notice));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE store = 'S1'")
            .await,
        3,
        "store, chain-wide and pair changes each told S1"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE store = 'S2'")
            .await,
        1,
        "only the chain-wide change told S2"
    );

    // Removing the pair's row: its maximum falls back to the store-wide one.
    let (status, body) = app
        .call(
            "DELETE",
            "/v1/thresholds?store=S1&sku=MILK",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["before"]["max_stock"].as_i64(), Some(50));
    let (_, doc) = app
        .call("GET", "/v1/stores/S1/thresholds", Some(&s1), None)
        .await;
    assert_eq!(line(&doc, "MILK"), Some((Some(10), Some(100))));

    // Every change audited with before and after, and who.
    let audited: Vec<(String, String, Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT action, target, CAST(before_json AS CHAR), CAST(after_json AS CHAR), actor FROM audit_log WHERE action LIKE 'thresholds.%' ORDER BY id",
    )
    .fetch_all(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), 4, "{audited:?}");
    assert_eq!(
        (audited[2].0.as_str(), audited[2].1.as_str()),
        ("thresholds.put", "S1/MILK")
    );
    assert_eq!(audited[1].1, "*/MILK");
    let after: Value = serde_json::from_str(audited[2].3.as_deref().unwrap()).unwrap();
    assert!(audited[2].2.is_none(), "the pair had no row before");
    assert_eq!(
        (after["max_stock"].as_i64(), after["reorder_point"].as_i64()),
        (Some(50), None)
    );
    assert_eq!(audited[3].0, "thresholds.delete");
    assert!(audited[3].2.is_some() && audited[3].3.is_none());
    assert!(audited.iter().all(|a| a.4 == "admin"));

    // Bad input changes nothing.
    let rows = app.count("SELECT COUNT(*) FROM thresholds").await;
    let notices = app.count("SELECT COUNT(*) FROM outbox").await;
    for (body, expected) in [
        (
            json!({"store": "S1", "sku": "MILK", "reorder_point": 60, "max_stock": 50}),
            422,
        ),
        (json!({"store": "S1", "reorder_point": -1}), 422),
        (json!({"reorder_point": 3}), 422),
        (json!({"store": "S1", "sku": "MILK"}), 422),
        (json!({"store": "bad id", "reorder_point": 3}), 422),
        (json!({"store": "NOPE", "reorder_point": 3}), 404),
        (json!({"sku": "UNKNOWN", "reorder_point": 3}), 404),
        (
            json!({"store": "S1", "reorder_point": 3, "colour": "red"}),
            400,
        ),
    ] {
        let (status, err) = put(body.clone()).await;
        assert_eq!(status, expected, "{body} → {err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    assert_eq!(
        app.call(
            "DELETE",
            "/v1/thresholds?store=S2&sku=MILK",
            Some(ADMIN),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        app.call(
            "PUT",
            "/v1/thresholds",
            Some(&s1),
            Some(json!({"store": "S1", "reorder_point": 1}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        app.call("GET", "/v1/stores/S2/thresholds", Some(&s1), None)
            .await
            .0,
        403
    );
    assert_eq!(
        app.call("GET", "/v1/thresholds?store=S2", Some(&s1), None)
            .await
            .0,
        403
    );
    assert_eq!(
        app.call("GET", "/v1/stores/NOPE/thresholds", Some(ADMIN), None)
            .await
            .0,
        404
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM thresholds").await, rows);
    assert_eq!(app.count("SELECT COUNT(*) FROM outbox").await, notices);
    app.cleanup().await;
}

#[tokio::test]
async fn stock_alerts_are_raised_once_and_resolved_when_the_condition_clears() {
    let mut app = spawn_app().await;
    let s1 = app.register("S1").await;
    let s2 = app.register("S2").await;
    app.product("MILK", 7, 1).await;
    let (status, _) = app
        .call(
            "PUT",
            "/v1/thresholds",
            Some(ADMIN),
            Some(json!({"store": "S1", "sku": "MILK", "reorder_point": 5, "max_stock": 50})),
        )
        .await;
    assert_eq!(status, 200);

    app.movement("S1", Kind::Receipt, "MILK", 10).await;
    app.movement("S1", Kind::Sale, "MILK", -4).await;
    assert!(
        app.alerts("S1", "MILK").await.is_empty(),
        "6 is above the reorder point"
    );
    let crossing = app.movement("S1", Kind::Sale, "MILK", -1).await;
    assert_eq!(app.on_hand("S1", "MILK").await, 5);
    assert_eq!(
        app.alerts("S1", "MILK").await,
        [("low_stock".to_owned(), true)]
    );
    app.movement("S1", Kind::Sale, "MILK", -1).await;
    app.ingest(&[crossing]).await; // a re-delivered batch
    assert_eq!(
        app.alerts("S1", "MILK").await,
        [("low_stock".to_owned(), true)],
        "raised once"
    );

    app.movement("S1", Kind::Receipt, "MILK", 20).await;
    assert_eq!(
        app.alerts("S1", "MILK").await,
        [("low_stock".to_owned(), false)],
        "a receipt resolves it"
    );

    app.movement("S1", Kind::Sale, "MILK", -30).await; // 24 → -6
    assert_eq!(
        app.open_kinds("S1", "MILK").await,
        ["negative_stock".to_owned()].into()
    );
    app.movement("S1", Kind::Receipt, "MILK", 6).await; // → 0
    assert_eq!(
        app.open_kinds("S1", "MILK").await,
        ["out_of_stock".to_owned()].into()
    );
    // A receipt entered at the hub (a hub-origin movement) is judged the same way.
    let (status, body) = app
        .call(
            "POST",
            "/v1/stores/S1/movements",
            Some(ADMIN),
            Some(json!({"kind": "receipt", "sku": "MILK", "qty": 51})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.on_hand("S1", "MILK").await, 51, "→ 51 > 50");
    assert_eq!(
        app.open_kinds("S1", "MILK").await,
        ["overstock".to_owned()].into()
    );
    // Raising the maximum through the API re-evaluates at once.
    let (status, _) = app
        .call(
            "PUT",
            "/v1/thresholds",
            Some(ADMIN),
            Some(json!({"store": "S1", "sku": "MILK", "reorder_point": 5, "max_stock": 60})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(app.open_kinds("S1", "MILK").await.is_empty());

    // Every transition has its event for the alerts topic, in order.
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.event, a.kind FROM alert_events e JOIN alerts a ON a.id = e.alert_id ORDER BY e.id",
    )
    .fetch_all(&app.hub.pool)
    .await
    .unwrap();
    let expected: Vec<(String, String)> = [
        ("raised", "low_stock"),
        ("resolved", "low_stock"),
        ("raised", "negative_stock"),
        ("resolved", "negative_stock"),
        ("raised", "out_of_stock"),
        ("resolved", "out_of_stock"),
        ("raised", "overstock"),
        ("resolved", "overstock"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(events, expected);
    let body: String =
        sqlx::query_scalar("SELECT CAST(body AS CHAR) FROM alert_events ORDER BY id LIMIT 1")
            .fetch_one(&app.hub.pool)
            .await
            .unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            body["event"].as_str(),
            body["alert"]["kind"].as_str(),
            body["alert"]["store"].as_str()
        ),
        (Some("raised"), Some("low_stock"), Some("S1"))
    );
    assert_eq!(body["alert"]["detail"]["on_hand"].as_i64(), Some(5));

    // The API: the store sees its own, newest first, paged; others are refused.
    let (status, page) = app.call("GET", "/v1/alerts?limit=2", Some(&s1), None).await;
    assert_eq!(status, 200, "{page}");
    let alerts = page["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["kind"], "overstock");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = app
        .call(
            "GET",
            &format!("/v1/alerts?limit=2&cursor={cursor}"),
            Some(&s1),
            None,
        )
        .await;
    assert_eq!(next["alerts"][0]["kind"], "negative_stock", "{next}");
    let (_, lows) = app
        .call(
            "GET",
            "/v1/alerts?store=S1&kind=low_stock&open=false",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(lows["alerts"].as_array().unwrap().len(), 1, "{lows}");
    assert_eq!(
        app.call("GET", "/v1/alerts?store=S1", Some(&s2), None)
            .await
            .0,
        403
    );
    assert_eq!(
        app.call("GET", "/v1/alerts?kind=nonsense", Some(ADMIN), None)
            .await
            .0,
        422
    );
    assert_eq!(
        app.call("GET", "/v1/alerts?cursor=zzz", Some(ADMIN), None)
            .await
            .0,
        422
    );

    // Acknowledgement: once, audited; by the store itself or an admin only.
    let id = alerts[0]["id"].as_i64().unwrap();
    assert_eq!(
        app.call("POST", &format!("/v1/alerts/{id}/ack"), Some(&s2), None)
            .await
            .0,
        403
    );
    let (status, acked) = app
        .call("POST", &format!("/v1/alerts/{id}/ack"), Some(&s1), None)
        .await;
    assert_eq!(
        (status, acked["acknowledged_by"].as_str()),
        (200, Some("store:S1")),
        "{acked}"
    );
    let (status, again) = app
        .call("POST", &format!("/v1/alerts/{id}/ack"), Some(ADMIN), None)
        .await;
    assert_eq!(
        (status, again["acknowledged_by"].as_str()),
        (200, Some("store:S1"))
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'alert.ack'")
            .await,
        1
    );
    assert_eq!(
        app.call("POST", "/v1/alerts/abc/ack", Some(ADMIN), None)
            .await
            .0,
        422
    );
    assert_eq!(
        app.call("POST", "/v1/alerts/999999/ack", Some(ADMIN), None)
            .await
            .0,
        404
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_silent_store_goes_stale_and_recovers() {
    let mut app = spawn_app().await;
    app.register("S1").await;
    app.register("S2").await;
    sqlx::query("UPDATE stores SET created_at = NOW(6) - INTERVAL 2 HOUR, last_seen_at = NOW(6) - INTERVAL 1 HOUR WHERE id = 'S1'")
        .execute(&app.hub.pool)
        .await
        .unwrap();
    let t = app.hub.alerting.check_stale(Utc::now()).await.unwrap();
    assert_eq!(
        t.raised.len(),
        1,
        "S1 is silent past the 30-minute bound; S2 was just registered"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM alerts WHERE kind = 'stale_store' AND store = 'S1' AND resolved_at IS NULL").await, 1);
    assert!(
        app.hub
            .alerting
            .check_stale(Utc::now())
            .await
            .unwrap()
            .raised
            .is_empty(),
        "one open alert"
    );
    app.movement("S1", Kind::Receipt, "MILK", 1).await;
    let t = app.hub.alerting.check_stale(Utc::now()).await.unwrap();
    assert_eq!((t.raised.len(), t.resolved.len()), (0, 1));
    app.cleanup().await;
}

#[tokio::test]
async fn a_forecast_run_writes_forecasts_reorders_and_pushed_thresholds() {
    let mut app = spawn_app_with(true).await;
    let s1 = app.register("S1").await;
    app.product("MILK", 4, 6).await;
    app.daily_sales("S1", "MILK", 10, 56).await;
    app.stock("S1", "MILK", 30).await;
    let (_, before) = app
        .call("GET", "/v1/stores/S1/thresholds", Some(&s1), None)
        .await;

    let run = app.forecast_run().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        (run["series_total"].as_i64(), run["series_done"].as_i64()),
        (Some(1), Some(1))
    );

    // Constant demand of 10 a day has no forecast error (σ = 0), so by hand, with a lead
    // time of 4 days, a review period of 7 and packs of 6:
    //   reorder point = 10·4 + z·0 = 40; order-up-to = 10·(4 + 7) = 110;
    //   order = ⌈(110 − 30) / 6⌉·6 = 84; derived maximum = 110 + one pack = 116.
    let (status, view) = app
        .call("GET", "/v1/forecasts/S1/MILK", Some(&s1), None)
        .await;
    assert_eq!(status, 200, "{view}");
    let days = view["forecast"].as_array().unwrap();
    assert_eq!(days.len(), 28);
    assert_eq!(
        days[0]["date"].as_str().unwrap(),
        Utc::now().date_naive().to_string()
    );
    assert!(
        days.iter().all(|d| close(d["mean"].as_f64().unwrap(), 10.0)
            && close(d["lo"].as_f64().unwrap(), 10.0)
            && close(d["hi"].as_f64().unwrap(), 10.0)),
        "{view}"
    );
    assert_eq!(view["history"].as_array().unwrap().len(), 56);
    assert!(
        view["model"].is_string() && view["backtest"]["rmsse"].is_number(),
        "{view}"
    );
    let r = &view["reorder"];
    assert_eq!(
        (
            r["reorder_point"].as_i64(),
            r["order_up_to"].as_i64(),
            r["suggested_qty"].as_u64(),
            r["on_hand"].as_i64()
        ),
        (Some(40), Some(110), Some(84), Some(30)),
        "{r}"
    );
    assert!(close(r["demand_over_lead_time"].as_f64().unwrap(), 40.0));

    // On hand 30 ≤ 40: due for ordering.
    let (_, reorders) = app.call("GET", "/v1/reorders", Some(&s1), None).await;
    assert_eq!(
        reorders["reorders"].as_array().unwrap().len(),
        1,
        "{reorders}"
    );
    assert_eq!(reorders["reorders"][0]["suggested_qty"].as_u64(), Some(84));

    // Pushed: the forecast-derived figures are the store's thresholds now, announced, and
    // the hub's own alerts use them.
    let (_, doc) = app
        .call("GET", "/v1/stores/S1/thresholds", Some(&s1), None)
        .await;
    assert_eq!(
        doc["thresholds"],
        json!([{"sku": "MILK", "reorder_point": 40, "max_stock": 116}]),
        "{doc}"
    );
    assert!(doc["version"].as_u64() > before["version"].as_u64());
    assert_eq!(
        app.open_kinds("S1", "MILK").await,
        ["low_stock".to_owned()].into()
    );
    let (_, eff) = app
        .call("GET", "/v1/thresholds?store=S1&sku=MILK", Some(ADMIN), None)
        .await;
    assert_eq!(
        eff["effective"]["reorder_point_source"], "forecast",
        "{eff}"
    );

    // A second run with nothing new changes no threshold, so tells no store again.
    let notices = app
        .count("SELECT COUNT(*) FROM outbox WHERE store = 'S1'")
        .await;
    assert_eq!(app.forecast_run().await["status"], "succeeded");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox WHERE store = 'S1'")
            .await,
        notices
    );

    // Demand anomaly: today's forecast is 10 with no spread (slack = the 2-unit minimum), so
    // 12 sold today is within bounds and 13 is not.
    app.movement("S1", Kind::Sale, "MILK", -12).await;
    assert!(!app
        .open_kinds("S1", "MILK")
        .await
        .contains("demand_anomaly"));
    app.movement("S1", Kind::Sale, "MILK", -1).await;
    assert_eq!(
        app.open_kinds("S1", "MILK").await,
        ["demand_anomaly".to_owned(), "low_stock".to_owned()].into()
    );

    assert_eq!(
        app.call("GET", "/v1/forecasts/S1/BREAD", Some(ADMIN), None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.call("GET", "/v1/forecasts/NOPE/MILK", Some(ADMIN), None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.call("GET", "/v1/forecasts/S1/bad%20sku", Some(ADMIN), None)
            .await
            .0,
        422
    );
    assert_eq!(
        app.call("GET", "/v1/forecasts/runs/not-a-uuid", Some(ADMIN), None)
            .await
            .0,
        422
    );
    assert_eq!(
        app.call(
            "GET",
            &format!("/v1/forecasts/runs/{}", uuid::Uuid::now_v7()),
            Some(ADMIN),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        app.call("POST", "/v1/forecasts/run", Some(&s1), None)
            .await
            .0,
        403
    );
    let metrics = warp::test::request()
        .path("/metrics")
        .reply(&bazaar_hub::api::routes(app.hub.clone()))
        .await;
    let metrics = String::from_utf8_lossy(metrics.body()).to_string();
    assert!(
        metrics.contains("bazaar_hub_forecast_series_done 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bazaar_hub_forecast_runs_succeeded_total 2"),
        "{metrics}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn only_one_hub_runs_the_forecast_job_at_a_time() {
    let mut app = spawn_app().await;
    app.register("S1").await;
    for sku in ["A", "B", "C", "D"] {
        app.daily_sales("S1", sku, 3, 120).await;
    }
    let other = build(config(&app.database, false)).await.unwrap();

    // Another hub holds the lease: neither of these may start.
    let intruder = Lease::new(
        app.hub.redis.clone(),
        bazaar_hub::forecast_job::LEASE_NAME,
        "another-hub",
        Duration::from_secs(30),
    );
    assert_eq!(intruder.try_acquire().await, Attempt::Held);
    for hub in [&app.hub, &other] {
        let (status, body) = call(hub, "POST", "/v1/forecasts/run", Some(ADMIN), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
    }
    intruder.release().await;

    // Both at once: whatever the timing, two runs never overlap.
    let (a, b) = tokio::join!(
        call(&app.hub, "POST", "/v1/forecasts/run", Some(ADMIN), None),
        call(&other, "POST", "/v1/forecasts/run", Some(ADMIN), None)
    );
    let started: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|r| r.0 == 202)
        .map(|r| &r.1)
        .collect();
    assert!(!started.is_empty(), "{a:?} {b:?}");
    assert!(
        [a.0, b.0].iter().all(|s| *s == 202 || *s == 409),
        "{a:?} {b:?}"
    );
    for run in &started {
        let done = wait_for_run(&app.hub, run["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let runs: Vec<(chrono::DateTime<Utc>, chrono::DateTime<Utc>)> =
        sqlx::query_as("SELECT started_at, finished_at FROM forecast_runs ORDER BY started_at")
            .fetch_all(&app.hub.pool)
            .await
            .unwrap();
    assert_eq!(runs.len(), started.len());
    for pair in runs.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "runs overlapped: {runs:?}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn surplus_moves_to_the_store_that_will_run_out() {
    let mut app = spawn_app().await;
    app.register("S1").await;
    app.register("S2").await;
    app.product("MILK", 4, 6).await;
    for store in ["S1", "S2"] {
        app.daily_sales(store, "MILK", 10, 56).await;
    }
    app.stock("S1", "MILK", 300).await; // order-up-to 110: 190 surplus
    app.stock("S2", "MILK", 5).await; // needs 40 over the lead time
    assert_eq!(app.forecast_run().await["status"], "succeeded");

    let (status, body) = app
        .call(
            "GET",
            "/v1/transfers/suggestions?sku=MILK",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // S2 asks up to its order-up-to level: 110 − 5 = 105; S1 can give 190.
    assert_eq!(
        body["suggestions"],
        json!([{"sku": "MILK",
                "transfers": [{"from": "S1", "to": "S2", "quantity": 105}],
                "purchases_after_transfers": [{"store": "S1", "qty": 0}, {"store": "S2", "qty": 0}]}]),
        "{body}"
    );
    let (_, all) = app
        .call("GET", "/v1/transfers/suggestions", Some(ADMIN), None)
        .await;
    assert_eq!(all["suggestions"], body["suggestions"]);

    let (status, chain) = app
        .call("GET", "/v1/products/MILK/forecast", Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{chain}");
    assert_eq!(chain["stores"].as_u64(), Some(2));
    assert!(
        chain["forecast"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| close(d["mean"].as_f64().unwrap(), 20.0)),
        "{chain}"
    );
    let r = &chain["reorder"];
    assert_eq!(
        (
            r["on_hand"].as_i64(),
            r["reorder_point"].as_i64(),
            r["order_up_to"].as_i64(),
            r["purchase_after_transfers"].as_u64()
        ),
        (Some(305), Some(80), Some(220), Some(0)),
        "{r}"
    );
    assert_eq!(
        app.call("GET", "/v1/products/NOPE/forecast", Some(ADMIN), None)
            .await
            .0,
        404
    );
    assert_eq!(
        app.call(
            "GET",
            "/v1/transfers/suggestions?sku=NOPE",
            Some(ADMIN),
            None
        )
        .await
        .0,
        404
    );
    app.cleanup().await;
}

/// A full ingest batch (2000 movements, 2000 keys) is judged in a handful of queries per
/// 500 keys: every key crossing its reorder point raises one alert; judging the same keys
/// again writes nothing. Prints the timings (`--nocapture`) next to the batch's own.
#[tokio::test]
async fn a_full_batch_is_judged_in_bulk() {
    let mut app = spawn_app().await;
    app.register("S1").await;
    let (status, _) = app
        .call(
            "PUT",
            "/v1/thresholds",
            Some(ADMIN),
            Some(json!({"store": "S1", "reorder_point": 5})),
        )
        .await;
    assert_eq!(status, 200);
    let key = app.keys["S1"].1.clone();
    let batch: Vec<RawMessage> = (1..=ingest::MAX_BATCH as u64)
        .map(|seq| {
            let envelope = Envelope::movement(
                StoreId::parse("S1").unwrap(),
                Origin::Store,
                seq,
                Kind::Receipt,
                Sku::parse(format!("SKU-{seq}")).unwrap(),
                3,
            );
            RawMessage {
                position: Position {
                    topic: "t".into(),
                    partition: 0,
                    offset: seq as i64,
                },
                payload: envelope.to_signed_bytes(&key).unwrap(),
            }
        })
        .collect();
    let started = std::time::Instant::now();
    let outcome = ingest::apply_batch(&app.hub.pool, &batch).await.unwrap();
    let applied = started.elapsed();
    let started = std::time::Instant::now();
    let first = app
        .hub
        .alerting
        .evaluate_keys(&outcome.touched)
        .await
        .unwrap();
    let judged = started.elapsed();
    let started = std::time::Instant::now();
    let again = app
        .hub
        .alerting
        .evaluate_keys(&outcome.touched)
        .await
        .unwrap();
    let rejudged = started.elapsed();
    eprintln!(
        "batch of {}: apply {applied:?}; alerts: first evaluation {judged:?} ({} raised), steady state {rejudged:?}",
        batch.len(),
        first.raised.len()
    );
    assert_eq!(first.raised.len(), ingest::MAX_BATCH, "3 ≤ 5 everywhere");
    assert!(again.raised.is_empty() && again.resolved.is_empty());
    assert_eq!(
        app.count("SELECT COUNT(*) FROM alerts WHERE kind = 'low_stock' AND resolved_at IS NULL")
            .await,
        ingest::MAX_BATCH as i64
    );
    app.cleanup().await;
}

/// Throughput of the forecast job on 512 series × 364 days (two pages), run on demand:
/// `cargo nextest run -p bazaar-hub --test intelligence forecast_job_throughput --run-ignored only --no-capture`.
#[tokio::test]
#[ignore = "a measurement, not a check: run it on demand"]
async fn forecast_job_throughput() {
    let mut app = spawn_app().await;
    app.register("S1").await;
    let yesterday = Utc::now().date_naive() - Days::new(1);
    let series = 2 * bazaar_hub::forecast_job::PAGE;
    for s in 0..series {
        // Weekly pattern plus a per-series level, and some zero days.
        let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "INSERT INTO daily_sales (store, sku, day, qty) ",
        );
        q.push_values(
            (0..364u64).filter(|d| (d + s as u64) % 11 != 0),
            |mut b, d| {
                b.push_bind("S1")
                    .push_bind(format!("SKU-{s:04}"))
                    .push_bind(yesterday - Days::new(d))
                    .push_bind((s as u64 % 7 + 1 + d % 7) as i64);
            },
        );
        q.build().execute(&app.hub.pool).await.unwrap();
    }
    let started = std::time::Instant::now();
    let run = app.forecast_run().await;
    let elapsed = started.elapsed();
    eprintln!(
        "forecast run: {series} series × 364 days in {elapsed:?} ({:.1} series/s)",
        series as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["series_done"].as_u64(), Some(series as u64));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM forecasts").await,
        series as i64
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_lease_has_one_holder_renews_and_is_released_only_by_it() {
    let app = spawn_app().await;
    let link = app.hub.redis.clone();
    let a = Lease::new(link.clone(), "test", "hub-a", Duration::from_millis(900));
    let b = Lease::new(link.clone(), "test", "hub-b", Duration::from_millis(900));
    assert_eq!(a.try_acquire().await, Attempt::Held);
    assert_eq!(
        a.try_acquire().await,
        Attempt::Held,
        "its holder takes it again"
    );
    assert_eq!(b.try_acquire().await, Attempt::Taken);
    assert_eq!(b.renew().await, Attempt::Taken, "only the holder renews");
    b.release().await;
    assert_eq!(
        b.try_acquire().await,
        Attempt::Taken,
        "only the holder releases"
    );
    a.release().await;
    assert_eq!(b.try_acquire().await, Attempt::Held);
    b.release().await;

    // Held in the background: renewed past its TTL, and reported lost once another holder
    // has it.
    let held = a.hold().await.ok().expect("free");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!held.is_lost());
    assert_eq!(
        b.try_acquire().await,
        Attempt::Taken,
        "renewed past its TTL"
    );
    let mut c = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}:lease:test", app.database);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("someone-else")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut lost = held.lost();
    tokio::time::timeout(Duration::from_secs(3), lost.wait_for(|l| *l))
        .await
        .expect("the holder notices within a renewal period")
        .unwrap();
    held.release().await;
    let left: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        left.as_deref(),
        Some("someone-else"),
        "a lost lease is not deleted"
    );
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    app.cleanup().await;
}

/// A batch spanning many stores, with skus and stores that differ only in case, is judged
/// key by key: every threshold level (store and sku, chain-wide sku, store-wide) reaches
/// the key it names and no other, in one evaluation of the whole batch.
#[tokio::test]
async fn a_batch_across_stores_is_judged_key_by_key_with_exact_identifiers() {
    let mut app = spawn_app().await;
    const STORES: usize = 300;
    let mut stores = Vec::new();
    for i in 0..STORES {
        // `Ab7` and `ab7`: two stores.
        let store = if i % 2 == 0 {
            format!("Ab{i}")
        } else {
            format!("ab{}", i - 1)
        };
        app.register(&store).await;
        stores.push(store);
    }
    app.product("milk", 1, 1).await;
    app.product("MILK", 1, 1).await;
    // Chain-wide on `milk` only; store-wide on the upper-case stores; exact on one key.
    for (scope, level) in [
        (json!({"sku": "milk", "reorder_point": 5}), 5),
        (
            json!({"store": "Ab0", "sku": "MILK", "reorder_point": 20}),
            20,
        ),
    ] {
        let (status, body) = app
            .call("PUT", "/v1/thresholds", Some(ADMIN), Some(scope))
            .await;
        assert_eq!(status, 200, "{body} (level {level})");
    }
    for store in stores.iter().filter(|s| s.starts_with('A')) {
        let (status, body) = app
            .call(
                "PUT",
                "/v1/thresholds",
                Some(ADMIN),
                Some(json!({"store": store, "reorder_point": 2})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // One batch, not applied one by one (`App::movement` ingests at once).
    let mut batch = Vec::new();
    for store in &stores {
        for (seq, sku, delta) in [(1, "milk", 3), (2, "MILK", 9)] {
            let envelope = Envelope::movement(
                StoreId::parse(store).unwrap(),
                Origin::Store,
                seq,
                Kind::Receipt,
                Sku::parse(sku).unwrap(),
                delta,
            );
            batch.push(RawMessage {
                position: Position {
                    topic: "t".into(),
                    partition: 0,
                    offset: batch.len() as i64,
                },
                payload: envelope.to_signed_bytes(&app.keys[store].1).unwrap(),
            });
        }
    }
    let outcome = ingest::apply_batch(&app.hub.pool, &batch).await.unwrap();
    assert_eq!(outcome.applied, 2 * STORES);
    let judged = app
        .hub
        .alerting
        .evaluate_keys(&outcome.touched)
        .await
        .unwrap();
    // milk: 3 ≤ 5 (chain-wide sku beats store-wide 2) everywhere; MILK: only Ab0's exact 20.
    assert_eq!(judged.raised.len(), STORES + 1, "{judged:?}");
    for store in &stores {
        assert_eq!(app.on_hand(store, "milk").await, 3);
        assert_eq!(app.on_hand(store, "MILK").await, 9);
        let expected_milk: BTreeSet<String> = ["low_stock".to_owned()].into();
        assert_eq!(
            app.open_kinds(store, "milk").await,
            expected_milk,
            "{store}/milk"
        );
        let expected_upper: BTreeSet<String> = if store == "Ab0" {
            ["low_stock".to_owned()].into()
        } else {
            BTreeSet::new()
        };
        assert_eq!(
            app.open_kinds(store, "MILK").await,
            expected_upper,
            "{store}/MILK"
        );
    }
    app.cleanup().await;
}
