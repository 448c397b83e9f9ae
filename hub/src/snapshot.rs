//! Store snapshots: the stock and positions a re-installed (or re-snapshotting) agent
//! starts from (DESIGN §6).
//!
//! Invariants:
//! - A snapshot is served only once this hub's consumer group has committed offsets to the
//!   end of the store's partition of `{prefix}movements` (partition = murmur2(store) mod
//!   N). Movements a wiped agent sent before it lost its disk may still sit in the log;
//!   a `last_seq` read before they are applied would let the new agent reuse their seqs.
//!   Several hub instances share the group, so the check asks the broker for the group's
//!   committed offset, never this process's own progress. A committed offset trails the
//!   MySQL commit (offsets are stored after it), so "committed to the end" implies
//!   "applied".
//! - Every page is read in one REPEATABLE READ transaction with a consistent snapshot:
//!   `store_sync` and `stock` rows from the same instant. Every change to a store's stock
//!   moves `last_seq` (store-origin) or `last_hub_seq` (hub-origin) in the same
//!   transaction, so that pair names one state of the store's stock. Pages after the
//!   first carry the pair in their cursor; a page whose pair no longer matches is refused
//!   (`409 snapshot_moved`) and the client starts again. Pages with equal pairs therefore
//!   come from one state, and their union is a consistent snapshot.
//! - Snapshots read the primary: a lagging replica could report an older `last_seq`, and
//!   an agent continuing after it would reuse seqs.
//! - A store whose hub holds movements ahead of a gap is refused (`409 held_movements`):
//!   the wiped agent that could fill the gap is gone, and a new one continuing after
//!   `last_seq` would collide with what is held. That needs an operator, not a retry.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bazaar_shared::kafka::base_config;
use bazaar_shared::partition::partition_for_key;
use bazaar_shared::{Sku, StoreId};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sqlx::{Connection, MySqlPool, Row};

/// Broker calls made while a client waits are kept short: the client retries anyway.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_PAGE: u32 = 5000;
pub const MAX_PAGE: u32 = 20_000;

/// How far this hub's consumer group has got through a store's partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset (the next message it will read), if it has one.
    pub committed: Option<i64>,
    /// The partition's low and high watermarks: the first retained and the next offset.
    pub low: i64,
    pub high: i64,
}

impl Progress {
    /// Caught up when nothing is left to read: the committed offset has reached the high
    /// watermark, or nothing is retained at all (an empty or fully expired partition).
    pub fn caught_up(&self) -> bool {
        self.reached(self.high)
    }

    /// Whether the group has read everything up to `target` (an earlier high watermark).
    pub fn reached(&self, target: i64) -> bool {
        target <= self.low || self.committed.is_some_and(|c| c >= target)
    }

    /// Messages between the group's position and the end.
    pub fn behind(&self) -> i64 {
        let from = self.committed.unwrap_or(self.low).max(self.low);
        (self.high - from).max(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the broker did not answer: {0}")]
    Broker(String),
    #[error("topic {0} does not exist yet: the hub's ingest has not started")]
    NoTopic(String),
}

/// Asks the broker how far the hub's consumer group has read. One client per hub process,
/// made on first use and dropped after any failure so the next call starts clean. It
/// never joins the group (no subscribe, no assign): it only fetches committed offsets, so
/// it causes no rebalance of the instances that do the consuming.
pub struct ConsumedProbe {
    brokers: String,
    properties: bazaar_shared::kafka::KafkaProperties,
    group: String,
    topic: String,
    client: Mutex<Option<Arc<BaseConsumer>>>,
}

impl ConsumedProbe {
    pub fn new(
        brokers: &str,
        properties: &bazaar_shared::kafka::KafkaProperties,
        group: &str,
        movements_topic: &str,
    ) -> Self {
        Self {
            properties: properties.clone(),
            brokers: brokers.to_owned(),
            group: group.to_owned(),
            topic: movements_topic.to_owned(),
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<Arc<BaseConsumer>, ProbeError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut config = base_config(&self.brokers);
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        self.properties.apply(&mut config);
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| ProbeError::Broker(e.to_string()))?;
        let consumer = Arc::new(consumer);
        *slot = Some(consumer.clone());
        Ok(consumer)
    }

    fn forget_client(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The group's progress on `store`'s partition, off the async threads.
    pub async fn progress(self: &Arc<Self>, store: &StoreId) -> Result<Progress, ProbeError> {
        let probe = self.clone();
        let key = store.to_string();
        let outcome = tokio::task::spawn_blocking(move || probe.progress_blocking(&key))
            .await
            .map_err(|e| ProbeError::Broker(e.to_string()))?;
        if matches!(outcome, Err(ProbeError::Broker(_))) {
            self.forget_client();
        }
        outcome
    }

    fn progress_blocking(&self, store: &str) -> Result<Progress, ProbeError> {
        let broker = |e: rdkafka::error::KafkaError| ProbeError::Broker(e.to_string());
        let client = self.client()?;
        let metadata = client
            .fetch_metadata(Some(&self.topic), BROKER_TIMEOUT)
            .map_err(broker)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            return Err(ProbeError::NoTopic(self.topic.clone()));
        }
        let partition = partition_for_key(store.as_bytes(), partitions as i32);
        let (low, high) = client
            .fetch_watermarks(&self.topic, partition, BROKER_TIMEOUT)
            .map_err(broker)?;
        let mut wanted = TopicPartitionList::new();
        wanted
            .add_partition_offset(&self.topic, partition, Offset::Invalid)
            .map_err(broker)?;
        let committed = client
            .committed_offsets(wanted, BROKER_TIMEOUT)
            .map_err(broker)?;
        let committed = committed
            .find_partition(&self.topic, partition)
            .and_then(|p| match p.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        Ok(Progress {
            topic: self.topic.clone(),
            partition,
            committed,
            low,
            high,
        })
    }
}

/// Waits up to `patience` for the group to consume the store's partition up to the end
/// it had when the call began; `Ok(None)` once it has, else the last progress seen.
///
/// The target is the end as of the request, not a moving end: every movement a lost
/// agent delivered is in the log before its replacement asks, while other stores on the
/// same partition keep appending — chasing the live end could refuse forever under load.
pub async fn wait_consumed(
    probe: &Arc<ConsumedProbe>,
    store: &StoreId,
    patience: Duration,
) -> Result<Option<Progress>, ProbeError> {
    let deadline = tokio::time::Instant::now() + patience;
    let first = probe.progress(store).await?;
    let target = first.high;
    let mut last = first;
    loop {
        if last.reached(target) {
            return Ok(None);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Some(last));
        }
        // The group commits its stored offsets every 500 ms.
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = probe.progress(store).await?;
    }
}

/// The pair that names one state of a store's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Positions {
    pub last_seq: u64,
    pub last_hub_seq: u64,
}

/// Where the next page starts, and the state every page must share:
/// `{last_seq}:{last_hub_seq}:{last sku of the previous page}`. A sku never holds `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: Positions,
    pub after: Sku,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.at.last_seq, self.at.last_hub_seq, self.after
        )
    }

    pub fn parse(raw: &str) -> Option<Cursor> {
        let mut parts = raw.splitn(3, ':');
        let last_seq = parts.next()?.parse().ok()?;
        let last_hub_seq = parts.next()?.parse().ok()?;
        let after = Sku::parse(parts.next()?.to_owned()).ok()?;
        Some(Cursor {
            at: Positions {
                last_seq,
                last_hub_seq,
            },
            after,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StockLine {
    pub sku: String,
    pub on_hand: i64,
}

/// One page of a snapshot, as the API serves it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Snapshot {
    pub store: String,
    /// The highest store-origin seq the stock contains; the agent continues after it.
    pub last_seq: u64,
    /// The highest hub_seq the stock contains; the agent follows commands after it.
    pub last_hub_seq: u64,
    /// When the database view was taken.
    pub as_of: DateTime<Utc>,
    /// Skus in the whole snapshot (every page), for progress reporting.
    pub sku_count: u64,
    pub stock: Vec<StockLine>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug)]
pub enum PageOutcome {
    Page(Snapshot),
    NotRegistered,
    /// The store's state moved since the cursor's page: start again from the first page.
    Moved {
        now: Positions,
    },
    /// Movements wait in `held_events` for a gap to fill.
    Held {
        count: i64,
        positions: Positions,
    },
}

/// Reads one page in one consistent REPEATABLE READ view of the primary.
pub async fn read_page(
    pool: &MySqlPool,
    store: &StoreId,
    cursor: Option<&Cursor>,
    limit: u32,
) -> Result<PageOutcome, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // Applies to the next transaction on this connection only.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await?;
    let mut tx = conn
        .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await?;
    let row = sqlx::query(
        "SELECT y.last_seq, y.last_hub_seq, UTC_TIMESTAMP(6) AS as_of,
                (SELECT count(*) FROM held_events h WHERE h.store = y.store) AS held
         FROM store_sync y WHERE y.store = ?",
    )
    .bind(store.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(PageOutcome::NotRegistered);
    };
    let at = Positions {
        last_seq: row.try_get("last_seq")?,
        last_hub_seq: row.try_get("last_hub_seq")?,
    };
    let as_of: chrono::NaiveDateTime = row.try_get("as_of")?;
    let held: i64 = row.try_get("held")?;
    if held > 0 {
        return Ok(PageOutcome::Held {
            count: held,
            positions: at,
        });
    }
    if let Some(c) = cursor {
        if c.at != at {
            return Ok(PageOutcome::Moved { now: at });
        }
    }
    let after = cursor.map(|c| c.after.as_str()).unwrap_or("");
    let limit = limit.clamp(1, MAX_PAGE);
    let stock: Vec<StockLine> = sqlx::query(
        "SELECT sku, on_hand FROM stock WHERE store = ? AND sku > ? ORDER BY sku LIMIT ?",
    )
    .bind(store.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        Ok(StockLine {
            sku: r.try_get("sku")?,
            on_hand: r.try_get("on_hand")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    let sku_count: i64 = sqlx::query_scalar("SELECT count(*) FROM stock WHERE store = ?")
        .bind(store.as_str())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let next_cursor = next_cursor(at, &stock, limit);
    Ok(PageOutcome::Page(Snapshot {
        store: store.to_string(),
        last_seq: at.last_seq,
        last_hub_seq: at.last_hub_seq,
        as_of: as_of.and_utc(),
        sku_count: sku_count.max(0) as u64,
        stock,
        next_cursor,
    }))
}

/// A full page may have more after it; a short one is the last.
fn next_cursor(at: Positions, page: &[StockLine], limit: u32) -> Option<String> {
    if page.len() < limit as usize {
        return None;
    }
    let last = page.last()?;
    let after = Sku::parse(last.sku.clone()).ok()?;
    Some(Cursor { at, after }.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(committed: Option<i64>, low: i64, high: i64) -> Progress {
        Progress {
            topic: "t".into(),
            partition: 0,
            committed,
            low,
            high,
        }
    }

    #[test]
    fn caught_up_only_when_nothing_is_left_to_read() {
        assert!(progress(None, 0, 0).caught_up(), "an empty partition");
        assert!(progress(None, 40, 40).caught_up(), "everything expired");
        assert!(progress(Some(40), 0, 40).caught_up());
        assert!(
            progress(Some(40), 0, 55).reached(40),
            "later messages of other stores do not hold a snapshot back"
        );
        assert!(!progress(Some(39), 0, 55).reached(40));
        assert!(
            progress(None, 40, 55).reached(40),
            "expired up to the target"
        );
        assert!(!progress(Some(39), 0, 40).caught_up());
        assert!(
            !progress(None, 0, 1).caught_up(),
            "no commit yet, one message"
        );
        assert_eq!(progress(Some(35), 0, 40).behind(), 5);
        assert_eq!(progress(None, 10, 40).behind(), 30);
        assert_eq!(
            progress(Some(3), 10, 40).behind(),
            30,
            "a position before the retained log counts from its start"
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = Cursor {
            at: Positions {
                last_seq: 120,
                last_hub_seq: 7,
            },
            after: Sku::parse("MILK-1L").unwrap(),
        };
        assert_eq!(cursor.encode(), "120:7:MILK-1L");
        assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        for bad in ["", "1:2", "x:2:A", "1:-2:A", "1:2:A B", "1:2:", "1:2:A:B"] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_full_page_has_a_next_cursor() {
        let at = Positions {
            last_seq: 3,
            last_hub_seq: 1,
        };
        let line = |s: &str| StockLine {
            sku: s.into(),
            on_hand: 1,
        };
        assert_eq!(
            next_cursor(at, &[line("A"), line("B")], 2),
            Some("3:1:B".into())
        );
        assert_eq!(next_cursor(at, &[line("A")], 2), None);
        assert_eq!(next_cursor(at, &[], 2), None);
    }
}
