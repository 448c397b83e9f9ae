//! Alerts leave the hub on `{prefix}alerts` (DESIGN §5, §8): a sale at a store's agent that
//! takes a sku to its reorder point raises `low_stock` at the hub, published once with key
//! = store; a receipt resolves it, published after the raise. Real broker, hub and agent.

use std::time::Duration;

use bazaar_e2e::*;
use bazaar_shared::Topics;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{json, Value};

/// Reads the alerts topic until `until` holds for what was read, or fails after a minute.
async fn read_events(
    consumer: &StreamConsumer,
    seen: &mut Vec<(String, Value)>,
    until: impl Fn(&[(String, Value)]) -> bool,
    context: impl Fn() -> String,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !until(seen) {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !remaining.is_zero(),
            "alert events: {seen:?}\n{}",
            context()
        );
        if let Ok(Ok(m)) =
            tokio::time::timeout(remaining.min(Duration::from_secs(1)), consumer.recv()).await
        {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            let body: Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("events are JSON");
            seen.push((key, body));
        }
    }
}

fn events_of<'a>(seen: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    seen.iter()
        .map(|(_, e)| e)
        .filter(|e| e["alert"]["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_stock_is_published_on_the_alerts_topic_and_resolved() {
    let Stack {
        dir: _dir,
        names,
        mut broker,
        mut hub,
        mut agent,
        ..
    } = Stack::started("S1");
    let client = http();

    let topic = Topics::with_prefix(&names.prefix).alerts;
    bazaar_shared::kafka::ensure_topics(&broker.address(), &[&topic], 12, 1)
        .await
        .unwrap();
    let consumer: StreamConsumer = bazaar_shared::kafka::base_config(&broker.address())
        .set("group.id", format!("{}-alerts-reader", names.group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();

    // The receipt creates the sku at the hub; the threshold follows.
    let (status, body) = post_movement(
        &client,
        &agent.url(),
        Some("r1"),
        &json!({"kind": "receipt", "sku": "MILK", "qty": 10}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let pool = eventually(
        Duration::from_secs(60),
        || async {
            let pool = mysql(&names).await;
            (hub_stock(&pool, "S1").await.get("MILK") == Some(&10)).then_some(pool)
        },
        || hub.log_tail(),
    )
    .await;
    let response = client
        .put(format!("{}/v1/thresholds", hub.url()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"store": "S1", "sku": "MILK", "reorder_point": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    for (i, qty) in [3, 2, 1].into_iter().enumerate() {
        let (status, body) = post_movement(
            &client,
            &agent.url(),
            Some(&format!("s{i}")),
            &json!({"kind": "sale", "sku": "MILK", "qty": qty}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut seen = Vec::new();
    read_events(
        &consumer,
        &mut seen,
        |s| !events_of(s, "low_stock").is_empty(),
        || hub.log_tail(),
    )
    .await;
    let raised = events_of(&seen, "low_stock")[0];
    assert_eq!(raised["event"], "raised");
    assert_eq!(raised["alert"]["store"], "S1");
    assert_eq!(raised["alert"]["sku"], "MILK");
    assert!(
        seen.iter().all(|(key, _)| key == "S1"),
        "key = store: {seen:?}"
    );

    let (status, _) = post_movement(
        &client,
        &agent.url(),
        Some("r2"),
        &json!({"kind": "receipt", "sku": "MILK", "qty": 20}),
    )
    .await;
    assert_eq!(status, 201);
    read_events(
        &consumer,
        &mut seen,
        |s| events_of(s, "low_stock").len() >= 2,
        || hub.log_tail(),
    )
    .await;
    let events = events_of(&seen, "low_stock");
    assert_eq!(
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["raised", "resolved"],
        "raised once (the sale to 4 kept it open), then resolved: {seen:?}"
    );
    assert!(events[0]["event_id"].as_u64() < events[1]["event_id"].as_u64());
    assert_eq!(events[0]["alert"]["id"], events[1]["alert"]["id"]);
    // Every event the hub wrote was published and stamped.
    let pending: i64 = eventually(
        Duration::from_secs(10),
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM alert_events WHERE published_at IS NULL")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n == 0).then_some(n)
        },
        || hub.log_tail(),
    )
    .await;
    assert_eq!(pending, 0);

    agent.kill();
    hub.kill();
    broker.kill();
    pool.close().await;
    drop_database(&names).await;
}
