//! One bad movement never blocks a store's queue (promise 5), end to end: a row the agent
//! cannot put on the wire, or one the hub refuses and consumes the seq of, is parked at the
//! agent with a void in its seq; the movements after it reach the hub, and agent and hub
//! agree on every sku (neither counts the parked one).
//!
//! Neither row can be made through the API any more, so each test writes it into the
//! stopped agent's SQLite directly, as an older agent or a damaged disk could have left it.

use std::time::Duration;

use bazaar_e2e::*;
use serde_json::{json, Value};

async fn record(client: &reqwest::Client, agent: &Agent, key: &str, body: Value) -> Value {
    let (status, reply) = post_movement(client, &agent.url(), Some(key), &body).await;
    assert_eq!(status, 201, "{body}: {reply}");
    reply
}

/// Until the hub applied seq `last` and the agent has nothing left to send.
async fn settled(
    client: &reqwest::Client,
    stack: &Stack,
    pool: &sqlx::MySqlPool,
    last: u64,
) -> Value {
    eventually(
        Duration::from_secs(90),
        || {
            let client = client.clone();
            let url = stack.agent.url();
            let pool = pool.clone();
            async move {
                let s = agent_status(&client, &url).await?;
                let hub = hub_last_seq(&pool, "S1").await;
                (s["pending"] == 0 && s["sent"] == 0 && hub == last && s["hub_applied_seq"] == last)
                    .then_some(s)
            }
        },
        || stack.logs(),
    )
    .await
}

async fn agent_json(client: &reqwest::Client, agent: &Agent, path: &str) -> Value {
    client
        .get(format!("{}{path}", agent.url()))
        .send()
        .await
        .expect("the agent answers")
        .json()
        .await
        .expect("JSON")
}

/// The hub's kind and id at a store seq.
async fn hub_row(pool: &sqlx::MySqlPool, seq: u64) -> (String, String) {
    sqlx::query_as(
        "SELECT kind, id FROM movements WHERE store = 'S1' AND origin = 'store' AND seq = ?",
    )
    .bind(seq)
    .fetch_one(pool)
    .await
    .expect("the hub's row")
}

/// Three movements taken while the broker is down, so they wait in the outbox: seq 2..=4.
async fn queue_three(client: &reqwest::Client, stack: &mut Stack) -> Vec<Value> {
    stack.broker.kill();
    let mut rows = Vec::new();
    for (key, body) in [
        ("q-1", json!({"kind": "receipt", "sku": "A", "qty": 5})),
        ("q-2", json!({"kind": "sale", "sku": "A", "qty": 1})),
        ("q-3", json!({"kind": "receipt", "sku": "B", "qty": 2})),
    ] {
        rows.push(record(client, &stack.agent, key, body).await);
    }
    stack.agent.kill();
    rows
}

fn database(stack: &Stack) -> rusqlite::Connection {
    rusqlite::Connection::open(stack.agent.data_dir().join("agent.db"))
        .expect("the agent's database")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_agent_cannot_encode_is_parked_and_the_rows_after_it_reach_the_hub() {
    let mut stack = Stack::started("S1");
    let client = http();
    let pool = mysql(&stack.names).await;
    record(
        &client,
        &stack.agent,
        "in",
        json!({"kind": "receipt", "sku": "A", "qty": 10}),
    )
    .await;
    settled(&client, &stack, &pool, 1).await;
    let queued = queue_three(&client, &mut stack).await;
    assert_eq!(queued[1]["seq"], 3);
    // Seq 3 becomes a sale of 5·10¹², past what the wire carries; the stock shows it.
    database(&stack)
        .execute_batch(
            "UPDATE movements SET delta = -5000000000000 WHERE seq = 3;
             UPDATE stock SET on_hand = on_hand + 1 - 5000000000000 WHERE sku = 'A';",
        )
        .unwrap();
    stack.broker.start().unwrap();
    stack.agent.start().unwrap();
    settled(&client, &stack, &pool, 4).await;

    let (kind, _) = hub_row(&pool, 3).await;
    assert_eq!(kind, "void", "a void took seq 3 at the hub");
    assert_eq!(
        hub_row(&pool, 4).await.0,
        "receipt",
        "the row after it was applied"
    );
    let agent_figures = agent_stock(&client, &stack.agent.url()).await;
    assert_eq!(
        agent_figures,
        hub_stock(&pool, "S1").await,
        "every sku agrees"
    );
    assert_eq!((agent_figures["A"], agent_figures["B"]), (15, 2));
    let parked = agent_json(&client, &stack.agent, "/v1/parked").await;
    let items = parked["parked"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{parked}");
    assert_eq!(
        (
            &items[0]["seq"],
            &items[0]["id"],
            &items[0]["reason"],
            &items[0]["delta"]
        ),
        (
            &json!(3),
            &queued[1]["id"],
            &json!("unencodable"),
            &json!(-5_000_000_000_000i64)
        )
    );
    let status = agent_status(&client, &stack.agent.url()).await.unwrap();
    assert_eq!(status["parked"], 1);
    let alerts = agent_json(&client, &stack.agent, "/v1/alerts").await;
    assert!(
        alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "movement_parked" && a["severity"] == "critical"),
        "{alerts}"
    );
    drop_database(&stack.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_hub_refuses_is_parked_at_the_agent_too_and_both_sides_agree() {
    let mut stack = Stack::started("S1");
    let client = http();
    let pool = mysql(&stack.names).await;
    let first = record(
        &client,
        &stack.agent,
        "in",
        json!({"kind": "receipt", "sku": "A", "qty": 10}),
    )
    .await;
    settled(&client, &stack, &pool, 1).await;
    let queued = queue_three(&client, &mut stack).await;
    // Seq 2 carries the id the hub already holds for seq 1 (the acknowledged row is gone
    // here, as compaction would have it): the hub refuses it and consumes its seq.
    let db = database(&stack);
    db.execute_batch(&format!(
        "DELETE FROM idempotency;
         DELETE FROM movements WHERE seq = 1;
         UPDATE movements SET id = '{}' WHERE seq = 2;",
        first["id"].as_str().unwrap()
    ))
    .unwrap();
    drop(db);
    stack.broker.start().unwrap();
    stack.agent.start().unwrap();
    let status = settled(&client, &stack, &pool, 4).await;
    let _ = eventually(
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let url = stack.agent.url();
            async move {
                let s = agent_status(&client, &url).await?;
                (s["parked"] == 1).then_some(s)
            }
        },
        || format!("{status}\n{}", stack.logs()),
    )
    .await;
    assert_eq!(hub_row(&pool, 2).await.0, "void");
    assert_eq!(hub_parked(&pool, "S1").await, 1);
    let agent_figures = agent_stock(&client, &stack.agent.url()).await;
    assert_eq!(
        agent_figures,
        hub_stock(&pool, "S1").await,
        "every sku agrees"
    );
    assert_eq!(
        (agent_figures["A"], agent_figures["B"]),
        (9, 2),
        "neither side counts the refused receipt"
    );
    let parked = agent_json(&client, &stack.agent, "/v1/parked").await;
    let items = parked["parked"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{parked}");
    assert_eq!(
        (&items[0]["seq"], &items[0]["kind"]),
        (&json!(2), &json!("receipt"))
    );
    assert!(
        items[0]["reason"].as_str().unwrap().starts_with("hub:"),
        "{parked}"
    );
    assert_eq!(queued[0]["seq"], 2);
    let status = agent_status(&client, &stack.agent.url()).await.unwrap();
    assert_eq!(
        status["sending_stopped"], false,
        "a void of the hub's own is not a copy: {status}"
    );
    drop_database(&stack.names).await;
}
