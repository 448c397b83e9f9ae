//! Thresholds, alerts, forecasts, reorder and transfer suggestions (DESIGN §7–8). Thin
//! handlers: the rules live in [`crate::thresholds`], [`crate::alerting`] and
//! [`crate::forecast_job`].
//!
//! Access: an admin token reaches everything; a store's token reads its own store's
//! thresholds document, thresholds, alerts, forecasts and reorder suggestions and
//! acknowledges its own alerts. Chain-wide views, threshold changes and forecast runs are
//! admin only. Lists are pages: `limit` (1–1000, default 100) and an opaque `cursor` from
//! the previous page's `next_cursor`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bazaar_shared::http::{parse_json, ApiError};
use bazaar_shared::{Sku, StoreId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{auth, sku_param, store_param, with_hub, Principal, MAX_BODY_BYTES};
use crate::forecast_job::{self, StartError, Trigger};
use crate::openapi::{Access, Operation};
use crate::startup::Hub;
use crate::thresholds::{self, Change, Levels, Scope, ThresholdError};
use crate::{alerting, audit};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub fn routes(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    let thresholds = get_thresholds(hub.clone())
        .or(put_thresholds(hub.clone()))
        .unify()
        .or(delete_thresholds(hub.clone()))
        .unify()
        .or(store_document(hub.clone()))
        .unify()
        .boxed();
    let alerts = list_alerts(hub.clone())
        .or(ack_alert(hub.clone()))
        .unify()
        .boxed();
    let forecasts = run_forecast(hub.clone())
        .or(run_progress(hub.clone()))
        .unify()
        .or(store_forecast(hub.clone()))
        .unify()
        .or(chain_forecast(hub.clone()))
        .unify()
        .or(list_reorders(hub.clone()))
        .unify()
        .or(transfer_suggestions(hub))
        .unify()
        .boxed();
    thresholds.or(alerts).unify().or(forecasts).unify().boxed()
}

fn actor(who: &Principal) -> String {
    match who {
        Principal::Admin => "admin".into(),
        Principal::Store(store) => format!("store:{store}"),
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    warp::reply::json(value).into_response()
}

fn internal(context: &str) -> impl FnOnce(sqlx::Error) -> Rejection + '_ {
    move |e| ApiError::internal(context, e).into()
}

pub fn limit_of(raw: Option<u32>) -> Result<u32, Rejection> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::unprocessable(format!(
            "limit {n} is not between 1 and {MAX_LIMIT}"
        ))
        .into()),
    }
}

pub fn opt_store(raw: Option<String>) -> Result<Option<StoreId>, Rejection> {
    raw.filter(|s| !s.is_empty()).map(store_param).transpose()
}

pub fn opt_sku(raw: Option<String>) -> Result<Option<Sku>, Rejection> {
    raw.filter(|s| !s.is_empty()).map(sku_param).transpose()
}

/// A store token sees its own store only: an absent `store` means its own, another is 403.
fn scoped_store(who: &Principal, store: Option<StoreId>) -> Result<Option<StoreId>, Rejection> {
    match (who, store) {
        (Principal::Admin, store) => Ok(store),
        (Principal::Store(own), None) => Ok(Some(own.clone())),
        (Principal::Store(_), Some(store)) => {
            who.may_act_on(&store)?;
            Ok(Some(store))
        }
    }
}

/// `store:sku` cursors ('' for "any" on either side; ids never contain ':').
pub fn pair_cursor(raw: &str) -> Result<(String, String), Rejection> {
    let invalid = || {
        Rejection::from(ApiError::unprocessable(format!(
            "cursor {raw:?} is not one this API issued"
        )))
    };
    let (store, sku) = raw.split_once(':').ok_or_else(invalid)?;
    let valid = |s: &str| s.is_empty() || StoreId::parse(s).is_ok();
    if !valid(store) || !valid(sku) {
        return Err(invalid());
    }
    Ok((store.to_owned(), sku.to_owned()))
}

async fn require_store(hub: &Hub, who: &Principal, store: &StoreId) -> Result<(), Rejection> {
    if !crate::stores::exists(hub.reader(Some(who)).await, store)
        .await
        .map_err(internal("could not read stores"))?
    {
        return Err(ApiError::not_found(format!("store {store} is not registered")).into());
    }
    Ok(())
}

async fn require_sku(hub: &Hub, who: &Principal, sku: &Sku) -> Result<(), Rejection> {
    if !thresholds::sku_known(hub.reader(Some(who)).await, sku)
        .await
        .map_err(internal("could not read products"))?
    {
        return Err(ApiError::not_found(format!(
            "sku {sku} is unknown at this hub (no product record, no movement)"
        ))
        .into());
    }
    Ok(())
}

// ---- Thresholds ----

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdQuery {
    pub store: Option<String>,
    pub sku: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// `GET /v1/thresholds?store&sku`: the stored rows that bear on them; with both, also the
/// effective figures and the level each comes from.
fn get_thresholds(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "thresholds")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(warp::query::<ThresholdQuery>())
        .and(with_hub(hub))
        .and_then(
            |who: Principal, q: ThresholdQuery, hub: Arc<Hub>| async move {
                let store = scoped_store(&who, opt_store(q.store)?)?;
                let sku = opt_sku(q.sku)?;
                let limit = limit_of(q.limit)?;
                let after = q.cursor.as_deref().map(pair_cursor).transpose()?;
                let pool = hub.reader(Some(&who)).await;
                let rows = thresholds::list(
                    pool,
                    store.as_ref(),
                    sku.as_ref(),
                    after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                    limit,
                )
                .await
                .map_err(internal("could not read thresholds"))?;
                let effective = match (&store, &sku) {
                    (Some(store), Some(sku)) => {
                        let key = (store.to_string(), sku.to_string());
                        let found = thresholds::effective_for(
                            pool,
                            std::slice::from_ref(&key),
                            hub.config.intelligence.push_thresholds,
                        )
                        .await
                        .map_err(internal("could not resolve thresholds"))?;
                        Some(found.get(&key).copied().unwrap_or_default())
                    }
                    _ => None,
                };
                let next_cursor = (rows.len() == limit as usize).then(|| {
                    let last = &rows[rows.len() - 1];
                    format!(
                        "{}:{}",
                        last.store.as_deref().unwrap_or(""),
                        last.sku.as_deref().unwrap_or("")
                    )
                });
                Ok::<_, Rejection>(json(&ThresholdList {
                    thresholds: rows,
                    effective,
                    next_cursor,
                }))
            },
        )
        .boxed()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutThreshold {
    pub store: Option<String>,
    pub sku: Option<String>,
    pub reorder_point: Option<i64>,
    pub max_stock: Option<i64>,
}

pub fn scope_of(store: Option<String>, sku: Option<String>) -> Result<Scope, Rejection> {
    Scope::of(opt_store(store)?, opt_sku(sku)?).ok_or_else(|| {
        ApiError::unprocessable(
            "name the scope: store, sku, or both (store alone: every sku of the store; sku alone: chain-wide)",
        )
        .into()
    })
}

fn threshold_error(e: ThresholdError) -> Rejection {
    match e {
        ThresholdError::UnknownStore(_)
        | ThresholdError::UnknownSku(_)
        | ThresholdError::NotFound(_) => ApiError::not_found(e.to_string()).into(),
        ThresholdError::Invalid(m) => ApiError::unprocessable(m).into(),
        ThresholdError::Database(e) => ApiError::internal("could not change thresholds", e).into(),
        ThresholdError::Announce(e) => ApiError::internal(
            "could not announce the change to the stores",
            format!("{e:#}"),
        )
        .into(),
    }
}

/// After a change: audit, read-your-writes, and the alerts of every stocked key it moves.
async fn after_threshold_change(
    hub: &Hub,
    who: &Principal,
    scope: &Scope,
    change: &Change,
    action: &str,
    from: Option<SocketAddr>,
) {
    hub.wrote(who).await;
    audit::record(
        &hub.pool,
        &actor(who),
        action,
        &scope.target(),
        Change::audit_json(change.before, scope),
        Change::audit_json(change.after, scope),
        from,
    )
    .await;
    match thresholds::keys_under(&hub.pool, scope).await {
        Ok(keys) => {
            let keys: BTreeSet<(String, String)> = keys.into_iter().collect();
            hub.alerting.after_change(&keys).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not list the keys a threshold change moves; their alerts catch up on the next movement")
        }
    }
}

fn change_reply(scope: &Scope, change: &Change) -> Response {
    let (store, sku) = scope.key();
    json(&ThresholdChange {
        scope: scope.name(),
        store: (!store.is_empty()).then(|| store.to_owned()),
        sku: (!sku.is_empty()).then(|| sku.to_owned()),
        before: change.before,
        after: change.after,
        announced_to: change.stores.len(),
    })
}

/// `PUT /v1/thresholds` (admin): `{"store"?, "sku"?, "reorder_point"?, "max_stock"?}`; the
/// scope is what the body names; both figures are replaced (absent = not set here).
fn put_thresholds(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "thresholds")
        .and(warp::put())
        .and(auth(hub.clone()))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(|who: Principal, body: bytes::Bytes, from: Option<SocketAddr>, hub: Arc<Hub>| async move {
            who.admin()?;
            let request: PutThreshold = parse_json(&body)?;
            let scope = scope_of(request.store, request.sku)?;
            let levels = Levels {
                reorder_point: request.reorder_point,
                max_stock: request.max_stock,
            };
            let change = thresholds::put(&hub.pool, &scope, levels, &actor(&who))
                .await
                .map_err(threshold_error)?;
            after_threshold_change(&hub, &who, &scope, &change, "thresholds.put", from).await;
            Ok::<_, Rejection>(change_reply(&scope, &change))
        })
        .boxed()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    pub store: Option<String>,
    pub sku: Option<String>,
}

/// `DELETE /v1/thresholds?store&sku` (admin): removes the row at that scope.
fn delete_thresholds(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "thresholds")
        .and(warp::delete())
        .and(auth(hub.clone()))
        .and(warp::query::<ScopeQuery>())
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(
            |who: Principal, q: ScopeQuery, from: Option<SocketAddr>, hub: Arc<Hub>| async move {
                who.admin()?;
                let scope = scope_of(q.store, q.sku)?;
                let change = thresholds::delete(&hub.pool, &scope, &actor(&who))
                    .await
                    .map_err(threshold_error)?;
                after_threshold_change(&hub, &who, &scope, &change, "thresholds.delete", from)
                    .await;
                Ok::<_, Rejection>(change_reply(&scope, &change))
            },
        )
        .boxed()
}

/// `GET /v1/stores/{store}/thresholds` (admin or the store): its effective thresholds
/// document, `{"store","version","default","thresholds":[{"sku","reorder_point","max_stock"}]}`.
fn store_document(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stores" / String / "thresholds")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(|raw: String, who: Principal, hub: Arc<Hub>| async move {
            let store = store_param(raw)?;
            who.may_act_on(&store)?;
            require_store(&hub, &who, &store).await?;
            let document = thresholds::document(
                hub.reader(Some(&who)).await,
                &store,
                hub.config.intelligence.push_thresholds,
            )
            .await
            .map_err(internal("could not read the thresholds document"))?;
            Ok::<_, Rejection>(json(&document))
        })
        .boxed()
}

// ---- Alerts ----

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    pub store: Option<String>,
    pub kind: Option<String>,
    pub open: Option<bool>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

pub const ALERT_KINDS: [&str; 6] = [
    "low_stock",
    "out_of_stock",
    "negative_stock",
    "overstock",
    "demand_anomaly",
    "stale_store",
];

/// `GET /v1/alerts?store&kind&open&cursor&limit`: newest first.
fn list_alerts(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "alerts")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(warp::query::<AlertQuery>())
        .and(with_hub(hub))
        .and_then(|who: Principal, q: AlertQuery, hub: Arc<Hub>| async move {
            let store = scoped_store(&who, opt_store(q.store)?)?;
            if let Some(kind) = &q.kind {
                if !ALERT_KINDS.contains(&kind.as_str()) {
                    return Err(ApiError::unprocessable(format!(
                        "kind {kind:?} is not one of {}",
                        ALERT_KINDS.join(", ")
                    ))
                    .into());
                }
            }
            let limit = limit_of(q.limit)?;
            let before = match q.cursor.as_deref() {
                None => None,
                Some(raw) => Some(raw.parse::<i64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                    Rejection::from(ApiError::unprocessable(format!(
                        "cursor {raw:?} is not one this API issued"
                    )))
                })?),
            };
            let alerts = alerting::list(
                hub.reader(Some(&who)).await,
                store.as_ref().map(|s| s.as_str()),
                q.kind.as_deref(),
                q.open,
                before,
                limit,
            )
            .await
            .map_err(internal("could not read alerts"))?;
            let next_cursor = (alerts.len() == limit as usize)
                .then(|| alerts.last().map(|a| a.id.to_string()))
                .flatten();
            Ok::<_, Rejection>(json(&AlertPage {
                alerts,
                next_cursor,
            }))
        })
        .boxed()
}

/// `POST /v1/alerts/{id}/ack` (admin, or the alert's store): acknowledged once; a repeat
/// answers the alert as it stands.
fn ack_alert(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "alerts" / String / "ack")
        .and(warp::post())
        .and(auth(hub.clone()))
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(|raw: String, who: Principal, from: Option<SocketAddr>, hub: Arc<Hub>| async move {
            let id = raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
                Rejection::from(ApiError::unprocessable(format!("alert id {raw:?} is not a positive whole number")))
            })?;
            let Some(existing) = alerting::get(&hub.pool, id).await.map_err(internal("could not read the alert"))? else {
                return Err(ApiError::not_found(format!("no alert {id}")).into());
            };
            if let Principal::Store(_) = who {
                match existing.store.as_deref().map(StoreId::parse) {
                    Some(Ok(store)) => who.may_act_on(&store)?,
                    _ => who.admin()?,
                }
            }
            let by = actor(&who);
            let Some((alert, acknowledged)) = alerting::acknowledge(&hub.pool, id, &by)
                .await
                .map_err(internal("could not acknowledge the alert"))?
            else {
                return Err(ApiError::not_found(format!("no alert {id}")).into());
            };
            if acknowledged {
                hub.wrote(&who).await;
                audit::record(
                    &hub.pool,
                    &by,
                    "alert.ack",
                    &id.to_string(),
                    Some(serde_json::json!({"acknowledged_at": existing.acknowledged_at})),
                    Some(serde_json::json!({"acknowledged_at": alert.acknowledged_at, "acknowledged_by": alert.acknowledged_by})),
                    from,
                )
                .await;
            }
            Ok::<_, Rejection>(json(&alert))
        })
        .boxed()
}

// ---- Forecasts, reorders, transfers ----

/// `POST /v1/forecasts/run` (admin): `202 {"id","status"}`; `409` while a run is going on
/// at any hub.
fn run_forecast(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "forecasts" / "run")
        .and(warp::post())
        .and(auth(hub.clone()))
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(
            |who: Principal, from: Option<SocketAddr>, hub: Arc<Hub>| async move {
                who.admin()?;
                let by = actor(&who);
                match forecast_job::start(&hub, Trigger::Manual, Some(&by)).await {
                    Ok(id) => {
                        audit::record(
                            &hub.pool,
                            &by,
                            "forecast.run",
                            &id.to_string(),
                            None,
                            Some(serde_json::json!({"run": id.to_string()})),
                            from,
                        )
                        .await;
                        Ok::<_, Rejection>(
                            warp::reply::with_status(
                                warp::reply::json(&RunStarted {
                                    id: id.to_string(),
                                    status: "running",
                                    progress: format!("/v1/forecasts/runs/{id}"),
                                }),
                                StatusCode::ACCEPTED,
                            )
                            .into_response(),
                        )
                    }
                    Err(StartError::Running) => Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        "a forecast run is already in progress (on this hub or another)",
                    )
                    .into()),
                    Err(StartError::Unavailable) => {
                        Err(ApiError::unavailable(StartError::Unavailable.to_string()).into())
                    }
                    Err(StartError::Database(e)) => {
                        Err(ApiError::internal("could not start the forecast run", e).into())
                    }
                }
            },
        )
        .boxed()
}

/// `GET /v1/forecasts/runs/{id}` (admin): status and progress of a run.
fn run_progress(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "forecasts" / "runs" / String)
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(|raw: String, who: Principal, hub: Arc<Hub>| async move {
            who.admin()?;
            let id = uuid::Uuid::parse_str(&raw).map_err(|_| {
                Rejection::from(ApiError::unprocessable(format!(
                    "run id {raw:?} is not a UUID"
                )))
            })?;
            // The primary: progress is written there while the run goes on.
            match forecast_job::run_status(&hub.pool, &id)
                .await
                .map_err(internal("could not read the forecast run"))?
            {
                Some(run) => Ok::<_, Rejection>(json(&run)),
                None => Err(ApiError::not_found(format!("no forecast run {id}")).into()),
            }
        })
        .boxed()
}

/// `GET /v1/forecasts/{store}/{sku}` (admin or the store). `runs` in the store's place is
/// the progress route's, so a store named `runs` reads its forecasts per sku only through
/// `/v1/reorders` and the chain views.
fn store_forecast(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "forecasts" / String / String)
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(|store: String, sku: String, who: Principal, hub: Arc<Hub>| async move {
            // `/v1/forecasts/runs/{id}` is a run's progress: leave it to that route's answer.
            if store == "runs" {
                return Err(warp::reject::not_found());
            }
            let store = store_param(store)?;
            let sku = sku_param(sku)?;
            who.may_act_on(&store)?;
            let pool = hub.reader(Some(&who)).await;
            match forecast_job::forecast_view(pool, store.as_str(), sku.as_str())
                .await
                .map_err(internal("could not read the forecast"))?
            {
                Some(view) => Ok::<_, Rejection>(json(&view)),
                None => {
                    require_store(&hub, &who, &store).await?;
                    require_sku(&hub, &who, &sku).await?;
                    Err(ApiError::not_found(format!(
                        "no forecast for {sku} at {store} yet: it has no sales history, or no forecast run has finished since it sold"
                    ))
                    .into())
                }
            }
        })
        .boxed()
}

/// `GET /v1/products/{sku}/forecast` (admin): the stores' forecasts summed, and the chain's
/// reorder figures after transfers.
fn chain_forecast(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "products" / String / "forecast")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(|sku: String, who: Principal, hub: Arc<Hub>| async move {
            who.admin()?;
            let sku = sku_param(sku)?;
            match forecast_job::chain_forecast(hub.reader(Some(&who)).await, sku.as_str())
                .await
                .map_err(internal("could not read the forecasts"))?
            {
                Some(view) => Ok::<_, Rejection>(json(&view)),
                None => {
                    require_sku(&hub, &who, &sku).await?;
                    Err(ApiError::not_found(format!("no forecast for {sku} yet")).into())
                }
            }
        })
        .boxed()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderQuery {
    pub store: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// `GET /v1/reorders?store&cursor&limit`: what to buy now — every (store, sku) at or below
/// its reorder point, with the order that brings it up to its order-up-to level.
fn list_reorders(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "reorders")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(warp::query::<ReorderQuery>())
        .and(with_hub(hub))
        .and_then(
            |who: Principal, q: ReorderQuery, hub: Arc<Hub>| async move {
                let store = scoped_store(&who, opt_store(q.store)?)?;
                if let Some(store) = &store {
                    require_store(&hub, &who, store).await?;
                }
                let limit = limit_of(q.limit)?;
                let after = q.cursor.as_deref().map(pair_cursor).transpose()?;
                let rows = forecast_job::reorders(
                    hub.reader(Some(&who)).await,
                    store.as_ref().map(|s| s.as_str()),
                    None,
                    after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                    limit,
                    true,
                )
                .await
                .map_err(internal("could not read reorder suggestions"))?;
                let next_cursor = (rows.len() == limit as usize)
                    .then(|| rows.last().map(|r| format!("{}:{}", r.store, r.sku)))
                    .flatten();
                Ok::<_, Rejection>(json(&ReorderPage {
                    reorders: rows,
                    next_cursor,
                }))
            },
        )
        .boxed()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferQuery {
    pub sku: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// `GET /v1/transfers/suggestions?sku&cursor&limit` (admin): surplus → stores that will run
/// out within the lead time, per sku, and each store's purchase after them.
fn transfer_suggestions(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "transfers" / "suggestions")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(warp::query::<TransferQuery>())
        .and(with_hub(hub))
        .and_then(
            |who: Principal, q: TransferQuery, hub: Arc<Hub>| async move {
                who.admin()?;
                let sku = opt_sku(q.sku)?;
                if let Some(sku) = &sku {
                    require_sku(&hub, &who, sku).await?;
                }
                let after = q.cursor.map(sku_param).transpose()?;
                let limit = limit_of(q.limit)?;
                let (found, next_cursor) = forecast_job::transfer_suggestions(
                    hub.reader(Some(&who)).await,
                    sku.as_ref().map(|s| s.as_str()),
                    after.as_ref().map(|s| s.as_str()),
                    limit,
                )
                .await
                .map_err(internal("could not compute transfer suggestions"))?;
                Ok::<_, Rejection>(json(&TransferPage {
                    suggestions: found,
                    next_cursor,
                }))
            },
        )
        .boxed()
}

// ---- Response shapes and the OpenAPI operations ----

/// `GET /v1/thresholds`.
#[derive(Debug, Serialize, JsonSchema)]
struct ThresholdList {
    /// The stored rows, by store then sku ('' scopes first).
    thresholds: Vec<thresholds::ThresholdRow>,
    /// With both `store` and `sku`: the figures in force and the level each came from
    /// (precedence: store_sku, sku, store, forecast).
    effective: Option<thresholds::Effective>,
    next_cursor: Option<String>,
}

/// `PUT` and `DELETE /v1/thresholds`.
#[derive(Debug, Serialize, JsonSchema)]
struct ThresholdChange {
    /// `store_sku`, `sku` or `store`.
    scope: &'static str,
    store: Option<String>,
    sku: Option<String>,
    before: Option<Levels>,
    after: Option<Levels>,
    /// Stores told that their thresholds document changed.
    announced_to: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
struct AlertPage {
    /// Newest first.
    alerts: Vec<alerting::Alert>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct RunStarted {
    id: String,
    status: &'static str,
    /// Where to follow the run.
    progress: String,
}

#[derive(Debug, Serialize, JsonSchema)]
struct ReorderPage {
    reorders: Vec<forecast_job::ReorderRow>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
struct TransferPage {
    suggestions: Vec<forecast_job::SkuTransfers>,
    next_cursor: Option<String>,
}

/// The operations of this module, for `/openapi.json`.
pub fn docs() -> Vec<Operation> {
    const PAGE_422: &str = "A bad query: unknown parameter, limit outside 1..=1000, a cursor this route did not issue, or an invalid id";
    vec![
        Operation::get("/v1/thresholds", "listThresholds", "Threshold rows bearing on a store and/or sku")
            .describe("Scopes: (store, sku), (sku) chain-wide, (store) every sku of the store. Each field resolves on its own, the first level that sets it winning: store_sku > sku > store > forecast-derived (with BAZAAR_HUB_PUSH_THRESHOLDS). With both store and sku, `effective` gives the figures in force and where each came from. A store token sees its own store's rows only.")
            .tag("intelligence")
            .access(Access::AnyToken)
            .query::<ThresholdQuery>()
            .json::<ThresholdList>(200, "One page of rows, by store then sku")
            .error(403, "A store token asking for another store")
            .error(422, PAGE_422),
        Operation::put("/v1/thresholds", "putThreshold", "Set the reorder point and/or maximum at one scope")
            .describe("The body names the scope (store, sku, or both); both figures are replaced (absent: not set at this level). Audited, and announced in the same transaction to every store whose thresholds document may change.")
            .tag("intelligence")
            .access(Access::Admin)
            .body::<PutThreshold>()
            .json::<ThresholdChange>(200, "The row before and after, and how many stores were told")
            .error(404, "The store is not registered, or the sku is unknown at this hub")
            .error(422, "No scope named, no figure set, a negative figure, or a reorder point above the maximum"),
        Operation::delete("/v1/thresholds", "deleteThreshold", "Remove the row at one scope")
            .describe("Audited and announced like a change; the next level down applies.")
            .tag("intelligence")
            .access(Access::Admin)
            .query::<ScopeQuery>()
            .json::<ThresholdChange>(200, "The row removed")
            .error(404, "No row at that scope, an unregistered store or an unknown sku")
            .error(422, "No scope named, or an invalid store id or sku"),
        Operation::get("/v1/stores/{store}/thresholds", "storeThresholds", "A store's effective thresholds document")
            .describe("What the store's agent fetches after a `thresholds` bulk-state notice. `version` is the hub_seq of the notice that announced the last change (0: never changed). `default` is the store-wide level, for skus not listed.")
            .tag("intelligence")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .json::<thresholds::StoreDocument>(200, "The document")
            .error(404, "The store is not registered")
            .error(422, "Not a valid store id"),
        Operation::get("/v1/alerts", "listAlerts", "Alerts, newest first")
            .describe("Raised and resolved by the hub: low_stock, out_of_stock, negative_stock, overstock, demand_anomaly per (store, sku); stale_store per store. One open alert per (store, sku, kind). A store token sees its own store's.")
            .tag("intelligence")
            .access(Access::AnyToken)
            .query::<AlertQuery>()
            .json::<AlertPage>(200, "One page, newest first")
            .error(403, "A store token asking for another store")
            .error(422, PAGE_422),
        Operation::post("/v1/alerts/{id}/ack", "ackAlert", "Acknowledge an alert")
            .describe("Once: a repeat answers the alert as it stands, keeping the first acknowledgement. Audited. The admin, or the alert's own store.")
            .tag("intelligence")
            .access(Access::AdminOrOwnStore)
            .path_param_of::<i64>("id", "The alert's id")
            .json::<alerting::Alert>(200, "The alert, acknowledged")
            .error(404, "No such alert")
            .error(422, "Not a positive whole number"),
        Operation::post("/v1/forecasts/run", "runForecasts", "Start a forecast run now")
            .describe("Forecasts every (store, sku) with sales in the last 364 days and writes forecasts and reorder suggestions. One run at a time across every hub (a Redis lease). Audited.")
            .tag("intelligence")
            .access(Access::Admin)
            .json::<RunStarted>(202, "Started; follow it at `progress`")
            .error(409, "A run is already in progress, on this hub or another")
            .error(503, "Redis is unreachable, so the job lease cannot be taken"),
        Operation::get("/v1/forecasts/runs/{id}", "forecastRun", "A forecast run's status and progress")
            .tag("intelligence")
            .access(Access::Admin)
            .path_param_of::<String>("id", "The run's id (a UUID)")
            .json::<forecast_job::RunStatus>(200, "running, succeeded, failed or abandoned, with series done and total")
            .error(404, "No such run")
            .error(422, "Not a UUID"),
        Operation::get("/v1/forecasts/{store}/{sku}", "storeForecast", "One (store, sku)'s forecast")
            .describe("The last 56 days of sales, 28 days of daily means with prediction intervals, the model chosen by backtest and its RMSSE, and the reorder figures against the stock on hand now.")
            .tag("intelligence")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .path_param("sku", "The sku")
            .json::<forecast_job::ForecastView>(200, "The forecast")
            .error(404, "No forecast yet, an unregistered store or an unknown sku")
            .error(422, "Not a valid store id or sku"),
        Operation::get("/v1/products/{sku}/forecast", "chainForecast", "A sku's forecast across the chain")
            .describe("The stores' daily forecasts summed (intervals from independent store errors) and the chain's reorder figures: on hand, reorder points and order-up-to levels summed, transfers between stores, and what is left to buy after them.")
            .tag("intelligence")
            .access(Access::Admin)
            .path_param("sku", "The sku")
            .json::<forecast_job::ChainForecast>(200, "The chain-wide forecast")
            .error(404, "No forecast for the sku yet, or an unknown sku")
            .error(422, "Not a valid sku"),
        Operation::get("/v1/reorders", "listReorders", "What to buy now")
            .describe("Every (store, sku) at or below its reorder point, with the order that brings it to its order-up-to level in whole packs, against the stock on hand now. A store token sees its own store's.")
            .tag("intelligence")
            .access(Access::AnyToken)
            .query::<ReorderQuery>()
            .json::<ReorderPage>(200, "One page, by store then sku")
            .error(403, "A store token asking for another store")
            .error(404, "The store is not registered")
            .error(422, PAGE_422),
        Operation::get("/v1/transfers/suggestions", "transferSuggestions", "Stock to move between stores before buying")
            .describe("Per sku: surplus from stores above their order-up-to level to stores that will run out within the lead time (fewest days of cover first), and each store's purchase after the transfers.")
            .tag("intelligence")
            .access(Access::Admin)
            .query::<TransferQuery>()
            .json::<TransferPage>(200, "One page, by sku")
            .error(404, "The sku is unknown at this hub")
            .error(422, PAGE_422),
    ]
}
