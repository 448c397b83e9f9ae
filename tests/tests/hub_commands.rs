//! The agent following hub commands on its own partition of `{prefix}store-commands`
//! (DESIGN §5): the messages are produced here exactly as the hub's relay publishes them
//! (signed with the store's key, key = store, partition named explicitly by murmur2).

use std::time::Duration;

use bazaar_e2e::*;
use bazaar_shared::partition::partition_for_key;
use bazaar_shared::{Envelope, Kind, Origin, Reason, SigningKey, Sku, StoreId, Topics};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

fn hub_movement(hub_seq: u64, kind: Kind, delta: i64) -> Envelope {
    Envelope {
        hub_watermark: hub_seq,
        reference: Some(format!("hq/{hub_seq}")),
        reason: (kind == Kind::Adjustment).then_some(Reason::Correction),
        ..Envelope::movement(
            StoreId::parse("S1").unwrap(),
            Origin::Hub,
            hub_seq,
            kind,
            Sku::parse("FLOUR").unwrap(),
            delta,
        )
    }
}

async fn publish(producer: &FutureProducer, topic: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic)
                .key("S1")
                .partition(partition_for_key(b"S1", 12))
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_movements_apply_once_in_order_and_forged_ones_are_dropped() {
    let Stack {
        dir: _dir,
        names,
        broker,
        hub: _hub,
        mut agent,
        key,
        ..
    } = Stack::started("S1");
    let key = SigningKey::from_base64(&key).unwrap();
    let topic = Topics::with_prefix(&names.prefix).store_commands;
    bazaar_shared::kafka::ensure_topics(&broker.address(), &[&topic], 12, 1)
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .create()
        .unwrap();
    let client = http();

    let receipt = hub_movement(1, Kind::Receipt, 50)
        .to_signed_bytes(&key)
        .unwrap();
    publish(&producer, &topic, &receipt).await;
    publish(&producer, &topic, &receipt).await; // re-delivered
    publish(
        &producer,
        &topic,
        &hub_movement(2, Kind::Receipt, 1000)
            .to_signed_bytes(&SigningKey::generate())
            .unwrap(),
    )
    .await;
    publish(
        &producer,
        &topic,
        &hub_movement(2, Kind::Adjustment, -5)
            .to_signed_bytes(&key)
            .unwrap(),
    )
    .await;
    let st = eventually(
        Duration::from_secs(60),
        || async {
            let s = agent_status(&client, &agent.url()).await?;
            (s["hub_watermark"] == 2 && s["commands_forged"] == 1).then_some(s)
        },
        || agent.log_tail(),
    )
    .await;
    assert_eq!(st["commands_forged"], 1);
    let stock: Value = client
        .get(format!("{}/v1/stock/FLOUR", agent.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stock["on_hand"], 45,
        "50 received, 5 corrected away; the forged 1000 and the repeat never applied"
    );

    // The position survives kill -9: nothing is applied twice after the restart.
    agent.kill();
    agent.start().unwrap();
    publish(
        &producer,
        &topic,
        &hub_movement(3, Kind::Receipt, 10)
            .to_signed_bytes(&key)
            .unwrap(),
    )
    .await;
    eventually(
        Duration::from_secs(60),
        || async {
            let s = agent_status(&client, &agent.url()).await?;
            (s["hub_watermark"] == 3).then_some(())
        },
        || agent.log_tail(),
    )
    .await;
    let stock: Value = client
        .get(format!("{}/v1/stock/FLOUR", agent.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stock["on_hand"], 55);

    // A till sale afterwards carries the watermark to the hub.
    let (status_code, _) = post_movement(
        &client,
        &agent.url(),
        Some("after-hub"),
        &json!({"kind": "sale", "sku": "FLOUR", "qty": 1}),
    )
    .await;
    assert_eq!(status_code, 201);
    let pool = mysql(&names).await;
    eventually(
        Duration::from_secs(60),
        || async { (hub_last_seq(&pool, "S1").await == 1).then_some(()) },
        || agent.log_tail(),
    )
    .await;
    let watermark: u64 = sqlx::query_scalar(
        "SELECT hub_watermark FROM movements WHERE store = 'S1' AND origin = 'store' AND seq = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(watermark, 3);
    drop_database(&names).await;
}
