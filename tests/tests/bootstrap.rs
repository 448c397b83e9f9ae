//! Bootstrap and re-snapshot on real processes (DESIGN §6): a store server that lost its
//! disk starts again from the hub's snapshot, continues the store's seq with no gap and
//! no reuse, and converges; `run --resnapshot` repairs a drifted ledger; the hub refuses a
//! snapshot while its consumer group has not consumed the store's partition to its end.

use std::collections::BTreeMap;
use std::time::Duration;

use bazaar_e2e::*;
use serde_json::{json, Value};

/// Movement `i` of a deterministic mix over 12 skus: receipts, sales, returns,
/// adjustments, counts and transfers both ways.
fn movement(i: usize) -> Value {
    let sku = format!("SKU-{:02}", i % 12);
    match i % 10 {
        0 | 1 => json!({"kind": "receipt", "sku": sku, "qty": 20 + i % 7}),
        2..=4 => json!({"kind": "sale", "sku": sku, "qty": 1 + i % 3}),
        5 => json!({"kind": "return", "sku": sku, "qty": 1}),
        6 => json!({"kind": "adjustment", "sku": sku, "qty": -1, "reason": "damage"}),
        7 => json!({"kind": "count", "sku": sku, "counted": 10 + i % 13}),
        8 => json!({"kind": "transfer_out", "sku": sku, "qty": 2, "to_store": "S2"}),
        _ => json!({"kind": "transfer_in", "sku": sku, "qty": 3, "from_store": "S3"}),
    }
}

/// Posts movements `range` with their own idempotency keys; every one must be accepted.
async fn post_range(
    client: &reqwest::Client,
    agent_url: &str,
    tag: &str,
    range: std::ops::Range<usize>,
) {
    for i in range {
        let (status, body) =
            post_movement(client, agent_url, Some(&format!("{tag}-{i}")), &movement(i)).await;
        assert_eq!(status, 201, "movement {i}: {body}");
    }
}

async fn wait_hub_seq(pool: &sqlx::MySqlPool, target: u64, logs: impl Fn() -> String) {
    eventually(
        Duration::from_secs(60),
        || async { (hub_last_seq(pool, "S1").await >= target).then_some(()) },
        || format!("hub last_seq never reached {target}\n{}", logs()),
    )
    .await;
}

async fn wait_status(
    client: &reqwest::Client,
    agent_url: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
    logs: impl Fn() -> String,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    eventually(
        Duration::from_secs(60),
        || async {
            let s = agent_status(client, agent_url).await?;
            *last.lock().unwrap() = s.clone();
            ok(&s).then_some(s)
        },
        || {
            format!(
                "agent status never showed {what}; last: {}\n{}",
                last.lock().unwrap(),
                logs()
            )
        },
    )
    .await
}

async fn snapshot_page(
    client: &reqwest::Client,
    hub_url: &str,
    token: &str,
    query: &str,
) -> (u16, Option<String>, Value) {
    let response = client
        .get(format!("{hub_url}/v1/stores/S1/snapshot{query}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the hub answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Every (store-origin) seq from 1 to `last` is at the hub exactly once, nothing parked,
/// and agent and hub agree on every sku (promise 8).
async fn assert_converged(
    client: &reqwest::Client,
    pool: &sqlx::MySqlPool,
    agent_url: &str,
    last: u64,
) {
    assert_eq!(
        hub_seq_summary(pool, "S1").await,
        (last as i64, last as i64, 1, last),
        "every seq from 1 to {last} exactly once: no gap, no reuse"
    );
    assert_eq!(
        hub_parked(pool, "S1").await,
        0,
        "nothing parked (no seq conflict)"
    );
    let agent: BTreeMap<String, i64> = agent_stock(client, agent_url).await;
    let hub = hub_stock(pool, "S1").await;
    assert_eq!(
        agent, hub,
        "every sku's on-hand is the same at agent and hub"
    );
    assert!(!hub.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_agent_waits_for_the_hub_to_catch_up_then_continues_the_stores_seq() {
    let mut s = Stack::started("S1");
    let client = http();
    let pool = mysql(&s.names).await;
    post_range(&client, &s.agent.url(), "a", 0..150).await;
    wait_hub_seq(&pool, 150, || s.logs()).await;
    // HQ's changes, followed by the agent: the store has hub-origin history too.
    hq_movement(
        &client,
        &s.hub,
        "S1",
        "hq-1",
        json!({"kind": "receipt", "sku": "SKU-00", "qty": 15}),
    )
    .await;
    let hq_last = hq_movement(
        &client,
        &s.hub,
        "S1",
        "hq-2",
        json!({"kind": "adjustment", "sku": "SKU-01", "qty": -2, "reason": "correction"}),
    )
    .await;
    assert_eq!(hq_last, 2);
    wait_status(
        &client,
        &s.agent.url(),
        "HQ's changes applied",
        |st| st["hub_watermark"] == 2,
        || s.logs(),
    )
    .await;

    // The hub goes away; the agent still delivers 40 more to the broker, then loses its
    // disk. Those 40 sit in the log, unconsumed.
    s.hub.kill();
    let killed = std::time::Instant::now();
    post_range(&client, &s.agent.url(), "b", 150..190).await;
    wait_status(
        &client,
        &s.agent.url(),
        "every movement delivered to the broker",
        |st| st["pending"] == 0 && st["last_seq"] == 190,
        || s.agent.log_tail(),
    )
    .await;
    s.agent.wipe();

    // The killed hub's group membership lapses (session timeout 10 s) before the new one
    // joins, so the rebalance it causes does not land while ingest is held below.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(killed.elapsed())).await;
    // Hold the store's sync row, so the restarted hub's ingest cannot apply the 40 and
    // its consumer group cannot commit past them: the hub is behind, deterministically.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT last_seq FROM store_sync WHERE store = 'S1' FOR UPDATE")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    s.hub.start().expect("hub restarts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, retry_after, body) = snapshot_page(&client, &s.hub.url(), ADMIN_TOKEN, "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "catching_up", "{body}");
    assert!(retry_after.is_some(), "a 503 says when to retry");

    // The re-installed agent takes movements at once and sends none.
    s.agent = s.reinit_agent();
    s.agent.start().expect("agent starts");
    post_range(&client, &s.agent.url(), "c", 190..210).await;
    let waiting = wait_status(
        &client,
        &s.agent.url(),
        "bootstrap waiting for the hub",
        |st| {
            st["bootstrap"]["state"] == "waiting_for_hub"
                && st["pending"] == 20
                && st["bootstrap"]["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("catching_up"))
        },
        || s.logs(),
    )
    .await;
    assert_eq!(
        waiting["sent"], 0,
        "nothing is sent before the snapshot: {waiting}"
    );
    assert_eq!(hub_last_seq(&pool, "S1").await, 150);

    lock.rollback().await.unwrap();
    let done = wait_status(
        &client,
        &s.agent.url(),
        "the snapshot installed",
        |st| st["bootstrap"]["state"] == "done",
        || s.logs(),
    )
    .await;
    assert_eq!(
        done["bootstrap"]["snapshot"]["last_seq"], 190,
        "the snapshot waited for the 40 the lost agent had delivered: {done}"
    );
    assert_eq!(done["bootstrap"]["snapshot"]["last_hub_seq"], 2, "{done}");
    assert!(done["bootstrap"]["bootstrapped_at"].is_string());
    post_range(&client, &s.agent.url(), "d", 210..240).await;
    // A new HQ change after the snapshot is followed; the two before it, which the agent
    // reads again from the start of its partition, are not applied twice.
    let hq_after = hq_movement(
        &client,
        &s.hub,
        "S1",
        "hq-3",
        json!({"kind": "receipt", "sku": "SKU-02", "qty": 7}),
    )
    .await;
    assert_eq!(hq_after, 3);
    wait_hub_seq(&pool, 240, || s.logs()).await;
    let st = wait_status(
        &client,
        &s.agent.url(),
        "everything acknowledged and HQ's change applied",
        |st| {
            st["pending"] == 0
                && st["sent"] == 0
                && st["hub_applied_seq"] == 240
                && st["hub_watermark"] == 3
        },
        || s.logs(),
    )
    .await;
    assert_eq!(st["last_seq"], 240, "the offline 20 became 191..=210: {st}");
    assert_eq!(
        st["acked"], 50,
        "only this ledger's own rows count as kept here"
    );
    assert_converged(&client, &pool, &s.agent.url(), 240).await;
    drop_database(&s.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_resnapshot_repairs_a_drifted_ledger_and_keeps_what_was_not_sent() {
    let mut s = Stack::started("S1");
    let client = http();
    let pool = mysql(&s.names).await;
    post_range(&client, &s.agent.url(), "a", 0..120).await;
    wait_hub_seq(&pool, 120, || s.logs()).await;
    let before = wait_status(
        &client,
        &s.agent.url(),
        "first bootstrap done",
        |st| st["bootstrap"]["state"] == "done" && st["hub_applied_seq"] == 120,
        || s.logs(),
    )
    .await;

    // Ten movements wait in the outbox while the broker is away.
    s.broker.kill();
    post_range(&client, &s.agent.url(), "b", 120..130).await;
    s.agent.kill();
    // The ledger drifts (a restored file, a hand edit): one figure wrong, one sku gone.
    {
        let conn = rusqlite::Connection::open(s.agent.data_dir().join("agent.db")).unwrap();
        conn.execute("UPDATE stock SET on_hand = 99999 WHERE sku = 'SKU-03'", [])
            .unwrap();
        conn.execute("DELETE FROM stock WHERE sku = 'SKU-04'", [])
            .unwrap();
    }
    s.broker.start().expect("broker restarts");
    s.agent.start_with(&["--resnapshot"]).expect("agent starts");
    let after = wait_status(
        &client,
        &s.agent.url(),
        "the re-snapshot installed and the ten sent",
        |st| {
            st["bootstrap"]["state"] == "done"
                && st["bootstrap"]["bootstrapped_at"] != before["bootstrap"]["bootstrapped_at"]
                && st["hub_applied_seq"] == 130
        },
        || s.logs(),
    )
    .await;
    assert_eq!(after["bootstrap"]["snapshot"]["last_seq"], 120, "{after}");
    assert_eq!(after["bootstrap"]["resnapshot_requested"], false);
    post_range(&client, &s.agent.url(), "c", 130..140).await;
    wait_hub_seq(&pool, 140, || s.logs()).await;
    wait_status(
        &client,
        &s.agent.url(),
        "everything acknowledged",
        |st| st["pending"] == 0 && st["sent"] == 0 && st["hub_applied_seq"] == 140,
        || s.logs(),
    )
    .await;
    assert_converged(&client, &pool, &s.agent.url(), 140).await;

    // `bazaar-agent status`: one JSON document with --json, every figure for people without.
    let cli = |json: bool| {
        let mut command = std::process::Command::new(binary("bazaar-agent"));
        command
            .arg("status")
            .env("BAZAAR_AGENT_DATA", s.agent.data_dir());
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("bazaar-agent status runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let document: Value = serde_json::from_str(&cli(true)).expect("exactly one JSON document");
    assert_eq!(
        (
            &document["pending"],
            &document["acked"],
            &document["hub_applied_seq"]
        ),
        (&json!(0), &json!(140), &json!(140)),
        "{document}"
    );
    assert_eq!(document["bootstrap"]["snapshot"]["last_seq"], 120);
    let text = cli(false);
    for line in [
        "pending           0",
        "acked (kept)      140",
        "last hub ack",
        "(seq 140)",
        "disk budget used",
        "bootstrap         done, snapshot at seq 120",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    // Done once: a plain restart installs nothing again.
    s.agent.kill();
    s.agent.start().expect("agent restarts");
    let again = wait_status(
        &client,
        &s.agent.url(),
        "running",
        |st| st["bootstrap"]["state"] == "done",
        || s.logs(),
    )
    .await;
    assert_eq!(
        again["bootstrap"]["bootstrapped_at"],
        after["bootstrap"]["bootstrapped_at"]
    );

    // The hub asks for a re-snapshot (a signed command through its outbox) while the
    // agent runs with a drifted figure: sending and following pause, the snapshot goes
    // in, the figure is right again, and a sale taken meanwhile still reaches the hub.
    {
        let conn = rusqlite::Connection::open(s.agent.data_dir().join("agent.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute("UPDATE stock SET on_hand = -5 WHERE sku = 'SKU-05'", [])
            .unwrap();
    }
    let mut tx = pool.begin().await.unwrap();
    let asked = bazaar_hub::outbox::request_resnapshot(
        &mut tx,
        &bazaar_shared::StoreId::parse("S1").unwrap(),
        "ledger drift found in an audit",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    post_range(&client, &s.agent.url(), "d", 140..141).await;
    let repaired = wait_status(
        &client,
        &s.agent.url(),
        "the hub's re-snapshot installed",
        |st| {
            st["bootstrap"]["state"] == "done"
                && st["bootstrap"]["snapshot"]["last_hub_seq"] == asked
                && st["hub_applied_seq"] == 141
                && st["pending"] == 0
        },
        || s.logs(),
    )
    .await;
    assert_ne!(
        repaired["bootstrap"]["bootstrapped_at"],
        after["bootstrap"]["bootstrapped_at"]
    );
    assert_eq!(repaired["hub_watermark"], asked);
    assert_converged(&client, &pool, &s.agent.url(), 141).await;
    drop_database(&s.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_pages_share_one_state_and_only_the_store_or_an_admin_reads_them() {
    let s = Stack::started("S1");
    let client = http();
    let pool = mysql(&s.names).await;
    post_range(&client, &s.agent.url(), "a", 0..60).await;
    wait_hub_seq(&pool, 60, || s.logs()).await;
    let (other_token, _) = s.hub.add_store("S2").expect("store add");

    // Twelve skus in pages of five: three pages, one cursor chain.
    let mut pages = Vec::new();
    let mut query = "?limit=5".to_string();
    loop {
        let (status, _, page) = snapshot_page(&client, &s.hub.url(), &s.token, &query).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            (page["last_seq"].as_u64(), page["sku_count"].as_u64()),
            (Some(60), Some(12))
        );
        let next = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        match next {
            Some(c) => query = format!("?limit=5&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages.len(), 3);
    let stock: BTreeMap<String, i64> = pages
        .iter()
        .flat_map(|p| p["stock"].as_array().cloned().unwrap_or_default())
        .map(|l| {
            (
                l["sku"].as_str().unwrap().to_owned(),
                l["on_hand"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(stock, hub_stock(&pool, "S1").await);

    // The store moves on between two pages: the old cursor is refused, not mixed in.
    let cursor = pages[0]["next_cursor"].as_str().unwrap().to_owned();
    post_range(&client, &s.agent.url(), "b", 60..61).await;
    wait_hub_seq(&pool, 61, || s.logs()).await;
    let (status, _, moved) = snapshot_page(
        &client,
        &s.hub.url(),
        &s.token,
        &format!("?limit=5&cursor={cursor}"),
    )
    .await;
    assert_eq!(
        (status, moved["error"]["code"].as_str()),
        (409, Some("snapshot_moved")),
        "{moved}"
    );

    for (token, query, expected, code) in [
        (other_token.as_str(), "", 403, "forbidden"),
        ("not-a-token", "", 401, "unauthorized"),
        (ADMIN_TOKEN, "?cursor=garbage", 422, "invalid"),
        (ADMIN_TOKEN, "?limit=0", 422, "invalid"),
        (ADMIN_TOKEN, "?colour=red", 422, "invalid"),
    ] {
        let (status, _, body) = snapshot_page(&client, &s.hub.url(), token, query).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (expected, Some(code)),
            "{query}: {body}"
        );
    }
    // Movements held at the hub behind a gap: no new agent may continue the numbering.
    sqlx::query(
        "INSERT INTO held_events (store, origin, seq, id, payload, received_at)
         VALUES ('S1', 'store', 70, '0192f0c4-0000-7000-8000-000000000070', x'00', NOW(6))",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (status, _, held) = snapshot_page(&client, &s.hub.url(), &s.token, "").await;
    assert_eq!(
        (status, held["error"]["code"].as_str()),
        (409, Some("held_movements")),
        "{held}"
    );

    let unknown = client
        .get(format!("{}/v1/stores/S7/snapshot", s.hub.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    drop_database(&s.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_store_bootstraps_page_by_page_with_every_figure_exact() {
    const LARGE: usize = 30_000;
    let mut s = Stack::started("S1");
    let client = http();
    let pool = mysql(&s.names).await;
    post_range(&client, &s.agent.url(), "a", 0..20).await;
    wait_hub_seq(&pool, 20, || s.logs()).await;
    // A store with a large range: 30,000 more skus at the hub (six pages of 5,000).
    for chunk in (0..LARGE).collect::<Vec<_>>().chunks(5000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('S1', 'BULK-{i:05}', {}, 1, NOW(6))",
                    ((i * 37) % 1000) as i64 - 100
                )
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO stock (store, sku, on_hand, version, updated_at) VALUES {}",
            values.join(", ")
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    s.agent.wipe();
    s.agent = s.reinit_agent();
    let started = std::time::Instant::now();
    s.agent.start().expect("agent starts");
    let done = wait_status(
        &client,
        &s.agent.url(),
        "the large snapshot installed",
        |st| st["bootstrap"]["state"] == "done",
        || s.logs(),
    )
    .await;
    eprintln!(
        "bootstrap of {} skus: {:?} from agent start to installed",
        LARGE + 12,
        started.elapsed()
    );
    assert_eq!(done["bootstrap"]["snapshot"]["skus"], LARGE + 12, "{done}");
    assert_eq!(done["bootstrap"]["snapshot"]["last_seq"], 20);
    post_range(&client, &s.agent.url(), "b", 20..30).await;
    wait_hub_seq(&pool, 30, || s.logs()).await;
    wait_status(
        &client,
        &s.agent.url(),
        "everything acknowledged",
        |st| st["pending"] == 0 && st["sent"] == 0 && st["hub_applied_seq"] == 30,
        || s.logs(),
    )
    .await;
    let agent = agent_stock(&client, &s.agent.url()).await;
    assert_eq!(agent.len(), LARGE + 12);
    assert_eq!(agent, hub_stock(&pool, "S1").await);
    drop_database(&s.names).await;
}
