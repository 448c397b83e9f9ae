//! Issue 9: nothing one message does can stop ingest for the others. Each test feeds the
//! consumer's own `apply_batch` (the transaction ingest runs per batch) on the real
//! MariaDB with what a hostile or broken store sends — validly signed where signing is the
//! point — and proves the other stores' movements are applied, the bad one is parked with
//! its reason, and the store's own later movements flow on.

mod common;

use std::sync::Arc;

use bazaar_hub::ingest::{apply_batch, apply_batch_with, Limits, RawMessage, PARKED_PAYLOAD_KEPT};
use bazaar_hub::plan::Position;
use bazaar_hub::startup::Hub;
use bazaar_shared::{Envelope, Kind, Origin, Reason, SigningKey, Sku, StoreId};
use chrono::{DateTime, Utc};
use sqlx::Row;

struct App {
    hub: Arc<Hub>,
    database: String,
    offset: std::sync::atomic::AtomicI64,
}

async fn spawn_app() -> App {
    let (hub, database) = common::spawn_hub("hostile", |_| {}).await;
    App {
        hub,
        database,
        offset: 0.into(),
    }
}

impl App {
    fn raw(&self, payload: Vec<u8>) -> RawMessage {
        RawMessage {
            position: Position {
                topic: "movements".into(),
                partition: 0,
                offset: self
                    .offset
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            },
            payload,
        }
    }

    fn signed(&self, key: &SigningKey, envelope: &Envelope) -> RawMessage {
        self.raw(envelope.to_signed_bytes(key).expect("a valid envelope"))
    }

    /// Signed exactly as a producer in another language could write it: `occurred_at` as
    /// the text given (valid RFC 3339 that this crate would never print itself).
    fn signed_at(&self, key: &SigningKey, envelope: &Envelope, occurred_at: &str) -> RawMessage {
        let mut value = serde_json::to_value(envelope).unwrap();
        value["occurred_at"] = serde_json::Value::String(occurred_at.into());
        let sig = key.sign(&bazaar_shared::canonical::canonical_bytes(&value).unwrap());
        value["sig"] = serde_json::Value::String(sig);
        self.raw(value.to_string().into_bytes())
    }

    async fn seq(&self, store: &str) -> u64 {
        sqlx::query_scalar("SELECT last_seq FROM store_sync WHERE store = ?")
            .bind(store)
            .fetch_one(&self.hub.pool)
            .await
            .unwrap()
    }

    async fn parked(&self, store: &str) -> Vec<(Option<u64>, String, bool, u64)> {
        sqlx::query(
            "SELECT seq, reason, consumed_seq, payload_len FROM parked_events WHERE store <=> ? ORDER BY id",
        )
        .bind(store)
        .fetch_all(&self.hub.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get("seq"),
                r.get("reason"),
                r.get::<bool, _>("consumed_seq"),
                r.get("payload_len"),
            )
        })
        .collect()
    }

    async fn cleanup(self) {
        common::drop_database(&self.hub, &self.database).await;
    }
}

fn movement(store: &str, seq: u64, kind: Kind, sku: &str, delta: i64) -> Envelope {
    Envelope::movement(
        StoreId::parse(store).unwrap(),
        Origin::Store,
        seq,
        kind,
        Sku::parse(sku).unwrap(),
        delta,
    )
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_time_of_year_minus_one_never_reaches_sql_and_the_chain_goes_on() {
    let app = spawn_app().await;
    let s1 = common::register(&app.hub, "S1").await;
    let s2 = common::register(&app.hub, "S2").await;
    // Valid RFC 3339, year -1 in UTC: sqlx's encoder panicked on it inside the ingest task.
    let poison = movement("S1", 1, Kind::Receipt, "MILK", 5);
    let future = Envelope {
        occurred_at: at("2999-12-31T00:00:00Z"),
        ..movement("S1", 2, Kind::Sale, "MILK", -1)
    };
    let mut batch = vec![
        app.signed_at(&s1.key, &poison, "0000-01-01T00:00:00+00:01"),
        app.signed(&s1.key, &future),
    ];
    batch.extend(
        (1..=5).map(|seq| app.signed(&s2.key, &movement("S2", seq, Kind::Receipt, "BREAD", 2))),
    );
    let outcome = apply_batch(&app.hub.pool, &batch).await.expect("applied");
    assert_eq!((outcome.applied, outcome.parked), (7, 0), "{outcome:?}");
    assert_eq!(
        common::on_hand(&app.hub, "S1", "MILK").await,
        Some(4),
        "a wrong clock keeps its sales"
    );
    assert_eq!(common::on_hand(&app.hub, "S2", "BREAD").await, Some(10));
    let rows = sqlx::query(
        "SELECT seq, occurred_at, received_at, reported_occurred_at FROM movements WHERE store = 'S1' ORDER BY seq",
    )
    .fetch_all(&app.hub.pool)
    .await
    .unwrap();
    for row in &rows {
        let occurred: DateTime<Utc> = row.get("occurred_at");
        let received: DateTime<Utc> = row.get("received_at");
        let reported: Option<String> = row.get("reported_occurred_at");
        assert!(
            (occurred - received).num_seconds().abs() <= 1,
            "recorded at the hub's time"
        );
        assert!(reported.is_some(), "and flagged with what the till said");
    }
    // No sale landed on a day that has not happened.
    let future_days: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM daily_sales WHERE day > CURRENT_DATE + INTERVAL 1 DAY",
    )
    .fetch_one(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(future_days, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn an_id_already_in_the_ledger_is_parked_its_seq_consumed_and_nothing_is_retried_forever() {
    let app = spawn_app().await;
    let s1 = common::register(&app.hub, "S1").await;
    let s2 = common::register(&app.hub, "S2").await;
    let first = movement("S1", 1, Kind::Receipt, "MILK", 5);
    apply_batch(&app.hub.pool, &[app.signed(&s1.key, &first)])
        .await
        .unwrap();
    // seq 2 reuses seq 1's id (UNIQUE movements_id): the batch was retried forever.
    let reused = Envelope {
        id: first.id,
        ..movement("S1", 2, Kind::Receipt, "MILK", 7)
    };
    let after = movement("S1", 3, Kind::Sale, "MILK", -1);
    let other = movement("S2", 1, Kind::Receipt, "MILK", 9);
    let batch = [
        app.signed(&s1.key, &reused),
        app.signed(&s1.key, &after),
        app.signed(&s2.key, &other),
    ];
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        apply_batch(&app.hub.pool, &batch),
    )
    .await
    .expect("not retried forever")
    .expect("applied");
    assert_eq!(outcome.parked, 1, "{outcome:?}");
    assert_eq!(
        app.seq("S1").await,
        3,
        "the seq is consumed by a void; seq 3 flows on"
    );
    assert_eq!(
        common::on_hand(&app.hub, "S1", "MILK").await,
        Some(4),
        "5, the reused 7 not counted, -1"
    );
    assert_eq!(common::on_hand(&app.hub, "S2", "MILK").await, Some(9));
    let parked = app.parked("S1").await;
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].0, parked[0].1.as_str(), parked[0].2),
        (Some(2), "id_reused", true)
    );
    let void: (String, i64, Option<String>) =
        sqlx::query_as("SELECT kind, delta, voids FROM movements WHERE store = 'S1' AND origin = 'store' AND seq = 2")
            .fetch_one(&app.hub.pool)
            .await
            .unwrap();
    assert_eq!(void, ("void".into(), 0, Some(first.id.to_string())));
    // A re-delivery of the same batch changes nothing.
    let again = apply_batch(&app.hub.pool, &batch).await.unwrap();
    assert_eq!(again.applied, 0);
    assert_eq!(common::on_hand(&app.hub, "S1", "MILK").await, Some(4));
    assert_eq!(
        app.parked("S1").await.len(),
        1,
        "parked once per Kafka position"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn on_hand_past_its_bound_is_isolated_and_parked_not_an_error_for_the_batch() {
    let app = spawn_app().await;
    let s1 = common::register(&app.hub, "S1").await;
    let s2 = common::register(&app.hub, "S2").await;
    let max = bazaar_shared::envelope::MAX_QUANTITY;
    let mut batch = vec![app.signed(&s1.key, &movement("S1", 1, Kind::Receipt, "MILK", max))];
    // Past ±1e12 on-hand: the table's CHECK refuses it; the rest of the batch must apply.
    batch.push(app.signed(&s1.key, &movement("S1", 2, Kind::Receipt, "MILK", 1)));
    batch.push(app.signed(&s1.key, &movement("S1", 3, Kind::Receipt, "EGGS", 3)));
    for seq in 1..=40 {
        batch.push(app.signed(&s2.key, &movement("S2", seq, Kind::Receipt, "MILK", 1)));
    }
    let outcome = apply_batch(&app.hub.pool, &batch).await.expect("applied");
    assert_eq!(outcome.parked, 1, "{outcome:?}");
    assert!(outcome.isolations > 0);
    assert_eq!(common::on_hand(&app.hub, "S1", "MILK").await, Some(max));
    assert_eq!(
        common::on_hand(&app.hub, "S1", "EGGS").await,
        Some(3),
        "the store's later movement flows"
    );
    assert_eq!(common::on_hand(&app.hub, "S2", "MILK").await, Some(40));
    assert_eq!(app.seq("S1").await, 3);
    let parked = app.parked("S1").await;
    assert_eq!(
        (parked[0].0, parked[0].1.as_str(), parked[0].2),
        (Some(2), "apply_failed", true)
    );
    app.cleanup().await;
}

#[tokio::test]
async fn junk_is_parked_capped_and_a_store_cannot_make_the_hub_hold_without_bound() {
    let app = spawn_app().await;
    let s1 = common::register(&app.hub, "S1").await;
    let s2 = common::register(&app.hub, "S2").await;
    // Twenty ~900 KB messages: once parked whole in one INSERT past max_allowed_packet.
    let mut batch: Vec<RawMessage> = (0..20)
        .map(|i| app.raw(format!("{{\"junk\":\"{}\"}}", "x".repeat(900_000 + i)).into_bytes()))
        .collect();
    // Far ahead of S1's applied seq: parked, not held.
    batch.push(app.signed(&s1.key, &movement("S1", 500, Kind::Receipt, "MILK", 1)));
    batch.push(app.signed(&s1.key, &movement("S1", 3, Kind::Receipt, "MILK", 1)));
    batch.extend(
        (1..=5).map(|seq| app.signed(&s2.key, &movement("S2", seq, Kind::Receipt, "MILK", 1))),
    );
    let limits = Limits {
        max_held_ahead: 100,
        ..Limits::default()
    };
    let outcome = apply_batch_with(&app.hub.pool, &batch, &limits)
        .await
        .expect("applied");
    assert_eq!(
        outcome.applied, 5,
        "the other store's five movements: {outcome:?}"
    );
    assert_eq!(outcome.held, 1);
    assert_eq!(outcome.parked, 21);
    let junk: Vec<(u64, i64, Option<String>)> = sqlx::query(
        "SELECT payload_len, LENGTH(payload) AS kept, payload_sha256 FROM parked_events WHERE reason = 'malformed'",
    )
    .fetch_all(&app.hub.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("payload_len"), r.get("kept"), r.get("payload_sha256")))
    .collect();
    assert_eq!(junk.len(), 20);
    for (len, kept, sha) in junk {
        assert!(len >= 900_000);
        assert_eq!(kept as usize, PARKED_PAYLOAD_KEPT);
        assert_eq!(sha.map(|s| s.len()), Some(64));
    }
    let s1_parked = app.parked("S1").await;
    assert_eq!(
        (s1_parked[0].0, s1_parked[0].1.as_str(), s1_parked[0].2),
        (Some(500), "too_far_ahead", false)
    );
    // A parked movement raises the store's alert, once.
    let alerts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE kind = 'parked_movement' AND store = 'S1' AND resolved_at IS NULL")
        .fetch_one(&app.hub.pool)
        .await
        .unwrap();
    assert_eq!(alerts, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn one_store_cannot_flood_another_with_transfer_notices() {
    let app = spawn_app().await;
    let s1 = common::register(&app.hub, "S1").await;
    common::register(&app.hub, "S2").await;
    let limits = Limits {
        max_transfer_notices_per_day: 3,
        ..Limits::default()
    };
    let batch: Vec<RawMessage> = (1..=5)
        .map(|seq| {
            let e = Envelope {
                to_store: Some(StoreId::parse("S2").unwrap()),
                ..movement("S1", seq, Kind::TransferOut, "MILK", -1)
            };
            app.signed(&s1.key, &e)
        })
        .collect();
    let outcome = apply_batch_with(&app.hub.pool, &batch, &limits)
        .await
        .unwrap();
    assert_eq!(outcome.applied, 5, "the sender's stock still moves");
    assert_eq!(outcome.transfer_notices_capped, 2);
    let notices: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE store = 'S2' AND kind = 'expected_transfer'",
    )
    .fetch_one(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(notices, 3);
    let alerts: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM alerts WHERE kind = 'transfer_notices_capped' AND store = 'S1'",
    )
    .fetch_one(&app.hub.pool)
    .await
    .unwrap();
    assert_eq!(alerts, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn skus_and_stores_that_differ_only_in_case_stay_apart() {
    let app = spawn_app().await;
    let upper = common::register(&app.hub, "S1").await;
    let lower = common::register(&app.hub, "s1").await;
    let batch = [
        app.signed(&upper.key, &movement("S1", 1, Kind::Receipt, "milk", 5)),
        app.signed(&upper.key, &movement("S1", 2, Kind::Receipt, "MILK", 7)),
        app.signed(&lower.key, &movement("s1", 1, Kind::Receipt, "milk", 11)),
        app.signed(
            &upper.key,
            &Envelope {
                reason: Some(Reason::Damage),
                ..movement("S1", 3, Kind::Adjustment, "Milk", -1)
            },
        ),
    ];
    let outcome = apply_batch(&app.hub.pool, &batch).await.unwrap();
    assert_eq!((outcome.applied, outcome.parked), (4, 0), "{outcome:?}");
    assert_eq!(common::on_hand(&app.hub, "S1", "milk").await, Some(5));
    assert_eq!(common::on_hand(&app.hub, "S1", "MILK").await, Some(7));
    assert_eq!(common::on_hand(&app.hub, "S1", "Milk").await, Some(-1));
    assert_eq!(common::on_hand(&app.hub, "s1", "milk").await, Some(11));
    assert_eq!(app.seq("S1").await, 3);
    assert_eq!(app.seq("s1").await, 1);
    // The read routes, and the seed's, see four figures too.
    for (store, sku, want) in [("S1", "milk", 5), ("S1", "MILK", 7), ("s1", "milk", 11)] {
        let (status, body) = common::call(
            &app.hub,
            "GET",
            &format!("/v1/stores/{store}/stock/{sku}"),
            Some(common::ADMIN),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["on_hand"], want, "{store}/{sku}: {body}");
        let (status, body) = common::call(
            &app.hub,
            "GET",
            &format!("/get-stock/{store}/{sku}"),
            Some(common::ADMIN),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["quantity"], want, "{store}/{sku}: {body}");
    }
    // HQ's count on one case leaves the other alone.
    let (status, body) = common::call(
        &app.hub,
        "POST",
        "/update-stock/S1/MILK?quantity=2",
        Some(common::ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(common::on_hand(&app.hub, "S1", "MILK").await, Some(2));
    assert_eq!(common::on_hand(&app.hub, "S1", "milk").await, Some(5));
    // Thresholds on `milk` are not thresholds on `MILK`, in the table or in the store's
    // thresholds document the agent installs.
    let (status, body) = common::call(
        &app.hub,
        "PUT",
        "/v1/thresholds",
        Some(common::ADMIN),
        Some(serde_json::json!({"store": "S1", "sku": "milk", "reorder_point": 3})),
    )
    .await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, doc) = common::call(
        &app.hub,
        "GET",
        "/v1/stores/S1/thresholds",
        Some(common::ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    let lines = doc["thresholds"].as_array().unwrap();
    let point = |sku: &str| {
        lines
            .iter()
            .find(|l| l["sku"] == sku)
            .map(|l| l["reorder_point"].clone())
    };
    assert_eq!(point("milk"), Some(serde_json::json!(3)), "{doc}");
    assert!(
        matches!(point("MILK"), None | Some(serde_json::Value::Null)),
        "MILK has no reorder point of its own: {doc}"
    );
    app.cleanup().await;
}
