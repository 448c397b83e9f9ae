//! Following the hub: the agent reads the one partition of `{prefix}store-commands` its
//! store's key maps to (murmur2, as Kafka's Java client computes it) and applies hub-origin
//! movements (DESIGN §5).
//!
//! Rules:
//! - A command is applied only if it names this store, carries origin `hub`, and its
//!   signature verifies with the store's key; anything else on the partition is skipped
//!   (another store's) or dropped and counted (forged).
//! - Hub-origin movements apply in `hub_seq` order only: hub_seq = last + 1. One at or
//!   below the last is a re-delivery and is skipped. One beyond it means the log lost
//!   something: the agent stops following, raises a critical `commands_gap` alert and
//!   waits for a re-snapshot (the hub relay publishes gaplessly, so this is an anomaly).
//! - The partition count, the partition and the next offset live in SQLite and move in
//!   the same transaction as the movement they carry, so a crash never applies twice or
//!   skips one. If the topic's partition count changes, the stored position is void.
//! - A hub-origin count arrives as its delta and is applied as is (DESIGN §4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazaar_shared::envelope::Received;
use bazaar_shared::kafka::base_config;
use bazaar_shared::partition::partition_for_key;
use bazaar_shared::{Envelope, Origin, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rusqlite::{params, Connection};
use tokio::sync::watch;

use crate::ledger::{self, get_meta, set_meta};
use crate::startup::Agent;

pub const META_PARTITIONS: &str = "commands_partitions";
pub const META_PARTITION: &str = "commands_partition";
pub const META_OFFSET: &str = "commands_next_offset";
pub const META_FORGED: &str = "commands_forged";
pub const GAP_ALERT: &str = "commands_gap";

/// Counters for `/v1/status`.
#[derive(Debug, Default)]
pub struct CommandStats {
    pub applied: AtomicU64,
    pub forged: AtomicU64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    OtherStore,
    Forged,
    Gap { expected: u64, got: u64 },
}

fn meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    Ok(get_meta(conn, key)?.and_then(|v| v.parse().ok()))
}

/// Applies one message read at `offset`, and records the next offset, in the caller's
/// transaction. A gap records nothing: the message will be read again after a re-snapshot.
pub fn apply(
    conn: &Connection,
    agent_store: &str,
    key: &bazaar_shared::SigningKey,
    payload: &[u8],
    offset: i64,
) -> rusqlite::Result<Outcome> {
    let decoded: Option<Received> = Envelope::decode(payload).ok();
    let outcome = match &decoded {
        Some(r) if r.envelope.store.as_str() != agent_store => Outcome::OtherStore,
        Some(r) if r.envelope.origin == Origin::Hub && r.verify(key) => {
            let envelope = &r.envelope;
            let last = meta_u64(conn, ledger::META_HUB_WATERMARK)?.unwrap_or(0);
            if envelope.seq <= last {
                Outcome::Duplicate
            } else if envelope.seq > last + 1 {
                return Ok(Outcome::Gap {
                    expected: last + 1,
                    got: envelope.seq,
                });
            } else {
                apply_hub_movement(conn, envelope)?;
                Outcome::Applied
            }
        }
        // Undecodable, unsigned, wrongly signed, or a store-origin message posing as a
        // command: never applied.
        _ => {
            let forged = meta_u64(conn, META_FORGED)?.unwrap_or(0) + 1;
            set_meta(conn, META_FORGED, &forged.to_string())?;
            Outcome::Forged
        }
    };
    set_meta(conn, META_OFFSET, &(offset + 1).to_string())?;
    Ok(outcome)
}

fn apply_hub_movement(conn: &Connection, envelope: &Envelope) -> rusqlite::Result<()> {
    let now = ledger::now_rfc3339();
    conn.prepare_cached(
        "INSERT INTO movements (origin, hub_seq, id, kind, sku, delta, counted, hub_watermark, reason,
             ref, to_store, from_store, occurred_at, recorded_at, state)
         VALUES ('hub', ?1, ?2, ?3, ?4, ?5, ?6, ?1, ?7, ?8, ?9, ?10, ?11, ?12, 'applied')",
    )?
    .execute(params![
        envelope.seq,
        envelope.id.to_string(),
        envelope.kind.as_str(),
        envelope.sku.as_str(),
        envelope.delta,
        envelope.counted,
        envelope.reason.map(|r| r.as_str()),
        envelope.reference,
        envelope.to_store.as_ref().map(|s| s.as_str()),
        envelope.from_store.as_ref().map(|s| s.as_str()),
        ledger::rfc3339(envelope.occurred_at),
        now,
    ])?;
    let on_hand: i64 = conn
        .prepare_cached(
            "INSERT INTO stock (sku, on_hand, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand, updated_at = excluded.updated_at
             RETURNING on_hand",
        )?
        .query_row(params![envelope.sku.as_str(), envelope.delta, now], |r| r.get(0))?;
    crate::stock_alerts::refresh(conn, envelope.sku.as_str(), on_hand, &now)?;
    set_meta(conn, ledger::META_HUB_WATERMARK, &envelope.seq.to_string())
}

fn raise_gap_alert(conn: &Connection, expected: u64, got: u64) -> rusqlite::Result<()> {
    crate::housekeeping::raise_alert(
        conn,
        GAP_ALERT,
        None,
        "critical",
        &format!("hub command {got} arrived while {expected} was expected; hub changes stop until a re-snapshot"),
        &ledger::now_rfc3339(),
    )
}

/// Where to read: (partition count, partition, next offset). A stored position is kept
/// only while the topic still has the partition count it was taken with.
fn position(
    conn: &Connection,
    partitions: i32,
    store: &str,
) -> rusqlite::Result<(i32, Option<i64>)> {
    let partition = partition_for_key(store.as_bytes(), partitions);
    let stored_count = meta_u64(conn, META_PARTITIONS)?;
    if stored_count != Some(partitions as u64) {
        set_meta(conn, META_PARTITIONS, &partitions.to_string())?;
        set_meta(conn, META_PARTITION, &partition.to_string())?;
        conn.execute("DELETE FROM meta WHERE key = ?1", [META_OFFSET])?;
        return Ok((partition, None));
    }
    Ok((partition, meta_u64(conn, META_OFFSET)?.map(|o| o as i64)))
}

pub async fn run(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let topic = Topics::with_prefix(&agent.config.topic_prefix).store_commands;
    let store = agent.config.store.to_string();
    let mut wait = Duration::from_millis(500);
    'connect: loop {
        if *shutdown.borrow() {
            return;
        }
        let brokers = agent.config.kafka_brokers.clone();
        let group = format!("bazaar-agent-{store}");
        let topic_for_setup = topic.clone();
        let setup = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = base_config(&brokers)
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .create()
                .map_err(|e| e.to_string())?;
            let metadata = consumer
                .fetch_metadata(Some(&topic_for_setup), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .unwrap_or(0) as i32;
            if partitions == 0 {
                return Err(format!("{topic_for_setup} has no partitions yet"));
            }
            Ok((consumer, partitions))
        })
        .await;
        let (consumer, partitions) = match setup.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(ready) => ready,
            Err(reason) => {
                tracing::debug!(%reason, "commands consumer not ready");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(10));
                continue 'connect;
            }
        };
        wait = Duration::from_millis(500);
        let store_for_position = store.clone();
        let position = agent
            .writer
            .write(move |conn| position(conn, partitions, &store_for_position))
            .await;
        let Ok((partition, next)) = position else {
            tracing::error!("cannot read the commands position");
            continue 'connect;
        };
        let mut assignment = TopicPartitionList::new();
        let offset = next.map(Offset::Offset).unwrap_or(Offset::Beginning);
        if assignment
            .add_partition_offset(&topic, partition, offset)
            .is_err()
            || consumer.assign(&assignment).is_err()
        {
            tracing::error!(partition, "cannot assign the commands partition");
            continue 'connect;
        }
        tracing::info!(%topic, partition, partitions, ?next, "following hub commands");
        let consumer = Arc::new(consumer);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let polled = {
                let consumer = consumer.clone();
                tokio::task::spawn_blocking(move || {
                    consumer
                        .poll(Duration::from_millis(500))
                        .map(|m| m.map(|m| (m.offset(), m.payload().unwrap_or_default().to_vec())))
                })
                .await
            };
            let (offset, payload) = match polled {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "commands consumer");
                    continue;
                }
                Ok(None) => continue,
                Err(_) => continue 'connect,
            };
            let key = agent.config.key.clone();
            let own = store.clone();
            let outcome = agent
                .writer
                .write(move |conn| {
                    let outcome = apply(conn, &own, &key, &payload, offset)?;
                    if let Outcome::Gap { expected, got } = outcome {
                        raise_gap_alert(conn, expected, got)?;
                    }
                    Ok::<_, rusqlite::Error>(outcome)
                })
                .await;
            match outcome {
                Ok(Outcome::Applied) => {
                    agent.commands.applied.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::Forged) => {
                    agent.commands.forged.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        offset,
                        "dropped a command that does not verify with this store's key"
                    );
                }
                Ok(Outcome::Gap { expected, got }) => {
                    tracing::error!(
                        expected,
                        got,
                        "gap in hub commands; waiting for a re-snapshot"
                    );
                    let _ = shutdown.changed().await;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot apply a hub command; reading it again");
                    tokio::time::sleep(wait).await;
                    continue 'connect;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazaar_shared::{Kind, SigningKey, Sku, StoreId};

    fn command(store: &str, hub_seq: u64, delta: i64, key: &SigningKey) -> Vec<u8> {
        let kind = if delta > 0 { Kind::Receipt } else { Kind::Sale };
        Envelope::movement(
            StoreId::parse(store).unwrap(),
            Origin::Hub,
            hub_seq,
            kind,
            Sku::parse("A").unwrap(),
            delta,
        )
        .to_signed_bytes(key)
        .unwrap()
    }

    #[test]
    fn applies_in_hub_seq_order_skips_repeats_drops_forgeries_and_stops_at_a_gap() {
        let conn = Connection::open_in_memory().unwrap();
        ledger::migrate(&conn).unwrap();
        let key = SigningKey::generate();
        let on_hand = |conn: &Connection| {
            ledger::stock_of(conn, &Sku::parse("A").unwrap())
                .unwrap()
                .map(|s| s.on_hand)
        };
        assert_eq!(
            apply(&conn, "S1", &key, &command("S1", 1, 10, &key), 0).unwrap(),
            Outcome::Applied
        );
        assert_eq!(
            apply(&conn, "S1", &key, &command("S1", 1, 10, &key), 1).unwrap(),
            Outcome::Duplicate
        );
        assert_eq!(
            apply(
                &conn,
                "S1",
                &key,
                &command("S1", 2, -3, &SigningKey::generate()),
                2
            )
            .unwrap(),
            Outcome::Forged
        );
        assert_eq!(
            apply(&conn, "S1", &key, b"garbage", 3).unwrap(),
            Outcome::Forged
        );
        assert_eq!(
            apply(&conn, "S1", &key, &command("S2", 2, -3, &key), 4).unwrap(),
            Outcome::OtherStore
        );
        assert_eq!(
            apply(&conn, "S1", &key, &command("S1", 2, -3, &key), 5).unwrap(),
            Outcome::Applied
        );
        assert_eq!(on_hand(&conn), Some(7));
        assert_eq!(meta_u64(&conn, META_OFFSET).unwrap(), Some(6));
        assert_eq!(meta_u64(&conn, META_FORGED).unwrap(), Some(2));
        assert_eq!(
            apply(&conn, "S1", &key, &command("S1", 4, 1, &key), 6).unwrap(),
            Outcome::Gap {
                expected: 3,
                got: 4
            }
        );
        assert_eq!(
            meta_u64(&conn, META_OFFSET).unwrap(),
            Some(6),
            "a gap does not move the position"
        );
        assert_eq!(
            meta_u64(&conn, ledger::META_HUB_WATERMARK).unwrap(),
            Some(2)
        );
        // Store-origin movements recorded afterwards carry the watermark (DESIGN §4).
        let recorded = ledger::record(
            &conn,
            &ledger::NewMovement {
                kind: Kind::Count,
                sku: Sku::parse("A").unwrap(),
                quantity: ledger::Quantity::Counted(5),
                reason: None,
                reference: None,
                to_store: None,
                from_store: None,
            },
            None,
        )
        .unwrap();
        assert_eq!(
            recorded.movement.delta, -2,
            "the count is taken against an on-hand that includes hub movements"
        );
        assert_eq!(ledger::pending_batch(&conn, 1).unwrap()[0].hub_watermark, 2);
    }

    #[test]
    fn a_new_partition_count_voids_the_stored_position() {
        let conn = Connection::open_in_memory().unwrap();
        ledger::migrate(&conn).unwrap();
        assert_eq!(
            position(&conn, 12, "S1").unwrap(),
            (partition_for_key(b"S1", 12), None)
        );
        set_meta(&conn, META_OFFSET, "41").unwrap();
        assert_eq!(position(&conn, 12, "S1").unwrap().1, Some(41));
        assert_eq!(
            position(&conn, 24, "S1").unwrap(),
            (partition_for_key(b"S1", 24), None)
        );
    }
}
