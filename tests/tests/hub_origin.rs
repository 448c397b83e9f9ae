//! Hub-origin movements and commands end to end (DESIGN §4, §5): real broker, hubs and
//! agents. HQ's writes go into the hub's outbox in the same transaction as the change; one
//! relay (holding a Redis lease) publishes them; agents apply them in hub_seq order,
//! fetching a missing range over HTTP.

use std::time::Duration;

use bazaar_e2e::*;
use bazaar_shared::partition::partition_for_key;
use bazaar_shared::{Envelope, Kind, Origin, SigningKey, Sku, StoreId, Topics};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = ADMIN_TOKEN;
const WAIT: Duration = Duration::from_secs(90);

async fn admin_post(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.post(url).bearer_auth(ADMIN);
    if let Some(k) = key {
        request = request.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("the hub answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

async fn agent_on_hand(client: &reqwest::Client, agent: &Agent, sku: &str) -> Option<i64> {
    get_json(client, &format!("{}/v1/stock/{sku}", agent.url())).await?["on_hand"].as_i64()
}

async fn status_field(client: &reqwest::Client, agent: &Agent, field: &str) -> Option<u64> {
    agent_status(client, &agent.url()).await?[field].as_u64()
}

/// A metric's value in a hub's `/metrics`.
async fn metric(client: &reqwest::Client, hub: &Hub, name: &str) -> Option<u64> {
    let text = client
        .get(format!("{}/metrics", hub.url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// One Redis command over RESP, enough to hold or free the relay's lease by hand.
async fn redis(args: &[&str]) -> String {
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .expect("Redis on 6379");
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Takes the relay's lease from whichever hub holds it and keeps it for ten minutes, so
/// hub-origin writes stay in the outbox until the test lets go (DEL).
async fn hold_relay_lease(lease: &str, hub: &Hub) {
    eventually(
        WAIT,
        || async {
            let _ = redis(&["DEL", lease]).await;
            redis(&["SET", lease, "test", "NX", "PX", "600000"])
                .await
                .starts_with("+OK")
                .then_some(())
        },
        || hub.log_tail(),
    )
    .await;
}

struct Stack {
    _dir: tempfile::TempDir,
    names: Names,
    broker: Broker,
    client: reqwest::Client,
}

impl Stack {
    fn new() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker::new(dir.path());
        broker.start().unwrap();
        Stack {
            _dir: dir,
            names: Names::fresh(),
            broker,
            client: http(),
        }
    }

    fn hub(&self, name: &str) -> Hub {
        let dir = self._dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Hub::new(&dir, &self.names, &self.broker.address())
    }

    fn agent(&self, hub: &Hub, store: &str, token: &str, key: &str) -> Agent {
        let mut agent = Agent::init(
            self._dir.path(),
            store,
            hub,
            &self.broker.address(),
            &self.names.prefix,
            token,
            key,
        )
        .unwrap();
        agent.start().unwrap();
        agent
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hq_movements_counts_thresholds_and_transfers_reach_the_stores_once() {
    let stack = Stack::new();
    let client = &stack.client;
    let mut hub = stack.hub("hub");
    let (token_a, key_a) = hub.add_store("A").unwrap();
    let (token_b, key_b) = hub.add_store("B").unwrap();
    hub.start().unwrap();
    let agent_a = stack.agent(&hub, "A", &token_a, &key_a);
    let agent_b = stack.agent(&hub, "B", &token_b, &key_b);
    let pool = mysql(&stack.names).await;
    let movements_a = format!("{}/v1/stores/A/movements", hub.url());

    // HQ receipt, retried under the same key: one movement.
    for _ in 0..2 {
        let (status, body) = admin_post(
            client,
            &movements_a,
            Some("grn-1"),
            Some(json!({"kind": "receipt", "sku": "MILK", "qty": 40})),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["movement"]["hub_seq"], 1);
    }
    let (status, body) = admin_post(
        client,
        &movements_a,
        None,
        Some(json!({"kind": "adjustment", "sku": "MILK", "qty": -3, "reason": "correction"})),
    )
    .await;
    assert_eq!(
        (status, &body["movement"]["hub_seq"]),
        (202, &json!(2)),
        "{body}"
    );
    // The seed's route: on-hand becomes 30 by a hub-origin count (delta -7).
    let (status, body) = admin_post(
        client,
        &format!("{}/update-stock/A/MILK?quantity=30", hub.url()),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["movement"]["delta"], -7);

    eventually(
        WAIT,
        || async {
            (status_field(client, &agent_a, "hub_watermark").await? == 3
                && agent_on_hand(client, &agent_a, "MILK").await? == 30)
                .then_some(())
        },
        || format!("agent A: {}\nhub: {}", agent_a.log_tail(), hub.log_tail()),
    )
    .await;
    assert_eq!(hub_stock(&pool, "A").await.get("MILK"), Some(&30));

    // A till sale afterwards: both sides converge.
    let (status, _) = post_movement(
        client,
        &agent_a.url(),
        Some("till-1"),
        &json!({"kind": "sale", "sku": "MILK", "qty": 2}),
    )
    .await;
    assert_eq!(status, 201);
    eventually(
        WAIT,
        || async { (hub_stock(&pool, "A").await.get("MILK") == Some(&28)).then_some(()) },
        || hub.log_tail(),
    )
    .await;
    assert_eq!(
        agent_stock(client, &agent_a.url()).await,
        hub_stock(&pool, "A").await
    );

    // Thresholds: HQ sets a reorder point; the agent fetches the document on the notice
    // and its local low-stock alert follows, with no further network.
    let response = client
        .put(format!("{}/v1/thresholds", hub.url()))
        .bearer_auth(ADMIN)
        .json(&json!({"store": "A", "sku": "MILK", "reorder_point": 50, "max_stock": 500}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap_or_default()
    );
    eventually(
        WAIT,
        || async {
            let alerts = get_json(client, &format!("{}/v1/alerts", agent_a.url())).await?;
            alerts["items"]
                .as_array()?
                .iter()
                .any(|a| a["kind"] == "low_stock" && a["sku"] == "MILK")
                .then_some(())
        },
        || agent_a.log_tail(),
    )
    .await;

    // HQ transfer A → B: a hub-origin transfer_out at A and a notice to B.
    let (status, body) = admin_post(client, &movements_a, Some("tr-1"), Some(json!({"kind": "transfer_out", "sku": "MILK", "qty": 5, "to_store": "B", "ref": "van 1"}))).await;
    assert_eq!(status, 202, "{body}");
    let transfer_id = body["movement"]["id"].as_str().unwrap().to_owned();
    // A store-origin transfer A → B, recorded at A's till, announced to B by ingest.
    let (status, sent) = post_movement(
        client,
        &agent_a.url(),
        Some("till-2"),
        &json!({"kind": "transfer_out", "sku": "MILK", "qty": 2, "to_store": "B"}),
    )
    .await;
    assert_eq!(status, 201, "{sent}");
    let expected = eventually(
        WAIT,
        || async {
            let list =
                get_json(client, &format!("{}/v1/transfers/expected", agent_b.url())).await?;
            let items = list["items"].as_array()?.clone();
            (items.len() == 2).then_some(items)
        },
        || format!("agent B: {}\nhub: {}", agent_b.log_tail(), hub.log_tail()),
    )
    .await;
    let hq = expected
        .iter()
        .find(|t| t["transfer_id"] == transfer_id.as_str())
        .expect("the HQ transfer is expected at B");
    assert_eq!(
        (
            hq["qty"].as_i64(),
            hq["from_store"].as_str(),
            hq["ref"].as_str()
        ),
        (Some(5), Some("A"), Some("van 1"))
    );
    assert!(
        expected
            .iter()
            .any(|t| t["qty"] == 2 && t["from_store"] == "A"),
        "{expected:?}"
    );
    // The goods arrive: B records the transfer_in against the notice.
    let (status, _) = post_movement(client, &agent_b.url(), Some("in-1"), &json!({"kind": "transfer_in", "sku": "MILK", "qty": 5, "from_store": "A", "ref": transfer_id})).await;
    assert_eq!(status, 201);
    let open = get_json(client, &format!("{}/v1/transfers/expected", agent_b.url()))
        .await
        .unwrap();
    assert_eq!(open["items"].as_array().unwrap().len(), 1, "{open}");
    eventually(
        WAIT,
        || async {
            (agent_on_hand(client, &agent_a, "MILK").await? == 21
                && hub_stock(&pool, "A").await.get("MILK") == Some(&21)
                && hub_stock(&pool, "B").await.get("MILK") == Some(&5))
            .then_some(())
        },
        || agent_a.log_tail(),
    )
    .await;

    // A forged command on A's partition is dropped and counted; nothing changes.
    let watermark = status_field(client, &agent_a, "hub_watermark")
        .await
        .unwrap();
    let forged = Envelope::movement(
        StoreId::parse("A").unwrap(),
        Origin::Hub,
        watermark + 1,
        Kind::Receipt,
        Sku::parse("MILK").unwrap(),
        1000,
    )
    .to_signed_bytes(&SigningKey::generate())
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.broker.address())
        .create()
        .unwrap();
    let topic = Topics::with_prefix(&stack.names.prefix).store_commands;
    producer
        .send(
            FutureRecord::to(&topic)
                .key("A")
                .partition(partition_for_key(b"A", 12))
                .payload(&forged),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    eventually(
        WAIT,
        || async { (status_field(client, &agent_a, "commands_forged").await? == 1).then_some(()) },
        || agent_a.log_tail(),
    )
    .await;
    assert_eq!(agent_on_hand(client, &agent_a, "MILK").await, Some(21));
    assert_eq!(
        agent_stock(client, &agent_a.url()).await,
        hub_stock(&pool, "A").await
    );
    drop(hub);
    drop_database(&stack.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_share_one_relay_and_a_killed_one_is_replaced_without_double_applying() {
    let stack = Stack::new();
    let client = &stack.client;
    let mut hub1 = stack.hub("hub1");
    let mut hub2 = stack.hub("hub2");
    let (token, key) = hub1.add_store("A").unwrap();
    hub1.start().unwrap();
    hub2.start().unwrap();
    let agent = stack.agent(&hub1, "A", &token, &key);
    // Exactly one hub holds the relay lease, and keeps holding it.
    let holder = eventually(
        WAIT,
        || async {
            let h1 = metric(client, &hub1, "bazaar_hub_outbox_relay_holding").await?;
            let h2 = metric(client, &hub2, "bazaar_hub_outbox_relay_holding").await?;
            (h1 + h2 == 1).then_some(if h1 == 1 { 1 } else { 2 })
        },
        || format!("{}\n{}", hub1.log_tail(), hub2.log_tail()),
    )
    .await;
    for _ in 0..10 {
        let h1 = metric(client, &hub1, "bazaar_hub_outbox_relay_holding")
            .await
            .unwrap();
        let h2 = metric(client, &hub2, "bazaar_hub_outbox_relay_holding")
            .await
            .unwrap();
        assert_eq!(h1 + h2, 1, "never two relays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut holding, other) = if holder == 1 {
        (hub1, hub2)
    } else {
        (hub2, hub1)
    };
    // Posts go through the hub that does not relay, so they go on while the relay dies.
    const N: i64 = 300;
    let url = format!("{}/v1/stores/A/movements", other.url());
    let posting = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let (status, body) = admin_post(
                    &client,
                    &url,
                    Some(&format!("grn-{i}")),
                    Some(json!({"kind": "receipt", "sku": "TEA", "qty": 1})),
                )
                .await;
                assert_eq!(status, 202, "{body}");
            }
        })
    };
    // Kill the relaying hub while the stream is under way.
    let seen = eventually(
        WAIT,
        || async {
            let w = status_field(client, &agent, "hub_watermark").await?;
            (w >= 20).then_some(w)
        },
        || agent.log_tail(),
    )
    .await;
    // Only the lease holder publishes.
    assert_eq!(
        metric(client, &other, "bazaar_hub_outbox_published_total").await,
        Some(0)
    );
    assert!(
        metric(client, &holding, "bazaar_hub_outbox_published_total")
            .await
            .unwrap()
            >= 20
    );
    holding.kill();
    let published_by_first = seen;
    posting.await.unwrap();
    eventually(
        WAIT,
        || async {
            (status_field(client, &agent, "hub_watermark").await? == N as u64
                && agent_on_hand(client, &agent, "TEA").await? == N)
                .then_some(())
        },
        || {
            format!(
                "agent: {}\nsurvivor: {}",
                agent.log_tail(),
                other.log_tail()
            )
        },
    )
    .await;
    assert!(
        published_by_first < N as u64,
        "the relay was killed mid-stream ({published_by_first} of {N} seen)"
    );
    assert_eq!(
        metric(client, &other, "bazaar_hub_outbox_relay_holding").await,
        Some(1)
    );
    eventually(
        WAIT,
        || async { (metric(client, &other, "bazaar_hub_outbox_depth").await? == 0).then_some(()) },
        || other.log_tail(),
    )
    .await;
    // Applied once each: the agent's ledger has N hub-origin rows and on-hand N.
    let pool = mysql(&stack.names).await;
    assert_eq!(hub_stock(&pool, "A").await.get("TEA"), Some(&N));
    assert_eq!(
        agent_stock(client, &agent.url()).await,
        hub_stock(&pool, "A").await
    );
    let rows: i64 = rusqlite::Connection::open(agent.data_dir().join("agent.db"))
        .expect("the agent's database")
        .query_row(
            "SELECT COUNT(*) FROM movements WHERE origin = 'hub'",
            [],
            |r| r.get(0),
        )
        .expect("the agent's ledger");
    assert_eq!(rows, N);
    drop_database(&stack.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_filled_by_the_range_fetch_and_alerted_only_while_the_hub_cannot_supply_it() {
    let stack = Stack::new();
    let client = &stack.client;
    let mut hub = stack.hub("hub");
    let (token, key) = hub.add_store("A").unwrap();
    hub.start().unwrap();
    let agent = stack.agent(&hub, "A", &token, &key);
    let pool = mysql(&stack.names).await;
    let url = format!("{}/v1/stores/A/movements", hub.url());
    let receipt = |qty: i64| Some(json!({"kind": "receipt", "sku": "RICE", "qty": qty}));
    assert_eq!(admin_post(client, &url, None, receipt(1)).await.0, 202);
    eventually(
        WAIT,
        || async { (status_field(client, &agent, "hub_watermark").await? == 1).then_some(()) },
        || agent.log_tail(),
    )
    .await;

    // Hold the relay's lease by hand, so what follows stays in the outbox.
    let lease = format!("{}lease:relay", stack.names.prefix);
    hold_relay_lease(&lease, &hub).await;
    // Let a relay that was mid-batch notice it lost the lease.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for qty in [2, 4] {
        assert_eq!(admin_post(client, &url, None, receipt(qty)).await.0, 202);
    }
    // hub_seq 2 never reaches the log: marked published as if it had been, then lost.
    sqlx::query("UPDATE outbox SET published_at = NOW(6) WHERE store = 'A' AND hub_seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let _ = redis(&["DEL", &lease]).await;
    eventually(
        WAIT,
        || async {
            (status_field(client, &agent, "hub_watermark").await? == 3
                && agent_on_hand(client, &agent, "RICE").await? == 7)
                .then_some(())
        },
        || format!("agent: {}\nhub: {}", agent.log_tail(), hub.log_tail()),
    )
    .await;
    let alerts = get_json(client, &format!("{}/v1/alerts", agent.url()))
        .await
        .unwrap();
    assert!(
        !alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "commands_gap"),
        "the hub supplied the gap: {alerts}"
    );

    // Now a gap the hub cannot supply: hub_seq 4 is gone from its outbox too.
    hold_relay_lease(&lease, &hub).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    for qty in [8, 16] {
        assert_eq!(admin_post(client, &url, None, receipt(qty)).await.0, 202);
    }
    let (kind, id, payload): (String, String, Vec<u8>) =
        sqlx::query_as("SELECT kind, id, payload FROM outbox WHERE store = 'A' AND hub_seq = 4")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM outbox WHERE store = 'A' AND hub_seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    let _ = redis(&["DEL", &lease]).await;
    eventually(
        WAIT,
        || async {
            let alerts = get_json(client, &format!("{}/v1/alerts", agent.url())).await?;
            alerts["items"]
                .as_array()?
                .iter()
                .any(|a| a["kind"] == "commands_gap" && a["severity"] == "critical")
                .then_some(())
        },
        || agent.log_tail(),
    )
    .await;
    assert_eq!(
        agent_on_hand(client, &agent, "RICE").await,
        Some(7),
        "nothing past the gap is applied"
    );
    // Support restores the row: the agent's retry fills the gap and the alert resolves.
    sqlx::query("INSERT INTO outbox (store, hub_seq, kind, id, payload, created_at, published_at) VALUES ('A', 4, ?, ?, ?, NOW(6), NOW(6))")
        .bind(kind).bind(id).bind(payload).execute(&pool).await.unwrap();
    eventually(
        WAIT,
        || async {
            (status_field(client, &agent, "hub_watermark").await? == 5
                && agent_on_hand(client, &agent, "RICE").await? == 31)
                .then_some(())
        },
        || agent.log_tail(),
    )
    .await;
    let alerts = get_json(client, &format!("{}/v1/alerts", agent.url()))
        .await
        .unwrap();
    assert!(
        !alerts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "commands_gap"),
        "resolved once filled: {alerts}"
    );
    assert_eq!(
        agent_stock(client, &agent.url()).await,
        hub_stock(&pool, "A").await
    );
    drop(hub);
    drop_database(&stack.names).await;
}
