//! Read routes: stores, stock lists, chain-wide stock, the movement ledger, audit, parked
//! events, the OpenAPI document and readiness.
//!
//! Every list pages by keyset with an opaque `cursor` and a bounded `limit` (see
//! [`crate::queries`]); every query runs through `hub.reads.read(who, ..)`: on the pool
//! `hub.reader(who)` would give, again on the primary if it failed on the replica. Query
//! strings are parsed strictly: an unknown or repeated parameter, a bad limit, id, time or
//! cursor is a 422 that names it, never a silently wider answer.

use std::sync::{Arc, OnceLock};

use bazaar_shared::http::ApiError;
use bazaar_shared::{Sku, StoreId};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{auth, sku_param, store_param, with_hub, Principal};
use crate::openapi::{Access, Operation};
use crate::queries::{self, BadCursor, Page};
use crate::startup::Hub;

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` a list accepts.
pub const MAX_LIMIT: u32 = 1000;

/// `cursor` and `limit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MovementsQuery {
    /// Only this store's movements. A store token reads its own store only, with or
    /// without it.
    pub store: Option<String>,
    /// Only this sku.
    pub sku: Option<String>,
    /// Only movements the hub received at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor's actions (e.g. `admin`).
    pub actor: Option<String>,
    /// Only this action (e.g. `store.register`).
    pub action: Option<String>,
    /// Only actions at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedQuery {
    /// Only this store's parked events; a store token sees its own only.
    pub store: Option<String>,
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    /// How many, 1 to 1000; 100 when absent.
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

pub fn docs() -> Vec<Operation> {
    const PAGE_422: &str = "A bad query: unknown or repeated parameter, limit outside 1..=1000, a cursor this route did not issue, or an invalid id or time";
    vec![
        Operation::get("/v1/stores", "listStores", "Every registered store with its sync health")
            .tag("stores")
            .access(Access::Admin)
            .query::<PageQuery>()
            .json::<Page<queries::StoreSummary>>(200, "One page, by store id")
            .error(422, PAGE_422),
        Operation::get("/v1/stores/{store}/stock", "listStoreStock", "One page of a store's stock, by sku")
            .describe("Every sku that ever moved at the store; a known sku absent here stands at 0.")
            .tag("stock")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .query::<PageQuery>()
            .json::<Page<crate::stores::StockFigure>>(200, "One page, by sku")
            .error(404, "The store is not registered")
            .error(422, PAGE_422),
        Operation::get("/v1/products/{sku}/stock", "productStock", "One sku across the chain")
            .describe("Each store's figure and the chain's total.")
            .tag("stock")
            .access(Access::Admin)
            .path_param("sku", "The sku")
            .json::<queries::ProductStock>(200, "Per store, by store id, and the total")
            .error(404, "The sku is unknown at this hub (no product record, no movement)")
            .error(422, "Not a valid sku"),
        Operation::get("/v1/movements", "listMovements", "The immutable movement ledger")
            .describe("In the order the hub applied them (received_at, then store, origin, seq), filtered. Every movement that existed when the first page was read is served exactly once, whatever is applied meanwhile. A movement applied while you page comes on a later page, unless its batch started before your position (several hubs applying at once): to tail the ledger, read again from a `since` a few seconds back and drop the ids you have.")
            .tag("ledger")
            .access(Access::AnyToken)
            .query::<MovementsQuery>()
            .json::<Page<queries::Movement>>(200, "One page of the ledger")
            .error(403, "A store token asking for another store")
            .error(422, PAGE_422),
        Operation::get("/audit-logs", "seedAuditLogs", "The seed system's recent movements, newest first")
            .tag("seed")
            .access(Access::AnyToken)
            .query::<RecentQuery>()
            .json::<Vec<queries::Movement>>(200, "The most recent movements (a store token: its own store's)")
            .error(422, "limit outside 1..=1000, or an unknown parameter"),
        Operation::get("/v1/audit", "listAudit", "The admin audit trail, newest first")
            .describe("Who did what, before and after, when and from where.")
            .tag("ledger")
            .access(Access::Admin)
            .query::<AuditQuery>()
            .json::<Page<queries::AuditEntry>>(200, "One page, newest first")
            .error(422, PAGE_422),
        Operation::get("/v1/parked", "listParked", "Parked events, oldest first")
            .describe("Messages that could not be applied (bad signature, conflict, unknown store, malformed), with their Kafka position.")
            .tag("ledger")
            .access(Access::AnyToken)
            .query::<ParkedQuery>()
            .json::<Page<queries::ParkedEvent>>(200, "One page, oldest first")
            .error(403, "A store token asking for another store")
            .error(422, PAGE_422),
        Operation::get("/readyz", "readyz", "Readiness: the hub's dependencies, each checked within 2 s")
            .describe("200 `ready` when every check passes; 200 `degraded` when only the replica, Redis, Kafka or this hub's ingest fails (the hub still serves: reads fall back to the primary and to MySQL, ingest waits); 503 `not_ready` when the MySQL primary fails. Without a token the answer is the status alone, `{\"status\": \"ready\"}`; with the admin token (`Authorization: Bearer`) it has `checks`, each failed one saying what failed and what to do. Any other token is treated as none (no 401: probes must not depend on a token).")
            .tag("operations")
            .json::<crate::readiness::Readiness>(200, "Ready, or degraded but serving; `checks` only with the admin token")
            .json::<crate::readiness::Readiness>(503, "Not ready: the MySQL primary does not answer; `checks` only with the admin token")
            .infallible(),
        Operation::get("/openapi.json", "openapi", "This document")
            .describe("Generated from the code: every route, each status it answers with, and the schemas of the Rust types it reads and writes.")
            .tag("operations")
            .content(200, "application/json", "The OpenAPI 3.0 document")
            .infallible(),
    ]
}

pub fn routes(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    let lists = list_stores(hub.clone())
        .or(store_stock_page(hub.clone()))
        .unify()
        .or(product_stock(hub.clone()))
        .unify()
        .boxed();
    let ledger = movements(hub.clone())
        .or(recent_movements(hub.clone()))
        .unify()
        .or(audit(hub.clone()))
        .unify()
        .or(parked(hub.clone()))
        .unify()
        .boxed();
    let operations = readyz(hub).or(openapi()).unify().boxed();
    lists.or(ledger).unify().or(operations).unify().boxed()
}

/// The query string parsed strictly into `Q`; a query-less request is an empty one.
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

pub fn limit(raw: Option<u32>) -> Result<u32, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::unprocessable(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {n}"
        ))),
    }
}

pub fn optional_store(raw: Option<String>) -> Result<Option<StoreId>, Rejection> {
    raw.map(store_param).transpose()
}

/// The store a list is scoped to: what was asked, checked against the token; a store
/// token that names none reads its own.
fn scope(who: &Principal, asked: Option<StoreId>) -> Result<Option<StoreId>, ApiError> {
    match (who, asked) {
        (_, Some(store)) => {
            who.may_act_on(&store)?;
            Ok(Some(store))
        }
        (Principal::Admin, None) => Ok(None),
        (Principal::Store(own), None) => Ok(Some(own.clone())),
    }
}

fn paged<T>(
    result: Result<Result<Page<T>, BadCursor>, sqlx::Error>,
    what: &str,
) -> Result<Response, Rejection>
where
    T: serde::Serialize,
{
    match result {
        Ok(Ok(page)) => Ok(warp::reply::json(&page).into_response()),
        Ok(Err(bad)) => Err(ApiError::unprocessable(bad.to_string()).into()),
        Err(e) => Err(ApiError::internal(&format!("could not read {what}"), e).into()),
    }
}

fn list_stores(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stores")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<PageQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: PageQuery, hub: Arc<Hub>| async move {
            who.admin()?;
            let limit = limit(q.limit)?;
            let cursor = q.cursor.as_deref();
            let page = hub
                .reads
                .read(Some(&who), |pool| async move {
                    queries::stores_page(&pool, cursor, limit).await
                })
                .await;
            paged(page, "stores")
        })
        .boxed()
}

fn store_stock_page(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stores" / String / "stock")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<PageQuery>())
        .and(with_hub(hub))
        .and_then(
            |store: String, who: Principal, q: PageQuery, hub: Arc<Hub>| async move {
                let store = store_param(store)?;
                who.may_act_on(&store)?;
                let limit = limit(q.limit)?;
                let (id, cursor) = (&store, q.cursor.as_deref());
                let page = hub
                    .reads
                    .read(Some(&who), |pool| async move {
                        if !crate::stores::exists(&pool, id).await? {
                            return Ok(None);
                        }
                        queries::stock_page(&pool, id.as_str(), cursor, limit)
                            .await
                            .map(Some)
                    })
                    .await;
                match page {
                    Ok(Some(page)) => paged(Ok(page), "stock"),
                    Ok(None) => {
                        Err(ApiError::not_found(format!("store {store} is not registered")).into())
                    }
                    Err(e) => paged::<crate::stores::StockFigure>(Err(e), "stock"),
                }
            },
        )
        .boxed()
}

fn product_stock(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "products" / String / "stock")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(|sku: String, who: Principal, hub: Arc<Hub>| async move {
            who.admin()?;
            let sku: Sku = sku_param(sku)?;
            let id = sku.as_str();
            let stock = hub
                .reads
                .read(Some(&who), |pool| async move {
                    queries::product_stock(&pool, id).await
                })
                .await;
            match stock {
                Ok(Some(stock)) => Ok(warp::reply::json(&stock).into_response()),
                Ok(None) => Err(Rejection::from(ApiError::not_found(format!(
                    "sku {sku} is unknown at this hub (no product record, no movement)"
                )))),
                Err(e) => Err(ApiError::internal("could not read stock", e).into()),
            }
        })
        .boxed()
}

fn movements(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "movements")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<MovementsQuery>())
        .and(with_hub(hub))
        .and_then(
            |who: Principal, q: MovementsQuery, hub: Arc<Hub>| async move {
                let store = scope(&who, optional_store(q.store)?)?;
                let sku = q.sku.map(sku_param).transpose()?;
                let limit = limit(q.limit)?;
                let filter = queries::MovementFilter {
                    store: store.map(|s| s.to_string()),
                    sku: sku.map(|s| s.to_string()),
                    since: q.since,
                };
                let (filter, cursor) = (&filter, q.cursor.as_deref());
                let page = hub
                    .reads
                    .read(Some(&who), |pool| async move {
                        queries::movements_page(&pool, filter, cursor, limit).await
                    })
                    .await;
                paged(page, "movements")
            },
        )
        .boxed()
}

fn recent_movements(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("audit-logs")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<RecentQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: RecentQuery, hub: Arc<Hub>| async move {
            let store = scope(&who, None)?;
            let limit = limit(q.limit)?;
            let store = store.as_ref().map(StoreId::as_str);
            let rows = hub
                .reads
                .read(Some(&who), |pool| async move {
                    queries::recent_movements(&pool, store, limit).await
                })
                .await;
            match rows {
                Ok(rows) => Ok(warp::reply::json(&rows).into_response()),
                Err(e) => Err(Rejection::from(ApiError::internal(
                    "could not read movements",
                    e,
                ))),
            }
        })
        .boxed()
}

fn audit(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "audit")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<AuditQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: AuditQuery, hub: Arc<Hub>| async move {
            who.admin()?;
            let limit = limit(q.limit)?;
            let filter = queries::AuditFilter {
                actor: q.actor,
                action: q.action,
                since: q.since,
            };
            let (filter, cursor) = (&filter, q.cursor.as_deref());
            let page = hub
                .reads
                .read(Some(&who), |pool| async move {
                    queries::audit_page(&pool, filter, cursor, limit).await
                })
                .await;
            paged(page, "the audit log")
        })
        .boxed()
}

fn parked(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "parked")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(query::<ParkedQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: ParkedQuery, hub: Arc<Hub>| async move {
            let store = scope(&who, optional_store(q.store)?)?;
            let limit = limit(q.limit)?;
            let (store, cursor) = (store.as_ref().map(StoreId::as_str), q.cursor.as_deref());
            let page = hub
                .reads
                .read(Some(&who), |pool| async move {
                    queries::parked_page(&pool, store, cursor, limit).await
                })
                .await;
            paged(page, "parked events")
        })
        .boxed()
}

/// Open, like `/healthz`: balancers and orchestrators call it without a token and get the
/// status alone; the admin token gets what each check found (hosts, settings, errors).
fn readyz(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("readyz")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_hub(hub))
        .then(|header: Option<String>, hub: Arc<Hub>| async move {
            let readiness = crate::readiness::assess(&hub).await;
            let status = StatusCode::from_u16(readiness.http_status())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let readiness = if super::is_admin(&hub, header.as_deref()) {
                readiness
            } else {
                readiness.summary()
            };
            warp::reply::with_status(warp::reply::json(&readiness), status).into_response()
        })
        .boxed()
}

/// Rendered once per process: the document depends on the code only.
fn openapi() -> BoxedFilter<(Response,)> {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    warp::path!("openapi.json")
        .and(warp::get())
        .map(|| {
            let body =
                BODY.get_or_init(|| serde_json::to_vec(super::document()).unwrap_or_default());
            warp::reply::with_header(body.clone(), "content-type", "application/json")
                .into_response()
        })
        .boxed()
}
