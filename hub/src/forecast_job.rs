//! The forecast job (DESIGN §8): per (store, sku), daily demand from `daily_sales` →
//! `bazaar_intelligence::forecast_series` → `forecasts` and `reorder_suggestions`, and,
//! with `BAZAAR_HUB_PUSH_THRESHOLDS=true`, forecast-derived thresholds announced to the
//! stores.
//!
//! Invariants:
//! - One run at a time across every hub: a run holds the Redis lease `forecast` for its
//!   whole length (renewed in the background) and stops, marked failed, as soon as the
//!   lease cannot be counted on ([`crate::lease`]). Within one hub a flag refuses a second
//!   start before Redis is even asked.
//! - Memory is bounded: series are read in pages of [`PAGE`] (store, sku) keys (keyset
//!   pagination on the primary key), each page forecast in parallel (rayon, on a blocking
//!   thread so the async workers keep serving) and written in one transaction before the
//!   next page is read.
//! - History is the [`HISTORY_DAYS`] days up to yesterday (today is not over); a day without
//!   a `daily_sales` row is a day without sales (0). The forecast starts today.
//! - A page's writes and its bulk-state notices (stores whose derived thresholds changed)
//!   commit together; its alerts are re-evaluated after the commit.
//! - A nightly run starts at `BAZAAR_HUB_FORECAST_AT` (UTC); a hub that wakes late skips
//!   it if any hub already ran that day's scheduled run.
//!
//! Reorder figures use each product's `lead_time_days` and `pack_size` (7 and 1 without a
//! product record), a review period of [`REVIEW_PERIOD_DAYS`] days, the configured service
//! level, and the stock on hand when the page is computed; the hub does not track goods on
//! order, so on-order counts as 0. Derived thresholds: reorder point = ⌈ROP⌉, maximum =
//! ⌈order-up-to⌉ + one pack (a delivery rounded up to whole packs lands above the
//! order-up-to level without being overstock).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_intelligence::reorder::{reorder_plan, ReorderPlan, ReorderPolicy};
use bazaar_intelligence::{forecast_series, Forecast, SelectConfig};
use bazaar_shared::StoreId;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rayon::prelude::*;
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::lease::{Attempt, HeldLease, Lease};
use crate::startup::Hub;

/// Series read, forecast and written together.
pub const PAGE: usize = 256;
/// Days of history per series (52 weeks).
pub const HISTORY_DAYS: i64 = 364;
/// Days forecast.
pub const HORIZON: usize = 28;
/// Days of history kept with each forecast, for charts.
pub const HISTORY_TAIL: usize = 56;
/// Days between two orders.
pub const REVIEW_PERIOD_DAYS: u32 = 7;
pub const LEASE_NAME: &str = "forecast";
pub const LEASE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a forecast run is already in progress")]
    Running,
    #[error("the job lease cannot be taken while Redis is unreachable; try again later")]
    Unavailable,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Progress for `/metrics`.
#[derive(Default)]
pub struct JobMetrics {
    pub series_done: AtomicU64,
    pub series_total: AtomicU64,
    pub runs_succeeded: AtomicU64,
    pub runs_failed: AtomicU64,
    pub last_duration_ms: AtomicU64,
    pub last_success_unix: AtomicU64,
}

/// The job's state in one hub.
pub struct ForecastJobs {
    lease: Lease,
    running: AtomicBool,
    instance: String,
    pub metrics: JobMetrics,
}

impl ForecastJobs {
    pub fn new(link: Arc<crate::redis_link::RedisLink>, instance: &str) -> ForecastJobs {
        ForecastJobs {
            lease: Lease::new(link, LEASE_NAME, instance, LEASE_TTL),
            running: AtomicBool::new(false),
            instance: instance.to_owned(),
            metrics: JobMetrics::default(),
        }
    }

    pub fn is_running_here(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn render_metrics(&self, out: &mut String) {
        let m = &self.metrics;
        let g = |out: &mut String, name, kind, help, v: &AtomicU64| {
            crate::metrics::scalar(out, name, kind, help, v.load(Ordering::Relaxed))
        };
        g(
            out,
            "bazaar_hub_forecast_series_done",
            "gauge",
            "Series forecast so far by the run in progress here (or the last one).",
            &m.series_done,
        );
        g(
            out,
            "bazaar_hub_forecast_series_total",
            "gauge",
            "Series the run in progress here (or the last one) has to forecast.",
            &m.series_total,
        );
        g(
            out,
            "bazaar_hub_forecast_runs_succeeded_total",
            "counter",
            "Forecast runs this hub completed.",
            &m.runs_succeeded,
        );
        g(
            out,
            "bazaar_hub_forecast_runs_failed_total",
            "counter",
            "Forecast runs this hub started that failed or lost their lease.",
            &m.runs_failed,
        );
        crate::metrics::scalar(
            out,
            "bazaar_hub_forecast_last_run_duration_seconds",
            "gauge",
            "Duration of this hub's last finished forecast run.",
            m.last_duration_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        g(
            out,
            "bazaar_hub_forecast_last_success_timestamp_seconds",
            "gauge",
            "When this hub's last successful forecast run finished (Unix time).",
            &m.last_success_unix,
        );
    }
}

/// A run's row, for `GET /v1/forecasts/runs/{id}`.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct RunStatus {
    pub id: String,
    pub status: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub instance: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub history_from: NaiveDate,
    pub history_to: NaiveDate,
    pub series_total: i64,
    pub series_done: i64,
    pub error: Option<String>,
}

pub async fn run_status(pool: &MySqlPool, id: &Uuid) -> Result<Option<RunStatus>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, status, trigger_kind, requested_by, instance, started_at, finished_at,
                history_from, history_to, series_total, series_done, error
         FROM forecast_runs WHERE id = ?",
    )
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(RunStatus {
            id: r.try_get("id")?,
            status: r.try_get("status")?,
            trigger: r.try_get("trigger_kind")?,
            requested_by: r.try_get("requested_by")?,
            instance: r.try_get("instance")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            history_from: r.try_get("history_from")?,
            history_to: r.try_get("history_to")?,
            series_total: r.try_get("series_total")?,
            series_done: r.try_get("series_done")?,
            error: r.try_get("error")?,
        })
    })
    .transpose()
}

/// Resets the local flag however the run ends.
struct RunningFlag<'a>(&'a AtomicBool);

impl Drop for RunningFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Starts a run in the background: takes the lease, records the run, returns its id. The
/// run's outcome is in its row.
pub async fn start(
    hub: &Arc<Hub>,
    trigger: Trigger,
    requested_by: Option<&str>,
) -> Result<Uuid, StartError> {
    start_at(hub, trigger, requested_by, Utc::now()).await
}

async fn start_at(
    hub: &Arc<Hub>,
    trigger: Trigger,
    requested_by: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Uuid, StartError> {
    let jobs = &hub.forecasts;
    if jobs.running.swap(true, Ordering::AcqRel) {
        return Err(StartError::Running);
    }
    let flag = RunningFlag(&jobs.running);
    let lease = match jobs.lease.hold().await {
        Ok(held) => held,
        Err(Attempt::Unavailable) => return Err(StartError::Unavailable),
        Err(_) => return Err(StartError::Running),
    };
    let today = now.date_naive();
    let history_to = today - chrono::Days::new(1);
    let history_from = history_to - chrono::Duration::days(HISTORY_DAYS - 1);
    let id = Uuid::now_v7();
    let recorded = record_start(
        hub,
        id,
        trigger,
        requested_by,
        now,
        history_from,
        history_to,
    )
    .await;
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            lease.release().await;
            return Err(StartError::Running);
        }
        Err(e) => {
            lease.release().await;
            return Err(e.into());
        }
    }
    std::mem::forget(flag);
    let hub = hub.clone();
    tokio::spawn(async move {
        let _flag = RunningFlag(&hub.forecasts.running);
        let started = Instant::now();
        tracing::info!(run = %id, trigger = trigger.as_str(), %history_from, %history_to, "forecast run started");
        let outcome = execute(&hub, id, &lease, history_from, history_to, today).await;
        let elapsed = started.elapsed();
        let metrics = &hub.forecasts.metrics;
        metrics
            .last_duration_ms
            .store(elapsed.as_millis() as u64, Ordering::Relaxed);
        let (status, error) = match &outcome {
            Ok(done) => {
                metrics.runs_succeeded.fetch_add(1, Ordering::Relaxed);
                metrics
                    .last_success_unix
                    .store(Utc::now().timestamp().max(0) as u64, Ordering::Relaxed);
                tracing::info!(run = %id, series = done, elapsed_s = elapsed.as_secs_f64(), "forecast run finished");
                ("succeeded", None)
            }
            Err(e) => {
                metrics.runs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(run = %id, error = %format!("{e:#}"), "forecast run failed");
                (
                    "failed",
                    Some(format!("{e:#}").chars().take(1000).collect::<String>()),
                )
            }
        };
        if let Err(e) = sqlx::query(
            "UPDATE forecast_runs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
        )
        .bind(status)
        .bind(Utc::now())
        .bind(error)
        .bind(id.to_string())
        .execute(&hub.pool)
        .await
        {
            tracing::error!(run = %id, error = %e, "could not record the end of the forecast run");
        }
        lease.release().await;
    });
    Ok(id)
}

/// Records a run about to start; `false` when it is a scheduled run and one already ran today.
async fn record_start(
    hub: &Hub,
    id: Uuid,
    trigger: Trigger,
    requested_by: Option<&str>,
    now: DateTime<Utc>,
    history_from: NaiveDate,
    history_to: NaiveDate,
) -> Result<bool, sqlx::Error> {
    if trigger == Trigger::Schedule {
        let ran: Option<String> = sqlx::query_scalar(
            "SELECT id FROM forecast_runs WHERE trigger_kind = 'schedule' AND started_at >= ? LIMIT 1",
        )
        .bind(now.date_naive().and_time(NaiveTime::MIN).and_utc())
        .fetch_optional(&hub.pool)
        .await?;
        if ran.is_some() {
            return Ok(false);
        }
    }
    // Whatever still says "running" was cut short: its hub died (the lease, now ours, ran out).
    sqlx::query(
        "UPDATE forecast_runs SET status = 'abandoned', finished_at = ? WHERE status = 'running'",
    )
    .bind(now)
    .execute(&hub.pool)
    .await?;
    sqlx::query(
        "INSERT INTO forecast_runs (id, status, trigger_kind, requested_by, instance, started_at, history_from, history_to)
         VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.to_string())
    .bind(trigger.as_str())
    .bind(requested_by)
    .bind(&hub.forecasts.instance)
    .bind(now)
    .bind(history_from)
    .bind(history_to)
    .execute(&hub.pool)
    .await?;
    Ok(true)
}

/// One series' figures, computed off the async runtime.
struct Planned {
    store: String,
    sku: String,
    history: Vec<f64>,
    forecast: Forecast,
    plan: ReorderPlan,
    on_hand: i64,
    lead_time_days: u32,
    pack_size: u32,
}

impl Planned {
    fn derived(&self) -> (i64, i64) {
        // The 1e-6 keeps f64 noise (40.000000001) from adding a unit.
        let rop = (self.plan.reorder_point - 1e-6).ceil().max(0.0) as i64;
        let up_to = (self.plan.order_up_to - 1e-6).ceil().max(0.0) as i64;
        (rop, up_to + i64::from(self.pack_size.max(1)))
    }
}

async fn execute(
    hub: &Arc<Hub>,
    id: Uuid,
    lease: &HeldLease,
    from: NaiveDate,
    to: NaiveDate,
    today: NaiveDate,
) -> anyhow::Result<u64> {
    let pool = &hub.pool;
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT DISTINCT store, sku FROM daily_sales WHERE day BETWEEN ? AND ?) t",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await?;
    let metrics = &hub.forecasts.metrics;
    metrics.series_total.store(total as u64, Ordering::Relaxed);
    metrics.series_done.store(0, Ordering::Relaxed);
    sqlx::query("UPDATE forecast_runs SET series_total = ? WHERE id = ?")
        .bind(total)
        .bind(id.to_string())
        .execute(pool)
        .await?;
    let policy_base = ReorderPolicy {
        review_period_days: REVIEW_PERIOD_DAYS,
        service_level: hub.config.intelligence.service_level,
        ..ReorderPolicy::default()
    };
    let push = hub.config.intelligence.push_thresholds;
    let mut after: Option<(String, String)> = None;
    let mut done: u64 = 0;
    loop {
        if lease.is_lost() {
            anyhow::bail!("the forecast lease was lost after {done} of {total} series; another hub may run the job");
        }
        let keys = next_keys(pool, from, to, after.as_ref()).await?;
        let Some(last) = keys.last().cloned() else {
            break;
        };
        let histories = histories(pool, &keys, from, to).await?;
        let products = products(pool, &keys).await?;
        let stock = on_hand(pool, &keys).await?;
        let inputs: Vec<_> = keys
            .iter()
            .map(|key| {
                let (lead, pack) = products.get(&key.1).copied().unwrap_or((7, 1));
                (
                    key.clone(),
                    histories.get(key).cloned().unwrap_or_default(),
                    stock.get(key).copied().unwrap_or(0),
                    ReorderPolicy {
                        lead_time_days: lead,
                        pack_size: pack,
                        ..policy_base
                    },
                )
            })
            .collect();
        let planned = tokio::task::spawn_blocking(move || {
            let cfg = SelectConfig::default();
            inputs
                .into_par_iter()
                .map(|((store, sku), history, on_hand, policy)| {
                    let forecast = forecast_series(&history, HORIZON, &cfg);
                    let plan =
                        reorder_plan(&forecast.mean, &forecast.sd, on_hand as f64, 0.0, &policy);
                    Planned {
                        store,
                        sku,
                        history,
                        forecast,
                        plan,
                        on_hand,
                        lead_time_days: policy.lead_time_days,
                        pack_size: policy.pack_size,
                    }
                })
                .collect::<Vec<_>>()
        })
        .await?;
        if lease.is_lost() {
            anyhow::bail!("the forecast lease was lost after {done} of {total} series; nothing of this page was written");
        }
        let changed = write_page(pool, id, &planned, to, today, push).await?;
        if !changed.is_empty() {
            hub.alerting.after_change(&changed).await;
        }
        done += planned.len() as u64;
        metrics.series_done.store(done, Ordering::Relaxed);
        sqlx::query("UPDATE forecast_runs SET series_done = ? WHERE id = ?")
            .bind(done as i64)
            .bind(id.to_string())
            .execute(pool)
            .await?;
        tracing::info!(run = %id, done, total, "forecast progress");
        after = Some(last);
    }
    Ok(done)
}

async fn next_keys(
    pool: &MySqlPool,
    from: NaiveDate,
    to: NaiveDate,
    after: Option<&(String, String)>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT DISTINCT store, sku FROM daily_sales WHERE day BETWEEN ",
    );
    q.push_bind(from).push(" AND ").push_bind(to);
    if let Some((store, sku)) = after {
        q.push(" AND (store > ")
            .push_bind(store.clone())
            .push(" OR (store = ")
            .push_bind(store.clone())
            .push(" AND sku > ")
            .push_bind(sku.clone())
            .push("))");
    }
    q.push(" ORDER BY store, sku LIMIT ").push_bind(PAGE as u32);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("store")?, r.try_get("sku")?)))
        .collect()
}

/// Daily series from each key's first day with a row in the window to `to`, gaps as zeros.
async fn histories(
    pool: &MySqlPool,
    keys: &[(String, String)],
    from: NaiveDate,
    to: NaiveDate,
) -> Result<HashMap<(String, String), Vec<f64>>, sqlx::Error> {
    let mut days: HashMap<(String, String), Vec<(NaiveDate, i64)>> = HashMap::new();
    for chunk in keys.chunks(crate::db::KEYS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new("SELECT d.store, d.sku, d.day, d.qty FROM ");
        crate::db::push_keys_table(&mut q, "k", crate::thresholds::pairs(chunk));
        q.push(" JOIN daily_sales d ON d.store = k.store AND d.sku = k.sku AND d.day BETWEEN ")
            .push_bind(from)
            .push(" AND ")
            .push_bind(to);
        q.push(" ORDER BY d.store, d.sku, d.day");
        for r in q.build().fetch_all(pool).await? {
            days.entry((r.try_get("store")?, r.try_get("sku")?))
                .or_default()
                .push((r.try_get("day")?, r.try_get("qty")?));
        }
    }
    Ok(days
        .into_iter()
        .map(|(key, rows)| (key, dense(&rows, to)))
        .collect())
}

/// Sorted (day, qty) rows → one value per day from the first row's day to `to`. Pure.
pub fn dense(rows: &[(NaiveDate, i64)], to: NaiveDate) -> Vec<f64> {
    let Some(first) = rows.first().map(|r| r.0) else {
        return Vec::new();
    };
    let len = (to - first).num_days() + 1;
    if len <= 0 {
        return Vec::new();
    }
    let mut series = vec![0.0; len as usize];
    for (day, qty) in rows {
        let i = (*day - first).num_days();
        if (0..len).contains(&i) {
            series[i as usize] += *qty as f64;
        }
    }
    series
}

async fn products(
    pool: &MySqlPool,
    keys: &[(String, String)],
) -> Result<HashMap<String, (u32, u32)>, sqlx::Error> {
    let skus: BTreeSet<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT sku, lead_time_days, pack_size FROM products WHERE sku IN (",
    );
    let mut sep = q.separated(", ");
    for s in skus {
        sep.push_bind(s);
    }
    q.push(")");
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            let lead: i32 = r.try_get("lead_time_days")?;
            let pack: i32 = r.try_get("pack_size")?;
            Ok((r.try_get("sku")?, (lead.max(0) as u32, pack.max(1) as u32)))
        })
        .collect()
}

async fn on_hand(
    pool: &MySqlPool,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), i64>, sqlx::Error> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(crate::db::KEYS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new("SELECT s.store, s.sku, s.on_hand FROM ");
        crate::db::push_keys_table(&mut q, "k", crate::thresholds::pairs(chunk));
        q.push(" JOIN stock s ON s.store = k.store AND s.sku = k.sku");
        for r in q.build().fetch_all(pool).await? {
            found.insert(
                (r.try_get("store")?, r.try_get("sku")?),
                r.try_get("on_hand")?,
            );
        }
    }
    Ok(found)
}

fn round4(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
}

/// Writes one page; returns the keys whose forecast-derived thresholds changed (empty
/// unless they are pushed).
async fn write_page(
    pool: &MySqlPool,
    run: Uuid,
    planned: &[Planned],
    history_to: NaiveDate,
    today: NaiveDate,
    push: bool,
) -> Result<BTreeSet<(String, String)>, anyhow::Error> {
    let now = Utc::now();
    let run = run.to_string();
    let mut tx = pool.begin().await?;
    let mut previous: HashMap<(String, String), (Option<i64>, Option<i64>)> = HashMap::new();
    if push {
        let keys: Vec<(String, String)> = planned
            .iter()
            .map(|p| (p.store.clone(), p.sku.clone()))
            .collect();
        for chunk in keys.chunks(crate::db::KEYS_PER_STATEMENT) {
            let mut q = QueryBuilder::<MySql>::new(
                "SELECT r.store, r.sku, r.derived_reorder_point, r.derived_max_stock FROM ",
            );
            crate::db::push_keys_table(&mut q, "k", crate::thresholds::pairs(chunk));
            q.push(" JOIN reorder_suggestions r ON r.store = k.store AND r.sku = k.sku FOR UPDATE");
            for r in q.build().fetch_all(&mut *tx).await? {
                previous.insert(
                    (r.try_get("store")?, r.try_get("sku")?),
                    (
                        r.try_get("derived_reorder_point")?,
                        r.try_get("derived_max_stock")?,
                    ),
                );
            }
        }
    }
    let mut q = QueryBuilder::<MySql>::new(
        "INSERT INTO forecasts (store, sku, model, computed_at, horizon, body, first_day, rmsse, backtest_days, run_id) ",
    );
    q.push_values(planned, |mut b, p| {
        let tail_len = p.history.len().min(HISTORY_TAIL);
        let tail_from = history_to - chrono::Duration::days(tail_len as i64 - 1);
        let body = serde_json::json!({
            "first_day": today,
            "history_from": tail_from,
            "history": round4(&p.history[p.history.len() - tail_len..]),
            "mean": round4(&p.forecast.mean),
            "lo": round4(&p.forecast.lo),
            "hi": round4(&p.forecast.hi),
            "sd": round4(&p.forecast.sd),
            "level": p.forecast.level,
        });
        b.push_bind(p.store.clone())
            .push_bind(p.sku.clone())
            .push_bind(p.forecast.model.as_str())
            .push_bind(now)
            .push_bind(HORIZON as i32)
            .push_bind(body.to_string())
            .push_bind(today)
            .push_bind(p.forecast.rmsse)
            .push_bind(p.forecast.backtest_days as i32)
            .push_bind(run.clone());
    });
    q.push(
        " ON DUPLICATE KEY UPDATE model = VALUES(model), computed_at = VALUES(computed_at),
          horizon = VALUES(horizon), body = VALUES(body), first_day = VALUES(first_day),
          rmsse = VALUES(rmsse), backtest_days = VALUES(backtest_days), run_id = VALUES(run_id)",
    );
    q.build().execute(&mut *tx).await?;

    let mut q = QueryBuilder::<MySql>::new(
        "INSERT INTO reorder_suggestions (store, sku, reorder_point, order_up_to, suggested_qty, computed_at,
             on_hand, demand_over_lead_time, safety_stock, lead_time_days, pack_size,
             derived_reorder_point, derived_max_stock, run_id) ",
    );
    q.push_values(planned, |mut b, p| {
        let (rop, max) = p.derived();
        b.push_bind(p.store.clone())
            .push_bind(p.sku.clone())
            .push_bind(rop)
            .push_bind((p.plan.order_up_to - 1e-6).ceil().max(0.0) as i64)
            .push_bind(p.plan.suggested_order.min(i64::MAX as u64) as i64)
            .push_bind(now)
            .push_bind(p.on_hand)
            .push_bind(p.plan.demand_over_lead_time)
            .push_bind(p.plan.safety_stock)
            .push_bind(p.lead_time_days as i32)
            .push_bind(p.pack_size as i32)
            .push_bind(push.then_some(rop))
            .push_bind(push.then_some(max))
            .push_bind(run.clone());
    });
    q.push(
        " ON DUPLICATE KEY UPDATE reorder_point = VALUES(reorder_point), order_up_to = VALUES(order_up_to),
          suggested_qty = VALUES(suggested_qty), computed_at = VALUES(computed_at), on_hand = VALUES(on_hand),
          demand_over_lead_time = VALUES(demand_over_lead_time), safety_stock = VALUES(safety_stock),
          lead_time_days = VALUES(lead_time_days), pack_size = VALUES(pack_size),
          derived_reorder_point = VALUES(derived_reorder_point), derived_max_stock = VALUES(derived_max_stock),
          run_id = VALUES(run_id)",
    );
    q.build().execute(&mut *tx).await?;

    let mut changed = BTreeSet::new();
    if push {
        for p in planned {
            let (rop, max) = p.derived();
            let key = (p.store.clone(), p.sku.clone());
            if previous.get(&key) != Some(&(Some(rop), Some(max))) {
                changed.insert(key);
            }
        }
        let stores: Vec<StoreId> = changed
            .iter()
            .map(|k| k.0.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|s| StoreId::parse(s).ok())
            .collect();
        // Only registered stores have an outbox; sales of others cannot be in daily_sales,
        // but a store deleted since would make the whole page fail.
        let registered: BTreeSet<String> = if stores.is_empty() {
            BTreeSet::new()
        } else {
            let mut q = QueryBuilder::<MySql>::new("SELECT id FROM stores WHERE id IN (");
            let mut sep = q.separated(", ");
            for s in &stores {
                sep.push_bind(s.as_str());
            }
            q.push(")");
            q.build()
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("id"))
                .collect::<Result<_, _>>()?
        };
        let stores: Vec<StoreId> = stores
            .into_iter()
            .filter(|s| registered.contains(s.as_str()))
            .collect();
        crate::thresholds::announce(&mut tx, &stores).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Runs the job every day at `at` (UTC) until `stop`.
pub async fn schedule(hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    let Some(at) = hub.config.intelligence.forecast_at else {
        return;
    };
    tracing::info!(%at, "nightly forecast scheduled (UTC)");
    loop {
        let now = Utc::now();
        let wait = until_next(now, at);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match start(&hub, Trigger::Schedule, None).await {
            Ok(id) => tracing::info!(run = %id, "nightly forecast run started"),
            Err(StartError::Running) => {
                tracing::info!("nightly forecast run already done or running on another hub")
            }
            Err(e) => tracing::warn!(error = %e, "nightly forecast run could not start"),
        }
        // Past the minute, so the next wait is a day away.
        tokio::time::sleep(Duration::from_secs(61)).await;
    }
}

/// Time from `now` to the next `at` (UTC), today or tomorrow. Pure.
pub fn until_next(now: DateTime<Utc>, at: NaiveTime) -> Duration {
    let today = now.date_naive().and_time(at).and_utc();
    let next = if today > now {
        today
    } else {
        today + chrono::Duration::days(1)
    };
    (next - now).to_std().unwrap_or_default()
}

// ---- Reads: what the API serves from the job's output ----

#[derive(Debug, Clone, serde::Deserialize)]
struct StoredBody {
    first_day: NaiveDate,
    history_from: NaiveDate,
    history: Vec<f64>,
    mean: Vec<f64>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    #[serde(default)]
    sd: Vec<f64>,
    level: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct DayActual {
    pub date: NaiveDate,
    pub qty: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct DayForecast {
    pub date: NaiveDate,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Backtest {
    /// Root mean squared scaled error of the chosen model on held-out days (M5's measure).
    pub rmsse: Option<f64>,
    /// Held-out days per backtest origin (0: the history was too short to backtest).
    pub days: Option<i32>,
}

/// `GET /v1/forecasts/{store}/{sku}`.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ForecastView {
    pub store: String,
    pub sku: String,
    pub model: String,
    pub computed_at: DateTime<Utc>,
    pub run_id: Option<String>,
    /// Coverage of each day's `lo..=hi`.
    pub level: f64,
    pub backtest: Backtest,
    pub history: Vec<DayActual>,
    pub forecast: Vec<DayForecast>,
    pub reorder: Option<ReorderRow>,
}

pub async fn forecast_view(
    pool: &MySqlPool,
    store: &str,
    sku: &str,
) -> Result<Option<ForecastView>, sqlx::Error> {
    let Some(r) = sqlx::query(
        "SELECT model, computed_at, run_id, body, rmsse, backtest_days FROM forecasts WHERE store = ? AND sku = ?",
    )
    .bind(store)
    .bind(sku)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    // MariaDB hands JSON columns over as blobs.
    let body: Vec<u8> = r.try_get("body")?;
    let body: StoredBody =
        serde_json::from_slice(&body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let reorder = reorders(pool, Some(store), Some(sku), None, 1, false)
        .await?
        .into_iter()
        .next();
    Ok(Some(ForecastView {
        store: store.to_owned(),
        sku: sku.to_owned(),
        model: r.try_get("model")?,
        computed_at: r.try_get("computed_at")?,
        run_id: r.try_get("run_id")?,
        level: body.level,
        backtest: Backtest {
            rmsse: r.try_get("rmsse")?,
            days: r.try_get("backtest_days")?,
        },
        history: body
            .history
            .iter()
            .enumerate()
            .map(|(i, qty)| DayActual {
                date: body.history_from + chrono::Days::new(i as u64),
                qty: *qty,
            })
            .collect(),
        forecast: days(&body),
        reorder,
    }))
}

fn days(body: &StoredBody) -> Vec<DayForecast> {
    body.mean
        .iter()
        .enumerate()
        .map(|(i, mean)| DayForecast {
            date: body.first_day + chrono::Days::new(i as u64),
            mean: *mean,
            lo: body.lo.get(i).copied().unwrap_or(*mean),
            hi: body.hi.get(i).copied().unwrap_or(*mean),
        })
        .collect()
}

/// One store's reorder figures for one sku, against the stock on hand now.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ReorderRow {
    pub store: String,
    pub sku: String,
    /// On hand now (the suggestion below is recomputed against it).
    pub on_hand: i64,
    pub reorder_point: i64,
    pub order_up_to: i64,
    /// Units to buy now: order-up-to less on hand, in whole packs.
    pub suggested_qty: u64,
    pub demand_over_lead_time: f64,
    pub safety_stock: f64,
    pub lead_time_days: i32,
    pub pack_size: i32,
    pub computed_at: DateTime<Utc>,
}

/// Reorder rows in (store, sku) order after `after`; with `due_only`, only the rows at or
/// below their reorder point now (what to buy today).
pub async fn reorders(
    pool: &MySqlPool,
    store: Option<&str>,
    sku: Option<&str>,
    after: Option<(&str, &str)>,
    limit: u32,
    due_only: bool,
) -> Result<Vec<ReorderRow>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT r.store, r.sku, COALESCE(s.on_hand, 0) AS on_hand, r.reorder_point, r.order_up_to,
                r.demand_over_lead_time, r.safety_stock, r.lead_time_days, r.pack_size, r.computed_at
         FROM reorder_suggestions r LEFT JOIN stock s ON s.store = r.store AND s.sku = r.sku WHERE 1 = 1",
    );
    if let Some(store) = store {
        q.push(" AND r.store = ").push_bind(store.to_owned());
    }
    if let Some(sku) = sku {
        q.push(" AND r.sku = ").push_bind(sku.to_owned());
    }
    if let Some((s, k)) = after {
        q.push(" AND (r.store, r.sku) > (")
            .push_bind(s.to_owned())
            .push(", ")
            .push_bind(k.to_owned())
            .push(")");
    }
    if due_only {
        q.push(" AND COALESCE(s.on_hand, 0) <= r.reorder_point AND COALESCE(s.on_hand, 0) < r.order_up_to");
    }
    q.push(" ORDER BY r.store, r.sku LIMIT ").push_bind(limit);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            let on_hand: i64 = r.try_get("on_hand")?;
            let order_up_to: i64 = r.try_get("order_up_to")?;
            let pack: i32 = r.try_get("pack_size")?;
            Ok(ReorderRow {
                store: r.try_get("store")?,
                sku: r.try_get("sku")?,
                on_hand,
                reorder_point: r.try_get("reorder_point")?,
                order_up_to,
                suggested_qty: bazaar_intelligence::reorder::round_up_to_pack(
                    (order_up_to - on_hand) as f64,
                    pack.max(1) as u32,
                ),
                demand_over_lead_time: r.try_get("demand_over_lead_time")?,
                safety_stock: r.try_get("safety_stock")?,
                lead_time_days: r.try_get("lead_time_days")?,
                pack_size: pack,
                computed_at: r.try_get("computed_at")?,
            })
        })
        .collect()
}

/// Transfers for one sku, and what each store still buys after them.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct SkuTransfers {
    pub sku: String,
    pub transfers: Vec<TransferView>,
    /// Per store with a plan for this sku: units to buy once the transfers are done.
    pub purchases_after_transfers: Vec<Purchase>,
}

/// One suggested movement of stock between two stores.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct TransferView {
    pub from: String,
    pub to: String,
    pub quantity: u64,
}

fn views(transfers: Vec<bazaar_intelligence::reorder::Transfer<String>>) -> Vec<TransferView> {
    transfers
        .into_iter()
        .map(|t| TransferView {
            from: t.from,
            to: t.to,
            quantity: t.quantity,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Purchase {
    pub store: String,
    pub qty: u64,
}

async fn store_stocks(
    pool: &MySqlPool,
    sku: &str,
) -> Result<(Vec<bazaar_intelligence::reorder::StoreStock<String>>, u32), sqlx::Error> {
    let rows = reorders(pool, None, Some(sku), None, u32::MAX, false).await?;
    let pack = rows.first().map(|r| r.pack_size.max(1) as u32).unwrap_or(1);
    Ok((
        rows.into_iter()
            .map(|r| bazaar_intelligence::reorder::StoreStock {
                store: r.store,
                on_hand: r.on_hand as f64,
                on_order: 0.0,
                demand_over_lead_time: r.demand_over_lead_time,
                order_up_to: r.order_up_to as f64,
            })
            .collect(),
        pack,
    ))
}

/// Chain-wide transfer suggestions: for `sku`, or for every sku (after `after`, at most
/// `limit`) where some store holds more than its order-up-to level while another will not
/// cover its demand over the lead time. Stock on hand is read now. Also returns the cursor
/// of the next page: the last sku examined when `limit` skus were.
pub async fn transfer_suggestions(
    pool: &MySqlPool,
    sku: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<SkuTransfers>, Option<String>), sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT r.sku FROM reorder_suggestions r LEFT JOIN stock s ON s.store = r.store AND s.sku = r.sku WHERE 1 = 1",
    );
    if let Some(sku) = sku {
        q.push(" AND r.sku = ").push_bind(sku.to_owned());
    }
    if let Some(after) = after {
        q.push(" AND r.sku > ").push_bind(after.to_owned());
    }
    q.push(
        " GROUP BY r.sku
          HAVING SUM(COALESCE(s.on_hand, 0) >= r.order_up_to + 1) > 0
             AND SUM(COALESCE(s.on_hand, 0) < r.demand_over_lead_time) > 0
          ORDER BY r.sku LIMIT ",
    )
    .push_bind(limit);
    let skus: Vec<String> = q
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get("sku"))
        .collect::<Result<_, _>>()?;
    let next = (skus.len() == limit as usize)
        .then(|| skus.last().cloned())
        .flatten();
    let mut out = Vec::with_capacity(skus.len());
    for sku in skus {
        let (stores, pack) = store_stocks(pool, &sku).await?;
        let transfers = bazaar_intelligence::reorder::transfer_suggestions(&stores, 1);
        if transfers.is_empty() {
            continue;
        }
        let purchases_after_transfers =
            bazaar_intelligence::reorder::purchases_after_transfers(&stores, &transfers, pack)
                .into_iter()
                .map(|(store, qty)| Purchase { store, qty })
                .collect();
        out.push(SkuTransfers {
            sku,
            transfers: views(transfers),
            purchases_after_transfers,
        });
    }
    Ok((out, next))
}

/// `GET /v1/products/{sku}/forecast`: the sum of the stores' forecasts and the chain's
/// reorder figures.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ChainForecast {
    pub sku: String,
    pub stores: usize,
    /// Coverage of each day's `lo..=hi` (store errors taken as independent).
    pub level: f64,
    pub forecast: Vec<DayForecast>,
    pub reorder: ChainReorder,
}

#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ChainReorder {
    pub on_hand: i64,
    /// Sum of the stores' reorder points and order-up-to levels.
    pub reorder_point: i64,
    pub order_up_to: i64,
    /// Units to buy for the chain once surplus has moved between stores.
    pub purchase_after_transfers: u64,
    pub transfers: Vec<TransferView>,
}

pub async fn chain_forecast(
    pool: &MySqlPool,
    sku: &str,
) -> Result<Option<ChainForecast>, sqlx::Error> {
    let rows = sqlx::query("SELECT body FROM forecasts WHERE sku = ?")
        .bind(sku)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    // Per date: Σ mean and Σ sd² (independent store errors).
    let mut by_day: std::collections::BTreeMap<NaiveDate, (f64, f64)> = Default::default();
    let mut level = 0.0;
    for r in &rows {
        let body: Vec<u8> = r.try_get("body")?;
        let body: StoredBody =
            serde_json::from_slice(&body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        level = body.level;
        for (i, mean) in body.mean.iter().enumerate() {
            let sd = body.sd.get(i).copied().unwrap_or(0.0);
            let slot = by_day
                .entry(body.first_day + chrono::Days::new(i as u64))
                .or_default();
            slot.0 += mean;
            slot.1 += sd * sd;
        }
    }
    let z = bazaar_intelligence::stats::two_sided_z(level);
    let forecast = by_day
        .into_iter()
        .map(|(date, (mean, var))| DayForecast {
            date,
            mean: (mean * 1e4).round() / 1e4,
            lo: ((mean - z * var.sqrt()).max(0.0) * 1e4).round() / 1e4,
            hi: ((mean + z * var.sqrt()) * 1e4).round() / 1e4,
        })
        .collect();
    let (stores, pack) = store_stocks(pool, sku).await?;
    let transfers = bazaar_intelligence::reorder::transfer_suggestions(&stores, 1);
    let purchases =
        bazaar_intelligence::reorder::purchases_after_transfers(&stores, &transfers, pack);
    let plans = reorders(pool, None, Some(sku), None, u32::MAX, false).await?;
    Ok(Some(ChainForecast {
        sku: sku.to_owned(),
        stores: rows.len(),
        level,
        forecast,
        reorder: ChainReorder {
            on_hand: plans.iter().map(|p| p.on_hand).sum(),
            reorder_point: plans.iter().map(|p| p.reorder_point).sum(),
            order_up_to: plans.iter().map(|p| p.order_up_to).sum(),
            purchase_after_transfers: purchases.iter().map(|p| p.1).sum(),
            transfers: views(transfers),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn days_without_sales_are_zeros_from_the_first_sale() {
        let rows = [(d("2026-11-20"), 3), (d("2026-11-22"), 5)];
        assert_eq!(dense(&rows, d("2026-11-24")), vec![3.0, 0.0, 5.0, 0.0, 0.0]);
        assert!(dense(&[], d("2026-11-24")).is_empty());
    }

    #[test]
    fn the_next_run_is_today_or_tomorrow() {
        let at = NaiveTime::from_hms_opt(2, 0, 0).unwrap();
        let now: DateTime<Utc> = "2026-11-26T01:30:00Z".parse().unwrap();
        assert_eq!(until_next(now, at), Duration::from_secs(30 * 60));
        let now: DateTime<Utc> = "2026-11-26T02:00:00Z".parse().unwrap();
        assert_eq!(until_next(now, at), Duration::from_secs(24 * 3600));
    }
}
