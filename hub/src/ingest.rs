//! Ingest: the `bazaar-hub` consumer group applies `{prefix}movements` to MySQL.
//!
//! Rules (DESIGN §7), following rust-rdkafka's at-least-once example:
//! - one MySQL transaction per batch; it locks the batch's `store_sync` rows `FOR UPDATE`
//!   in sorted store order (so two hub instances cannot deadlock on each other's order; a
//!   deadlock still retries the whole batch);
//! - exactly-once comes from the ledger's (store, origin, seq) key checked in the same
//!   transaction that applies the change, never from Kafka offsets;
//! - offsets are stored only after the commit, so a crash anywhere before it re-delivers
//!   the batch, and the re-delivery is skipped as duplicates;
//! - between the commit and storing the offsets, the stock cache is refreshed for every
//!   (store, sku) the batch touched, duplicates included, from what MySQL now holds
//!   ([`crate::cache`]); Redis being down skips the refresh and ingest goes on;
//! - the database being away stops consumption (retried with backoff); nothing is skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bazaar_shared::kafka::base_config;
use bazaar_shared::{Envelope, Kind, SigningKey};
use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction};
use tokio::sync::watch;

use crate::plan::{plan_store, Decoded, ParkReason, Parked, Position};

pub const MAX_BATCH: usize = 2000;
const BATCH_WINDOW: Duration = Duration::from_millis(20);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub held: usize,
    pub parked: usize,
    /// Every (store, sku) the batch named or changed, duplicates included: the stock-cache
    /// entries to refresh after the commit.
    pub touched: BTreeSet<(String, String)>,
}

/// A raw message from Kafka.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub position: Position,
    pub payload: Vec<u8>,
}

/// How often librdkafka reports its statistics, from which ingest lag is taken.
const STATISTICS_INTERVAL_MS: &str = "1000";

/// The ingest consumer's context: takes per-partition lag from librdkafka's statistics,
/// which it emits on its own schedule, so measuring lag costs the ingest loop nothing.
pub struct IngestContext {
    lag: crate::metrics::IngestLag,
}

impl rdkafka::ClientContext for IngestContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.lag.record(lag_from_statistics(&statistics));
    }
}

impl ConsumerContext for IngestContext {}

/// Lag of each partition assigned to this consumer, from one statistics report. The
/// position is the next offset ingest will receive; before the first message since the
/// assignment it is the committed offset, or the low watermark when the group has none
/// (`auto.offset.reset=earliest`). Partitions whose watermark is not known yet are left out.
pub fn lag_from_statistics(statistics: &rdkafka::Statistics) -> crate::metrics::PartitionLags {
    let mut lag = BTreeMap::new();
    for (topic, t) in &statistics.topics {
        for (id, p) in &t.partitions {
            // -1 is librdkafka's internal "unassigned" partition.
            if *id < 0 || !p.desired || p.hi_offset < 0 {
                continue;
            }
            let position = [p.app_offset, p.committed_offset, p.lo_offset]
                .into_iter()
                .find(|o| *o >= 0)
                .unwrap_or(0);
            lag.insert(
                (topic.clone(), *id),
                crate::metrics::PartitionLag {
                    high_watermark: p.hi_offset,
                    position,
                },
            );
        }
    }
    lag
}

pub fn consumer(
    brokers: &str,
    group: &str,
    lag: crate::metrics::IngestLag,
) -> Result<StreamConsumer<IngestContext>, rdkafka::error::KafkaError> {
    base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        // Offsets are stored by us, after the MySQL commit.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        // The group leader assigns from the metadata it holds; a topic it saw as missing
        // or empty (a broker just restarted) yields an empty assignment that is only
        // revisited when the leader next refreshes metadata (5 minutes by default).
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create_with_context(IngestContext { lag })
}

/// Consumes until `shutdown`; every batch is applied before its offsets are stored.
pub async fn run(
    consumer: StreamConsumer<IngestContext>,
    pool: MySqlPool,
    mut shutdown: watch::Receiver<bool>,
    metrics: crate::startup::IngestCounters,
    cache: crate::cache::StockCache,
    alerting: std::sync::Arc<crate::alerting::Alerting>,
) {
    let mut assignment_check = tokio::time::interval(ASSIGNMENT_CHECK);
    assignment_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stalled_checks = 0u32;
    let mut last_progress = None;
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = assignment_check.tick() => {
                let progress = idle_progress(&consumer);
                stalled_checks = match (progress, last_progress) {
                    (Some(now), Some(before)) if now.waiting && now == before => stalled_checks + 1,
                    _ => 0,
                };
                last_progress = progress;
                // Several checks in a row, so a rebalance or a slow peer is never mistaken
                // for a stranded group.
                if stalled_checks >= STALLED_CHECKS {
                    rejoin(&consumer);
                    stalled_checks = 0;
                    last_progress = None;
                }
                continue;
            }
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let mut batch = Vec::new();
        match first {
            Ok(m) => batch.push(raw(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(raw(&m)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(100);
        let outcome = loop {
            match apply_batch(&pool, &batch).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    tracing::warn!(error = %e, size = batch.len(), "batch not applied; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        metrics.record(&outcome);
        cache.refresh(&pool, &outcome.touched).await;
        // Before the offsets: a crash re-delivers the batch and evaluates again.
        alerting.after_change(&outcome.touched).await;
        if let Err(e) = store_offsets(&consumer, &batch) {
            tracing::warn!(error = %e, "could not store offsets; the batch will be re-delivered and skipped as duplicates");
        }
        tracing::debug!(?outcome, "batch applied");
    }
    // Commit what was stored before leaving the group.
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
}

/// How often a member with no partition checks that someone consumes the topic.
const ASSIGNMENT_CHECK: Duration = Duration::from_secs(5);
/// Checks without progress before this member joins its group again (about 15 s).
const STALLED_CHECKS: u32 = 3;

/// What an idle member sees of its group's progress: the sum of the group's committed
/// offsets, and whether any partition still holds messages beyond them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupProgress {
    committed: i64,
    waiting: bool,
}

/// `Some` when this member holds no partition; `None` when it holds some or the broker
/// cannot say. A member that holds nothing while messages wait and the group's offsets do
/// not move over several checks is stranded: nobody is consuming. Seen on tansu 0.6 after
/// a broker restart, where the group re-formed with an empty assignment and stayed so.
/// (tansu answers no ListGroups/DescribeGroups, so the group's members cannot be asked.)
/// Only runs while this consumer has nothing to read, so its blocking calls (short
/// timeouts) cost no throughput.
fn idle_progress(consumer: &StreamConsumer<IngestContext>) -> Option<GroupProgress> {
    let timeout = Duration::from_secs(1);
    if consumer.assignment().map(|a| a.count()).unwrap_or(1) > 0 {
        return None;
    }
    let topic = consumer
        .subscription()
        .ok()?
        .elements()
        .first()
        .map(|e| e.topic().to_owned())?;
    let metadata = consumer.fetch_metadata(Some(&topic), timeout).ok()?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()) as i32;
    let mut wanted = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        wanted
            .add_partition_offset(&topic, p, rdkafka::Offset::Invalid)
            .ok()?;
    }
    let committed = consumer.committed_offsets(wanted, timeout).ok()?;
    let mut progress = GroupProgress {
        committed: 0,
        waiting: false,
    };
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, timeout).ok()?;
        let position = match committed.find_partition(&topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => low,
        };
        progress.committed += position;
        progress.waiting |= high > position;
    }
    Some(progress)
}

fn rejoin(consumer: &StreamConsumer<IngestContext>) {
    let Ok(subscription) = consumer.subscription() else {
        return;
    };
    let topics: Vec<String> = subscription
        .elements()
        .iter()
        .map(|e| e.topic().to_owned())
        .collect();
    tracing::warn!(?topics, "this hub holds no partition while messages wait and the group makes no progress; joining the group again");
    consumer.unsubscribe();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&names) {
        tracing::error!(error = %e, "could not subscribe again");
    }
}

fn raw(m: &rdkafka::message::BorrowedMessage<'_>) -> RawMessage {
    RawMessage {
        position: Position {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
        },
        payload: m.payload().unwrap_or_default().to_vec(),
    }
}

fn store_offsets(
    consumer: &StreamConsumer<IngestContext>,
    batch: &[RawMessage],
) -> Result<(), rdkafka::error::KafkaError> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let slot = next
            .entry((&m.position.topic, m.position.partition))
            .or_insert(0);
        *slot = (*slot).max(m.position.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.store_offsets(&list)
}

pub(crate) fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| matches!(m.number(), 1213 | 1205))
            .unwrap_or(false),
        _ => false,
    }
}

/// Applies one batch in one transaction, retrying it whole on a deadlock.
pub async fn apply_batch(
    pool: &MySqlPool,
    batch: &[RawMessage],
) -> Result<BatchOutcome, sqlx::Error> {
    let mut attempt = 0;
    loop {
        let mut tx = pool.begin().await?;
        match apply_in(&mut tx, batch).await {
            Ok(outcome) => match tx.commit().await {
                Ok(()) => return Ok(outcome),
                Err(e) if is_retryable_conflict(&e) && attempt < 10 => {}
                Err(e) => return Err(e),
            },
            Err(e) if is_retryable_conflict(&e) && attempt < 10 => {
                let _ = tx.rollback().await;
            }
            Err(e) => return Err(e),
        }
        attempt += 1;
        tracing::info!(attempt, "deadlock; retrying the batch");
    }
}

struct Ledger {
    rows: Vec<(Envelope, i64)>,
    stock: BTreeMap<(String, String), i64>,
    sales: BTreeMap<(String, String, NaiveDate), i64>,
}

async fn apply_in(
    tx: &mut Transaction<'_, MySql>,
    batch: &[RawMessage],
) -> Result<BatchOutcome, sqlx::Error> {
    let now = Utc::now();
    let mut parked: Vec<Parked> = Vec::new();
    let mut by_store: BTreeMap<String, Vec<Decoded>> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    for m in batch {
        match Envelope::decode(&m.payload) {
            Ok(received) => by_store
                .entry(received.envelope.store.to_string())
                .or_default()
                .push(Decoded {
                    position: m.position.clone(),
                    payload: m.payload.clone(),
                    received,
                }),
            Err(e) => parked.push(Parked {
                position: m.position.clone(),
                payload: m.payload.clone(),
                reason: ParkReason::Malformed,
                detail: e.to_string(),
                envelope: None,
            }),
        }
    }
    for messages in by_store.values() {
        touched.extend(messages.iter().map(|m| {
            (
                m.received.envelope.store.to_string(),
                m.received.envelope.sku.to_string(),
            )
        }));
    }
    let mut outcome = BatchOutcome::default();
    let stores: Vec<String> = by_store.keys().cloned().collect();
    let mut watermarks: HashMap<String, u64> = HashMap::new();
    let mut keys: HashMap<String, String> = HashMap::new();
    // The receiving stores of this batch's transfers get a notice that takes their hub_seq
    // (crate::outbox): their counter rows join the one sorted lock set.
    let lock_set: BTreeSet<String> = stores
        .iter()
        .cloned()
        .chain(by_store.values().flatten().filter_map(|m| {
            let e = &m.received.envelope;
            (e.kind == Kind::TransferOut).then(|| e.to_store.as_ref().map(|s| s.to_string()))?
        }))
        .collect();
    if !stores.is_empty() {
        // Sorted store order: every hub instance locks in the same order.
        let mut q =
            QueryBuilder::<MySql>::new("SELECT store, last_seq FROM store_sync WHERE store IN (");
        let mut sep = q.separated(", ");
        for s in &lock_set {
            sep.push_bind(s);
        }
        q.push(") ORDER BY store FOR UPDATE");
        for row in q.build().fetch_all(&mut **tx).await? {
            watermarks.insert(row.try_get("store")?, row.try_get("last_seq")?);
        }
        let mut q = QueryBuilder::<MySql>::new("SELECT id, signing_key FROM stores WHERE id IN (");
        let mut sep = q.separated(", ");
        for s in &stores {
            sep.push_bind(s);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut **tx).await? {
            keys.insert(row.try_get("id")?, row.try_get("signing_key")?);
        }
    }

    let mut ledger = Ledger {
        rows: Vec::new(),
        stock: BTreeMap::new(),
        sales: BTreeMap::new(),
    };
    let mut new_watermarks: Vec<(String, u64, Option<DateTime<Utc>>)> = Vec::new();
    for (store, messages) in by_store {
        let (Some(last_seq), Some(key)) = (watermarks.get(&store).copied(), keys.get(&store))
        else {
            parked.extend(messages.into_iter().map(|m| Parked {
                detail: format!("store {store} is not registered at this hub"),
                position: m.position,
                payload: m.payload,
                reason: ParkReason::UnknownStore,
                envelope: Some(m.received.envelope),
            }));
            continue;
        };
        let Ok(key) = SigningKey::from_base64(key) else {
            tracing::error!(%store, "stored signing key is not valid base64; parking the store's messages");
            parked.extend(messages.into_iter().map(|m| Parked {
                detail: "the hub's record of this store's key is damaged".into(),
                position: m.position,
                payload: m.payload,
                reason: ParkReason::UnknownStore,
                envelope: Some(m.received.envelope),
            }));
            continue;
        };
        let low: Vec<u64> = messages
            .iter()
            .map(|m| m.received.envelope.seq)
            .filter(|s| *s <= last_seq)
            .collect();
        let applied_ids = applied_ids(tx, &store, &low).await?;
        let plan = plan_store(last_seq, &key, messages, &applied_ids);
        outcome.duplicates += plan.duplicates;
        parked.extend(plan.park);
        let mut last = plan.last_seq;
        let mut latest_event: Option<DateTime<Utc>> = None;
        for envelope in plan.apply {
            latest_event = latest_event.max(Some(envelope.occurred_at));
            add_to_ledger(tx, &mut ledger, envelope).await?;
            outcome.applied += 1;
        }
        if !plan.hold.is_empty() {
            let mut q = QueryBuilder::<MySql>::new(
                "INSERT IGNORE INTO held_events (store, origin, seq, id, payload, received_at) ",
            );
            q.push_values(&plan.hold, |mut b, (e, payload)| {
                b.push_bind(e.store.as_str())
                    .push_bind("store")
                    .push_bind(e.seq)
                    .push_bind(e.id.to_string())
                    .push_bind(payload.as_slice())
                    .push_bind(now);
            });
            q.build().execute(&mut **tx).await?;
        }
        // The gap may have filled: apply held messages that now follow on.
        let held = sqlx::query(
            "SELECT seq, payload FROM held_events WHERE store = ? AND origin = 'store' AND seq > ? ORDER BY seq LIMIT 10000",
        )
        .bind(&store)
        .bind(last)
        .fetch_all(&mut **tx)
        .await?;
        for row in held {
            let seq: u64 = row.try_get("seq")?;
            if seq != last + 1 {
                break;
            }
            let payload: Vec<u8> = row.try_get("payload")?;
            // Held messages were decoded and verified before they were held.
            let Ok(received) = Envelope::decode(&payload) else {
                break;
            };
            latest_event = latest_event.max(Some(received.envelope.occurred_at));
            add_to_ledger(tx, &mut ledger, received.envelope).await?;
            outcome.applied += 1;
            last = seq;
        }
        sqlx::query("DELETE FROM held_events WHERE store = ? AND origin = 'store' AND seq <= ?")
            .bind(&store)
            .bind(last)
            .execute(&mut **tx)
            .await?;
        outcome.held += plan.hold.len();
        if last != last_seq || latest_event.is_some() {
            new_watermarks.push((store, last, latest_event));
        }
    }

    write_ledger(tx, &ledger, now).await?;
    announce_transfers(tx, &ledger.rows).await?;
    touched.extend(ledger.stock.keys().cloned());
    for (store, last, latest_event) in &new_watermarks {
        sqlx::query(
            "UPDATE store_sync SET last_seq = ?, last_applied_at = ?,
                 last_event_at = GREATEST(COALESCE(last_event_at, ?), COALESCE(?, last_event_at, ?))
             WHERE store = ?",
        )
        .bind(last)
        .bind(now)
        .bind(latest_event.unwrap_or(now))
        .bind(latest_event)
        .bind(now)
        .bind(store)
        .execute(&mut **tx)
        .await?;
    }
    if !stores.is_empty() {
        let mut q = QueryBuilder::<MySql>::new("UPDATE stores SET last_seen_at = ");
        q.push_bind(now).push(" WHERE id IN (");
        let mut sep = q.separated(", ");
        for s in &stores {
            sep.push_bind(s);
        }
        q.push(")");
        q.build().execute(&mut **tx).await?;
    }
    outcome.parked = parked.len();
    outcome.touched = touched;
    if !parked.is_empty() {
        for p in &parked {
            tracing::warn!(reason = p.reason.as_str(), detail = %p.detail, topic = %p.position.topic,
                partition = p.position.partition, offset = p.position.offset, "parked a message");
        }
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO parked_events (store, seq, event_id, reason, detail, payload, topic, kafka_partition, kafka_offset, parked_at) ",
        );
        q.push_values(&parked, |mut b, p| {
            b.push_bind(p.envelope.as_ref().map(|e| e.store.to_string()))
                .push_bind(p.envelope.as_ref().map(|e| e.seq))
                .push_bind(p.envelope.as_ref().map(|e| e.id.to_string()))
                .push_bind(p.reason.as_str())
                .push_bind(p.detail.chars().take(1000).collect::<String>())
                .push_bind(p.payload.as_slice())
                .push_bind(&p.position.topic)
                .push_bind(p.position.partition)
                .push_bind(p.position.offset)
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(outcome)
}

/// Every applied transfer_out tells its receiving store, in this transaction, that goods
/// are on their way (DESIGN §5). A transfer to a store this hub does not know sends none.
async fn announce_transfers(
    tx: &mut Transaction<'_, MySql>,
    rows: &[(Envelope, i64)],
) -> Result<(), sqlx::Error> {
    for (e, _) in rows.iter().filter(|(e, _)| e.kind == Kind::TransferOut) {
        match crate::outbox::announce_transfer(&mut **tx, e).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(store = %e.store, to_store = ?e.to_store, "transfer to a store this hub does not know; no notice sent")
            }
            Err(crate::outbox::OutboxError::Database(db)) => return Err(db),
            Err(other) => {
                tracing::error!(error = %other, "cannot announce a transfer to its receiving store")
            }
        }
    }
    Ok(())
}

async fn applied_ids(
    tx: &mut Transaction<'_, MySql>,
    store: &str,
    seqs: &[u64],
) -> Result<HashMap<u64, uuid::Uuid>, sqlx::Error> {
    let mut found = HashMap::new();
    if seqs.is_empty() {
        return Ok(found);
    }
    let mut q = QueryBuilder::<MySql>::new("SELECT seq, id FROM movements WHERE store = ");
    q.push_bind(store)
        .push(" AND origin = 'store' AND seq IN (");
    let mut sep = q.separated(", ");
    for s in seqs {
        sep.push_bind(*s);
    }
    q.push(")");
    for row in q.build().fetch_all(&mut **tx).await? {
        let id: String = row.try_get("id")?;
        if let Ok(id) = uuid::Uuid::parse_str(&id) {
            found.insert(row.try_get("seq")?, id);
        }
    }
    Ok(found)
}

/// Adds one movement to the batch's ledger. A count's delta is worked out here against
/// the hub's view (DESIGN §4): on-hand less the hub-origin deltas the store had not seen.
async fn add_to_ledger(
    tx: &mut Transaction<'_, MySql>,
    ledger: &mut Ledger,
    envelope: Envelope,
) -> Result<(), sqlx::Error> {
    let key = (envelope.store.to_string(), envelope.sku.to_string());
    let mut delta = envelope.delta;
    if let (Kind::Count, Some(counted)) = (envelope.kind, envelope.counted) {
        let on_hand: Option<i64> =
            sqlx::query_scalar("SELECT on_hand FROM stock WHERE store = ? AND sku = ?")
                .bind(&key.0)
                .bind(&key.1)
                .fetch_optional(&mut **tx)
                .await?;
        let unseen: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(delta), 0) AS SIGNED) FROM movements
             WHERE store = ? AND sku = ? AND origin = 'hub' AND seq > ?",
        )
        .bind(&key.0)
        .bind(&key.1)
        .bind(envelope.hub_watermark)
        .fetch_one(&mut **tx)
        .await?;
        let pending_in_batch = ledger.stock.get(&key).copied().unwrap_or(0);
        let view = on_hand.unwrap_or(0) + pending_in_batch - unseen;
        delta = counted - view;
        if delta != envelope.delta {
            tracing::info!(store = %key.0, sku = %key.1, agent_delta = envelope.delta, hub_delta = delta,
                "count delta differs between agent and hub views; the hub's view applies");
        }
    }
    *ledger.stock.entry(key.clone()).or_insert(0) += delta;
    if matches!(envelope.kind, Kind::Sale | Kind::Return) {
        *ledger
            .sales
            .entry((key.0, key.1, envelope.occurred_at.date_naive()))
            .or_insert(0) += -delta;
    }
    ledger.rows.push((envelope, delta));
    Ok(())
}

const INSERT_CHUNK: usize = 2000;

async fn write_ledger(
    tx: &mut Transaction<'_, MySql>,
    ledger: &Ledger,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    for chunk in ledger.rows.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO movements (store, origin, seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, to_store, from_store, occurred_at, received_at) ",
        );
        q.push_values(chunk, |mut b, (e, delta)| {
            b.push_bind(e.store.as_str())
                .push_bind(e.origin.as_str())
                .push_bind(e.seq)
                .push_bind(e.id.to_string())
                .push_bind(e.kind.as_str())
                .push_bind(e.sku.as_str())
                .push_bind(*delta)
                .push_bind(e.counted)
                .push_bind(e.hub_watermark)
                .push_bind(e.reason.map(|r| r.as_str()))
                .push_bind(e.reference.as_deref())
                .push_bind(e.to_store.as_ref().map(|s| s.as_str()))
                .push_bind(e.from_store.as_ref().map(|s| s.as_str()))
                .push_bind(e.occurred_at)
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    let stock: Vec<_> = ledger.stock.iter().collect();
    for chunk in stock.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO stock (store, sku, on_hand, version, updated_at) ",
        );
        q.push_values(chunk, |mut b, ((store, sku), delta)| {
            b.push_bind(store)
                .push_bind(sku)
                .push_bind(**delta)
                .push_bind(1i64)
                .push_bind(now);
        });
        q.push(" ON DUPLICATE KEY UPDATE on_hand = on_hand + VALUES(on_hand), version = version + 1, updated_at = VALUES(updated_at)");
        q.build().execute(&mut **tx).await?;
    }
    let sales: Vec<_> = ledger.sales.iter().collect();
    for chunk in sales.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new("INSERT INTO daily_sales (store, sku, day, qty) ");
        q.push_values(chunk, |mut b, ((store, sku, day), qty)| {
            b.push_bind(store)
                .push_bind(sku)
                .push_bind(*day)
                .push_bind(**qty);
        });
        q.push(" ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty)");
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}
