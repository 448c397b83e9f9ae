//! Alerts at the hub (DESIGN §8): raised and resolved on what changed, published on
//! `{prefix}alerts`.
//!
//! Invariants:
//! - At most one open alert per (store, sku, kind): `alerts.open_key` is unique while
//!   `resolved_at` is NULL, so a second hub (or a re-delivered batch) evaluating the same
//!   key cannot open a duplicate; it finds the alert open and does nothing.
//! - The rules are `bazaar_intelligence::alerts::evaluate`, the agents' own, fed with the
//!   effective thresholds of [`crate::thresholds`]. An alert whose condition no longer holds
//!   is resolved by the same evaluation that finds it cleared.
//! - Evaluation runs after each ingest commit on every (store, sku) the batch touched
//!   (duplicates included), before the batch's offsets are stored: a crash re-delivers
//!   the batch and evaluates again. Reads are two statements per 5,000 keys, whatever the
//!   number of stores the batch spans: stock with today's sales, the forecast bound and
//!   every threshold level in one, open alerts in the other, each joined from the keys as
//!   a table (see [`crate::db::push_keys_table`]). Writes happen only on a transition.
//! - Every raise and resolve writes an `alert_events` row in the same transaction. One
//!   relay across the hubs (a Redis lease) publishes pending events on `{prefix}alerts`
//!   in id order, key = store, and stamps them once the broker acknowledged them: delivery
//!   is at least once; consumers deduplicate by the event's `event_id`.
//! - Demand anomalies during the day compare the day's sales *so far* with the forecast's
//!   interval for the whole day, so only the upper side can fire on a day in progress (a
//!   morning is always "below" the day's interval).
//! - Stale stores: a periodic check, under a lease, raises `stale_store` for a store whose
//!   last sign of life (its last consumed message, or its registration) is older than
//!   `BAZAAR_HUB_STALE_STORE_AFTER_SECS`, and resolves it once the store is heard from.
//!   The hub knows no opening hours: a store quiet for longer than the bound (closed
//!   overnight, say) is reported stale until its next movement arrives, so the bound should
//!   cover the longest normal quiet spell (or be 0, which turns the check off).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazaar_intelligence::alerts::{evaluate, AlertFacts, AlertKind, AlertThresholds, DaySales};
use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use tokio::sync::{watch, Notify};

use crate::lease::{Attempt, Lease};
use crate::thresholds;

/// The kinds evaluated per (store, sku) on ingest; `stale_store` is per store.
pub const KEY_KINDS: [AlertKind; 5] = [
    AlertKind::NegativeStock,
    AlertKind::OutOfStock,
    AlertKind::LowStock,
    AlertKind::Overstock,
    AlertKind::DemandAnomaly,
];

const RELAY_BATCH: u32 = 200;

pub fn severity(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::NegativeStock | AlertKind::StaleStore => "critical",
        AlertKind::OutOfStock | AlertKind::LowStock => "warning",
        AlertKind::Overstock | AlertKind::DemandAnomaly => "info",
    }
}

/// What one (store, sku) looks like now, read in bulk.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFacts {
    pub on_hand: i64,
    pub thresholds: thresholds::Effective,
    /// Today's sales so far.
    pub sold_today: Option<i64>,
    /// The forecast's prediction interval for today.
    pub forecast_lo: Option<f64>,
    pub forecast_hi: Option<f64>,
}

/// The kinds that hold for one key, by the shared rules. Pure.
pub fn kinds_for(
    facts: &KeyFacts,
    rules: &AlertThresholds,
    now: DateTime<Utc>,
) -> BTreeSet<AlertKind> {
    // A day in progress is judged on the upper side only (see the module docs): the rule
    // sees today's interval as it is, so its slack is the shared one, but only once sales
    // are above the interval.
    let day_sales = match (facts.sold_today, facts.forecast_lo, facts.forecast_hi) {
        (Some(actual), Some(lo), Some(hi)) if actual as f64 > hi => Some(DaySales {
            actual: actual as f64,
            lo,
            hi,
        }),
        _ => None,
    };
    evaluate(
        &AlertFacts {
            on_hand: facts.on_hand as f64,
            reorder_point: facts.thresholds.reorder_point.map(|v| v as f64),
            max_stock: facts.thresholds.max_stock.map(|v| v as f64),
            day_sales,
            last_sync: None,
            store_open: false,
            now,
        },
        rules,
    )
}

pub fn message(
    kind: AlertKind,
    store: &str,
    sku: Option<&str>,
    facts: &serde_json::Value,
) -> String {
    let sku = sku.unwrap_or("");
    let on_hand = &facts["on_hand"];
    match kind {
        AlertKind::NegativeStock => format!(
            "{sku} at {store} is at {on_hand}: more sold than the ledger holds — count the shelf"
        ),
        AlertKind::OutOfStock => format!("{sku} at {store} is out of stock"),
        AlertKind::LowStock => format!(
            "{sku} at {store} is down to {on_hand}, at or below its reorder point {}",
            facts["reorder_point"]
        ),
        AlertKind::Overstock => format!(
            "{sku} at {store} holds {on_hand}, above its maximum {}",
            facts["max_stock"]
        ),
        AlertKind::DemandAnomaly => format!(
            "{sku} at {store} sold {} today, far above the forecast's {} (shrink, promotion or data error?)",
            facts["sold_today"], facts["forecast_hi"]
        ),
        AlertKind::StaleStore => format!(
            "store {store} has not been heard from since {}",
            facts["last_seen"]
        ),
    }
}

/// One alert as the API lists it and the topic carries it.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Alert {
    pub id: i64,
    pub store: Option<String>,
    pub sku: Option<String>,
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    pub raised_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
}

const ALERT_COLUMNS: &str = "id, store, sku, kind, severity, message, detail, raised_at, acknowledged_at, acknowledged_by, resolved_at";

fn alert_of(r: &sqlx::mysql::MySqlRow) -> Result<Alert, sqlx::Error> {
    // MariaDB hands JSON columns over as blobs.
    let detail: Option<Vec<u8>> = r.try_get("detail")?;
    Ok(Alert {
        id: r.try_get("id")?,
        store: r.try_get("store")?,
        sku: r.try_get("sku")?,
        kind: r.try_get("kind")?,
        severity: r.try_get("severity")?,
        message: r.try_get("message")?,
        detail: detail.and_then(|d| serde_json::from_slice(&d).ok()),
        raised_at: r.try_get("raised_at")?,
        acknowledged_at: r.try_get("acknowledged_at")?,
        acknowledged_by: r.try_get("acknowledged_by")?,
        resolved_at: r.try_get("resolved_at")?,
    })
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct AlertCounters {
    pub raised: AtomicU64,
    pub resolved: AtomicU64,
    pub published: AtomicU64,
    pub evaluation_failures: AtomicU64,
}

/// The hub's alerting: evaluation, the stale check and the relay. One per hub.
pub struct Alerting {
    pool: MySqlPool,
    rules: AlertThresholds,
    with_forecast: bool,
    stale_after: Option<chrono::Duration>,
    wake_relay: Notify,
    pub counters: AlertCounters,
}

/// Raised or resolved in one evaluation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Transitions {
    pub raised: Vec<i64>,
    pub resolved: Vec<i64>,
}

struct Raise {
    store: String,
    sku: Option<String>,
    kind: AlertKind,
    detail: serde_json::Value,
}

struct Open {
    id: i64,
    store: String,
    sku: Option<String>,
    kind: String,
}

fn open_key(kind: &str, store: &str, sku: &str) -> String {
    format!("{kind}/{store}/{sku}")
}

impl Alerting {
    pub fn new(pool: MySqlPool, config: &crate::config::IntelligenceConfig) -> Alerting {
        let stale_after = (config.stale_store_after_secs > 0)
            .then(|| chrono::Duration::seconds(config.stale_store_after_secs as i64));
        Alerting {
            pool,
            rules: AlertThresholds {
                stale_after: stale_after.unwrap_or_else(|| chrono::Duration::minutes(30)),
                ..AlertThresholds::default()
            },
            with_forecast: config.push_thresholds,
            stale_after,
            wake_relay: Notify::new(),
            counters: AlertCounters::default(),
        }
    }

    /// After an ingest commit (or any other change of stock or thresholds): evaluates the
    /// keys and logs rather than fails, since the change itself is committed; the next
    /// touch of a key evaluates it again.
    pub async fn after_change(&self, keys: &BTreeSet<(String, String)>) {
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.evaluate_keys(keys).await {
            self.counters
                .evaluation_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, keys = keys.len(), "could not evaluate alerts for the keys just changed");
        }
    }

    /// Raises and resolves the per-(store, sku) alerts of `keys` on what MySQL holds now.
    pub async fn evaluate_keys(
        &self,
        keys: &BTreeSet<(String, String)>,
    ) -> Result<Transitions, sqlx::Error> {
        let keys: Vec<(String, String)> = keys.iter().cloned().collect();
        let mut all = Transitions::default();
        for chunk in keys.chunks(crate::db::KEYS_PER_STATEMENT) {
            let now = Utc::now();
            let facts = self.read_facts(chunk, now.date_naive()).await?;
            let open = self.open_for(chunk).await?;
            let mut raises = Vec::new();
            let mut resolves = Vec::new();
            for (store, sku) in chunk {
                // A touched key with no stock row changed nothing (a duplicate, a parked
                // message): nothing to judge.
                let Some(f) = facts.get(&(store.clone(), sku.clone())) else {
                    continue;
                };
                let holding = kinds_for(f, &self.rules, now);
                for kind in KEY_KINDS {
                    let is_open = open.get(&open_key(kind.as_str(), store, sku));
                    match (holding.contains(&kind), is_open) {
                        (true, None) => raises.push(Raise {
                            store: store.clone(),
                            sku: Some(sku.clone()),
                            kind,
                            detail: serde_json::json!({
                                "on_hand": f.on_hand,
                                "reorder_point": f.thresholds.reorder_point,
                                "reorder_point_source": f.thresholds.reorder_point_source,
                                "max_stock": f.thresholds.max_stock,
                                "max_stock_source": f.thresholds.max_stock_source,
                                "sold_today": f.sold_today,
                                "forecast_lo": f.forecast_lo,
                                "forecast_hi": f.forecast_hi,
                            }),
                        }),
                        (false, Some(o)) => resolves.push(o),
                        _ => {}
                    }
                }
            }
            let done = self.transition(raises, resolves, now).await?;
            all.raised.extend(done.raised);
            all.resolved.extend(done.resolved);
        }
        Ok(all)
    }

    /// Stock, today's sales, today's forecast bound, the forecast-derived thresholds and the
    /// three explicit levels of every key of `keys` that has a stock row, in one statement.
    async fn read_facts(
        &self,
        keys: &[(String, String)],
        today: NaiveDate,
    ) -> Result<HashMap<(String, String), KeyFacts>, sqlx::Error> {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT s.store, s.sku, s.on_hand, d.qty AS sold_today,
                    CAST(JSON_VALUE(f.body, CONCAT('$.lo[', DATEDIFF(",
        );
        q.push_bind(today).push(
            ", f.first_day), ']')) AS DOUBLE) AS forecast_lo,
                    CAST(JSON_VALUE(f.body, CONCAT('$.hi[', DATEDIFF(",
        );
        q.push_bind(today).push(format!(
            ", f.first_day), ']')) AS DOUBLE) AS forecast_hi,
                    r.derived_reorder_point, r.derived_max_stock, {}
             FROM ",
            thresholds::LEVEL_COLUMNS
        ));
        crate::db::push_keys_table(&mut q, "k", thresholds::pairs(keys));
        q.push(
            " JOIN stock s ON s.store = k.store AND s.sku = k.sku
             LEFT JOIN daily_sales d ON d.store = s.store AND d.sku = s.sku AND d.day = ",
        );
        q.push_bind(today).push(
            " LEFT JOIN forecasts f ON f.store = s.store AND f.sku = s.sku AND f.first_day <= ",
        );
        q.push_bind(today)
            .push(" LEFT JOIN reorder_suggestions r ON r.store = s.store AND r.sku = s.sku")
            .push(thresholds::LEVEL_JOINS);
        let mut facts: HashMap<(String, String), KeyFacts> = HashMap::new();
        for r in q.build().fetch_all(&self.pool).await? {
            let key: (String, String) = (r.try_get("store")?, r.try_get("sku")?);
            let derived = if self.with_forecast {
                thresholds::Levels {
                    reorder_point: r.try_get("derived_reorder_point")?,
                    max_stock: r.try_get("derived_max_stock")?,
                }
            } else {
                thresholds::Levels::default()
            };
            let (exact, chain, store_wide) = thresholds::levels_of(&r)?;
            let forecast_lo: Option<f64> = r.try_get("forecast_lo")?;
            let forecast_hi: Option<f64> = r.try_get("forecast_hi")?;
            facts.insert(
                key,
                KeyFacts {
                    on_hand: r.try_get("on_hand")?,
                    thresholds: thresholds::resolve(exact, chain, store_wide, derived),
                    sold_today: r.try_get("sold_today")?,
                    forecast_lo: forecast_lo.filter(|l| l.is_finite()),
                    forecast_hi: forecast_hi.filter(|h| h.is_finite()),
                },
            );
        }
        Ok(facts)
    }

    /// Open per-key alerts of `keys`, by open key: each a lookup in the unique index, the
    /// open keys joined as a table (see [`crate::db::push_strings_table`]).
    async fn open_for(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<String, Open>, sqlx::Error> {
        let mut open = HashMap::new();
        let wanted: Vec<String> = keys
            .iter()
            .flat_map(|(store, sku)| {
                KEY_KINDS
                    .iter()
                    .map(move |kind| open_key(kind.as_str(), store, sku))
            })
            .collect();
        for part in wanted.chunks(crate::db::KEYS_PER_STATEMENT) {
            let mut q =
                QueryBuilder::<MySql>::new("SELECT a.id, a.store, a.sku, a.kind, a.open_key FROM ");
            crate::db::push_strings_table(
                &mut q,
                "w",
                "open_key",
                200,
                part.iter().map(String::as_str),
            );
            q.push(" JOIN alerts a ON a.open_key = w.open_key");
            for r in q.build().fetch_all(&self.pool).await? {
                open.insert(
                    r.try_get::<String, _>("open_key")?,
                    Open {
                        id: r.try_get("id")?,
                        store: r.try_get::<Option<String>, _>("store")?.unwrap_or_default(),
                        sku: r.try_get("sku")?,
                        kind: r.try_get("kind")?,
                    },
                );
            }
        }
        Ok(open)
    }

    /// Writes raises and resolves with their events in one transaction.
    async fn transition(
        &self,
        raises: Vec<Raise>,
        resolves: Vec<&Open>,
        now: DateTime<Utc>,
    ) -> Result<Transitions, sqlx::Error> {
        let mut done = Transitions::default();
        if raises.is_empty() && resolves.is_empty() {
            return Ok(done);
        }
        // What MySQL keeps (microseconds), so the event says what the API will.
        let now = now.trunc_subsecs(6);
        let mut tx = self.pool.begin().await?;
        // Resolves first: a key moving from one kind to another reads in order.
        for open in resolves {
            let updated = sqlx::query(
                "UPDATE alerts SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL",
            )
            .bind(now)
            .bind(open.id)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?"))
                    .bind(open.id)
                    .fetch_one(&mut *tx)
                    .await?;
                event(&mut tx, &alert_of(&row)?, "resolved", now).await?;
                done.resolved.push(open.id);
                tracing::info!(store = %open.store, sku = ?open.sku, kind = %open.kind, "alert resolved");
            }
        }
        for raise in &raises {
            let message: String = message(
                raise.kind,
                &raise.store,
                raise.sku.as_deref(),
                &raise.detail,
            )
            .chars()
            .take(1000)
            .collect();
            // IGNORE: another evaluation opened the same alert meanwhile (the unique open
            // key); then there is nothing to raise.
            let inserted = sqlx::query(
                "INSERT IGNORE INTO alerts (store, sku, kind, severity, message, detail, raised_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&raise.store)
            .bind(&raise.sku)
            .bind(raise.kind.as_str())
            .bind(severity(raise.kind))
            .bind(&message)
            .bind(raise.detail.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != 1 {
                continue;
            }
            let id = inserted.last_insert_id() as i64;
            let alert = Alert {
                id,
                store: Some(raise.store.clone()),
                sku: raise.sku.clone(),
                kind: raise.kind.as_str().to_owned(),
                severity: severity(raise.kind).to_owned(),
                message,
                detail: Some(raise.detail.clone()),
                raised_at: now,
                acknowledged_at: None,
                acknowledged_by: None,
                resolved_at: None,
            };
            event(&mut tx, &alert, "raised", now).await?;
            done.raised.push(id);
        }
        tx.commit().await?;
        self.counters
            .raised
            .fetch_add(done.raised.len() as u64, Ordering::Relaxed);
        self.counters
            .resolved
            .fetch_add(done.resolved.len() as u64, Ordering::Relaxed);
        if !done.raised.is_empty() || !done.resolved.is_empty() {
            self.wake_relay.notify_one();
        }
        Ok(done)
    }

    /// Raises `stale_store` for every store silent for longer than the bound, resolves it for
    /// every store heard from since. No-op when the check is off.
    pub async fn check_stale(&self, now: DateTime<Utc>) -> Result<Transitions, sqlx::Error> {
        let Some(bound) = self.stale_after else {
            return Ok(Transitions::default());
        };
        let rows = sqlx::query(
            "SELECT s.id, GREATEST(s.created_at, COALESCE(s.last_seen_at, s.created_at),
                                   COALESCE(y.last_applied_at, s.created_at), COALESCE(y.last_seen_at, s.created_at)) AS last_seen,
                    a.id AS open_id
             FROM stores s
             LEFT JOIN store_sync y ON y.store = s.id
             LEFT JOIN alerts a ON a.open_key = CONCAT('stale_store/', s.id, '/')",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut raises = Vec::new();
        let mut opens = Vec::new();
        for r in rows {
            let store: String = r.try_get("id")?;
            let last_seen: DateTime<Utc> = r.try_get("last_seen")?;
            let open_id: Option<i64> = r.try_get("open_id")?;
            let stale = evaluate(
                &AlertFacts {
                    on_hand: f64::NAN,
                    reorder_point: None,
                    max_stock: None,
                    day_sales: None,
                    last_sync: Some(last_seen),
                    store_open: true,
                    now,
                },
                &AlertThresholds {
                    stale_after: bound,
                    ..self.rules
                },
            )
            .contains(&AlertKind::StaleStore);
            match (stale, open_id) {
                (true, None) => raises.push(Raise {
                    store,
                    sku: None,
                    kind: AlertKind::StaleStore,
                    detail: serde_json::json!({"last_seen": last_seen, "bound_secs": bound.num_seconds()}),
                }),
                (false, Some(id)) => opens.push(Open {
                    id,
                    store,
                    sku: None,
                    kind: AlertKind::StaleStore.as_str().into(),
                }),
                _ => {}
            }
        }
        self.transition(raises, opens.iter().collect(), now).await
    }

    /// Every `every`, while this hub holds the stale-check lease.
    pub async fn run_stale_checks(
        self: Arc<Self>,
        lease: Lease,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        if self.stale_after.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if lease.try_acquire().await != Attempt::Held {
                continue;
            }
            match self.check_stale(Utc::now()).await {
                Ok(t) if !t.raised.is_empty() || !t.resolved.is_empty() => {
                    tracing::info!(
                        raised = t.raised.len(),
                        resolved = t.resolved.len(),
                        "stale-store check"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stale-store check failed; retrying next round")
                }
            }
        }
    }

    /// Publishes pending alert events on `topic` while this hub holds the relay lease; wakes
    /// at once after a local transition, else every `poll` (events raised by other hubs).
    /// After a failed delivery the producer is dropped and the next attempt makes a fresh
    /// one with `connect`, as the outbox relay does: an idempotent producer whose messages
    /// timed out bumps its epoch, and tansu 0.6 panics on that epoch and stops serving every
    /// client (seen: a broker outage longer than the 10 s message timeout while an alert was
    /// pending left the restarted broker refusing the agents' and the hubs' requests).
    pub async fn run_relay(
        self: Arc<Self>,
        connect: impl Fn() -> Result<FutureProducer, rdkafka::error::KafkaError> + Send + 'static,
        topic: String,
        lease: Lease,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = poll;
        let mut producer: Option<FutureProducer> = None;
        loop {
            tokio::select! {
                _ = self.wake_relay.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if lease.try_acquire().await != Attempt::Held {
                backoff = poll;
                continue;
            }
            let current = match producer.take().map_or_else(&connect, Ok) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, %topic, "cannot create the alerts producer; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = match self.publish_pending(&current, &topic).await {
                Ok(_) => {
                    producer = Some(current);
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, %topic, "alert events not published; retrying with a fresh producer");
                    drop(current);
                    (backoff * 2).min(Duration::from_secs(30))
                }
            };
        }
    }

    /// Publishes pending events in id order until none is left; stops at the first failed
    /// delivery so that later events never overtake it.
    pub async fn publish_pending(
        &self,
        producer: &FutureProducer,
        topic: &str,
    ) -> anyhow::Result<u64> {
        let mut published = 0;
        loop {
            let rows = sqlx::query(
                "SELECT id, store, body FROM alert_events WHERE published_at IS NULL ORDER BY id LIMIT ?",
            )
            .bind(RELAY_BATCH)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let mut batch = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.try_get("id")?;
                let store: Option<String> = r.try_get("store")?;
                let body: Vec<u8> = r.try_get("body")?;
                batch.push((id, store.unwrap_or_default(), with_event_id(id, &body)));
            }
            let deliveries = batch.iter().map(|(_, store, body)| {
                producer.send(
                    FutureRecord::to(topic)
                        .key(store.as_str())
                        .payload(body.as_slice()),
                    Duration::from_secs(10),
                )
            });
            let results = futures::future::join_all(deliveries).await;
            let delivered: Vec<i64> = batch
                .iter()
                .zip(&results)
                .take_while(|(_, r)| r.is_ok())
                .map(|((id, _, _), _)| *id)
                .collect();
            if !delivered.is_empty() {
                let mut q = QueryBuilder::<MySql>::new("UPDATE alert_events SET published_at = ");
                q.push_bind(Utc::now()).push(" WHERE id IN (");
                let mut sep = q.separated(", ");
                for id in &delivered {
                    sep.push_bind(*id);
                }
                q.push(")");
                q.build().execute(&self.pool).await?;
                published += delivered.len() as u64;
                self.counters
                    .published
                    .fetch_add(delivered.len() as u64, Ordering::Relaxed);
            }
            if let Some((_, Err((e, _)))) = results.iter().enumerate().find(|(_, r)| r.is_err()) {
                anyhow::bail!("delivery failed: {e}");
            }
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        for (name, help, value) in [
            (
                "bazaar_hub_alerts_raised_total",
                "Alerts raised by this hub.",
                &c.raised,
            ),
            (
                "bazaar_hub_alerts_resolved_total",
                "Alerts resolved by this hub.",
                &c.resolved,
            ),
            (
                "bazaar_hub_alert_events_published_total",
                "Alert events this hub published on the alerts topic.",
                &c.published,
            ),
            (
                "bazaar_hub_alert_evaluation_failures_total",
                "Alert evaluations after a change that failed (retried on the next change).",
                &c.evaluation_failures,
            ),
        ] {
            crate::metrics::scalar(out, name, "counter", help, value.load(Ordering::Relaxed));
        }
    }
}

/// An alert about the hub's own operation (a parked movement, a bound reached) rather
/// than a stock rule: raised inside the caller's transaction, so it stands or falls with
/// the change it reports; one open per (kind, store); an operator acknowledges it.
pub struct Operational<'a> {
    pub kind: &'static str,
    pub severity: &'static str,
    pub store: Option<&'a str>,
    pub message: String,
    pub detail: serde_json::Value,
}

pub async fn raise_operational(
    tx: &mut sqlx::Transaction<'_, MySql>,
    alert: Operational<'_>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let now = now.trunc_subsecs(6);
    let message: String = alert.message.chars().take(1000).collect();
    let inserted = sqlx::query(
        "INSERT IGNORE INTO alerts (store, sku, kind, severity, message, detail, raised_at)
         VALUES (?, NULL, ?, ?, ?, ?, ?)",
    )
    .bind(alert.store)
    .bind(alert.kind)
    .bind(alert.severity)
    .bind(&message)
    .bind(alert.detail.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 1 {
        let raised = Alert {
            id: inserted.last_insert_id() as i64,
            store: alert.store.map(str::to_owned),
            sku: None,
            kind: alert.kind.to_owned(),
            severity: alert.severity.to_owned(),
            message,
            detail: Some(alert.detail),
            raised_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
        };
        event(tx, &raised, "raised", now).await?;
    }
    Ok(())
}

/// The event row for a transition, with the alert as it now stands. Its `event_id` is the
/// row's id, added by the relay when it publishes ([`with_event_id`]).
async fn event(
    tx: &mut sqlx::Transaction<'_, MySql>,
    alert: &Alert,
    kind: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let body = serde_json::json!({"v": 1, "event": kind, "at": now, "alert": alert});
    sqlx::query(
        "INSERT INTO alert_events (alert_id, store, event, body, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(alert.id)
    .bind(&alert.store)
    .bind(kind)
    .bind(body.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The published form of a stored event: its body with `event_id`, by which consumers
/// deduplicate (delivery is at least once).
pub fn with_event_id(id: i64, body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut event)) => {
            event.insert("event_id".into(), id.into());
            serde_json::Value::Object(event).to_string().into_bytes()
        }
        // Only this module writes bodies; keep anything else as it is.
        _ => body.to_vec(),
    }
}

/// A page of alerts, newest first.
pub async fn list(
    pool: &MySqlPool,
    store: Option<&str>,
    kind: Option<&str>,
    open: Option<bool>,
    before_id: Option<i64>,
    limit: u32,
) -> Result<Vec<Alert>, sqlx::Error> {
    let mut q =
        QueryBuilder::<MySql>::new(format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1"));
    if let Some(store) = store {
        q.push(" AND store = ").push_bind(store.to_owned());
    }
    if let Some(kind) = kind {
        q.push(" AND kind = ").push_bind(kind.to_owned());
    }
    match open {
        Some(true) => {
            q.push(" AND resolved_at IS NULL");
        }
        Some(false) => {
            q.push(" AND resolved_at IS NOT NULL");
        }
        None => {}
    }
    if let Some(id) = before_id {
        q.push(" AND id < ").push_bind(id);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(alert_of)
        .collect()
}

pub async fn get(pool: &MySqlPool, id: i64) -> Result<Option<Alert>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(alert_of)
        .transpose()
}

/// Acknowledges an alert once; a second acknowledgement keeps the first one's time and
/// author. Returns the alert as it stands and whether this call acknowledged it.
pub async fn acknowledge(
    pool: &MySqlPool,
    id: i64,
    by: &str,
) -> Result<Option<(Alert, bool)>, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ? AND acknowledged_at IS NULL",
    )
    .bind(Utc::now())
    .bind(by)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(get(pool, id)
        .await?
        .map(|a| (a, updated.rows_affected() == 1)))
}

/// The producer of `{prefix}alerts`: idempotent, acks from every replica.
pub fn producer(
    brokers: &str,
    properties: &bazaar_shared::kafka::KafkaProperties,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    bazaar_shared::kafka::idempotent_producer(brokers, properties, Duration::from_secs(10)).create()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(on_hand: i64, rop: Option<i64>, max: Option<i64>) -> KeyFacts {
        KeyFacts {
            on_hand,
            thresholds: thresholds::Effective {
                reorder_point: rop,
                max_stock: max,
                ..Default::default()
            },
            sold_today: None,
            forecast_lo: None,
            forecast_hi: None,
        }
    }

    #[test]
    fn stock_kinds_follow_the_shared_rules() {
        let now = Utc::now();
        let rules = AlertThresholds::default();
        let k = |f: &KeyFacts| kinds_for(f, &rules, now);
        assert_eq!(k(&facts(3, Some(5), None)), [AlertKind::LowStock].into());
        assert_eq!(k(&facts(6, Some(5), None)), BTreeSet::new());
        assert_eq!(k(&facts(0, Some(5), None)), [AlertKind::OutOfStock].into());
        assert_eq!(
            k(&facts(-2, Some(5), None)),
            [AlertKind::NegativeStock].into()
        );
        assert_eq!(k(&facts(51, None, Some(50))), [AlertKind::Overstock].into());
        assert!(
            k(&facts(3, None, None)).is_empty(),
            "no thresholds, no low stock"
        );
    }

    #[test]
    fn published_events_carry_their_row_id() {
        let body = br#"{"v":1,"event":"raised","alert":{"id":7}}"#;
        let published: serde_json::Value =
            serde_json::from_slice(&with_event_id(42, body)).unwrap();
        assert_eq!(published["event_id"], 42);
        assert_eq!(published["alert"]["id"], 7);
        assert_eq!(with_event_id(1, b"not json"), b"not json");
    }

    #[test]
    fn a_day_in_progress_fires_only_above_the_interval() {
        let now = Utc::now();
        let rules = AlertThresholds::default();
        let mut f = facts(100, None, None);
        f.forecast_lo = Some(4.0);
        f.forecast_hi = Some(12.0);
        // The shared rule's slack: max(0.5 · (12 − 4), 2) = 4, so it fires above 16; below
        // the interval it never fires while the day is in progress.
        f.sold_today = Some(1);
        assert!(
            kinds_for(&f, &rules, now).is_empty(),
            "a slow morning is no anomaly"
        );
        f.sold_today = Some(16);
        assert!(kinds_for(&f, &rules, now).is_empty());
        f.sold_today = Some(17);
        assert_eq!(
            kinds_for(&f, &rules, now),
            [AlertKind::DemandAnomaly].into()
        );
    }
}
