//! Following the hub: the agent reads the one partition of `{prefix}store-commands` its
//! store's key maps to (murmur2, as Kafka's Java client computes it) and applies what the
//! hub sends this store — hub-origin movements and commands — in hub_seq order (DESIGN §5).
//!
//! Rules:
//! - A message is applied only if it names this store, comes from the hub, and its
//!   signature verifies with the store's key; anything else on the partition is skipped
//!   (another store's) or dropped and counted (forged).
//! - Every message — movement, expected-transfer notice, bulk-state notice, re-snapshot
//!   request, or a command type newer than this build — carries the store's hub_seq from
//!   one gapless counter and applies as hub_seq = last + 1 only. One at or below the last
//!   is a re-delivery and is skipped. One beyond it means something is missing (the relay
//!   can reorder after a failed delivery, or the log lost it): the agent fetches the
//!   missing range over HTTP from the hub's outbox (`GET /v1/stores/{s}/commands`),
//!   applies it under the same rules, and raises the critical `commands_gap` alert only
//!   while the hub cannot supply it (resolved once filled).
//! - The partition count, the partition and the next offset live in SQLite and move in
//!   the same transaction as the message they carry, so a crash never applies twice or
//!   skips one. If the topic's partition count changes, the stored position is void.
//! - A hub-origin count arrives as its delta and is applied as is (DESIGN §4).
//! - A bulk-state notice only records that a newer document exists (in the same
//!   transaction as the watermark); the document itself is fetched over HTTP afterwards
//!   and installed only if its version is newer than the one installed, so a crash or an
//!   unreachable hub only delays it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazaar_shared::partition::partition_for_key;
use bazaar_shared::{CommandBody, Document, Envelope, HubMessage, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::watch;

use crate::hub_client::HubClient;
use crate::ledger::{self, get_meta, set_meta};
use crate::startup::Agent;

pub const META_PARTITIONS: &str = "commands_partitions";
pub const META_PARTITION: &str = "commands_partition";
pub const META_OFFSET: &str = "commands_next_offset";
pub const META_FORGED: &str = "commands_forged";
pub const GAP_ALERT: &str = "commands_gap";
pub const RESNAPSHOT_ALERT: &str = "resnapshot_requested";
pub const UNSUPPORTED_ALERT: &str = "command_unsupported";
/// hub_seq of the newest thresholds notice not yet fetched.
pub const META_THRESHOLDS_PENDING: &str = "thresholds_pending";
/// Version of the thresholds document installed in `products`.
pub const META_THRESHOLDS_VERSION: &str = "thresholds_version";
/// The most a range fetch asks for at once.
const RANGE_PAGE: u32 = 500;

/// Counters for `/v1/status`, and the bulk-state follower's wake-up.
#[derive(Debug, Default)]
pub struct CommandStats {
    pub applied: AtomicU64,
    pub forged: AtomicU64,
    pub bulk_wake: Arc<tokio::sync::Notify>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied at hub_seq = last + 1.
    Applied,
    /// A bulk-state notice applied at hub_seq = last + 1: the document is to be fetched.
    BulkStateNoted(Document),
    Duplicate,
    OtherStore,
    Forged,
    Gap {
        expected: u64,
        got: u64,
    },
}

fn meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    Ok(get_meta(conn, key)?.and_then(|v| v.parse().ok()))
}

/// Applies one message read at `offset`, and records the next offset, in the caller's
/// transaction. A gap records nothing: the message is read again once the gap is filled.
pub fn apply(
    conn: &Connection,
    agent_store: &str,
    key: &bazaar_shared::SigningKey,
    payload: &[u8],
    offset: i64,
) -> rusqlite::Result<Outcome> {
    let outcome = apply_payload(conn, agent_store, key, payload)?;
    if !matches!(outcome, Outcome::Gap { .. }) {
        set_meta(conn, META_OFFSET, &(offset + 1).to_string())?;
    }
    Ok(outcome)
}

/// Applies one message wherever it came from (the partition or the hub's range fetch),
/// in the caller's transaction, under the rules of this module.
pub fn apply_payload(
    conn: &Connection,
    agent_store: &str,
    key: &bazaar_shared::SigningKey,
    payload: &[u8],
) -> rusqlite::Result<Outcome> {
    let decoded = HubMessage::decode(payload).ok();
    match &decoded {
        Some(m) if m.store().as_str() != agent_store => Ok(Outcome::OtherStore),
        Some(m) if m.is_authentic(key) => {
            let last = meta_u64(conn, ledger::META_HUB_WATERMARK)?.unwrap_or(0);
            let seq = m.hub_seq();
            if seq <= last {
                Ok(Outcome::Duplicate)
            } else if seq > last + 1 {
                Ok(Outcome::Gap {
                    expected: last + 1,
                    got: seq,
                })
            } else {
                let fetch = apply_message(conn, m)?;
                set_meta(conn, ledger::META_HUB_WATERMARK, &seq.to_string())?;
                Ok(fetch.map_or(Outcome::Applied, Outcome::BulkStateNoted))
            }
        }
        // Undecodable, unsigned, wrongly signed, or a store-origin message posing as a
        // command: never applied.
        _ => {
            let forged = meta_u64(conn, META_FORGED)?.unwrap_or(0) + 1;
            set_meta(conn, META_FORGED, &forged.to_string())?;
            Ok(Outcome::Forged)
        }
    }
}

/// The effect of one authentic, in-order message; the caller moves the watermark.
fn apply_message(conn: &Connection, message: &HubMessage) -> rusqlite::Result<Option<Document>> {
    let now = ledger::now_rfc3339();
    let HubMessage::Command(received) = message else {
        if let HubMessage::Movement(m) = message {
            apply_hub_movement(conn, &m.envelope)?;
        }
        return Ok(None);
    };
    let command = &received.command;
    match &command.body {
        CommandBody::BulkState { document } => match document {
            Document::Thresholds => {
                set_meta(conn, META_THRESHOLDS_PENDING, &command.seq.to_string())?;
                return Ok(Some(Document::Thresholds));
            }
            // No fetch route for these exists yet: the notice is consumed in order, and
            // the document will be read when its route lands.
            other => tracing::info!(
                document = other.as_str(),
                "bulk-state notice noted; this build does not fetch that document"
            ),
        },
        CommandBody::ExpectedTransfer {
            transfer_id,
            from_store,
            sku,
            qty,
            reference,
            sent_at,
        } => {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO expected_transfers
                     (transfer_id, hub_seq, from_store, sku, qty, ref, sent_at, noticed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                transfer_id.to_string(),
                command.seq,
                from_store.as_str(),
                sku.as_str(),
                qty,
                reference,
                ledger::rfc3339(*sent_at),
                now,
            ])?;
        }
        CommandBody::Resnapshot { reason } => {
            crate::bootstrap::request_resnapshot(conn)?;
            crate::housekeeping::raise_alert(
                conn,
                RESNAPSHOT_ALERT,
                None,
                "warning",
                &format!("the hub asked for a re-snapshot ({reason}); sending and following pause until it is installed"),
                &now,
            )?;
        }
        CommandBody::Unsupported { kind, .. } => {
            crate::housekeeping::raise_alert(
                conn,
                UNSUPPORTED_ALERT,
                None,
                "warning",
                &format!("the hub sent a {kind:?} command this agent does not know; upgrade bazaar-agent"),
                &now,
            )?;
        }
    }
    Ok(None)
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
    crate::stock_alerts::refresh(conn, envelope.sku.as_str(), on_hand, &now)
}

/// An expected transfer in, as `GET /v1/transfers/expected` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExpectedTransfer {
    pub transfer_id: String,
    pub hub_seq: u64,
    pub from_store: String,
    pub sku: String,
    pub qty: i64,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub sent_at: String,
    pub noticed_at: String,
    /// The local seq of the `transfer_in` recorded with `ref` = transfer_id, once it is.
    pub received_seq: Option<u64>,
}

/// Expected transfers, newest notice first; `open_only` leaves out received ones.
pub fn expected_transfers(
    conn: &Connection,
    open_only: bool,
    limit: u32,
) -> rusqlite::Result<Vec<ExpectedTransfer>> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.transfer_id, e.hub_seq, e.from_store, e.sku, e.qty, e.ref, e.sent_at, e.noticed_at,
                (SELECT m.seq FROM movements m WHERE m.kind = 'transfer_in' AND m.ref = e.transfer_id
                 ORDER BY m.seq LIMIT 1) AS received_seq
         FROM expected_transfers e
         WHERE NOT ?1 OR received_seq IS NULL
         ORDER BY e.hub_seq DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![open_only, limit], |r| {
        Ok(ExpectedTransfer {
            transfer_id: r.get(0)?,
            hub_seq: r.get(1)?,
            from_store: r.get(2)?,
            sku: r.get(3)?,
            qty: r.get(4)?,
            reference: r.get(5)?,
            sent_at: r.get(6)?,
            noticed_at: r.get(7)?,
            received_seq: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// A thresholds document as the hub serves it (`GET /v1/stores/{store}/thresholds`).
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
pub struct ThresholdsDocument {
    pub store: String,
    pub version: u64,
    #[serde(default)]
    pub default: Levels,
    pub thresholds: Vec<ThresholdLine>,
}

#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq, Eq)]
pub struct Levels {
    pub reorder_point: Option<i64>,
    pub max_stock: Option<i64>,
}

#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
pub struct ThresholdLine {
    pub sku: String,
    pub reorder_point: Option<i64>,
    pub max_stock: Option<i64>,
}

/// Installs `document` into `products` if it is newer than the installed version; skus it
/// does not list take its store-wide default. Clears the pending notice it answers.
/// Returns whether it was installed.
pub fn install_thresholds(
    conn: &Connection,
    document: &ThresholdsDocument,
    answers: Option<u64>,
) -> rusqlite::Result<bool> {
    let installed = meta_u64(conn, META_THRESHOLDS_VERSION)?.unwrap_or(0);
    let pending = meta_u64(conn, META_THRESHOLDS_PENDING)?;
    let newer = document.version > installed;
    if newer {
        conn.prepare_cached("UPDATE products SET reorder_point = ?1, max_stock = ?2")?
            .execute(params![
                document.default.reorder_point,
                document.default.max_stock
            ])?;
        let mut upsert = conn.prepare_cached(
            "INSERT INTO products (sku, reorder_point, max_stock) VALUES (?1, ?2, ?3)
             ON CONFLICT (sku) DO UPDATE SET reorder_point = excluded.reorder_point, max_stock = excluded.max_stock",
        )?;
        for line in &document.thresholds {
            if bazaar_shared::Sku::parse(line.sku.clone()).is_err() {
                tracing::warn!(sku = %line.sku, "thresholds document names an invalid sku; skipped");
                continue;
            }
            upsert.execute(params![line.sku, line.reorder_point, line.max_stock])?;
        }
        set_meta(conn, META_THRESHOLDS_VERSION, &document.version.to_string())?;
        // Alerts follow the new levels at once.
        let now = ledger::now_rfc3339();
        let stock: Vec<(String, i64)> = conn
            .prepare("SELECT sku, on_hand FROM stock")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (sku, on_hand) in stock {
            crate::stock_alerts::refresh(conn, &sku, on_hand, &now)?;
        }
    }
    // The fetch answers the notice pending when it started; one that arrived meanwhile
    // stays pending and is fetched again.
    if pending.is_some() && pending == answers {
        conn.execute("DELETE FROM meta WHERE key = ?1", [META_THRESHOLDS_PENDING])?;
    }
    Ok(newer)
}

fn raise_gap_alert(conn: &Connection, expected: u64, got: u64, why: &str) -> rusqlite::Result<()> {
    crate::housekeeping::raise_alert(
        conn,
        GAP_ALERT,
        None,
        "critical",
        &format!("hub command {got} arrived while {expected} was expected and the hub cannot supply the missing range ({why}); hub changes wait until it can"),
        &ledger::now_rfc3339(),
    )
}

fn resolve_gap_alert(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE alerts SET resolved_at = ?2 WHERE kind = ?1 AND resolved_at IS NULL",
        params![GAP_ALERT, ledger::now_rfc3339()],
    )?;
    Ok(())
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
    let hub = match HubClient::new(&agent.config) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot build the HTTP client; hub commands are not followed");
            return;
        }
    };
    let bulk = tokio::spawn(follow_bulk_state(
        agent.clone(),
        hub.clone(),
        shutdown.clone(),
    ));
    let bulk_wake = agent.commands.bulk_wake.clone();
    follow(&agent, &hub, &topic, &store, &bulk_wake, &mut shutdown).await;
    bulk.abort();
}

async fn follow(
    agent: &Arc<Agent>,
    hub: &HubClient,
    topic: &str,
    store: &str,
    bulk_wake: &tokio::sync::Notify,
    shutdown: &mut watch::Receiver<bool>,
) {
    let topic = topic.to_owned();
    let store = store.to_owned();
    let mut wait = Duration::from_millis(500);
    'connect: loop {
        if *shutdown.borrow() {
            return;
        }
        let mut client = agent.config.kafka_config();
        let group = format!("bazaar-agent-{store}");
        let topic_for_setup = topic.clone();
        let setup = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = client
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
            let mut gap_wait = Duration::from_secs(1);
            let outcome = loop {
                let key = agent.config.key.clone();
                let own = store.clone();
                let message = payload.clone();
                let outcome = agent
                    .writer
                    .write(move |conn| apply(conn, &own, &key, &message, offset))
                    .await;
                let Ok(Outcome::Gap { expected, got }) = outcome else {
                    break outcome;
                };
                tracing::warn!(
                    expected,
                    got,
                    "gap in hub commands; fetching the missing range from the hub"
                );
                match fill_gap(agent, hub, &store, got).await {
                    // Filled: the message now follows on (or was in the range).
                    Ok(()) => continue,
                    Err(why) => {
                        tracing::error!(expected, got, %why, "the hub cannot supply the missing commands; retrying");
                        let _ = agent
                            .writer
                            .write(move |conn| raise_gap_alert(conn, expected, got, &why))
                            .await;
                        tokio::select! {
                            _ = tokio::time::sleep(gap_wait) => {}
                            _ = shutdown.changed() => return,
                        }
                        gap_wait = (gap_wait * 2).min(Duration::from_secs(60));
                    }
                }
            };
            match outcome {
                Ok(Outcome::Applied) => {
                    agent.commands.applied.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome::BulkStateNoted(_)) => {
                    agent.commands.applied.fetch_add(1, Ordering::Relaxed);
                    bulk_wake.notify_one();
                }
                Ok(Outcome::Forged) => {
                    agent.commands.forged.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        offset,
                        "dropped a command that does not verify with this store's key"
                    );
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

/// Fetches and applies, over HTTP, every command after the watermark up to `got - 1`.
/// `Err` says why the hub could not supply them.
async fn fill_gap(
    agent: &Arc<Agent>,
    hub: &HubClient,
    store: &str,
    got: u64,
) -> Result<(), String> {
    loop {
        let last = agent
            .read(|conn| meta_u64(conn, ledger::META_HUB_WATERMARK))
            .await
            .map_err(|e| format!("cannot read the watermark: {}", e.message))?
            .unwrap_or(0);
        if last + 1 >= got {
            let _ = agent.writer.write(resolve_gap_alert).await;
            return Ok(());
        }
        let page = hub
            .commands_after(last, RANGE_PAGE)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if page.commands.first().map(|c| c.hub_seq) != Some(last + 1) {
            return Err(format!(
                "the hub's outbox has no command {} (its last is {})",
                last + 1,
                page.last_hub_seq
            ));
        }
        let key = agent.config.key.clone();
        let own = store.to_owned();
        let applied = agent
            .writer
            .write(move |conn| {
                let mut fetch = false;
                for row in &page.commands {
                    match apply_payload(conn, &own, &key, row.payload.as_bytes())? {
                        Outcome::Applied => {}
                        Outcome::BulkStateNoted(_) => fetch = true,
                        Outcome::Duplicate => {}
                        other => {
                            return Ok(Err(format!(
                                "hub_seq {} from the hub's range: {other:?}",
                                row.hub_seq
                            )))
                        }
                    }
                }
                Ok::<_, rusqlite::Error>(Ok((page.commands.len(), fetch)))
            })
            .await
            .map_err(|e| format!("cannot apply the fetched range: {e}"))??;
        agent
            .commands
            .applied
            .fetch_add(applied.0 as u64, Ordering::Relaxed);
        if applied.1 {
            agent.commands.bulk_wake.notify_one();
        }
    }
}

/// Downloads pending bulk-state documents (now: thresholds) whenever a notice arrives,
/// and every half minute while one is pending and the hub does not answer.
async fn follow_bulk_state(agent: Arc<Agent>, hub: HubClient, mut shutdown: watch::Receiver<bool>) {
    let wake = agent.commands.bulk_wake.clone();
    loop {
        // A notice waiting, or no document ever installed (a new or re-snapshotted agent
        // follows commands from after the notices that announced the current version).
        let (pending, installed) = agent
            .read(|conn| {
                Ok((
                    meta_u64(conn, META_THRESHOLDS_PENDING)?,
                    meta_u64(conn, META_THRESHOLDS_VERSION)?,
                ))
            })
            .await
            .unwrap_or((None, Some(0)));
        let mut retry = false;
        if pending.is_some() || installed.is_none() {
            let notice = pending;
            match hub.thresholds().await {
                Ok(document) => {
                    let version = document.version;
                    match agent
                        .writer
                        .write(move |conn| install_thresholds(conn, &document, notice))
                        .await
                    {
                        Ok(true) => tracing::info!(version, "thresholds installed"),
                        Ok(false) => tracing::debug!(version, "thresholds already current"),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot install thresholds");
                            retry = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot fetch the thresholds document; retrying");
                    retry = true;
                }
            }
        }
        let pause = if retry {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazaar_shared::{Command, Kind, Origin, SigningKey, Sku, StoreId};

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

    fn signed(store: &str, seq: u64, body: CommandBody, key: &SigningKey) -> Vec<u8> {
        Command::new(StoreId::parse(store).unwrap(), seq, body)
            .to_signed_bytes(key)
            .unwrap()
    }

    fn open_alerts(conn: &Connection, kind: &str) -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM alerts WHERE kind = ?1 AND resolved_at IS NULL",
            [kind],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn every_command_type_applies_in_the_one_hub_seq_order() {
        let conn = Connection::open_in_memory().unwrap();
        ledger::migrate(&conn).unwrap();
        let key = SigningKey::generate();
        let transfer_id = uuid::Uuid::now_v7();
        let transfer = CommandBody::ExpectedTransfer {
            transfer_id,
            from_store: StoreId::parse("S2").unwrap(),
            sku: Sku::parse("A").unwrap(),
            qty: 4,
            reference: Some("van 2".into()),
            sent_at: chrono::Utc::now(),
        };
        let bulk = CommandBody::BulkState {
            document: Document::Thresholds,
        };
        // Out of order: the notice at 2 waits for the movement at 1.
        assert_eq!(
            apply(
                &conn,
                "S1",
                &key,
                &signed("S1", 2, transfer.clone(), &key),
                0
            )
            .unwrap(),
            Outcome::Gap {
                expected: 1,
                got: 2
            }
        );
        assert_eq!(
            apply(&conn, "S1", &key, &command("S1", 1, 10, &key), 1).unwrap(),
            Outcome::Applied
        );
        assert_eq!(
            apply(
                &conn,
                "S1",
                &key,
                &signed("S1", 2, transfer.clone(), &key),
                2
            )
            .unwrap(),
            Outcome::Applied
        );
        assert_eq!(
            apply(&conn, "S1", &key, &signed("S1", 2, transfer, &key), 3).unwrap(),
            Outcome::Duplicate
        );
        assert_eq!(
            apply(
                &conn,
                "S1",
                &key,
                &signed("S1", 3, bulk.clone(), &SigningKey::generate()),
                4
            )
            .unwrap(),
            Outcome::Forged,
            "a command signed with another key is dropped"
        );
        assert_eq!(
            apply(&conn, "S1", &key, &signed("S1", 3, bulk, &key), 5).unwrap(),
            Outcome::BulkStateNoted(Document::Thresholds)
        );
        assert_eq!(meta_u64(&conn, META_THRESHOLDS_PENDING).unwrap(), Some(3));
        let resnapshot = CommandBody::Resnapshot {
            reason: "ledger repaired".into(),
        };
        assert_eq!(
            apply(&conn, "S1", &key, &signed("S1", 4, resnapshot, &key), 6).unwrap(),
            Outcome::Applied
        );
        assert!(crate::bootstrap::needed(&conn).unwrap());
        assert_eq!(open_alerts(&conn, RESNAPSHOT_ALERT), 1);
        // A command type newer than this build still takes its turn.
        let value = serde_json::json!({
            "v": 1, "type": "price_change", "store": "S1", "origin": "hub", "seq": 5,
            "id": uuid::Uuid::now_v7().to_string(), "issued_at": "2026-11-26T10:00:00Z", "price": 3,
        });
        let mut newer = value.clone();
        newer["sig"] = key
            .sign(&bazaar_shared::canonical::canonical_bytes(&value).unwrap())
            .into();
        assert_eq!(
            apply(&conn, "S1", &key, newer.to_string().as_bytes(), 7).unwrap(),
            Outcome::Applied
        );
        assert_eq!(open_alerts(&conn, UNSUPPORTED_ALERT), 1);
        assert_eq!(
            meta_u64(&conn, ledger::META_HUB_WATERMARK).unwrap(),
            Some(5)
        );
        assert_eq!(meta_u64(&conn, META_OFFSET).unwrap(), Some(8));

        // The expected transfer is listed until the goods are recorded against it.
        let listed = expected_transfers(&conn, true, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].qty,
                listed[0].from_store.as_str(),
                listed[0].hub_seq
            ),
            (4, "S2", 2)
        );
        ledger::record(
            &conn,
            &ledger::NewMovement {
                kind: Kind::TransferIn,
                sku: Sku::parse("A").unwrap(),
                quantity: ledger::Quantity::Delta(4),
                reason: None,
                reference: Some(transfer_id.to_string()),
                to_store: None,
                from_store: Some(StoreId::parse("S2").unwrap()),
            },
            None,
        )
        .unwrap();
        assert!(expected_transfers(&conn, true, 10).unwrap().is_empty());
        let all = expected_transfers(&conn, false, 10).unwrap();
        assert!(all[0].received_seq.is_some());
    }

    #[test]
    fn thresholds_install_only_when_newer_and_answer_only_their_notice() {
        let conn = Connection::open_in_memory().unwrap();
        ledger::migrate(&conn).unwrap();
        conn.execute(
            "INSERT INTO products (sku, reorder_point, max_stock) VALUES ('OLD', 9, 90)",
            [],
        )
        .unwrap();
        let document = |version: u64, rp: i64| ThresholdsDocument {
            store: "S1".into(),
            version,
            default: Levels {
                reorder_point: Some(1),
                max_stock: None,
            },
            thresholds: vec![ThresholdLine {
                sku: "A".into(),
                reorder_point: Some(rp),
                max_stock: Some(50),
            }],
        };
        let levels = |conn: &Connection, sku: &str| -> (Option<i64>, Option<i64>) {
            conn.query_row(
                "SELECT reorder_point, max_stock FROM products WHERE sku = ?1",
                [sku],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        set_meta(&conn, META_THRESHOLDS_PENDING, "7").unwrap();
        assert!(install_thresholds(&conn, &document(3, 5), Some(7)).unwrap());
        assert_eq!(levels(&conn, "A"), (Some(5), Some(50)));
        assert_eq!(
            levels(&conn, "OLD"),
            (Some(1), None),
            "unlisted skus take the default"
        );
        assert_eq!(meta_u64(&conn, META_THRESHOLDS_PENDING).unwrap(), None);
        assert!(
            !install_thresholds(&conn, &document(2, 8), None).unwrap(),
            "older"
        );
        assert!(
            !install_thresholds(&conn, &document(3, 8), None).unwrap(),
            "same"
        );
        assert_eq!(levels(&conn, "A"), (Some(5), Some(50)));
        // A notice that arrived while the fetch was under way stays pending.
        set_meta(&conn, META_THRESHOLDS_PENDING, "9").unwrap();
        assert!(install_thresholds(&conn, &document(4, 6), Some(8)).unwrap());
        assert_eq!(meta_u64(&conn, META_THRESHOLDS_PENDING).unwrap(), Some(9));
        assert_eq!(meta_u64(&conn, META_THRESHOLDS_VERSION).unwrap(), Some(4));
    }
}
