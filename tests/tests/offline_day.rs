//! A store's day offline (DESIGN §2 promises 1, 3 and 8; §4): the broker is away while
//! the tills record 10,000 movements of every kind and HQ corrects stock, counts and
//! sends a transfer through the hub. When the broker comes back every movement reaches
//! the other side exactly once and agent and hub agree on every sku — including a count
//! taken at the store while HQ's receipt for the same sku was on its way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazaar_e2e::*;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

const SKUS: usize = 200;
const OFFLINE_MOVEMENTS: usize = 10_000;
const WAIT: Duration = Duration::from_secs(90);
/// The sku of the count that races HQ's receipt.
const RACED: &str = "RACED-1";

fn sku(i: usize) -> String {
    format!("SKU-{:03}", i % SKUS)
}

/// Till movement `i` of the day: every kind the store records, adjustments with each
/// reason, counts and transfers both ways.
fn till_movement(i: usize) -> Value {
    let sku = sku(i * 7 + i / SKUS);
    let reasons = ["damage", "theft", "expiry", "correction"];
    match i % 20 {
        0..=8 => json!({"kind": "sale", "sku": sku, "qty": 1 + i % 3}),
        9 | 10 => json!({"kind": "return", "sku": sku, "qty": 1}),
        11..=13 => json!({"kind": "receipt", "sku": sku, "qty": 6 + i % 5}),
        14 => {
            json!({"kind": "adjustment", "sku": sku, "qty": -(1 + (i % 2) as i64), "reason": reasons[(i / 20) % 4]})
        }
        15 => json!({"kind": "adjustment", "sku": sku, "qty": 2, "reason": "correction"}),
        16 => json!({"kind": "count", "sku": sku, "counted": 40 + i % 50}),
        17 => json!({"kind": "transfer_out", "sku": sku, "qty": 2, "to_store": "S2"}),
        _ => json!({"kind": "transfer_in", "sku": sku, "qty": 3, "from_store": "S2"}),
    }
}

/// Posts till movements concurrently; each must be accepted (a till is never refused).
async fn post_till(
    client: &reqwest::Client,
    agent_url: &str,
    tag: &str,
    bodies: Vec<Value>,
) -> usize {
    let accepted = Arc::new(AtomicUsize::new(0));
    stream::iter(bodies.into_iter().enumerate())
        .for_each_concurrent(8, |(i, body)| {
            let accepted = accepted.clone();
            async move {
                let (status, reply) =
                    post_movement(client, agent_url, Some(&format!("{tag}-{i}")), &body).await;
                assert_eq!(status, 201, "{body}: {reply}");
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
    accepted.load(Ordering::Relaxed)
}

async fn agent_on_hand(client: &reqwest::Client, agent: &Agent, sku: &str) -> i64 {
    let v: Value = client
        .get(format!("{}/v1/stock/{sku}", agent.url()))
        .send()
        .await
        .expect("agent answers")
        .json()
        .await
        .expect("stock JSON");
    v["on_hand"].as_i64().expect("on_hand")
}

async fn last_hub_seq(pool: &sqlx::MySqlPool, store: &str) -> u64 {
    sqlx::query_scalar("SELECT last_hub_seq FROM store_sync WHERE store = ?")
        .bind(store)
        .fetch_one(pool)
        .await
        .expect("store_sync")
}

/// The hub's ledger, summed per sku: what its stock table must say.
async fn hub_ledger_sums(pool: &sqlx::MySqlPool, store: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT sku, CAST(SUM(delta) AS SIGNED) FROM movements WHERE store = ? GROUP BY sku",
    )
    .bind(store)
    .fetch_all(pool)
    .await
    .expect("the hub's ledger")
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_offline_with_hq_corrections_converges_exactly() {
    let mut stack = Stack::new("S1");
    stack.hub.add_store("S2").unwrap();
    stack.start();
    let Stack {
        dir: _dir,
        names,
        mut broker,
        hub,
        agent,
        ..
    } = stack;
    let client = http();
    let pool = mysql(&names).await;
    let logs = || format!("agent:\n{}\nhub:\n{}", agent.log_tail(), hub.log_tail());

    // Morning, online: deliveries for every sku, and one HQ correction the store follows.
    let mut morning: Vec<Value> = (0..SKUS)
        .map(|i| json!({"kind": "receipt", "sku": sku(i), "qty": 100}))
        .collect();
    morning.push(json!({"kind": "receipt", "sku": RACED, "qty": 100}));
    let morning_count = post_till(&client, &agent.url(), "morning", morning).await;
    let correction = hq_movement(
        &client,
        &hub,
        "S1",
        "hq-morning",
        json!({"kind": "adjustment", "sku": sku(0), "qty": -3, "reason": "correction"}),
    )
    .await;
    eventually(
        WAIT,
        || async {
            let st = agent_status(&client, &agent.url()).await?;
            (st["hub_watermark"] == correction
                && st["hub_applied_seq"] == morning_count as u64
                && st["pending"] == 0)
                .then_some(())
        },
        || format!("morning never synced\n{}", logs()),
    )
    .await;

    // The broker goes away for the rest of the day.
    broker.kill();

    // HQ books a receipt of 24 for RACED at the hub; the store cannot hear of it. The
    // store then sells 7, counts 90 on the shelf (its view: 100 - 7 = 93, so -3), and
    // sells 5 more.
    let receipt = hq_movement(
        &client,
        &hub,
        "S1",
        "hq-raced-receipt",
        json!({"kind": "receipt", "sku": RACED, "qty": 24}),
    )
    .await;
    let raced = |kind: &str| match kind {
        "count" => json!({"kind": "count", "sku": RACED, "counted": 90}),
        _ => json!({"kind": "sale", "sku": RACED, "qty": 1}),
    };
    for (i, kind) in std::iter::repeat("sale")
        .take(7)
        .chain(["count"])
        .chain(std::iter::repeat("sale").take(5))
        .enumerate()
    {
        let (status, reply) = post_movement(
            &client,
            &agent.url(),
            Some(&format!("raced-{i}")),
            &raced(kind),
        )
        .await;
        assert_eq!(status, 201, "{reply}");
        if kind == "count" {
            assert_eq!(
                (reply["delta"].as_i64(), reply["counted"].as_i64()),
                (Some(-3), Some(90)),
                "counted against the store's own view: {reply}"
            );
        }
    }
    assert_eq!(agent_on_hand(&client, &agent, RACED).await, 85);

    // The day: 10,000 till movements, with HQ's corrections, a count and a transfer
    // through the hub in the middle of it.
    let bodies: Vec<Value> = (0..OFFLINE_MOVEMENTS).map(till_movement).collect();
    let (first_half, second_half) = bodies.split_at(OFFLINE_MOVEMENTS / 2);
    let day = std::time::Instant::now();
    let mut offline = post_till(&client, &agent.url(), "day-a", first_half.to_vec()).await;
    let mut hq_last = receipt;
    for (i, body) in [
        json!({"kind": "adjustment", "sku": sku(1), "qty": -4, "reason": "correction"}),
        json!({"kind": "adjustment", "sku": sku(2), "qty": 5, "reason": "correction"}),
        json!({"kind": "adjustment", "sku": sku(3), "qty": -2, "reason": "expiry"}),
        json!({"kind": "count", "sku": sku(10), "counted": 50}),
        json!({"kind": "receipt", "sku": sku(11), "qty": 30}),
        json!({"kind": "transfer_out", "sku": sku(20), "qty": 6, "to_store": "S2"}),
    ]
    .into_iter()
    .enumerate()
    {
        hq_last = hq_movement(&client, &hub, "S1", &format!("hq-day-{i}"), body).await;
    }
    offline += post_till(&client, &agent.url(), "day-b", second_half.to_vec()).await;
    let st = agent_status(&client, &agent.url()).await.unwrap();
    let total = morning_count as u64 + 13 + offline as u64;
    assert_eq!(
        (st["pending"].as_u64(), st["last_seq"].as_u64()),
        (Some(13 + OFFLINE_MOVEMENTS as u64), Some(total)),
        "every till movement waits in the outbox: {st}"
    );
    assert_eq!(
        st["hub_watermark"], correction,
        "no HQ change reached the store while the broker was away"
    );
    assert_eq!(last_hub_seq(&pool, "S1").await, hq_last);

    let recorded_in = day.elapsed();
    // The broker comes back.
    broker.start().unwrap();
    let back = std::time::Instant::now();
    eventually(
        WAIT,
        || async {
            let st = agent_status(&client, &agent.url()).await?;
            (st["hub_watermark"] == hq_last
                && st["hub_applied_seq"] == total
                && st["pending"] == 0
                && st["sent"] == 0)
                .then_some(())
        },
        || format!("the day never synced\n{}", logs()),
    )
    .await;

    eprintln!(
        "offline day: {offline} till movements recorded in {recorded_in:?} ({:.0}/s), \
         synced both ways {:?} after the broker came back",
        offline as f64 / recorded_in.as_secs_f64(),
        back.elapsed()
    );

    // Nothing lost, nothing doubled: every store seq once, every HQ movement once.
    assert_eq!(
        hub_seq_summary(&pool, "S1").await,
        (total as i64, total as i64, 1, total)
    );
    assert_eq!(hub_parked(&pool, "S1").await, 0);
    let hub_origin: i64 =
        sqlx::query_scalar("SELECT count(*) FROM movements WHERE store = 'S1' AND origin = 'hub'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        hub_origin, 8,
        "the morning correction, the raced receipt, six in the day"
    );

    // Promise 8: every sku's on-hand is identical at agent and hub, and the hub's figure
    // is its ledger's sum.
    let at_hub = hub_stock(&pool, "S1").await;
    let at_agent = agent_stock(&client, &agent.url()).await;
    assert_eq!(at_agent.len(), SKUS + 1);
    assert_eq!(at_agent, at_hub, "agent and hub agree on every sku");
    assert_eq!(hub_ledger_sums(&pool, "S1").await, at_hub);

    // DESIGN §4: the count was taken against a view without HQ's receipt (its watermark
    // predates it), so the hub subtracts that receipt from its own view before working
    // out the delta: view = (100 - 7 + 24) - 24 = 93, delta = 90 - 93 = -3, the same as
    // the store's. The receipt then stands on top of the count at both sides, and the
    // five later sales come off: 90 + 24 - 5.
    assert_eq!(at_hub[RACED], 109);
    assert_eq!(at_agent[RACED], 109);
    let (count_delta, count_watermark): (i64, u64) = sqlx::query_as(
        "SELECT delta, hub_watermark FROM movements
         WHERE store = 'S1' AND origin = 'store' AND kind = 'count' AND sku = ?",
    )
    .bind(RACED)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((count_delta, count_watermark), (-3, correction));
    drop_database(&names).await;
}
