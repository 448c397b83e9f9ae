//! Queries behind the HQ dashboard's chain views (issue 11): the store list filtered by
//! health and searched by id prefix, alerts filtered by severity too, and a store's sync
//! history (lag and the hub's outbox depth per time bucket).
//!
//! Invariants:
//! - the store list pages by keyset on the store id, like every list (see
//!   [`crate::queries`]): the health filter is applied in the same query, so a page of a
//!   filtered list holds `limit` matching stores whatever the chain's size, and the next
//!   page continues strictly after the last one shown;
//! - a store's health is derived from what the hub itself knows: messages held behind a
//!   gap, unresolved parked events, an open `stale_store` alert, and the hub's own outbox
//!   towards the store over [`OUTBOX_BUDGET_ROWS`] unpublished commands or with one older
//!   than [`OUTBOX_BUDGET_AGE_SECS`]. The agent's own outbox (and its disk budget) is only
//!   known at the agent (`/v1/status` there);
//! - sync lag is `received_at - occurred_at` of store-origin movements, by the hub's receive
//!   time, clamped at 0 (a till clock ahead of the hub's is no negative lag).

use chrono::{DateTime, Duration, DurationRound, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use crate::alerting::Alert;
use crate::queries::{decode_cursor, encode_cursor, BadCursor};

/// More unpublished commands than this in the hub's outbox towards one store is over budget.
pub const OUTBOX_BUDGET_ROWS: i64 = 100;
/// An unpublished command older than this (seconds) is over budget too.
pub const OUTBOX_BUDGET_AGE_SECS: i64 = 300;

/// The health filters of the store list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// None of the problems below.
    Ok,
    /// An open `stale_store` alert: the hub has not heard from it within its bound.
    Stale,
    /// Messages held behind a gap in seq.
    Held,
    /// Unresolved parked events.
    Parked,
    /// The hub's outbox towards the store is over its budget.
    OutboxOverBudget,
}

/// A store as the dashboard lists it: its sync figures and what is wrong with it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DashboardStore {
    pub store: String,
    pub name: Option<String>,
    /// When the hub last received anything from the store.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The last store-origin seq applied.
    pub last_seq: u64,
    /// The last hub-origin seq the hub numbered for the store.
    pub last_hub_seq: u64,
    pub last_applied_at: Option<DateTime<Utc>>,
    /// Messages waiting for a gap in seq to fill.
    pub held: i64,
    /// Parked messages not yet resolved.
    pub parked: i64,
    /// Whether a `stale_store` alert is open.
    pub stale: bool,
    /// Unpublished commands in the hub's outbox towards the store.
    pub outbox_pending: i64,
    /// When the oldest of them was written.
    pub outbox_oldest_at: Option<DateTime<Utc>>,
    /// `stale`, `held`, `parked`, `outbox_over_budget`; empty when the store is ok.
    pub problems: Vec<Health>,
}

/// How many stores (matching the id prefix, if any) are in each state; a store with
/// several problems counts in each.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct HealthCounts {
    pub all: i64,
    pub ok: i64,
    pub stale: i64,
    pub held: i64,
    pub parked: i64,
    pub outbox_over_budget: i64,
}

/// One page of the dashboard's store list.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DashboardStores {
    pub items: Vec<DashboardStore>,
    /// Pass it back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Over every store matching `prefix` (whatever `health` says).
    pub counts: HealthCounts,
}

pub const DASHBOARD_STORES_ROUTE: &str = "dashboard-stores";

const STORE_FIGURES: &str = "SELECT s.id, s.name, COALESCE(y.last_seen_at, s.last_seen_at) AS last_seen_at,
        y.last_seq, y.last_hub_seq, y.last_applied_at,
        (SELECT COUNT(*) FROM held_events h WHERE h.store = s.id) AS held,
        (SELECT COUNT(*) FROM parked_events p WHERE p.store = s.id AND p.resolved_at IS NULL) AS parked,
        (SELECT COUNT(*) FROM outbox o WHERE o.published_at IS NULL AND o.store = s.id) AS outbox_pending,
        (SELECT MIN(o.created_at) FROM outbox o WHERE o.published_at IS NULL AND o.store = s.id) AS outbox_oldest_at,
        (SELECT COUNT(*) FROM alerts a WHERE a.open_key = CONCAT('stale_store/', s.id, '/')) AS stale
     FROM stores s JOIN store_sync y ON y.store = s.id";

/// `LIKE` pattern for an id prefix (ids are `[A-Za-z0-9_-]`: only `_` is special).
fn prefix_pattern(prefix: &str) -> String {
    format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    )
}

fn push_prefix(q: &mut QueryBuilder<'_, MySql>, prefix: Option<&str>) {
    if let Some(prefix) = prefix {
        q.push(" AND s.id LIKE ").push_bind(prefix_pattern(prefix));
    }
}

/// The SQL condition (over the figures' aliases) for one health state.
fn health_condition(health: Health, now: DateTime<Utc>) -> String {
    let too_old = (now - Duration::seconds(OUTBOX_BUDGET_AGE_SECS))
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    let over = format!(
        "(outbox_pending > {OUTBOX_BUDGET_ROWS} OR (outbox_oldest_at IS NOT NULL AND outbox_oldest_at < '{too_old}'))"
    );
    match health {
        Health::Ok => format!("(held = 0 AND parked = 0 AND stale = 0 AND NOT {over})"),
        Health::Stale => "stale > 0".into(),
        Health::Held => "held > 0".into(),
        Health::Parked => "parked > 0".into(),
        Health::OutboxOverBudget => over,
    }
}

pub fn problems_of(s: &DashboardStore, now: DateTime<Utc>) -> Vec<Health> {
    let mut problems = Vec::new();
    if s.stale {
        problems.push(Health::Stale);
    }
    if s.held > 0 {
        problems.push(Health::Held);
    }
    if s.parked > 0 {
        problems.push(Health::Parked);
    }
    let too_old = now - Duration::seconds(OUTBOX_BUDGET_AGE_SECS);
    if s.outbox_pending > OUTBOX_BUDGET_ROWS || s.outbox_oldest_at.is_some_and(|t| t < too_old) {
        problems.push(Health::OutboxOverBudget);
    }
    problems
}

/// One page of stores by id, after `cursor`, matching `prefix` and `health`.
pub async fn stores_page(
    pool: &MySqlPool,
    health: Option<Health>,
    prefix: Option<&str>,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Result<DashboardStores, BadCursor>, sqlx::Error> {
    let after: Option<(String,)> = match cursor.map(|c| decode_cursor(DASHBOARD_STORES_ROUTE, c)) {
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    let now = Utc::now();
    let mut q = QueryBuilder::<MySql>::new(STORE_FIGURES);
    q.push(" WHERE 1 = 1");
    push_prefix(&mut q, prefix);
    if let Some((after,)) = &after {
        q.push(" AND s.id > ").push_bind(after.clone());
    }
    if let Some(health) = health {
        q.push(" HAVING ").push(health_condition(health, now));
    }
    q.push(" ORDER BY s.id LIMIT ").push_bind(limit + 1);
    let mut items = q
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            let stale: i64 = r.try_get("stale")?;
            let mut store = DashboardStore {
                store: r.try_get("id")?,
                name: r.try_get("name")?,
                last_seen_at: r.try_get("last_seen_at")?,
                last_seq: r.try_get("last_seq")?,
                last_hub_seq: r.try_get("last_hub_seq")?,
                last_applied_at: r.try_get("last_applied_at")?,
                held: r.try_get("held")?,
                parked: r.try_get("parked")?,
                stale: stale > 0,
                outbox_pending: r.try_get("outbox_pending")?,
                outbox_oldest_at: r.try_get("outbox_oldest_at")?,
                problems: Vec::new(),
            };
            store.problems = problems_of(&store, now);
            Ok(store)
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items
            .last()
            .map(|s| encode_cursor(DASHBOARD_STORES_ROUTE, &(s.store.clone(),)))
    } else {
        None
    };

    let mut c = QueryBuilder::<MySql>::new("SELECT COUNT(*) AS all_, ");
    let states = [
        ("ok", Health::Ok),
        ("stale", Health::Stale),
        ("held", Health::Held),
        ("parked", Health::Parked),
        ("outbox_over_budget", Health::OutboxOverBudget),
    ];
    for (i, (name, health)) in states.iter().enumerate() {
        if i > 0 {
            c.push(", ");
        }
        c.push(format!(
            "CAST(COALESCE(SUM({}), 0) AS SIGNED) AS {name}",
            health_condition(*health, now)
        ));
    }
    c.push(" FROM (").push(STORE_FIGURES).push(" WHERE 1 = 1");
    push_prefix(&mut c, prefix);
    c.push(") f");
    let row = c.build().fetch_one(pool).await?;
    let counts = HealthCounts {
        all: row.try_get("all_")?,
        ok: row.try_get("ok")?,
        stale: row.try_get("stale")?,
        held: row.try_get("held")?,
        parked: row.try_get("parked")?,
        outbox_over_budget: row.try_get("outbox_over_budget")?,
    };
    Ok(Ok(DashboardStores {
        items,
        next_cursor,
        counts,
    }))
}

// --- alerts -------------------------------------------------------------------------

/// What the dashboard's alert list filters on.
#[derive(Debug, Default)]
pub struct AlertFilter<'a> {
    pub store: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub severity: Option<&'a str>,
    pub open: Option<bool>,
}

/// Alerts newest first (by id), before `before_id`, at most `limit`.
pub async fn alerts(
    pool: &MySqlPool,
    filter: &AlertFilter<'_>,
    before_id: Option<i64>,
    limit: u32,
) -> Result<Vec<Alert>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT id, store, sku, kind, severity, message, detail, raised_at, acknowledged_at, \
         acknowledged_by, resolved_at FROM alerts WHERE 1 = 1",
    );
    if let Some(store) = filter.store {
        q.push(" AND store = ").push_bind(store.to_owned());
    }
    if let Some(kind) = filter.kind {
        q.push(" AND kind = ").push_bind(kind.to_owned());
    }
    if let Some(severity) = filter.severity {
        q.push(" AND severity = ").push_bind(severity.to_owned());
    }
    match filter.open {
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
        .map(|r| {
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
        })
        .collect()
}

// --- sync history -------------------------------------------------------------------

/// One time bucket of a store's sync history.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct SyncBucket {
    /// The bucket's start; it lasts `bucket_seconds`.
    pub start: DateTime<Utc>,
    /// Store-origin movements the hub received in the bucket.
    pub movements: u64,
    /// Median of `received_at - occurred_at` over them, seconds (null: none received).
    pub lag_p50_secs: Option<f64>,
    /// 99th percentile (nearest rank), seconds.
    pub lag_p99_secs: Option<f64>,
    /// Largest, seconds.
    pub lag_max_secs: Option<f64>,
    /// Commands in the hub's outbox towards the store not yet published at the bucket's end
    /// (or now, for the bucket in progress).
    pub hub_outbox_depth: u64,
}

/// A store's sync over the last hours.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct SyncHistory {
    pub store: String,
    pub hours: u32,
    pub bucket_seconds: u32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Oldest first, one per bucket, empty ones included.
    pub buckets: Vec<SyncBucket>,
    /// Unpublished commands in the hub's outbox towards the store now.
    pub hub_outbox_pending: u64,
}

/// Buckets of 10 minutes up to 12 hours, of an hour beyond.
pub fn bucket_seconds(hours: u32) -> u32 {
    if hours <= 12 {
        600
    } else {
        3600
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub async fn sync_history(
    pool: &MySqlPool,
    store: &str,
    hours: u32,
    now: DateTime<Utc>,
) -> Result<SyncHistory, sqlx::Error> {
    let step = bucket_seconds(hours);
    let step_d = Duration::seconds(step as i64);
    // Buckets aligned on the step, the last one holding `now`.
    let last_start = now.duration_trunc(step_d).unwrap_or(now);
    let count = (hours as i64 * 3600 / step as i64).max(1);
    let from = last_start - step_d * (count as i32 - 1);
    let index = |t: DateTime<Utc>| -> Option<usize> {
        let i = (t - from).num_microseconds()? / step_d.num_microseconds()?;
        (0..count).contains(&i).then_some(i as usize)
    };

    let mut lags: Vec<Vec<f64>> = vec![Vec::new(); count as usize];
    let rows = sqlx::query(
        "SELECT received_at, occurred_at FROM movements
         WHERE store = ? AND received_at >= ? AND origin = 'store'",
    )
    .bind(store)
    .bind(from)
    .fetch_all(pool)
    .await?;
    for r in rows {
        let received: DateTime<Utc> = r.try_get("received_at")?;
        let occurred: DateTime<Utc> = r.try_get("occurred_at")?;
        if let Some(i) = index(received) {
            let lag = (received - occurred).num_milliseconds().max(0) as f64 / 1000.0;
            lags[i].push(lag);
        }
    }

    // Depth at each bucket's end: written by then, not yet published by then.
    let outbox = sqlx::query(
        "SELECT created_at, published_at FROM outbox
         WHERE store = ? AND (published_at IS NULL OR published_at >= ?)",
    )
    .bind(store)
    .bind(from)
    .fetch_all(pool)
    .await?;
    let spans = outbox
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<DateTime<Utc>, _>("created_at")?,
                r.try_get::<Option<DateTime<Utc>>, _>("published_at")?,
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let pending_now = spans.iter().filter(|(_, p)| p.is_none()).count() as u64;

    let buckets = lags
        .into_iter()
        .enumerate()
        .map(|(i, mut values)| {
            values.sort_by(|a, b| a.total_cmp(b));
            let start = from + step_d * i as i32;
            let end = (start + step_d).min(now);
            let depth = spans
                .iter()
                .filter(|(created, published)| *created <= end && published.is_none_or(|p| p > end))
                .count() as u64;
            SyncBucket {
                start,
                movements: values.len() as u64,
                lag_p50_secs: percentile(&values, 50.0),
                lag_p99_secs: percentile(&values, 99.0),
                lag_max_secs: values.last().copied(),
                hub_outbox_depth: depth,
            }
        })
        .collect();
    Ok(SyncHistory {
        store: store.to_owned(),
        hours,
        bucket_seconds: step,
        from,
        to: now,
        buckets,
        hub_outbox_pending: pending_now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn prefixes_escape_like_wildcards() {
        assert_eq!(prefix_pattern("S_1"), "S\\_1%");
        assert_eq!(prefix_pattern("S-1"), "S-1%");
    }
}
