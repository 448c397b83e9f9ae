//! Hub-origin movements, the outbox and the commands range fetch, against the real MariaDB
//! through warp::test (no socket); each test gets a fresh database.

mod common;

use std::sync::Arc;

use bazaar_hub::ingest::{apply_batch, RawMessage};
use bazaar_hub::plan::Position;
use bazaar_hub::startup::Hub;
use bazaar_shared::{CommandBody, Envelope, HubMessage, Kind, Origin, SigningKey, Sku, StoreId};
use serde_json::{json, Value};
use sqlx::Row;

use common::{Registered, ADMIN};

struct App {
    hub: Arc<Hub>,
    database: String,
}

async fn spawn_app() -> App {
    let (hub, database) = common::spawn_hub("bz_hubcmd", |_| {}).await;
    App { hub, database }
}

/// Everything a hub-origin write can change, to prove that a refused one changed nothing.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    movements: i64,
    outbox: i64,
    stock: Vec<(String, String, i64, i64)>,
    counters: Vec<(String, u64)>,
    audit: i64,
    idempotency: i64,
}

impl App {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value, warp::http::HeaderMap) {
        let reply = common::request(&self.hub, method, path, token, headers, body).await;
        (reply.status, reply.json(), reply.headers)
    }

    async fn post(&self, store: &str, body: Value) -> (u16, Value) {
        let (s, b, _) = self
            .call(
                "POST",
                &format!("/v1/stores/{store}/movements"),
                Some(ADMIN),
                &[],
                Some(&body.to_string()),
            )
            .await;
        (s, b)
    }

    async fn register(&self, store: &str) -> Registered {
        common::register(&self.hub, store).await
    }

    async fn footprint(&self) -> Footprint {
        let pool = &self.hub.pool;
        let count = |table: &'static str| async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(pool)
                .await
                .unwrap()
        };
        Footprint {
            movements: count("movements").await,
            outbox: count("outbox").await,
            audit: count("audit_log WHERE action <> 'store.register'").await,
            idempotency: count("hub_idempotency").await,
            stock: sqlx::query_as(
                "SELECT store, sku, on_hand, version FROM stock ORDER BY store, sku",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
            counters: sqlx::query_as("SELECT store, last_hub_seq FROM store_sync ORDER BY store")
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }

    async fn on_hand(&self, store: &str, sku: &str) -> Option<i64> {
        common::on_hand(&self.hub, store, sku).await
    }

    /// The store's outbox, decoded and verified with its key, in hub_seq order.
    async fn outbox(&self, store: &str, key: &SigningKey) -> Vec<(u64, HubMessage)> {
        let rows =
            sqlx::query("SELECT hub_seq, payload FROM outbox WHERE store = ? ORDER BY hub_seq")
                .bind(store)
                .fetch_all(&self.hub.pool)
                .await
                .unwrap();
        rows.into_iter()
            .map(|r| {
                let seq: u64 = r.get("hub_seq");
                let payload: Vec<u8> = r.get("payload");
                let message = HubMessage::decode(&payload).expect("outbox rows decode");
                assert!(message.is_authentic(key), "outbox row {seq} verifies");
                assert_eq!(
                    message.hub_seq(),
                    seq,
                    "the payload carries its row's hub_seq"
                );
                assert_eq!(message.store().as_str(), store);
                (seq, message)
            })
            .collect()
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

fn receipt(qty: i64) -> Value {
    json!({"kind": "receipt", "sku": "MILK", "qty": qty})
}

#[tokio::test]
async fn hub_seq_is_gapless_under_concurrent_writes_of_every_kind() {
    let app = spawn_app().await;
    let a = app.register("A").await;
    let b = app.register("B").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let hub = app.hub.clone();
        tasks.push(tokio::spawn(async move {
            let app = App {
                hub,
                database: String::new(),
            };
            match i % 4 {
                0 => assert_eq!(app.post("A", receipt(1)).await.0, 202),
                1 => assert_eq!(
                    app.post(
                        "A",
                        json!({"kind": "transfer_out", "sku": "MILK", "qty": 1, "to_store": "B"})
                    )
                    .await
                    .0,
                    202
                ),
                2 => {
                    let mut tx = app.hub.pool.begin().await.unwrap();
                    bazaar_hub::outbox::announce_bulk_state(
                        &mut tx,
                        &StoreId::parse("A").unwrap(),
                        "thresholds",
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                }
                _ => assert_eq!(app.post("B", receipt(2)).await.0, 202),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let outbox_a = app.outbox("A", &a.key).await;
    let outbox_b = app.outbox("B", &b.key).await;
    // A: 6 receipts + 6 transfers out + 6 notices. B: 6 receipts + 6 expected transfers.
    assert_eq!(
        outbox_a.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=18).collect::<Vec<_>>()
    );
    assert_eq!(
        outbox_b.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    let footprint = app.footprint().await;
    assert_eq!(
        footprint.counters,
        vec![("A".to_owned(), 18), ("B".to_owned(), 12)]
    );
    // Every hub-origin ledger row has its outbox row with the same id and hub_seq.
    let ledger: Vec<(String, u64, String)> = sqlx::query_as(
        "SELECT store, seq, id FROM movements WHERE origin = 'hub' ORDER BY store, seq",
    )
    .fetch_all(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(ledger.len(), 6 + 6 + 6);
    for (store, seq, id) in &ledger {
        let outbox = if store == "A" { &outbox_a } else { &outbox_b };
        let (_, message) = outbox.iter().find(|(s, _)| s == seq).unwrap();
        let HubMessage::Movement(m) = message else {
            panic!("ledger row {store}/{seq} is announced as a movement")
        };
        assert_eq!(&m.envelope.id.to_string(), id);
        assert_eq!(m.envelope.origin, Origin::Hub);
    }
    let notices = outbox_b
        .iter()
        .filter(|(_, m)| {
            matches!(m, HubMessage::Command(c) if matches!(c.command.body, CommandBody::ExpectedTransfer { .. }))
        })
        .count();
    assert_eq!(notices, 6);
    assert_eq!(app.on_hand("A", "MILK").await, Some(0));
    assert_eq!(app.on_hand("B", "MILK").await, Some(12));
    app.cleanup().await;
}

#[tokio::test]
async fn a_rolled_back_announcement_returns_its_hub_seq() {
    let app = spawn_app().await;
    let s1 = app.register("S1").await;
    let store = StoreId::parse("S1").unwrap();
    let mut tx = app.hub.pool.begin().await.unwrap();
    assert_eq!(
        bazaar_hub::outbox::announce_bulk_state(&mut tx, &store, "thresholds")
            .await
            .unwrap(),
        1
    );
    tx.rollback().await.unwrap();
    assert_eq!(app.footprint().await.outbox, 0);
    let mut tx = app.hub.pool.begin().await.unwrap();
    assert!(
        bazaar_hub::outbox::announce_bulk_state(&mut tx, &store, "weather")
            .await
            .is_err()
    );
    assert!(bazaar_hub::outbox::announce_bulk_state(
        &mut tx,
        &StoreId::parse("NOPE").unwrap(),
        "thresholds"
    )
    .await
    .is_err());
    assert_eq!(
        bazaar_hub::outbox::announce_bulk_state(&mut tx, &store, "catalogue")
            .await
            .unwrap(),
        1
    );
    tx.commit().await.unwrap();
    let outbox = app.outbox("S1", &s1.key).await;
    assert_eq!(outbox.len(), 1);
    let HubMessage::Command(c) = &outbox[0].1 else {
        panic!("a command")
    };
    assert_eq!(c.command.body.type_name(), "bulk_state");
    app.cleanup().await;
}

#[tokio::test]
async fn movements_apply_at_once_with_a_count_taken_against_the_hub_s_on_hand() {
    let app = spawn_app().await;
    let s1 = app.register("S1").await;
    let (status, body) = app.post("S1", receipt(10)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["movement"]["hub_seq"], 1);
    assert_eq!(body["movement"]["delta"], 10);
    assert_eq!(body["movement"]["origin"], "hub");
    assert_eq!(body["stock"]["on_hand"], 10);
    let (status, body) = app
        .post(
            "S1",
            json!({"kind": "adjustment", "sku": "MILK", "qty": -3, "reason": "damage", "ref": "crate 7"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["movement"]["reason"], "damage");
    let (status, body) = app
        .post("S1", json!({"kind": "count", "sku": "MILK", "counted": 4}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["movement"]["delta"], -3,
        "counted 4 against the hub's 7"
    );
    assert_eq!(body["movement"]["counted"], 4);
    assert_eq!(
        body["movement"]["hub_watermark"], 2,
        "the hub's own last hub_seq"
    );
    assert_eq!(app.on_hand("S1", "MILK").await, Some(4));
    let version: i64 = sqlx::query_scalar("SELECT version FROM stock WHERE store = 'S1'")
        .fetch_one(&app.hub.pool)
        .await
        .unwrap();
    assert_eq!(version, 3);
    // The outbox carries the count as its delta, which the agent applies as is.
    let outbox = app.outbox("S1", &s1.key).await;
    let HubMessage::Movement(m) = &outbox[2].1 else {
        panic!("a movement")
    };
    assert_eq!(
        (m.envelope.kind, m.envelope.delta, m.envelope.counted),
        (Kind::Count, -3, Some(4))
    );
    // Audited: who, what, before, after, from where.
    let row = sqlx::query(
        "SELECT actor, action, target, CAST(before_json AS CHAR) AS b, CAST(after_json AS CHAR) AS a
         FROM audit_log WHERE action = 'movement.post' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("actor"), "admin");
    assert_eq!(row.get::<String, _>("target"), "S1/MILK");
    let before: Value = serde_json::from_str(&row.get::<String, _>("b")).unwrap();
    let after: Value = serde_json::from_str(&row.get::<String, _>("a")).unwrap();
    assert_eq!(before["on_hand"], 7);
    assert_eq!(after["stock"]["on_hand"], 4);
    app.cleanup().await;
}

#[tokio::test]
async fn update_stock_sets_on_hand_by_a_hub_origin_count() {
    let app = spawn_app().await;
    let s1 = app.register("S1").await;
    assert_eq!(app.post("S1", receipt(10)).await.0, 202);
    let (status, body, _) = app
        .call(
            "POST",
            "/update-stock/S1/MILK?quantity=25",
            Some(ADMIN),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store_id"], "S1");
    assert_eq!(body["product_id"], "MILK");
    assert_eq!(body["quantity"], 25);
    assert_eq!(body["movement"]["kind"], "count");
    assert_eq!(body["movement"]["delta"], 15);
    assert_eq!(app.on_hand("S1", "MILK").await, Some(25));
    let (status, _, _) = app
        .call(
            "POST",
            "/update-stock/S1/MILK?quantity=0",
            Some(ADMIN),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.on_hand("S1", "MILK").await, Some(0));
    // A new sku is established by its first count.
    let (status, _, _) = app
        .call(
            "POST",
            "/update-stock/S1/EGGS?quantity=6",
            Some(ADMIN),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body, _) = app
        .call("GET", "/get-stock/S1/EGGS", Some(ADMIN), &[], None)
        .await;
    assert_eq!((status, &body["quantity"]), (200, &json!(6)), "{body}");
    let audited: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'stock.update'")
            .fetch_one(&app.hub.pool)
            .await
            .unwrap();
    assert_eq!(audited, 3);

    let before = app.footprint().await;
    let refused = [
        ("/update-stock/S1/MILK?quantity=-1", Some(ADMIN), 422),
        ("/update-stock/S1/MILK?quantity=abc", Some(ADMIN), 422),
        ("/update-stock/S1/MILK?quantity=1.5", Some(ADMIN), 422),
        ("/update-stock/S1/MILK?quantity=", Some(ADMIN), 422),
        ("/update-stock/S1/MILK", Some(ADMIN), 422),
        (
            "/update-stock/S1/MILK?quantity=99999999999999999999",
            Some(ADMIN),
            422,
        ),
        ("/update-stock/S1/MI%20LK?quantity=1", Some(ADMIN), 422),
        ("/update-stock/NOPE/MILK?quantity=1", Some(ADMIN), 404),
        (
            "/update-stock/S1/MILK?quantity=1",
            Some(s1.token.as_str()),
            403,
        ),
        ("/update-stock/S1/MILK?quantity=1", Some("wrong"), 401),
        ("/update-stock/S1/MILK?quantity=1", None, 401),
    ];
    for (path, token, expected) in refused {
        let (status, body, _) = app.call("POST", path, token, &[], None).await;
        assert_eq!(status, expected, "{path}: {body}");
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    assert_eq!(
        app.footprint().await,
        before,
        "refused requests change nothing"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_and_refuses_another_body() {
    let app = spawn_app().await;
    app.register("S1").await;
    let body = receipt(5).to_string();
    let send = |body: String| {
        let app = &app;
        async move {
            app.call(
                "POST",
                "/v1/stores/S1/movements",
                Some(ADMIN),
                &[("idempotency-key", "po-4711")],
                Some(&body),
            )
            .await
        }
    };
    let (status, first, headers) = send(body.clone()).await;
    assert_eq!(status, 202, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, again, headers) = send(body.clone()).await;
    assert_eq!(status, 202);
    assert_eq!(again, first, "a retry returns the original reply");
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    // Key order and whitespace do not make another request.
    let (status, same, _) = send(r#"{ "qty": 5, "sku": "MILK", "kind": "receipt" }"#.into()).await;
    assert_eq!((status, &same), (202, &first));
    let before = app.footprint().await;
    let (status, other, _) = send(receipt(6).to_string()).await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(app.footprint().await, before);
    assert_eq!(app.on_hand("S1", "MILK").await, Some(5));
    assert_eq!(before.movements, 1);
    assert_eq!(before.outbox, 1);
    // The same key at another store is another request.
    app.register("S2").await;
    let (status, _, _) = app
        .call(
            "POST",
            "/v1/stores/S2/movements",
            Some(ADMIN),
            &[("idempotency-key", "po-4711")],
            Some(&body),
        )
        .await;
    assert_eq!(status, 202);
    app.cleanup().await;
}

#[tokio::test]
async fn auth_matrix_and_bad_input_change_nothing() {
    let app = spawn_app().await;
    let s1 = app.register("S1").await;
    let s2 = app.register("S2").await;
    assert_eq!(app.post("S1", receipt(3)).await.0, 202);
    let before = app.footprint().await;
    let good = receipt(1).to_string();
    for (token, expected) in [
        (None, 401),
        (Some("nonsense"), 401),
        (Some(s1.token.as_str()), 403),
        (Some(s2.token.as_str()), 403),
    ] {
        let (status, body, _) = app
            .call("POST", "/v1/stores/S1/movements", token, &[], Some(&good))
            .await;
        assert_eq!(status, expected, "{token:?}: {body}");
    }
    let bad: Vec<(String, u16)> = vec![
        ("not json".into(), 400),
        (json!([1, 2]).to_string(), 400),
        (
            json!({"kind": "receipt", "sku": "MILK", "qty": "5"}).to_string(),
            400,
        ),
        (
            json!({"kind": "receipt", "sku": "MILK", "qty": 1.5}).to_string(),
            400,
        ),
        (
            json!({"kind": "receipt", "sku": "MILK", "qty": 5, "extra": 1}).to_string(),
            400,
        ),
        (
            json!({"kind": "receipt", "sku": "MILK", "qty": 0}).to_string(),
            422,
        ),
        (
            json!({"kind": "sale", "sku": "MILK", "qty": 1}).to_string(),
            422,
        ),
        (
            json!({"kind": "count", "sku": "MILK", "counted": -4}).to_string(),
            422,
        ),
        (
            json!({"kind": "count", "sku": "MILK", "qty": 4}).to_string(),
            422,
        ),
        (
            json!({"kind": "adjustment", "sku": "MILK", "qty": -4}).to_string(),
            422,
        ),
        (
            json!({"kind": "transfer_out", "sku": "MILK", "qty": 1}).to_string(),
            422,
        ),
        (
            json!({"kind": "transfer_out", "sku": "MILK", "qty": 1, "to_store": "GHOST"})
                .to_string(),
            422,
        ),
        (
            json!({"kind": "transfer_out", "sku": "MILK", "qty": 1, "to_store": "S1"}).to_string(),
            422,
        ),
        (
            json!({"kind": "receipt", "sku": "", "qty": 1}).to_string(),
            422,
        ),
        (
            json!({"kind": "receipt", "sku": "MILK", "qty": 1, "ref": "a\nb"}).to_string(),
            422,
        ),
    ];
    for (body, expected) in &bad {
        let (status, reply, _) = app
            .call(
                "POST",
                "/v1/stores/S1/movements",
                Some(ADMIN),
                &[],
                Some(body),
            )
            .await;
        assert_eq!(status, *expected, "{body}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{body}: {reply}");
    }
    for (path, headers, expected) in [
        ("/v1/stores/NOPE/movements", vec![], 404),
        ("/v1/stores/S%201/movements", vec![], 422),
        (
            "/v1/stores/S1/movements",
            vec![("idempotency-key", "")],
            422,
        ),
    ] {
        let (status, reply, _) = app
            .call("POST", path, Some(ADMIN), &headers, Some(&good))
            .await;
        assert_eq!(status, expected, "{path}: {reply}");
    }
    let huge = format!(
        r#"{{"kind":"receipt","sku":"MILK","qty":1,"ref":"{}"}}"#,
        "x".repeat(70_000)
    );
    let (status, _, _) = app
        .call(
            "POST",
            "/v1/stores/S1/movements",
            Some(ADMIN),
            &[],
            Some(&huge),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(app.footprint().await, before, "nothing changed");

    // The range fetch: the store's own token or an admin.
    for (token, expected) in [
        (None, 401),
        (Some(s2.token.as_str()), 403),
        (Some(s1.token.as_str()), 200),
        (Some(ADMIN), 200),
    ] {
        let (status, body, _) = app
            .call("GET", "/v1/stores/S1/commands?after=0", token, &[], None)
            .await;
        assert_eq!(status, expected, "{token:?}: {body}");
    }
    for query in ["after=-1", "after=x", "limit=0", "limit=1001"] {
        let (status, _, _) = app
            .call(
                "GET",
                &format!("/v1/stores/S1/commands?{query}"),
                Some(ADMIN),
                &[],
                None,
            )
            .await;
        assert_eq!(status, 422, "{query}");
    }
    let (status, _, _) = app
        .call("GET", "/v1/stores/NOPE/commands", Some(ADMIN), &[], None)
        .await;
    assert_eq!(status, 404);
    app.cleanup().await;
}

#[tokio::test]
async fn the_range_fetch_returns_signed_payloads_in_order() {
    let app = spawn_app().await;
    let s1 = app.register("S1").await;
    for qty in 1..=5 {
        assert_eq!(app.post("S1", receipt(qty)).await.0, 202);
    }
    let (status, body, _) = app
        .call(
            "GET",
            "/v1/stores/S1/commands?after=1&limit=3",
            Some(s1.token.as_str()),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["last_hub_seq"], 5);
    let commands = body["commands"].as_array().unwrap();
    let seqs: Vec<u64> = commands
        .iter()
        .map(|c| c["hub_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    for (c, qty) in commands.iter().zip(2..) {
        let message = HubMessage::decode(c["payload"].as_str().unwrap().as_bytes()).unwrap();
        assert!(message.is_authentic(&s1.key));
        let HubMessage::Movement(m) = message else {
            panic!("a movement")
        };
        assert_eq!(m.envelope.delta, qty);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn ingest_announces_a_store_origin_transfer_to_the_receiving_store() {
    let app = spawn_app().await;
    let a = app.register("A").await;
    let b = app.register("B").await;
    let store = |s: &str| StoreId::parse(s).unwrap();
    let mut out = Envelope::movement(
        store("A"),
        Origin::Store,
        1,
        Kind::TransferOut,
        Sku::parse("MILK").unwrap(),
        -4,
    );
    out.to_store = Some(store("B"));
    out.reference = Some("van 2".into());
    let mut unknown = Envelope::movement(
        store("A"),
        Origin::Store,
        2,
        Kind::TransferOut,
        Sku::parse("MILK").unwrap(),
        -1,
    );
    unknown.to_store = Some(store("ELSEWHERE"));
    let batch: Vec<RawMessage> = [&out, &unknown]
        .iter()
        .enumerate()
        .map(|(i, e)| RawMessage {
            position: Position {
                topic: "m".into(),
                partition: 0,
                offset: i as i64,
            },
            payload: e.to_signed_bytes(&a.key).unwrap(),
        })
        .collect();
    let outcome = apply_batch(&app.hub.pool, &batch).await.unwrap();
    assert_eq!(outcome.applied, 2);
    // A re-delivery is a duplicate and announces nothing again.
    let again = apply_batch(&app.hub.pool, &batch).await.unwrap();
    assert_eq!(again.duplicates, 2);
    let outbox_b = app.outbox("B", &b.key).await;
    assert_eq!(outbox_b.len(), 1);
    let HubMessage::Command(c) = &outbox_b[0].1 else {
        panic!("a command")
    };
    match &c.command.body {
        CommandBody::ExpectedTransfer {
            transfer_id,
            from_store,
            sku,
            qty,
            reference,
            ..
        } => {
            assert_eq!(*transfer_id, out.id);
            assert_eq!(from_store.as_str(), "A");
            assert_eq!(sku.as_str(), "MILK");
            assert_eq!(*qty, 4);
            assert_eq!(reference.as_deref(), Some("van 2"));
        }
        other => panic!("an expected transfer, not {other:?}"),
    }
    assert!(
        app.outbox("A", &a.key).await.is_empty(),
        "the sender's own movement is not echoed"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn concurrent_retries_under_one_key_apply_once() {
    let app = spawn_app().await;
    app.register("S1").await;
    let hub = app.hub.clone();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let app = App {
                    hub,
                    database: String::new(),
                };
                app.call(
                    "POST",
                    "/v1/stores/S1/movements",
                    Some(ADMIN),
                    &[("idempotency-key", "grn-9")],
                    Some(&receipt(7).to_string()),
                )
                .await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, body, _) = t.await.unwrap();
        assert_eq!(status, 202, "{body}");
        bodies.push(body);
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every retry sees the original"
    );
    let footprint = app.footprint().await;
    assert_eq!((footprint.movements, footprint.outbox), (1, 1));
    assert_eq!(app.on_hand("S1", "MILK").await, Some(7));
    app.cleanup().await;
}

#[tokio::test]
async fn hq_writes_and_ingest_share_one_lock_order() {
    let app = spawn_app().await;
    let a = app.register("A").await;
    let b = app.register("B").await;
    let store = |s: &str| StoreId::parse(s).unwrap();
    // Store-origin traffic from A, half of it transfers to B (which lock B's counter too).
    let batches: Vec<Vec<RawMessage>> = (0..10)
        .map(|batch| {
            (0..10)
                .map(|i| {
                    let seq = batch * 10 + i + 1;
                    let mut e = Envelope::movement(
                        store("A"),
                        Origin::Store,
                        seq,
                        if i % 2 == 0 {
                            Kind::TransferOut
                        } else {
                            Kind::Sale
                        },
                        Sku::parse("MILK").unwrap(),
                        -1,
                    );
                    if i % 2 == 0 {
                        e.to_store = Some(store("B"));
                    }
                    RawMessage {
                        position: Position {
                            topic: "m".into(),
                            partition: 0,
                            offset: seq as i64,
                        },
                        payload: e.to_signed_bytes(&a.key).unwrap(),
                    }
                })
                .collect()
        })
        .collect();
    let pool = app.hub.pool.clone();
    let ingest = tokio::spawn(async move {
        for batch in batches {
            apply_batch(&pool, &batch)
                .await
                .expect("ingest never fails on a lock conflict");
        }
    });
    let mut posts = Vec::new();
    for i in 0..20 {
        let hub = app.hub.clone();
        posts.push(tokio::spawn(async move {
            let app = App {
                hub,
                database: String::new(),
            };
            let (store, body) = if i % 2 == 0 {
                (
                    "B",
                    json!({"kind": "transfer_out", "sku": "MILK", "qty": 1, "to_store": "A"}),
                )
            } else {
                (
                    "A",
                    json!({"kind": "transfer_out", "sku": "MILK", "qty": 1, "to_store": "B"}),
                )
            };
            let (status, reply) = app.post(store, body).await;
            assert_eq!(status, 202, "{reply}");
        }));
    }
    ingest.await.unwrap();
    for p in posts {
        p.await.unwrap();
    }
    // A: 10 hub transfers out + 10 notices from B's transfers. B: 10 hub transfers out,
    // 10 notices from A's hub transfers and 50 from A's store-origin transfers.
    let seqs =
        |outbox: Vec<(u64, HubMessage)>| outbox.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    assert_eq!(
        seqs(app.outbox("A", &a.key).await),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(app.outbox("B", &b.key).await),
        (1..=70).collect::<Vec<_>>()
    );
    // Notices move no stock: the receiving store records transfer_in itself.
    assert_eq!(app.on_hand("A", "MILK").await, Some(-100 - 10));
    assert_eq!(app.on_hand("B", "MILK").await, Some(-10));
    app.cleanup().await;
}

#[tokio::test]
async fn the_relay_serves_stores_in_turn_in_hub_seq_order() {
    let app = spawn_app().await;
    for s in ["A", "B", "C"] {
        app.register(s).await;
    }
    let announce = |store: &'static str, times: usize| {
        let pool = app.hub.pool.clone();
        async move {
            for _ in 0..times {
                let mut tx = pool.begin().await.unwrap();
                bazaar_hub::outbox::announce_bulk_state(
                    &mut tx,
                    &StoreId::parse(store).unwrap(),
                    "thresholds",
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }
    };
    announce("A", 5).await;
    announce("B", 2).await;
    announce("C", 1).await;
    let keys = |rows: Vec<bazaar_hub::outbox::OutboxRow>| {
        rows.into_iter()
            .map(|r| format!("{}{}", r.store, r.hub_seq))
            .collect::<Vec<_>>()
    };
    let pool = &app.hub.pool;
    use bazaar_hub::outbox::unpublished;
    assert_eq!(
        keys(unpublished(pool, None, 3).await.unwrap()),
        ["A1", "A2", "A3"]
    );
    // After a full batch that ended in A's backlog, the others come first.
    assert_eq!(
        keys(unpublished(pool, Some("A"), 4).await.unwrap()),
        ["B1", "B2", "C1", "A1"]
    );
    assert_eq!(
        keys(unpublished(pool, Some("C"), 10).await.unwrap()),
        ["A1", "A2", "A3", "A4", "A5", "B1", "B2", "C1"]
    );
    bazaar_hub::outbox::mark_published(pool, "A", &[1, 2, 3])
        .await
        .unwrap();
    assert_eq!(
        keys(unpublished(pool, Some("B"), 10).await.unwrap()),
        ["C1", "A4", "A5", "B1", "B2"]
    );
    assert_eq!(bazaar_hub::outbox::depth(pool).await.unwrap(), 5);
    app.cleanup().await;
}
