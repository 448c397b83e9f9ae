//! The outbox relay: publishes the hub's outbox to `{prefix}store-commands` (DESIGN §5).
//!
//! Invariants:
//! - At most one hub publishes at a time: the relay works only while it holds the Redis
//!   lease `relay` ([`crate::lease`]: SET NX PX, renewal by compare-and-extend in Lua). A
//!   lost lease stops publishing before the next message; Redis being away means nobody
//!   can take the lease, so the relay pauses (and says so once) rather than risk two
//!   publishers. Two publishers for a moment (a lease lost with messages in flight) would
//!   only duplicate messages, which agents skip by hub_seq.
//! - Rows go out per store in hub_seq order, stores served in turn, keyed by the store,
//!   to the partition named explicitly as murmur2(store) mod N, N read from the topic's
//!   metadata: the partition the agent computes for itself.
//! - The producer is idempotent with `acks=all`; a row is marked published only after its
//!   delivery report succeeded (rust-rdkafka's at-least-once pattern). After any failure
//!   the producer is dropped and a fresh one made, so librdkafka never bumps the
//!   idempotent epoch (tansu 0.6 panics on that; see README), and the unpublished rows go
//!   again from the lowest hub_seq.
//! - Published rows stay in MySQL: agents fetch missing ranges from them. Pruning old
//!   published rows is left for later (retention would bound how far back a range fetch
//!   can reach before an agent must re-snapshot).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazaar_shared::kafka::{idempotent_producer, KafkaProperties};
use bazaar_shared::partition::partition_for_key;
use bazaar_shared::Topics;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lease::{Attempt, Lease};
use crate::outbox::{self, OutboxRow};
use crate::redis_link::RedisLink;

pub const LEASE_NAME: &str = "relay";
const LEASE_TTL: Duration = Duration::from_secs(6);
const BATCH: u32 = 500;
const IDLE_POLL: Duration = Duration::from_millis(100);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);
/// How often the topic's partition count is read again while publishing.
const METADATA_EVERY: Duration = Duration::from_secs(30);

/// What `/metrics` shows of the relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Outbox rows not yet published, as last measured.
    pub depth: AtomicU64,
    /// Rows this hub has published since start.
    pub published: AtomicU64,
    /// Deliveries that failed (each one retried with a fresh producer).
    pub failed: AtomicU64,
    /// Whether this hub holds the relay lease now.
    pub holding: AtomicBool,
}

impl RelayStats {
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let lines: [(&str, &str, &str, u64); 4] = [
            (
                "bazaar_hub_outbox_depth",
                "gauge",
                "Outbox rows not yet published to store-commands.",
                self.depth.load(Ordering::Relaxed),
            ),
            (
                "bazaar_hub_outbox_published_total",
                "counter",
                "Outbox rows this hub has published.",
                self.published.load(Ordering::Relaxed),
            ),
            (
                "bazaar_hub_outbox_delivery_failures_total",
                "counter",
                "Failed relay deliveries (each retried with a fresh producer).",
                self.failed.load(Ordering::Relaxed),
            ),
            (
                "bazaar_hub_outbox_relay_holding",
                "gauge",
                "1 while this hub holds the relay lease.",
                u64::from(self.holding.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

pub struct Relay {
    pool: MySqlPool,
    redis: Arc<RedisLink>,
    brokers: String,
    properties: KafkaProperties,
    topic: String,
    holder: String,
    stats: Arc<RelayStats>,
}

impl Relay {
    pub fn new(
        pool: MySqlPool,
        redis: Arc<RedisLink>,
        brokers: &str,
        properties: &KafkaProperties,
        topic_prefix: &str,
        holder: &str,
        stats: Arc<RelayStats>,
    ) -> Relay {
        Relay {
            pool,
            redis,
            properties: properties.clone(),
            brokers: brokers.to_owned(),
            topic: Topics::with_prefix(topic_prefix).store_commands,
            holder: holder.to_owned(),
            stats,
        }
    }

    /// Runs until `stop`: takes the lease when free, publishes while holding it.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let lease = Lease::new(self.redis.clone(), LEASE_NAME, &self.holder, LEASE_TTL);
        let mut warned_unavailable = false;
        while !*stop.borrow() {
            self.measure_depth().await;
            match lease.hold().await {
                Ok(held) => {
                    warned_unavailable = false;
                    tracing::info!(holder = %self.holder, "relay lease taken; publishing the outbox");
                    self.stats.holding.store(true, Ordering::Relaxed);
                    let lost = held.lost();
                    self.publish_while(lost, &mut stop).await;
                    self.stats.holding.store(false, Ordering::Relaxed);
                    if held.is_lost() {
                        tracing::warn!("relay lease lost; publishing stopped");
                    }
                    held.release().await;
                }
                Err(Attempt::Unavailable) => {
                    if !warned_unavailable {
                        tracing::warn!("Redis is unreachable: the outbox relay pauses until it can hold its lease");
                        warned_unavailable = true;
                    }
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(LEASE_TTL / 3) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn measure_depth(&self) {
        if let Ok(depth) = outbox::depth(&self.pool).await {
            self.stats.depth.store(depth, Ordering::Relaxed);
        }
    }

    /// Publishes until the lease is lost or `stop`.
    async fn publish_while(
        &self,
        mut lost: watch::Receiver<bool>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut producer: Option<(FutureProducer, i32, Instant)> = None;
        let mut backoff = Duration::from_millis(200);
        let mut last_depth = Instant::now();
        let mut cursor: Option<String> = None;
        loop {
            if *lost.borrow() || *stop.borrow() {
                break;
            }
            if last_depth.elapsed() > Duration::from_secs(1) {
                self.measure_depth().await;
                last_depth = Instant::now();
            }
            let rows = match outbox::unpublished(&self.pool, cursor.as_deref(), BATCH).await {
                Ok(rows) => {
                    // A full batch may have stopped inside a store's backlog: start the
                    // next one after that store, so every store is served in turn.
                    cursor = (rows.len() == BATCH as usize)
                        .then(|| rows.last().map(|r| r.store.clone()))
                        .flatten();
                    rows
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot read the outbox");
                    if pause(backoff, &mut lost, stop).await {
                        break;
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                self.stats.depth.store(0, Ordering::Relaxed);
                if pause(IDLE_POLL, &mut lost, stop).await {
                    break;
                }
                continue;
            }
            let (active, partitions, since) = match producer.take() {
                Some((p, n, since)) if since.elapsed() < METADATA_EVERY => (p, n, since),
                Some((p, _, _)) => match partition_count(&p, &self.topic).await {
                    Ok(n) => (p, n, Instant::now()),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay cannot read the topic's metadata");
                        drop_producer(p).await;
                        if pause(backoff, &mut lost, stop).await {
                            break;
                        }
                        continue;
                    }
                },
                None => match connect(&self.brokers, &self.properties, &self.topic).await {
                    Ok((p, n)) => (p, n, Instant::now()),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay cannot reach the broker");
                        if pause(backoff, &mut lost, stop).await {
                            break;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            match self.send(&active, partitions, &rows, &lost).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    producer = Some((active, partitions, since));
                }
                Err(error) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "relay delivery failed; a fresh producer retries from the lowest unpublished row");
                    drop_producer(active).await;
                    if pause(backoff, &mut lost, stop).await {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some((p, _, _)) = producer {
            drop_producer(p).await;
        }
    }

    /// Sends `rows` (store, hub_seq order) and marks the delivered ones published.
    /// `Err` when any delivery failed; the rest of that store's rows are not sent.
    async fn send(
        &self,
        producer: &FutureProducer,
        partitions: i32,
        rows: &[OutboxRow],
        lost: &watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in rows {
            if *lost.borrow() {
                failure = Some("relay lease lost".to_owned());
                break;
            }
            let record = FutureRecord::to(&self.topic)
                .key(row.store.as_str())
                .partition(partition_for_key(row.store.as_bytes(), partitions))
                .payload(&row.payload);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push((row, delivery)),
                Err((e, _)) => {
                    failure = Some(format!("{} hub_seq {}: {e}", row.store, row.hub_seq));
                    break;
                }
            }
        }
        let (sent, futures): (Vec<&OutboxRow>, Vec<_>) = deliveries.into_iter().unzip();
        let reports = tokio::time::timeout(DELIVERY_DEADLINE, join_all(futures)).await;
        let mut delivered: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        match reports {
            Ok(reports) => {
                for (row, report) in sent.into_iter().zip(reports) {
                    match report {
                        Ok(Ok(_)) => delivered
                            .entry(row.store.as_str())
                            .or_default()
                            .push(row.hub_seq),
                        Ok(Err((e, _))) => {
                            failure.get_or_insert_with(|| {
                                format!("{} hub_seq {}: {e}", row.store, row.hub_seq)
                            });
                        }
                        Err(_) => {
                            failure.get_or_insert_with(|| "delivery report lost".to_owned());
                        }
                    }
                }
            }
            Err(_) => {
                failure.get_or_insert_with(|| "no delivery report in time".to_owned());
            }
        }
        for (store, seqs) in &delivered {
            if let Err(e) = outbox::mark_published(&self.pool, store, seqs).await {
                // Published but not marked: sent again later and skipped by the agent.
                failure.get_or_insert_with(|| format!("cannot mark rows published: {e}"));
            } else {
                self.stats
                    .published
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
            }
        }
        match failure {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }
}

/// Waits `wait`; true when the relay must stop (lease lost or shutdown).
async fn pause(
    wait: Duration,
    lost: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = lost.wait_for(|l| *l) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    *lost.borrow() || *stop.borrow()
}

fn producer(
    brokers: &str,
    properties: &KafkaProperties,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    idempotent_producer(brokers, properties, Duration::from_secs(15))
        .set("linger.ms", "2")
        .create()
}

async fn partition_count(producer: &FutureProducer, topic: &str) -> Result<i32, String> {
    let topic = topic.to_owned();
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), Timeout::After(Duration::from_secs(3)))
            .map_err(|e| format!("broker unreachable: {e}"))?;
        let n = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0) as i32;
        if n == 0 {
            return Err(format!("{topic} has no partitions yet"));
        }
        Ok(n)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A fresh producer and the topic's partition count, once the broker answers.
async fn connect(
    brokers: &str,
    properties: &KafkaProperties,
    topic: &str,
) -> Result<(FutureProducer, i32), String> {
    let producer = producer(brokers, properties)
        .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
    let n = partition_count(&producer, topic).await?;
    Ok((producer, n))
}

/// Dropping purges what is still queued and may block: off the async threads.
async fn drop_producer(producer: FutureProducer) {
    let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
}
