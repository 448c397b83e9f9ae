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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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

use crate::plan::{plan_store, Admitted, Decoded, ParkReason, Parked, Position, StoreInput};

pub const MAX_BATCH: usize = 2000;
const BATCH_WINDOW: Duration = Duration::from_millis(20);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub held: usize,
    pub parked: usize,
    /// Sub-batches split off to find messages that fail on their own.
    pub isolations: usize,
    /// Expected-transfer notices not sent for the per-day bound.
    pub transfer_notices_capped: u64,
    /// Every (store, sku) the batch named or changed, duplicates included: the stock-cache
    /// entries to refresh after the commit.
    pub touched: BTreeSet<(String, String)>,
}

impl BatchOutcome {
    pub fn merge(&mut self, other: BatchOutcome) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.held += other.held;
        self.parked += other.parked;
        self.isolations += other.isolations;
        self.transfer_notices_capped += other.transfer_notices_capped;
        self.touched.extend(other.touched);
    }
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

/// Where ingest reads from: enough to make a fresh consumer, subscribed, whenever this hub
/// has to join its group again under a new member id ([`StallWatch`]).
#[derive(Clone)]
pub struct Source {
    pub brokers: String,
    pub properties: bazaar_shared::kafka::KafkaProperties,
    pub group: String,
    pub topic: String,
    pub lag: crate::metrics::IngestLag,
}

impl Source {
    /// A new consumer (a new member of the group) subscribed to the movements topic.
    fn connect(&self) -> Result<StreamConsumer<IngestContext>, rdkafka::error::KafkaError> {
        let consumer = consumer(
            &self.brokers,
            &self.properties,
            &self.group,
            self.lag.clone(),
        )?;
        consumer.subscribe(&[self.topic.as_str()])?;
        Ok(consumer)
    }

    /// This hub's membership of the group, subscribed.
    pub fn subscribe(self) -> Result<Subscription, rdkafka::error::KafkaError> {
        let consumer = self.connect()?;
        Ok(Subscription {
            source: self,
            consumer,
        })
    }
}

/// The consumer ingest reads from, and where to make a new one.
pub struct Subscription {
    source: Source,
    consumer: StreamConsumer<IngestContext>,
}

impl Subscription {
    /// Leaves the group and joins it again as a new member; what this member stored is
    /// committed first, so the new one starts where it stopped. `false` when no new
    /// consumer could be made (the old one is kept).
    fn rejoin(&mut self) -> bool {
        let _ = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        match self.source.connect() {
            Ok(fresh) => {
                drop(std::mem::replace(&mut self.consumer, fresh));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not make a new consumer; keeping the old one");
                false
            }
        }
    }
}

pub fn consumer(
    brokers: &str,
    properties: &bazaar_shared::kafka::KafkaProperties,
    group: &str,
    lag: crate::metrics::IngestLag,
) -> Result<StreamConsumer<IngestContext>, rdkafka::error::KafkaError> {
    let mut config = base_config(brokers);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        // Offsets are stored by us, after the MySQL commit.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        // How long the broker may hold a fetch when it has nothing new. Apache Kafka answers
        // as soon as data is there, so this only sets how often an idle hub asks; tansu 0.6
        // holds every fetch, data waiting or not, for half of it (all of it below 500 ms),
        // which at librdkafka's 500 ms default puts a quarter second on every movement's
        // way in. The price is broker CPU on tansu: two idle hubs asking every 50 ms cost
        // it about a quarter of a core more than at 500 ms (docs/SCALING.md §1b);
        // `BAZAAR_HUB_KAFKA_PROPERTIES=fetch.wait.max.ms=…` sets it otherwise.
        .set("fetch.wait.max.ms", "50")
        // The group leader assigns from the metadata it holds; a topic it saw as missing
        // or empty (a broker just restarted) yields an empty assignment that is only
        // revisited when the leader next refreshes metadata (5 minutes by default).
        .set("topic.metadata.refresh.interval.ms", "5000");
    properties.apply(&mut config);
    config.create_with_context(IngestContext { lag })
}

/// Consumes until `shutdown`; every batch is applied before its offsets are stored.
pub async fn run(
    mut subscription: Subscription,
    pool: MySqlPool,
    mut shutdown: watch::Receiver<bool>,
    metrics: crate::startup::IngestCounters,
    cache: crate::cache::StockCache,
    alerting: std::sync::Arc<crate::alerting::Alerting>,
    limits: Limits,
) {
    let mut partition_check = tokio::time::interval(PARTITION_CHECK);
    partition_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut watch = StallWatch::default();
    loop {
        let first = tokio::select! {
            m = subscription.consumer.recv() => m,
            _ = partition_check.tick() => {
                // A few round trips to the broker with short timeouts: on a multi-threaded
                // runtime (the hub's) this worker hands its other tasks over meanwhile.
                let multi_threaded = tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread;
                let views = if multi_threaded {
                    tokio::task::block_in_place(|| partition_views(&subscription.consumer))
                } else {
                    partition_views(&subscription.consumer)
                };
                if let Some(views) = views {
                    if let Some(stalled) = watch.observe(&views) {
                        tracing::warn!(partitions = ?stalled, next_after_checks = watch.needed,
                            "partitions this hub does not hold have messages waiting and their group offsets have not moved; joining the group again as a new member");
                        if subscription.rejoin() {
                            metrics.rejoined();
                        }
                    }
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
            match tokio::time::timeout_at(deadline, subscription.consumer.recv()).await {
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
            match apply_batch_with(&pool, &batch, &limits).await {
                Ok(outcome) => break outcome,
                // Only transient errors come back: the batch is tried again as it is.
                Err(e) => {
                    metrics.transient_failure();
                    tracing::warn!(error = %e, size = batch.len(), "batch not applied (the database is away or busy); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        metrics.record(&outcome);
        // Both before the offsets (a crash re-delivers the batch, which refreshes and
        // evaluates again), side by side: they read different rows and write nothing ingest
        // reads.
        tokio::join!(
            cache.refresh(&pool, &outcome.touched),
            alerting.after_change(&outcome.touched)
        );
        if let Err(e) = store_offsets(&subscription.consumer, &batch) {
            tracing::warn!(error = %e, "could not store offsets; the batch will be re-delivered and skipped as duplicates");
        }
        tracing::debug!(?outcome, "batch applied");
    }
    // Commit what was stored before leaving the group.
    let _ = subscription
        .consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
}

/// How often a hub looks at the partitions it does not hold.
const PARTITION_CHECK: Duration = Duration::from_secs(5);
/// Checks without progress before this member joins its group again (about 15 s), then
/// twice as many after each rejoin that did not help, up to [`MAX_STALLED_CHECKS`].
const STALLED_CHECKS: u32 = 3;
/// About two minutes: a peer that is slow for a reason of its own (its database away) is
/// not rebalanced more often than this.
const MAX_STALLED_CHECKS: u32 = 24;

/// One partition of the movements topic as this member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionView {
    partition: i32,
    /// Assigned to this member.
    held: bool,
    /// The group's committed offset (the low watermark when it has none).
    committed: i64,
    high_watermark: i64,
}

/// Finds partitions nobody consumes. A partition this member does not hold, with messages
/// beyond the group's committed offset, whose offset has not moved over several checks, is
/// stranded: its owner is gone. Seen on tansu 0.6: a hub killed -9 and restarted within the
/// session timeout leaves its old member in the generation, holding its partitions, and the
/// broker drops the dead member's heartbeat without starting a new generation, so the
/// survivors never get those partitions. It is also what a group left with an empty
/// assignment after a broker restart looks like. (tansu answers no ListGroups or
/// DescribeGroups, so the group's members cannot be asked.) The cure is a JoinGroup by a
/// new member, which makes the broker form a new generation.
#[derive(Debug)]
struct StallWatch {
    /// The committed offset of each stalled-looking partition at the last check.
    last: HashMap<i32, i64>,
    stalled_checks: u32,
    /// Checks in a row that found nothing stalled.
    healthy_checks: u32,
    needed: u32,
}

impl Default for StallWatch {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            stalled_checks: 0,
            healthy_checks: 0,
            needed: STALLED_CHECKS,
        }
    }
}

impl StallWatch {
    /// One check; `Some(partitions)` when this member should join the group again.
    fn observe(&mut self, views: &[PartitionView]) -> Option<Vec<i32>> {
        let waiting: HashMap<i32, i64> = views
            .iter()
            .filter(|v| !v.held && v.high_watermark > v.committed)
            .map(|v| (v.partition, v.committed))
            .collect();
        let stalled: Vec<i32> = {
            let mut s: Vec<i32> = waiting
                .iter()
                .filter(|(p, c)| self.last.get(p) == Some(c))
                .map(|(p, _)| *p)
                .collect();
            s.sort_unstable();
            s
        };
        if stalled.is_empty() {
            self.stalled_checks = 0;
            self.healthy_checks += 1;
            // As long healthy as the longest patience: the rejoin worked, and a later
            // stall is a new one.
            if self.healthy_checks >= MAX_STALLED_CHECKS {
                self.needed = STALLED_CHECKS;
            }
        } else {
            self.stalled_checks += 1;
            self.healthy_checks = 0;
        }
        self.last = waiting;
        if self.stalled_checks < self.needed {
            return None;
        }
        self.stalled_checks = 0;
        self.last.clear();
        self.needed = (self.needed * 2).min(MAX_STALLED_CHECKS);
        Some(stalled)
    }
}

/// Every partition of the subscribed topic with the group's committed offset and the high
/// watermark; `None` when the broker cannot say right now (the check is skipped).
fn partition_views(consumer: &StreamConsumer<IngestContext>) -> Option<Vec<PartitionView>> {
    let timeout = Duration::from_secs(1);
    let topic = consumer
        .subscription()
        .ok()?
        .elements()
        .first()
        .map(|e| e.topic().to_owned())?;
    let held: HashSet<i32> = consumer
        .assignment()
        .ok()?
        .elements_for_topic(&topic)
        .iter()
        .map(|e| e.partition())
        .collect();
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
    let mut views = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, timeout).ok()?;
        let committed = match committed.find_partition(&topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => low,
        };
        views.push(PartitionView {
            partition: p,
            held: held.contains(&p),
            committed,
            high_watermark: high,
        });
    }
    Some(views)
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    fn view(partition: i32, held: bool, committed: i64, high: i64) -> PartitionView {
        PartitionView {
            partition,
            held,
            committed,
            high_watermark: high,
        }
    }

    #[test]
    fn a_partition_held_by_a_dead_member_is_found_after_three_still_checks() {
        let mut watch = StallWatch::default();
        let views = [view(0, true, 10, 20), view(8, false, 5, 30)];
        // The first check only records the offsets; three more without movement act.
        assert_eq!(watch.observe(&views), None);
        assert_eq!(watch.observe(&views), None);
        assert_eq!(watch.observe(&views), None);
        assert_eq!(watch.observe(&views), Some(vec![8]));
        // After a rejoin that did not help, twice the patience.
        for _ in 0..6 {
            assert_eq!(watch.observe(&views), None);
        }
        assert_eq!(watch.observe(&views), Some(vec![8]));
        assert_eq!(watch.needed, 12);
    }

    #[test]
    fn progress_caught_up_partitions_and_held_ones_never_trigger() {
        let mut watch = StallWatch::default();
        for round in 0..50 {
            let views = [
                // Another member consumes it: its offset moves.
                view(1, false, round, round + 100),
                // Caught up: nothing waits.
                view(2, false, 40, 40),
                // Ours, however slow: our own loop is not stranded.
                view(3, true, 0, 1_000),
            ];
            assert_eq!(watch.observe(&views), None, "round {round}");
        }
    }

    #[test]
    fn patience_doubles_to_its_bound_and_resets_after_as_long_healthy() {
        let mut watch = StallWatch::default();
        let stuck = [view(4, false, 7, 9)];
        let mut rejoins = 0;
        for _ in 0..400 {
            if watch.observe(&stuck).is_some() {
                rejoins += 1;
            }
        }
        assert_eq!(watch.needed, MAX_STALLED_CHECKS);
        // After 4, then 7, 13 and 25 checks, then every 25 (the check after a rejoin only
        // records): at 4, 11, 24, 49, 74, ..., 399.
        assert_eq!(rejoins, 18);
        // The 400th check only recorded: one healthy check so far.
        assert_eq!(watch.healthy_checks, 1);
        // Caught up on one, another consumed by its owner: healthy, and the patience earned
        // goes back to its start only once it has been so for MAX_STALLED_CHECKS checks.
        let healthy = |round: u32| [view(4, false, 9, 9), view(5, false, i64::from(round), 99)];
        for round in 0..MAX_STALLED_CHECKS - 2 {
            assert_eq!(watch.observe(&healthy(round)), None);
            assert_eq!(watch.needed, MAX_STALLED_CHECKS, "round {round}");
        }
        assert_eq!(watch.observe(&healthy(99)), None);
        assert_eq!(watch.needed, STALLED_CHECKS);
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

/// The ledger's unique id refused a row (1062 on `movements_id`).
fn is_reused_id(e: &sqlx::Error) -> bool {
    mysql_error_number(e) == Some(1062) && e.to_string().contains("movements_id")
}

pub(crate) fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    mysql_error_number(e).is_some_and(|n| matches!(n, 1213 | 1205))
}

fn mysql_error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// An error the database or the network will get over by itself: the batch is tried again
/// as it is. Anything else is the batch's own doing and is isolated.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Deadlock, lock wait timeout, server gone or shutting down, connection killed,
        // too many connections, read-only during a switch-over, query interrupted.
        sqlx::Error::Database(_) => mysql_error_number(e).is_some_and(|n| {
            matches!(
                n,
                1213 | 1205
                    | 1040
                    | 1053
                    | 1290
                    | 1317
                    | 1836
                    | 1927
                    | 2002
                    | 2003
                    | 2006
                    | 2013
                    | 4031
            )
        }),
        _ => false,
    }
}

/// Errors that a single message causes: constraint and range violations, values the
/// database refuses. Any other error on a lone message is first checked against the
/// schema, so a broken database is never mistaken for a poisoned batch.
fn is_message_specific(e: &ApplyError) -> bool {
    match e {
        ApplyError::Panicked(_) => true,
        ApplyError::Db(sqlx::Error::Encode(_)) => true,
        ApplyError::Db(db) => mysql_error_number(db).is_some_and(|n| {
            matches!(
                n,
                1048 | 1062 | 1264 | 1292 | 1366 | 1406 | 1690 | 3140 | 4025
            )
        }),
    }
}

/// Why a batch did not apply.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A library panicked on this batch's data (e.g. a value it cannot encode).
    #[error("the apply panicked: {0}")]
    Panicked(String),
}

/// Bounds on what one store's messages can make the hub hold or do (each a setting, see
/// `HubConfig`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages further than this ahead of a store's applied seq are parked, not held.
    pub max_held_ahead: u64,
    /// Expected-transfer notices one store may cause for another per UTC day; beyond it
    /// the transfer is applied and no notice is sent (an alert says so).
    pub max_transfer_notices_per_day: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_held_ahead: 10_000,
            max_transfer_notices_per_day: 1_000,
        }
    }
}

/// Applies one batch exactly once, with the default [`Limits`].
pub async fn apply_batch(
    pool: &MySqlPool,
    batch: &[RawMessage],
) -> Result<BatchOutcome, sqlx::Error> {
    apply_batch_with(pool, batch, &Limits::default()).await
}

/// Applies one batch. A transient error is returned (the caller tries the batch again as
/// it is); any other failure is isolated: the batch is split in halves, each applied on
/// its own (exactly once all the same, by the ledger's key), down to the message that
/// fails by itself, which is parked with its reason and Kafka position, its seq consumed
/// (see `plan`). So the error of one message never stops the others.
pub async fn apply_batch_with(
    pool: &MySqlPool,
    batch: &[RawMessage],
    limits: &Limits,
) -> Result<BatchOutcome, sqlx::Error> {
    apply_or_isolate(pool, batch, limits).await
}

fn apply_or_isolate<'a>(
    pool: &'a MySqlPool,
    batch: &'a [RawMessage],
    limits: &'a Limits,
) -> futures::future::BoxFuture<'a, Result<BatchOutcome, sqlx::Error>> {
    use futures::FutureExt;
    async move {
        let error = match apply_once(pool, batch, &HashMap::new(), limits).await {
            Ok(outcome) => return Ok(outcome),
            Err(ApplyError::Db(e)) if is_transient(&e) => return Err(e),
            Err(e) => e,
        };
        if let [message] = batch {
            return park_alone(pool, message, error, limits).await;
        }
        tracing::warn!(error = %error, size = batch.len(), "batch failed on its own data; isolating the message(s) at fault");
        let (left, right) = batch.split_at(batch.len() / 2);
        let mut outcome = apply_or_isolate(pool, left, limits).await?;
        outcome.merge(apply_or_isolate(pool, right, limits).await?);
        outcome.isolations += 1;
        Ok(outcome)
    }
    .boxed()
}

/// The message fails on its own: applied as refused (parked, its seq consumed by a void
/// when it is the next one). A failure that is not the message's kind is first checked
/// against the schema: a broken database is an error to wait out, not a poison.
async fn park_alone(
    pool: &MySqlPool,
    message: &RawMessage,
    error: ApplyError,
    limits: &Limits,
) -> Result<BatchOutcome, sqlx::Error> {
    if !is_message_specific(&error) {
        schema_answers(pool).await?;
    }
    let why: String = error.to_string().chars().take(500).collect();
    tracing::error!(error = %why, topic = %message.position.topic, partition = message.position.partition,
        offset = message.position.offset, "a message cannot be applied; parking it");
    let refused = HashMap::from([(message.position.clone(), why.clone())]);
    match apply_once(pool, std::slice::from_ref(message), &refused, limits).await {
        Ok(mut outcome) => {
            outcome.isolations += 1;
            Ok(outcome)
        }
        Err(ApplyError::Db(e)) if is_transient(&e) => Err(e),
        Err(again) => {
            // Even its void cannot be written: park the bytes alone, consuming nothing.
            let mut tx = pool.begin().await?;
            let parked = Parked {
                position: message.position.clone(),
                payload: message.payload.clone(),
                reason: ParkReason::ApplyFailed,
                detail: format!("{why}; parking it as refused failed too: {again}"),
                envelope: None,
                consumed: false,
            };
            insert_parked(&mut tx, &[parked], Utc::now()).await?;
            tx.commit().await?;
            Ok(BatchOutcome {
                parked: 1,
                isolations: 1,
                ..BatchOutcome::default()
            })
        }
    }
}

/// Every table ingest writes answers a trivial query.
async fn schema_answers(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    for table in [
        "store_sync",
        "stores",
        "movements",
        "stock",
        "daily_sales",
        "held_events",
        "parked_events",
        "outbox",
    ] {
        sqlx::query(&format!("SELECT 1 FROM {table} LIMIT 0"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// One transaction for the batch, tried again on a deadlock; a panic inside (a library's
/// `expect` on data it cannot handle) is an error of this batch, not the end of ingest.
async fn apply_once(
    pool: &MySqlPool,
    batch: &[RawMessage],
    refused: &HashMap<Position, String>,
    limits: &Limits,
) -> Result<BatchOutcome, ApplyError> {
    use futures::FutureExt;
    let mut attempt = 0;
    // Ids are unique by construction (UUIDs), so the ledger is first written without asking
    // which ids it already holds: that question costs as much as the insert itself at 2,000
    // stores a batch. An id already in the ledger then fails the insert (1062 on
    // `movements_id`), and the batch is applied again with the question asked, which parks
    // the reused id (`id_reused`) and applies the rest.
    let mut check_ids = false;
    loop {
        let mut tx = crate::db::begin_read_committed(pool).await?;
        let applied =
            std::panic::AssertUnwindSafe(apply_in(&mut tx, batch, refused, limits, check_ids))
                .catch_unwind()
                .await;
        let result = match applied {
            Ok(Ok(outcome)) => tx.commit().await.map(|()| outcome),
            Ok(Err(e)) => {
                let _ = tx.rollback().await;
                Err(e)
            }
            Err(panic) => {
                drop(tx);
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                return Err(ApplyError::Panicked(what));
            }
        };
        match result {
            Ok(outcome) => return Ok(outcome),
            Err(e) if !check_ids && is_reused_id(&e) => {
                check_ids = true;
                tracing::info!("an id of the batch is already in the ledger; applying it again with the ids checked");
            }
            Err(e) if is_retryable_conflict(&e) && attempt < 10 => {
                attempt += 1;
                tracing::info!(attempt, "deadlock; retrying the batch");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

struct Ledger {
    rows: Vec<(Admitted, i64)>,
    stock: BTreeMap<(String, String), i64>,
    sales: BTreeMap<(String, String, NaiveDate), i64>,
}

/// Builds a `WHERE col IN (...)` list; callers never pass an empty list.
fn push_in<'q, T>(q: &mut QueryBuilder<'q, MySql>, values: impl IntoIterator<Item = T>)
where
    T: 'q + sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + Send,
{
    let mut sep = q.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    sep.push_unseparated(")");
}

async fn apply_in(
    tx: &mut Transaction<'_, MySql>,
    batch: &[RawMessage],
    refused: &HashMap<Position, String>,
    limits: &Limits,
    check_ids: bool,
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
                    held: false,
                }),
            Err(e) => parked.push(Parked {
                position: m.position.clone(),
                payload: m.payload.clone(),
                reason: ParkReason::Malformed,
                detail: e.to_string(),
                envelope: None,
                consumed: false,
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
    let mut held_from: HashMap<String, u64> = HashMap::new();
    let mut taken: HashSet<uuid::Uuid> = HashSet::new();
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
        push_in(&mut q, &lock_set);
        q.push(" ORDER BY store FOR UPDATE");
        for row in q.build().fetch_all(&mut **tx).await? {
            watermarks.insert(row.try_get("store")?, row.try_get("last_seq")?);
        }
        let mut q = QueryBuilder::<MySql>::new("SELECT id, signing_key FROM stores WHERE id IN (");
        push_in(&mut q, &stores);
        for row in q.build().fetch_all(&mut **tx).await? {
            keys.insert(row.try_get("id")?, row.try_get("signing_key")?);
        }
        // Which of the batch's stores hold messages from earlier batches (usually none):
        // one statement for the batch, whatever the number of stores.
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT store, CAST(MIN(seq) AS UNSIGNED) AS first FROM held_events WHERE origin = 'store' AND store IN (",
        );
        push_in(&mut q, &stores);
        q.push(" GROUP BY store");
        for row in q.build().fetch_all(&mut **tx).await? {
            held_from.insert(row.try_get("store")?, row.try_get("first")?);
        }
        // Ids the ledger already holds among the messages that may be applied (asked only
        // once the optimistic insert met one, see `apply_once`).
        let candidates: Vec<String> = by_store
            .iter()
            .filter(|_| check_ids)
            .flat_map(|(store, ms)| {
                let last = watermarks.get(store).copied().unwrap_or(u64::MAX);
                ms.iter()
                    .filter(move |m| m.received.envelope.seq > last)
                    .map(|m| m.received.envelope.id.to_string())
            })
            .collect();
        for chunk in candidates.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<MySql>::new("SELECT id FROM movements WHERE id IN (");
            push_in(&mut q, chunk);
            for row in q.build().fetch_all(&mut **tx).await? {
                let id: String = row.try_get("id")?;
                if let Ok(id) = uuid::Uuid::parse_str(&id) {
                    taken.insert(id);
                }
            }
        }
    }

    let mut ledger = Ledger {
        rows: Vec::new(),
        stock: BTreeMap::new(),
        sales: BTreeMap::new(),
    };
    let mut holds: Vec<(Envelope, Vec<u8>)> = Vec::new();
    let mut drained_held: Vec<(String, u64)> = Vec::new();
    let mut new_watermarks: Vec<(String, u64, Option<DateTime<Utc>>, bool)> = Vec::new();
    let no_refusals = HashMap::new();
    for (store, mut messages) in by_store {
        let (Some(last_seq), Some(key)) = (watermarks.get(&store).copied(), keys.get(&store))
        else {
            parked.extend(messages.into_iter().map(|m| Parked {
                detail: format!("store {store} is not registered at this hub"),
                position: m.position,
                payload: m.payload,
                reason: ParkReason::UnknownStore,
                envelope: Some(m.received.envelope),
                consumed: false,
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
                consumed: false,
            }));
            continue;
        };
        // Held messages that may follow on now take part in the plan like new ones.
        if held_from.contains_key(&store) {
            messages.extend(held_messages(tx, &store, last_seq).await?);
        }
        let low: Vec<u64> = messages
            .iter()
            .map(|m| m.received.envelope.seq)
            .filter(|s| *s <= last_seq)
            .collect();
        let applied_ids = applied_ids(tx, &store, &low).await?;
        let refused_here = if refused.is_empty() {
            &no_refusals
        } else {
            refused
        };
        let input = StoreInput {
            last_seq,
            key: &key,
            applied_ids: &applied_ids,
            now,
            max_ahead: limits.max_held_ahead,
            refused: refused_here,
        };
        let plan = plan_store(&input, messages, &mut taken);
        outcome.duplicates += plan.duplicates;
        outcome.held += plan.hold.len();
        parked.extend(plan.park);
        holds.extend(plan.hold);
        let mut latest_event: Option<DateTime<Utc>> = None;
        for admitted in plan.apply {
            latest_event = latest_event.max(Some(admitted.envelope.occurred_at));
            add_to_ledger(tx, &mut ledger, admitted).await?;
            outcome.applied += 1;
        }
        if held_from.contains_key(&store) && plan.last_seq > last_seq {
            drained_held.push((store.clone(), plan.last_seq));
        }
        // Every store of the batch: its row says when the hub last heard from it, and,
        // when something was applied, up to where and when.
        let applied = plan.last_seq != last_seq || latest_event.is_some();
        new_watermarks.push((store, plan.last_seq, latest_event, applied));
    }

    write_ledger(tx, &ledger, now).await?;
    for chunk in holds.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO held_events (store, origin, seq, id, payload, received_at) ",
        );
        q.push_values(chunk, |mut b, (e, payload)| {
            b.push_bind(e.store.as_str())
                .push_bind("store")
                .push_bind(e.seq)
                .push_bind(e.id.to_string())
                .push_bind(payload.as_slice())
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    for (store, last) in &drained_held {
        sqlx::query("DELETE FROM held_events WHERE store = ? AND origin = 'store' AND seq <= ?")
            .bind(store)
            .bind(last)
            .execute(&mut **tx)
            .await?;
    }
    outcome.transfer_notices_capped = announce_transfers(tx, &ledger.rows, limits, now).await?;
    touched.extend(ledger.stock.keys().cloned());
    for chunk in new_watermarks.chunks(INSERT_CHUNK) {
        // One statement for every store of the batch; the rows exist and are locked above.
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO store_sync (store, last_seq, last_applied_at, last_event_at, last_seen_at) ",
        );
        q.push_values(chunk, |mut b, (store, last, latest_event, applied)| {
            b.push_bind(store)
                .push_bind(*last)
                .push_bind(applied.then_some(now))
                .push_bind(*latest_event)
                .push_bind(now);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq),
              last_applied_at = COALESCE(VALUES(last_applied_at), last_applied_at),
              last_event_at = IF(VALUES(last_event_at) IS NULL, COALESCE(last_event_at, VALUES(last_applied_at)),
                                 GREATEST(COALESCE(last_event_at, VALUES(last_event_at)), VALUES(last_event_at))),
              last_seen_at = VALUES(last_seen_at)",
        );
        q.build().execute(&mut **tx).await?;
    }
    outcome.parked = parked.len();
    outcome.touched = touched;
    if !parked.is_empty() {
        for p in &parked {
            tracing::warn!(reason = p.reason.as_str(), detail = %p.detail, topic = %p.position.topic,
                partition = p.position.partition, offset = p.position.offset, "parked a message");
        }
        insert_parked(tx, &parked, now).await?;
    }
    Ok(outcome)
}

/// What a parked row keeps of its payload: enough to read and verify it by hand, never
/// enough to make one INSERT outgrow `max_allowed_packet`.
pub const PARKED_PAYLOAD_KEPT: usize = 4096;

/// Parks messages (a re-delivered one is parked once: the Kafka position is unique) and
/// opens one `parked_movement` alert per store.
async fn insert_parked(
    tx: &mut Transaction<'_, MySql>,
    parked: &[Parked],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    use sha2::Digest;
    // A few hundred bytes of columns plus the kept payload, well under 1 MiB per statement.
    for chunk in parked.chunks(100) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO parked_events (store, seq, event_id, reason, detail, payload, payload_len, payload_sha256, consumed_seq, topic, kafka_partition, kafka_offset, parked_at) ",
        );
        q.push_values(chunk, |mut b, p| {
            let kept = &p.payload[..p.payload.len().min(PARKED_PAYLOAD_KEPT)];
            b.push_bind(p.envelope.as_ref().map(|e| e.store.to_string()))
                .push_bind(p.envelope.as_ref().map(|e| e.seq))
                .push_bind(p.envelope.as_ref().map(|e| e.id.to_string()))
                .push_bind(p.reason.as_str())
                .push_bind(p.detail.chars().take(1000).collect::<String>())
                .push_bind(kept.to_vec())
                .push_bind(p.payload.len() as u64)
                .push_bind(hex::encode(sha2::Sha256::digest(&p.payload)))
                .push_bind(p.consumed)
                .push_bind(p.position.topic.clone())
                .push_bind(p.position.partition)
                .push_bind(p.position.offset)
                .push_bind(now);
        });
        q.build().execute(&mut **tx).await?;
    }
    let mut by_store: BTreeMap<&str, usize> = BTreeMap::new();
    for p in parked {
        if let Some(e) = &p.envelope {
            *by_store.entry(e.store.as_str()).or_default() += 1;
        }
    }
    for (store, n) in by_store {
        crate::alerting::raise_operational(
            tx,
            crate::alerting::Operational {
                kind: "parked_movement",
                severity: "critical",
                store: Some(store),
                message: format!(
                    "{n} message(s) of store {store} were parked; see GET /v1/parked?store={store} (a parked movement is in neither figure until dealt with)"
                ),
                detail: serde_json::json!({"parked": n}),
            },
            now,
        )
        .await?;
    }
    Ok(())
}

/// A store's held messages from its watermark on, decoded (they were verified when held).
async fn held_messages(
    tx: &mut Transaction<'_, MySql>,
    store: &str,
    last_seq: u64,
) -> Result<Vec<Decoded>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, payload FROM held_events WHERE store = ? AND origin = 'store' AND seq > ? ORDER BY seq LIMIT 10000",
    )
    .bind(store)
    .bind(last_seq)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: u64 = row.try_get("seq")?;
        let payload: Vec<u8> = row.try_get("payload")?;
        if let Ok(received) = Envelope::decode(&payload) {
            out.push(Decoded {
                // Held rows have no Kafka position of their own any more.
                position: Position {
                    topic: "held_events".into(),
                    partition: -1,
                    offset: seq as i64,
                },
                payload,
                received,
                held: true,
            });
        }
    }
    Ok(out)
}

/// Every applied transfer_out tells its receiving store, in this transaction, that goods
/// are on their way (DESIGN §5), up to `max_transfer_notices_per_day` per pair of stores
/// and day; past that the notice is not sent (so one store cannot flood another's command
/// partition) and a `transfer_notices_capped` alert says so. A transfer to a store this
/// hub does not know sends none. Returns the notices held back.
async fn announce_transfers(
    tx: &mut Transaction<'_, MySql>,
    rows: &[(Admitted, i64)],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut capped = 0;
    for (a, _) in rows
        .iter()
        .filter(|(a, _)| a.envelope.kind == Kind::TransferOut)
    {
        let e = &a.envelope;
        let Some(to) = e.to_store.as_ref() else {
            continue;
        };
        sqlx::query(
            "INSERT INTO transfer_notice_counts (from_store, to_store, day, notices) VALUES (?, ?, ?, 1)
             ON DUPLICATE KEY UPDATE notices = notices + 1",
        )
        .bind(e.store.as_str())
        .bind(to.as_str())
        .bind(now.date_naive())
        .execute(&mut **tx)
        .await?;
        let notices: u64 = sqlx::query_scalar(
            "SELECT notices FROM transfer_notice_counts WHERE from_store = ? AND to_store = ? AND day = ?",
        )
        .bind(e.store.as_str())
        .bind(to.as_str())
        .bind(now.date_naive())
        .fetch_one(&mut **tx)
        .await?;
        if notices > limits.max_transfer_notices_per_day {
            capped += 1;
            crate::alerting::raise_operational(
                tx,
                crate::alerting::Operational {
                    kind: "transfer_notices_capped",
                    severity: "warning",
                    store: Some(e.store.as_str()),
                    message: format!(
                        "store {} sent more than {} transfers to {to} today; the rest are applied but {to} is not told (BAZAAR_HUB_MAX_TRANSFER_NOTICES_PER_DAY)",
                        e.store, limits.max_transfer_notices_per_day
                    ),
                    detail: serde_json::json!({"to_store": to.as_str(), "notices": notices}),
                },
                now,
            )
            .await?;
            continue;
        }
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
    Ok(capped)
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
    push_in(&mut q, seqs.iter().copied());
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
/// A void moves nothing.
async fn add_to_ledger(
    tx: &mut Transaction<'_, MySql>,
    ledger: &mut Ledger,
    admitted: Admitted,
) -> Result<(), sqlx::Error> {
    let envelope = &admitted.envelope;
    let key = (envelope.store.to_string(), envelope.sku.to_string());
    let mut delta = envelope.delta;
    if envelope.kind == Kind::Void {
        ledger.rows.push((admitted, 0));
        return Ok(());
    }
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
        delta = bazaar_shared::envelope::count_delta(counted, view);
        if delta != envelope.delta {
            tracing::info!(store = %key.0, sku = %key.1, agent_delta = envelope.delta, hub_delta = delta,
                "count delta differs between agent and hub views; the hub's view applies");
        }
    }
    // Checked: an overflow is this message's error (isolated and parked), never a panic.
    let slot = ledger.stock.entry(key.clone()).or_insert(0);
    *slot = slot.checked_add(delta).ok_or_else(|| {
        sqlx::Error::Encode(format!("stock of {}/{} would overflow", key.0, key.1).into())
    })?;
    if matches!(envelope.kind, Kind::Sale | Kind::Return) {
        *ledger
            .sales
            .entry((key.0, key.1, envelope.occurred_at.date_naive()))
            .or_insert(0) -= delta;
    }
    ledger.rows.push((admitted, delta));
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
            "INSERT INTO movements (store, origin, seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, to_store, from_store, voids, occurred_at, reported_occurred_at, received_at) ",
        );
        q.push_values(chunk, |mut b, (a, delta)| {
            let e = &a.envelope;
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
                .push_bind(e.voids.map(|v| v.to_string()))
                .push_bind(e.occurred_at)
                .push_bind(a.reported_occurred_at.as_deref())
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
        // The table's CHECK bounds on_hand: a movement past it fails here and is isolated.
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
