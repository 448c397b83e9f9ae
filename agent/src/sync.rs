//! The sync pump: pending ledger rows, in seq order, to `{prefix}movements`.
//!
//! Rules (DESIGN §5–§6):
//! - Nothing is sent before the store's snapshot is installed (`bootstrap`), so a
//!   re-installed agent never reuses a seq; movements are still accepted meanwhile.
//! - The producer is idempotent with `acks=all`; a row becomes `sent` only when its
//!   delivery report succeeds. A failed or missing report leaves it `pending`: it is
//!   produced again, and the hub's (store, origin, seq) check makes that harmless.
//! - The hub's applied seq, polled over HTTP, marks rows `acked`. Rows sent but not
//!   acknowledged within `resend_after` while the hub's figure stands still go back to
//!   `pending` and are sent again from the lowest.
//! - With the broker or hub away the pump backs off (capped) and resumes in order.
//! - A row that cannot be encoded never stalls the rows after it: it is parked and a void
//!   takes its seq (`ledger::void_row`), sent in its place. A row the hub refused and
//!   consumed with a void of its own (listed at the hub's `/v1/parked`) is parked here
//!   too, already acknowledged, so both sides leave it out of stock.
//! - Nothing is sent in a run until one poll of the hub's store state has shown this
//!   ledger is the one that numbers the store's seqs (`ledger::check_copy`); a restored
//!   older copy or a clone stops sending for good (until `run --resnapshot`), with a
//!   critical alert, and keeps serving the tills.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazaar_shared::topics::DEFAULT_PARTITIONS;
use bazaar_shared::Topics;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use crate::hub_client::HubClient;
use crate::ledger;
use crate::startup::Agent;

const BATCH: u32 = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const ACK_POLL: Duration = Duration::from_secs(1);
/// How long `send_batch` waits for delivery reports: past `message.timeout.ms`, so a
/// report that never comes cannot stall the pump.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(25);

/// What the pump knows, for `/v1/status`.
#[derive(Debug, Default)]
pub struct SyncStatus {
    pub broker_online: AtomicBool,
    /// Idempotent producers created since start: each takes a producer id that the broker
    /// keeps for a day (KIP-854), so they are budgeted ([`ProducerBudget`]).
    pub producers_created: std::sync::atomic::AtomicU64,
    pub hub_online: AtomicBool,
    pub first_contact_done: AtomicBool,
    /// One poll of the hub's store state found this ledger's seqs to be its own.
    pub copy_verified: AtomicBool,
    /// This ledger is a restored or cloned copy: nothing is sent (see `ledger::META_DIVERGED`).
    pub diverged: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

impl SyncStatus {
    pub(crate) fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = error;
        }
    }
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// Sends the outbox and follows the hub's acknowledgements. Runs only after
/// [`crate::bootstrap::ensure`] has let this ledger send (see `startup`); as a last guard,
/// a ledger that has never heard from the hub sends nothing.
pub async fn run(agent: Arc<Agent>, hub: HubClient, mut shutdown: watch::Receiver<bool>) {
    let may_send = agent
        .read(crate::bootstrap::needed)
        .await
        .map(|needed| !needed)
        .unwrap_or(false);
    if !may_send {
        tracing::error!("the sync pump started before bootstrap finished; nothing will be sent");
        return;
    }
    let topics = Topics::with_prefix(&agent.config.topic_prefix);
    let mut backoff = Backoff::new();
    loop {
        let names = topics.all();
        // Raced against shutdown: with the broker down, topic creation can wait out
        // librdkafka's request timeout.
        let created = tokio::select! {
            created = bazaar_shared::kafka::ensure_topics_on(agent.config.kafka_config(), &names, DEFAULT_PARTITIONS, 1) => created,
            _ = shutdown.changed() => return,
        };
        match created {
            Ok(()) => break,
            Err(e) => {
                agent.sync.broker_online.store(false, Ordering::Relaxed);
                agent.sync.set_error(Some(e.clone()));
                tracing::warn!(error = %e, "broker not ready; movements stay queued");
            }
        }
        tokio::select! {
            _ = backoff.wait() => {}
            _ = shutdown.changed() => return,
        }
    }
    agent.sync.copy_verified.store(false, Ordering::Relaxed);
    let acks = tokio::spawn(acknowledgements(agent.clone(), hub, shutdown.clone()));
    pump(&agent, &topics.movements, &mut shutdown).await;
    acks.abort();
}

/// The operator's properties (TLS, SASL) come from `kafka_config`; the settings the
/// outbox's guarantees rest on are set over them.
fn producer(
    config: &crate::config::AgentConfig,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut client = config.kafka_config();
    client
        // The store's partition is murmur2(store) mod N, as Apache Kafka's Java client
        // computes it (DESIGN §5): the hub finds it again to tell whether it has consumed
        // a store's movements to the end (snapshots). librdkafka's default is CRC32.
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "15000")
        .set("queue.buffering.max.messages", "200000");
    client.create()
}

/// A producer lives only as long as its deliveries succeed. After any failure it is
/// dropped (its queue purged) and a fresh one, with a fresh producer id, takes over once
/// the broker answers a metadata request. That way a producer never has to bump its epoch
/// after timed-out messages (KIP-360), which some Kafka-API brokers mishandle (tansu 0.6
/// panics; see README), and a fatal idempotence error can never wedge the pump. Nothing
/// is lost: failed rows are still `pending` and go again from the lowest.
async fn pump(agent: &Arc<Agent>, topic: &str, shutdown: &mut watch::Receiver<bool>) {
    let store = agent.config.store.clone();
    let mut backoff = Backoff::new();
    let mut producer: Option<FutureProducer> = None;
    let mut budget = ProducerBudget::default();
    while !stopping(shutdown) {
        let committed = agent.writer.committed.clone();
        let notified = committed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !may_send(agent) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let checked = match agent
            .read_for_pump(|conn| ledger::pending_batch_checked(conn, BATCH))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = ?e, "cannot read the outbox");
                backoff.wait().await;
                continue;
            }
        };
        let (batch, unreadable) = readable_prefix(checked);
        if let Some((seq, why)) = unreadable.filter(|_| batch.is_empty()) {
            park_unsendable(
                agent,
                seq,
                format!("the stored row cannot be read back: {why}"),
            )
            .await;
            continue;
        }
        if batch.is_empty() {
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let active = match producer.take() {
            Some(p) => p,
            None => match connect(&agent.config, topic, &mut budget).await {
                Ok(p) => {
                    agent.sync.producers_created.fetch_add(1, Ordering::Relaxed);
                    p
                }
                Err(e) => {
                    agent.sync.broker_online.store(false, Ordering::Relaxed);
                    agent.sync.set_error(Some(e));
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            },
        };
        let (failure, unencodable) = send_batch(agent, &active, topic, &store, &batch).await;
        if let Some((seq, why)) = unencodable {
            park_unsendable(
                agent,
                seq,
                format!("it cannot be encoded for the wire: {why}"),
            )
            .await;
        }
        match failure {
            None => {
                agent.sync.broker_online.store(true, Ordering::Relaxed);
                agent.sync.set_error(None);
                backoff.reset();
                producer = Some(active);
            }
            Some((seq, error)) => {
                agent.sync.broker_online.store(false, Ordering::Relaxed);
                agent.sync.set_error(Some(format!("seq {seq}: {error}")));
                tracing::warn!(seq, error = %error, "delivery failed; a fresh producer retries from the lowest pending row");
                // Dropping purges what is still queued; off the async threads, as it may block.
                let _ = tokio::task::spawn_blocking(move || drop(active)).await;
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    if let Some(p) = producer {
        // Leave what is in flight a moment to be reported; what is not stays pending.
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let _ = p.flush(Timeout::After(Duration::from_secs(2)));
        })
        .await;
    }
}

/// Whether this run may send: the hub's state showed the seqs are this ledger's own, and
/// no earlier run found it to be a copy.
fn may_send(agent: &Agent) -> bool {
    agent.sync.copy_verified.load(Ordering::Relaxed) && !agent.sync.diverged.load(Ordering::Relaxed)
}

/// The rows up to the first that cannot be read back, and that one's seq and error.
fn readable_prefix(
    checked: Vec<Result<ledger::OutboxRow, (u64, String)>>,
) -> (Vec<ledger::OutboxRow>, Option<(u64, String)>) {
    let mut rows = Vec::with_capacity(checked.len());
    for row in checked {
        match row {
            Ok(r) => rows.push(r),
            Err(bad) => return (rows, Some(bad)),
        }
    }
    (rows, None)
}

/// Parks a row the pump cannot send: a void takes its seq and goes in its place.
pub(crate) async fn park_unsendable(agent: &Arc<Agent>, seq: u64, why: String) {
    tracing::error!(seq, why = %why, "parking a movement the outbox cannot send");
    let outcome = agent
        .writer
        .write(move |conn| {
            ledger::void_row(conn, seq, "unencodable", &why, ledger::VoidState::Pending)
        })
        .await;
    match outcome {
        Ok(Some(_)) => {}
        // A void that cannot be sent either: nothing more can be done here; the error
        // stays on the row and in the log.
        Ok(None) => {
            let _ = agent
                .writer
                .write(move |conn| {
                    ledger::record_send_failure(conn, seq, "the void for this seq cannot be sent")
                })
                .await;
            tokio::time::sleep(MAX_BACKOFF).await;
        }
        Err(e) => {
            tracing::error!(seq, error = %e, "cannot park the movement");
            tokio::time::sleep(MAX_BACKOFF).await;
        }
    }
}

/// A new producer, once the broker answers for `topic`.
/// A new idempotent producer, once the broker answers for `topic` and the hour's budget
/// allows one. The broker is asked first through a plain client, which takes no producer
/// id: a broker that is down or flapping costs the cluster nothing.
async fn connect(
    config: &crate::config::AgentConfig,
    topic: &str,
    budget: &mut ProducerBudget,
) -> Result<FutureProducer, String> {
    if let Some(wait) = budget.wait(Instant::now()) {
        return Err(format!(
            "{MAX_PRODUCERS_PER_HOUR} Kafka producers were started in the last hour (each failed delivery starts a fresh one); the next in {} s",
            wait.as_secs()
        ));
    }
    let probe: rdkafka::producer::BaseProducer = config
        .kafka_config()
        .create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let probe_topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        probe
            .client()
            .fetch_metadata(Some(&probe_topic), Timeout::After(Duration::from_secs(3)))
            .map(|_| ())
            .map_err(|e| format!("broker unreachable: {e}"))
    })
    .await
    .map_err(|e| e.to_string())??;
    budget.record(Instant::now());
    producer(config).map_err(|e| format!("cannot create a Kafka producer: {e}"))
}

/// Producers one agent may start in any hour. A store whose link flaps (the broker
/// answers, deliveries fail) would otherwise start one per backoff period, up to 720 an
/// hour, each a producer id the broker keeps for a day (KIP-854); past the budget the
/// pump waits and the outbox keeps the rows (tills are never affected).
pub const MAX_PRODUCERS_PER_HOUR: usize = 60;

/// The producers started in the last hour.
#[derive(Debug, Default)]
pub struct ProducerBudget {
    started: std::collections::VecDeque<Instant>,
}

impl ProducerBudget {
    /// How long until another producer may start; `None`: now.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let hour = Duration::from_secs(3600);
        while self
            .started
            .front()
            .is_some_and(|t| now.duration_since(*t) >= hour)
        {
            self.started.pop_front();
        }
        (self.started.len() >= MAX_PRODUCERS_PER_HOUR)
            .then(|| self.started.front().map(|t| hour - now.duration_since(*t)))
            .flatten()
    }

    pub fn record(&mut self, now: Instant) {
        self.started.push_back(now);
    }
}

/// Produces one batch, up to its first row that cannot be encoded, and records what was
/// delivered; returns the lowest delivery failure and the row that could not be encoded.
async fn send_batch(
    agent: &Arc<Agent>,
    producer: &FutureProducer,
    topic: &str,
    store: &bazaar_shared::StoreId,
    batch: &[ledger::OutboxRow],
) -> (Option<(u64, String)>, Option<(u64, String)>) {
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut failures: Vec<(u64, String)> = Vec::new();
    let mut unencodable = None;
    for row in batch {
        let payload = match row.envelope(store).to_signed_bytes(&agent.config.key) {
            Ok(p) => p,
            Err(e) => {
                unencodable = Some((row.seq, e.to_string()));
                break;
            }
        };
        let record = FutureRecord::to(topic)
            .key(store.as_str())
            .payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push((row.seq, delivery)),
            Err((e, _)) => {
                failures.push((row.seq, e.to_string()));
                break;
            }
        }
    }
    let seqs: Vec<u64> = deliveries.iter().map(|(s, _)| *s).collect();
    let reports = tokio::time::timeout(
        DELIVERY_DEADLINE,
        join_all(deliveries.into_iter().map(|(_, d)| d)),
    )
    .await;
    let mut delivered = Vec::with_capacity(seqs.len());
    match reports {
        Ok(reports) => {
            for (seq, report) in seqs.into_iter().zip(reports) {
                match report {
                    Ok(Ok(_)) => delivered.push(seq),
                    Ok(Err((e, _))) => failures.push((seq, e.to_string())),
                    Err(_) => failures.push((seq, "delivery report lost".into())),
                }
            }
        }
        Err(_) => {
            if let Some(first) = seqs.first() {
                failures.push((*first, "no delivery report in time".into()));
            }
        }
    }
    let first_failure = failures.into_iter().min_by_key(|(s, _)| *s);
    let at = ledger::now_rfc3339();
    let noted = first_failure.clone();
    let written = agent
        .writer
        .write(move |conn| {
            ledger::mark_sent(conn, &delivered, &at)?;
            if let Some((seq, error)) = &noted {
                ledger::record_send_failure(conn, *seq, error)?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await;
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot mark delivered rows");
    }
    (first_failure, unencodable)
}

/// Polls the hub's applied seq: marks rows acked and re-queues what the hub never got.
async fn acknowledgements(agent: Arc<Agent>, hub: HubClient, mut shutdown: watch::Receiver<bool>) {
    let resend_after = agent.config.resend_after;
    let mut last_seen: Option<(u64, Instant)> = None;
    let mut parked_seen: Option<i64> = None;
    let mut mismatch = Mismatch::default();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(ACK_POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
        first = false;
        let state = match hub.store_state().await {
            Ok(s) => s,
            Err(e) => {
                agent.sync.hub_online.store(false, Ordering::Relaxed);
                tracing::debug!(error = %format!("{e:#}"), "hub unreachable for acknowledgements");
                continue;
            }
        };
        agent.sync.hub_online.store(true, Ordering::Relaxed);
        if agent.sync.diverged.load(Ordering::Relaxed) {
            // A copy: the hub's figures are another ledger's; acknowledge nothing.
            continue;
        }
        let hub_last = state.last_seq;
        // Parked at the hub: follow what it voided before judging its last seq, as a void
        // of its own stands at a seq this ledger numbered.
        if parked_seen.map_or(state.parked > 0, |seen| state.parked > seen) {
            match follow_hub_parked(&agent, &hub, hub_last).await {
                Ok(()) => parked_seen = Some(state.parked),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the hub's parked movements")
                }
            }
        } else if parked_seen.is_some() {
            parked_seen = Some(state.parked);
        }
        match verify_copy(&agent, &hub, hub_last, state.last_id.clone()).await {
            Ok(None) => {
                mismatch.clear();
                agent.sync.copy_verified.store(true, Ordering::Relaxed);
            }
            Ok(Some(finding)) => {
                // Sending pauses at once; the finding must hold for a while before it
                // stops for good, as the parked list may be read from a lagging replica.
                agent.sync.copy_verified.store(false, Ordering::Relaxed);
                if mismatch.confirmed(Instant::now()) {
                    if let Err(e) = stop_sending(&agent, finding).await {
                        tracing::error!(error = %e, "cannot record that this ledger is a copy");
                    }
                } else {
                    tracing::warn!(finding = %finding, "the hub's last seq is not this ledger's; sending pauses while this is confirmed");
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check the hub's last seq against this ledger");
                continue;
            }
        }
        let advanced = last_seen.map(|(seen, _)| seen) != Some(hub_last);
        if advanced {
            last_seen = Some((hub_last, Instant::now()));
        }
        let stalled = last_seen.is_some_and(|(_, since)| since.elapsed() >= resend_after);
        // Write only when there is something to record: the hub moved, rows must be
        // re-sent, or rows the hub already has are still unacknowledged here (the pump can
        // mark a batch sent just after its acknowledgement was seen). A read costs no
        // fsync, so an idle store no longer pays a durable commit every poll.
        if !advanced && !stalled {
            let behind = agent
                .read(move |conn| ledger::has_unacknowledged_up_to(conn, hub_last))
                .await
                .unwrap_or(true);
            if !behind {
                continue;
            }
        }
        let at = ledger::now_rfc3339();
        let outcome = agent
            .writer
            .write(move |conn| {
                ledger::mark_acked(conn, hub_last, &at)?;
                if stalled {
                    return ledger::requeue_unacknowledged(conn, hub_last);
                }
                Ok(0)
            })
            .await;
        match outcome {
            Ok(requeued) if requeued > 0 => {
                tracing::warn!(
                    requeued,
                    hub_last_seq = hub_last,
                    "hub has not acknowledged sent rows in time; sending them again"
                );
                last_seen = Some((hub_last, Instant::now()));
            }
            // Stalled with nothing sent: the clock restarts, or every later poll would
            // count as stalled again.
            Ok(_) if stalled => last_seen = Some((hub_last, Instant::now())),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot record the hub's acknowledgement"),
        }
    }
}

/// How long the hub's last seq must keep showing as another ledger's before sending stops
/// for good (the parked list that could explain it may come from a replica a moment
/// behind the store state).
const CONFIRM_COPY: Duration = Duration::from_secs(5);

/// Consecutive polls whose copy check failed, since when.
#[derive(Debug, Default)]
struct Mismatch(Option<Instant>);

impl Mismatch {
    fn clear(&mut self) {
        self.0 = None;
    }

    /// Records one more failed check; true once they have lasted `CONFIRM_COPY`.
    fn confirmed(&mut self, now: Instant) -> bool {
        let since = *self.0.get_or_insert(now);
        now.duration_since(since) >= CONFIRM_COPY
    }
}

/// `None` when the hub's last seq is this ledger's own (after following the hub's voids);
/// else what was found.
async fn verify_copy(
    agent: &Arc<Agent>,
    hub: &HubClient,
    hub_last: u64,
    hub_last_id: Option<String>,
) -> Result<Option<String>, String> {
    let check = |agent: Arc<Agent>, id: Option<String>| async move {
        agent
            .read(move |conn| ledger::check_copy(conn, hub_last, id.as_deref()))
            .await
            .map_err(|e| e.message)
    };
    if check(agent.clone(), hub_last_id.clone()).await? == ledger::CopyCheck::Ours {
        return Ok(None);
    }
    // The hub may have voided that seq a moment ago: follow its parked list, then judge.
    if let Err(e) = follow_hub_parked(agent, hub, hub_last).await {
        return Err(format!("cannot read the hub's parked movements: {e:#}"));
    }
    Ok(match check(agent.clone(), hub_last_id).await? {
        ledger::CopyCheck::Ours => None,
        ledger::CopyCheck::Diverged(finding) => Some(finding),
    })
}

/// This ledger is a copy: nothing more is sent, across restarts, until a re-snapshot.
async fn stop_sending(agent: &Arc<Agent>, finding: String) -> Result<(), String> {
    tracing::error!(finding = %finding, "this data directory is a copy: sending stops; run `bazaar-agent run --resnapshot`");
    agent.sync.diverged.store(true, Ordering::Relaxed);
    agent
        .sync
        .set_error(Some(format!("sending stopped: {finding}")));
    agent
        .writer
        .write(move |conn| ledger::mark_diverged(conn, &finding))
        .await
        .map_err(|e| e.to_string())
}

/// Park reasons under which the hub does not use up the message's seq, for a hub whose
/// parked list does not say `consumed`: nothing to void here (a conflict is another
/// copy's seq, found by `ledger::check_copy`).
const NOT_CONSUMED: [&str; 6] = [
    "bad_signature",
    "malformed",
    "unknown_store",
    "unexpected_origin",
    "conflict",
    "too_far_ahead",
];

/// Every movement of this ledger the hub parked and consumed its seq for (a void of its
/// own, at or below its last seq) is parked here too, already acknowledged, so neither
/// side counts it.
pub(crate) async fn follow_hub_parked(
    agent: &Arc<Agent>,
    hub: &HubClient,
    hub_last: u64,
) -> anyhow::Result<()> {
    let store = agent.config.store.to_string();
    let mut cursor: Option<String> = None;
    loop {
        let page = hub.parked(cursor.as_deref()).await?;
        let ours: Vec<(u64, String, String, String)> = page
            .items
            .into_iter()
            .filter(|p| p.store.as_deref() == Some(store.as_str()))
            .filter(|p| {
                p.consumed
                    .unwrap_or_else(|| !NOT_CONSUMED.contains(&p.reason.as_str()))
            })
            .filter_map(|p| match (p.seq, p.event_id) {
                (Some(seq), Some(id)) if seq <= hub_last => Some((seq, id, p.reason, p.detail)),
                _ => None,
            })
            .collect();
        if !ours.is_empty() {
            let voided = agent
                .writer
                .write(move |conn| {
                    let mut voided = 0;
                    for (seq, event_id, reason, detail) in &ours {
                        let own = matches!(ledger::store_row(conn, *seq)?,
                            Some((id, kind)) if id == *event_id && kind != "void");
                        if own {
                            let why = format!("the hub refused it ({reason}): {detail}");
                            let tag = format!("hub:{reason}");
                            if ledger::void_row(conn, *seq, &tag, &why, ledger::VoidState::Acked)?
                                .is_some()
                            {
                                voided += 1;
                            }
                        }
                    }
                    Ok::<_, rusqlite::Error>(voided)
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if voided > 0 {
                tracing::warn!(voided, "movements the hub refused are parked here too");
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, FileConfig, Secret};
    use crate::ledger::{NewMovement, Quantity, VoidState};
    use bazaar_shared::{Envelope, Kind, Sku};
    use serde_json::{json, Value};
    use warp::Filter;

    fn agent(dir: &std::path::Path, hub_url: &str) -> Arc<Agent> {
        let file = FileConfig {
            store: "S1".into(),
            hub_url: hub_url.into(),
            token: Secret::new("t"),
            key: Secret::new(bazaar_shared::SigningKey::generate().to_base64()),
            data_dir: Some(dir.to_path_buf()),
            listen: None,
            local_token: None,
            kafka_brokers: None,
            topic_prefix: None,
            disk_budget_mb: None,
            resend_after_secs: None,
            retention_days: None,
            kafka: Default::default(),
        };
        let config = AgentConfig::from_layers(file, dir.to_path_buf(), |_| None).unwrap();
        Arc::new(Agent::open(config).unwrap())
    }

    async fn record(
        agent: &Arc<Agent>,
        kind: Kind,
        sku: &str,
        quantity: Quantity,
    ) -> ledger::MovementView {
        let new = NewMovement {
            kind,
            sku: Sku::parse(sku).unwrap(),
            quantity,
            reason: None,
            reference: None,
            to_store: None,
            from_store: None,
        };
        agent
            .writer
            .write(move |conn| ledger::record(conn, &new, None))
            .await
            .unwrap()
            .movement
    }

    async fn on_hand(agent: &Arc<Agent>, sku: &'static str) -> i64 {
        agent
            .read(move |c| ledger::stock_of(c, &Sku::parse(sku).unwrap()))
            .await
            .unwrap()
            .map_or(0, |s| s.on_hand)
    }

    /// Every pending row as the pump encodes it, up to the first it cannot.
    async fn encode_pending(agent: &Arc<Agent>) -> (Vec<Envelope>, Option<(u64, String)>) {
        let checked = agent
            .read(|c| ledger::pending_batch_checked(c, 100))
            .await
            .unwrap();
        let (rows, unreadable) = readable_prefix(checked);
        let mut sent = Vec::new();
        for row in rows {
            match row
                .envelope(&agent.config.store)
                .to_signed_bytes(&agent.config.key)
            {
                Ok(bytes) => sent.push(Envelope::decode(&bytes).unwrap().envelope),
                Err(e) => return (sent, Some((row.seq, e.to_string()))),
            }
        }
        (sent, unreadable)
    }

    #[tokio::test]
    async fn a_row_that_cannot_be_encoded_is_parked_and_the_rows_after_it_still_go() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), "http://127.0.0.1:9");
        record(&agent, Kind::Receipt, "A", Quantity::Delta(10)).await;
        let bad = record(&agent, Kind::Receipt, "A", Quantity::Delta(5)).await;
        record(&agent, Kind::Sale, "A", Quantity::Delta(-1)).await;
        // A row no check lets in any more (an older agent accepted such rows).
        agent
            .writer
            .write(|c| {
                c.execute(
                    "UPDATE movements SET delta = 5000000000000 WHERE seq = 2",
                    [],
                )?;
                c.execute(
                    "UPDATE stock SET on_hand = 5000000000009 WHERE sku = 'A'",
                    [],
                )
            })
            .await
            .unwrap();
        let (sent, unencodable) = encode_pending(&agent).await;
        assert_eq!(sent.len(), 1);
        let (seq, why) = unencodable.expect("seq 2 cannot be encoded");
        assert_eq!(seq, 2);
        park_unsendable(&agent, seq, why).await;

        let (sent, unencodable) = encode_pending(&agent).await;
        assert!(unencodable.is_none(), "nothing stalls any more");
        let seqs: Vec<(u64, Kind, i64)> = sent.iter().map(|e| (e.seq, e.kind, e.delta)).collect();
        assert_eq!(
            seqs,
            [
                (1, Kind::Receipt, 10),
                (2, Kind::Void, 0),
                (3, Kind::Sale, -1)
            ]
        );
        let void = &sent[1];
        assert_eq!(void.voids.map(|v| v.to_string()), Some(bad.id.clone()));
        assert_ne!(void.id.to_string(), bad.id);
        assert_eq!(void.sku.as_str(), "A");
        assert_eq!(
            on_hand(&agent, "A").await,
            9,
            "the parked movement's stock is reversed"
        );

        let parked = agent.read(|c| ledger::parked_page(c, 0, 10)).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(
            (parked[0].seq, parked[0].id.as_str(), parked[0].delta),
            (2, bad.id.as_str(), 5_000_000_000_000)
        );
        assert_eq!(parked[0].reason, "unencodable");
        let alerts = agent
            .read(|c| crate::housekeeping::alerts(c, false, 10))
            .await
            .unwrap();
        let alert = alerts
            .iter()
            .find(|a| a.kind == ledger::PARKED_ALERT)
            .expect("a parked alert");
        assert_eq!(alert.severity, "critical");
        assert!(
            alert.message.contains("seq 2") && alert.message.contains("record it again"),
            "{}",
            alert.message
        );
        let status = agent.status().await.unwrap();
        assert_eq!((status.parked, status.pending), (1, 3));
        // Parking the same seq again changes nothing.
        let again = agent
            .writer
            .write(|c| ledger::void_row(c, 2, "unencodable", "again", VoidState::Pending))
            .await
            .unwrap();
        assert!(again.is_none());
    }

    /// A hub that answers the store state and parked list it is given.
    async fn fake_hub(state: Value, parked: Value) -> String {
        let state = warp::path!("v1" / "stores" / String).map(move |_| warp::reply::json(&state));
        let parked = warp::path!("v1" / "parked").map(move || warp::reply::json(&parked));
        let (address, server) = warp::serve(state.or(parked)).bind_ephemeral(([127, 0, 0, 1], 0));
        tokio::spawn(server);
        format!("http://{address}")
    }

    #[tokio::test]
    async fn movements_the_hub_voided_are_parked_here_already_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let probe = agent(dir.path(), "http://127.0.0.1:9");
        let first = record(&probe, Kind::Receipt, "A", Quantity::Delta(10)).await;
        let second = record(&probe, Kind::Sale, "A", Quantity::Delta(-3)).await;
        let third = record(&probe, Kind::Sale, "A", Quantity::Delta(-1)).await;
        probe
            .writer
            .write(|c| ledger::mark_sent(c, &[1, 2, 3], "t"))
            .await
            .unwrap();
        drop(probe);
        let parked = json!({"items": [
            {"store": "S1", "seq": 2, "event_id": second.id, "reason": "apply_failed", "detail": "refused", "consumed": true},
            // Not consumed at the hub: nothing to do here.
            {"store": "S1", "seq": 3, "event_id": third.id, "reason": "bad_signature", "detail": "x", "consumed": false},
            {"store": "S1", "seq": 3, "event_id": third.id, "reason": "too_far_ahead", "detail": "x"},
            {"store": "S1", "seq": 1, "event_id": "0192f0c4-0000-7000-8000-000000000000", "reason": "id_reused", "detail": "not ours", "consumed": true},
        ], "next_cursor": null});
        let url = fake_hub(
            json!({"store": "S1", "last_seq": 3, "last_id": third.id, "parked": 3}),
            parked,
        )
        .await;
        let agent = agent(dir.path(), &url);
        let hub = HubClient::new(&agent.config).unwrap();
        follow_hub_parked(&agent, &hub, 3).await.unwrap();
        assert_eq!(
            on_hand(&agent, "A").await,
            9,
            "neither side counts the refused sale"
        );
        let rows = agent
            .read(|c| {
                Ok((
                    ledger::store_row(c, 1)?,
                    ledger::store_row(c, 2)?,
                    ledger::store_row(c, 3)?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(rows.0.map(|r| r.0), Some(first.id.clone()));
        assert_eq!(rows.1.map(|r| r.1), Some("void".to_string()));
        assert_eq!(rows.2.map(|r| r.0), Some(third.id.clone()));
        let status = agent.status().await.unwrap();
        assert_eq!(
            (status.parked, status.sent, status.pending),
            (1, 2, 0),
            "the void is already acknowledged"
        );
        assert_eq!(
            verify_copy(&agent, &hub, 3, Some(third.id.clone()))
                .await
                .unwrap(),
            None
        );
        // Following the same list again parks nothing twice.
        follow_hub_parked(&agent, &hub, 3).await.unwrap();
        assert_eq!(agent.status().await.unwrap().parked, 1);
    }

    #[tokio::test]
    async fn a_copy_whose_seqs_the_hub_holds_under_other_ids_stops_sending() {
        let dir = tempfile::tempdir().unwrap();
        let url = fake_hub(json!({}), json!({"items": [], "next_cursor": null})).await;
        let agent = agent(dir.path(), &url);
        let hub = HubClient::new(&agent.config).unwrap();
        let first = record(&agent, Kind::Receipt, "A", Quantity::Delta(10)).await;
        record(&agent, Kind::Sale, "A", Quantity::Delta(-1)).await;
        agent
            .writer
            .write(|c| {
                ledger::mark_sent(c, &[1], "t")?;
                ledger::mark_acked(c, 1, "t")
            })
            .await
            .unwrap();
        assert_eq!(
            verify_copy(&agent, &hub, 1, Some(first.id.clone()))
                .await
                .unwrap(),
            None
        );
        // The hub applied seq 2 and 3, neither of them this ledger's.
        let other = "0192f0c4-0000-7000-8000-000000000001".to_string();
        let finding = verify_copy(&agent, &hub, 3, Some(other))
            .await
            .unwrap()
            .expect("not this ledger's");
        assert!(
            !agent.sync.diverged.load(Ordering::Relaxed),
            "not before it is confirmed"
        );
        stop_sending(&agent, finding).await.unwrap();
        assert!(agent.sync.diverged.load(Ordering::Relaxed));
        assert!(!may_send(&agent));
        let status = agent.status().await.unwrap();
        assert!(status.sending_stopped);
        assert!(
            status
                .diverged_copy
                .as_deref()
                .is_some_and(|d| d.contains("seq 3")),
            "{status:?}"
        );
        let alerts = agent
            .read(|c| crate::housekeeping::alerts(c, false, 10))
            .await
            .unwrap();
        let alert = alerts
            .iter()
            .find(|a| a.kind == ledger::DIVERGED_ALERT)
            .expect("the alert");
        assert_eq!(alert.severity, "critical");
        assert!(
            alert.message.contains("bazaar-agent run --resnapshot"),
            "{}",
            alert.message
        );
        // Stopped across a restart too.
        let config = agent.config.clone();
        drop(hub);
        drop(agent);
        let again = Arc::new(Agent::open(config).unwrap());
        assert!(again.sync.diverged.load(Ordering::Relaxed));
    }

    #[test]
    fn a_copy_is_declared_only_once_the_finding_has_lasted() {
        let start = Instant::now();
        let mut mismatch = Mismatch::default();
        assert!(!mismatch.confirmed(start));
        assert!(!mismatch.confirmed(start + Duration::from_secs(3)));
        mismatch.clear();
        assert!(
            !mismatch.confirmed(start + Duration::from_secs(6)),
            "a good poll starts it again"
        );
        assert!(mismatch.confirmed(start + Duration::from_secs(11)));
    }

    #[test]
    fn a_flapping_link_starts_at_most_the_hours_budget_of_producers() {
        let mut budget = ProducerBudget::default();
        let start = Instant::now();
        // A failure every 5 s (the backoff's cap) for an hour would start 720.
        let mut started = 0;
        for i in 0..720u64 {
            let now = start + Duration::from_secs(5 * i);
            if budget.wait(now).is_none() {
                budget.record(now);
                started += 1;
            }
        }
        assert_eq!(started, MAX_PRODUCERS_PER_HOUR);
        let wait = budget.wait(start + Duration::from_secs(3599)).unwrap();
        assert_eq!(
            wait,
            Duration::from_secs(1),
            "the oldest leaves the window first"
        );
        assert!(budget.wait(start + Duration::from_secs(3600)).is_none());
    }
}
