//! Routes behind the HQ dashboard's chain views (issue 11): the store list filtered by
//! health and searched by id prefix, alerts filtered by kind, severity and store, and a
//! store's sync history for its lag and outbox chart. The queries are in
//! [`crate::dashboard_data`]; these handlers only parse, scope and shape.
//!
//! Query strings are parsed strictly, as in [`super::reads`]: an unknown or repeated
//! parameter, a bad limit, id, filter or cursor is a 422 that names it.

use std::sync::Arc;

use bazaar_shared::http::ApiError;
use chrono::Utc;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{auth, store_param, with_hub, Principal};
use crate::alerting::Alert;
use crate::dashboard_data::{self, AlertFilter, Health};
use crate::openapi::{Access, Operation};
use crate::startup::Hub;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
const DEFAULT_HOURS: u32 = 6;
const MAX_HOURS: u32 = 168;
pub const ALERT_KINDS: [&str; 6] = [
    "low_stock",
    "out_of_stock",
    "negative_stock",
    "overstock",
    "demand_anomaly",
    "stale_store",
];
pub const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoresQuery {
    /// Only stores in this state: `ok` (none of the others), `stale` (an open stale_store
    /// alert), `held` (messages held behind a gap), `parked` (unresolved parked events),
    /// `outbox_over_budget` (the hub's outbox towards the store holds more than 100
    /// unpublished commands, or one older than 5 minutes).
    pub health: Option<Health>,
    /// Only stores whose id starts with this (exact case).
    pub prefix: Option<String>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// Only this store's alerts.
    pub store: Option<String>,
    /// Only this kind: low_stock, out_of_stock, negative_stock, overstock, demand_anomaly,
    /// stale_store.
    pub kind: Option<String>,
    /// Only this severity: critical, warning, info.
    pub severity: Option<String>,
    /// `true`: open ones only; `false`: resolved ones only; absent: both.
    pub open: Option<bool>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// How many hours back, 1 to 168; 6 when absent. Buckets are 10 minutes up to 12
    /// hours, an hour beyond.
    #[schemars(range(min = 1, max = 168))]
    pub hours: Option<u32>,
}

/// `GET /v1/dashboard/alerts`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DashboardAlerts {
    /// Newest first.
    pub alerts: Vec<Alert>,
    pub next_cursor: Option<String>,
}

pub fn routes(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    stores(hub.clone())
        .or(alerts(hub.clone()))
        .unify()
        .or(sync_history(hub))
        .unify()
        .boxed()
}

fn query<Q: DeserializeOwned + Send + 'static>(
) -> impl Filter<Extract = (Q,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|raw: String| async move {
            serde_urlencoded::from_str::<Q>(&raw)
                .map_err(|e| Rejection::from(ApiError::unprocessable(format!("query string: {e}"))))
        })
}

pub fn limit_of(raw: Option<u32>) -> Result<u32, Rejection> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {n}"
        ))
        .into()),
    }
}

pub fn one_of(
    what: &str,
    value: Option<String>,
    allowed: &[&str],
) -> Result<Option<String>, Rejection> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) if !allowed.contains(&v.as_str()) => Err(ApiError::unprocessable(format!(
            "{what} {v:?} is not one of {}",
            allowed.join(", ")
        ))
        .into()),
        v => Ok(v),
    }
}

fn internal(context: &str) -> impl FnOnce(sqlx::Error) -> Rejection + '_ {
    move |e| ApiError::internal(context, e).into()
}

fn stores(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "dashboard" / "stores")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<StoresQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: StoresQuery, hub: Arc<Hub>| async move {
            who.admin()?;
            let limit = limit_of(q.limit)?;
            let prefix = q.prefix.filter(|p| !p.is_empty());
            if let Some(p) = &prefix {
                if p.len() > 64
                    || !p
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(ApiError::unprocessable(format!(
                        "prefix {p:?} is not the start of a store id ([A-Za-z0-9_-], at most 64)"
                    ))
                    .into());
                }
            }
            let (health, prefix, cursor) = (q.health, prefix.as_deref(), q.cursor.as_deref());
            let page = hub
                .reads
                .read(Some(&who), |pool| async move {
                    dashboard_data::stores_page(&pool, health, prefix, cursor, limit).await
                })
                .await
                .map_err(internal("could not read stores"))?
                .map_err(|bad| Rejection::from(ApiError::unprocessable(bad.to_string())))?;
            Ok::<_, Rejection>(warp::reply::json(&page).into_response())
        })
        .boxed()
}

fn alerts(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "dashboard" / "alerts")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<AlertsQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: AlertsQuery, hub: Arc<Hub>| async move {
            who.admin()?;
            let store = q
                .store
                .filter(|s| !s.is_empty())
                .map(store_param)
                .transpose()?;
            let kind = one_of("kind", q.kind, &ALERT_KINDS)?;
            let severity = one_of("severity", q.severity, &SEVERITIES)?;
            let limit = limit_of(q.limit)?;
            let before = match q.cursor.as_deref() {
                None => None,
                Some(raw) => Some(raw.parse::<i64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                    Rejection::from(ApiError::unprocessable(format!(
                        "cursor {raw:?} is not one this API issued"
                    )))
                })?),
            };
            let filter = AlertFilter {
                store: store.as_ref().map(|s| s.as_str()),
                kind: kind.as_deref(),
                severity: severity.as_deref(),
                open: q.open,
            };
            let filter = &filter;
            let alerts = hub
                .reads
                .read(Some(&who), |pool| async move {
                    dashboard_data::alerts(&pool, filter, before, limit).await
                })
                .await
                .map_err(internal("could not read alerts"))?;
            let next_cursor = (alerts.len() == limit as usize)
                .then(|| alerts.last().map(|a| a.id.to_string()))
                .flatten();
            Ok::<_, Rejection>(
                warp::reply::json(&DashboardAlerts {
                    alerts,
                    next_cursor,
                })
                .into_response(),
            )
        })
        .boxed()
}

fn sync_history(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stores" / String / "sync-history")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<HistoryQuery>())
        .and(with_hub(hub))
        .and_then(
            |raw: String, who: Principal, q: HistoryQuery, hub: Arc<Hub>| async move {
                let store = store_param(raw)?;
                who.may_act_on(&store)?;
                let hours = match q.hours {
                    None => DEFAULT_HOURS,
                    Some(h) if (1..=MAX_HOURS).contains(&h) => h,
                    Some(h) => {
                        return Err(ApiError::unprocessable(format!(
                            "hours must be between 1 and {MAX_HOURS}, not {h}"
                        ))
                        .into())
                    }
                };
                let id = &store;
                let found = hub
                    .reads
                    .read(Some(&who), |pool| async move {
                        if !crate::stores::exists(&pool, id).await? {
                            return Ok(None);
                        }
                        dashboard_data::sync_history(&pool, id.as_str(), hours, Utc::now())
                            .await
                            .map(Some)
                    })
                    .await
                    .map_err(internal("could not read the store's sync history"))?;
                match found {
                    Some(history) => {
                        Ok::<_, Rejection>(warp::reply::json(&history).into_response())
                    }
                    None => {
                        Err(ApiError::not_found(format!("store {store} is not registered")).into())
                    }
                }
            },
        )
        .boxed()
}

/// The operations of this module, for `/openapi.json`.
pub fn docs() -> Vec<Operation> {
    const PAGE_422: &str = "A bad query: unknown or repeated parameter, limit outside 1..=1000, an unknown filter value, a cursor this route did not issue, or an invalid id";
    vec![
        Operation::get("/v1/dashboard/stores", "dashboardStores", "Stores with their health, filtered and searched")
            .describe("The dashboard's store list for chains of thousands: by store id, keyset-paged, filtered by health and searched by id prefix in the same query, so every page holds `limit` matching stores. Health is what the hub itself knows: held messages, unresolved parked events, an open stale_store alert, and the hub's own outbox towards the store (over budget: more than 100 unpublished commands or one older than 5 minutes). The agent's own outbox and its disk budget are known only at the agent (`GET /v1/status` on the agent). `counts` gives each state's number over every store matching `prefix`.")
            .tag("dashboard")
            .access(Access::Admin)
            .query::<StoresQuery>()
            .json::<dashboard_data::DashboardStores>(200, "One page, by store id, and the counts")
            .error(422, PAGE_422),
        Operation::get("/v1/dashboard/alerts", "dashboardAlerts", "Alerts filtered by store, kind, severity and state, newest first")
            .describe("As `GET /v1/alerts`, with a `severity` filter too (critical, warning, info).")
            .tag("dashboard")
            .access(Access::Admin)
            .query::<AlertsQuery>()
            .json::<DashboardAlerts>(200, "One page, newest first")
            .error(422, PAGE_422),
        Operation::get("/v1/stores/{store}/sync-history", "storeSyncHistory", "A store's sync lag and the hub's outbox depth over the last hours")
            .describe("Per bucket (10 minutes up to 12 hours, an hour beyond), from the hub's own tables: store-origin movements received, their lag `received_at - occurred_at` (p50, p99 by nearest rank, max; seconds, clamped at 0), and the depth of the hub's outbox towards the store (commands written and not yet published at the bucket's end). The depth of the agent's own outbox is known only at the agent (`GET /v1/status` on the agent): the hub sees a backlog there only as lag once it drains.")
            .tag("stores")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .query::<HistoryQuery>()
            .json::<dashboard_data::SyncHistory>(200, "The buckets, oldest first")
            .error(404, "The store is not registered")
            .error(422, "hours outside 1..=168, an unknown parameter, or an invalid store id"),
    ]
}
