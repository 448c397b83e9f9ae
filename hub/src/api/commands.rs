//! Hub-origin movements (`POST /v1/stores/{s}/movements`, the seed's `POST /update-stock`)
//! and what agents fetch to follow the hub (`GET /v1/stores/{s}/commands`). Thin handlers:
//! the rules live in [`crate::hub_movements`] and [`crate::outbox`].

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use bazaar_shared::http::{parse_json, ApiError};
use bazaar_shared::StoreId;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{auth, sku_param, store_param, with_hub, Principal, MAX_BODY_BYTES};
use crate::hub_movements::{self, Actor, Applied, MovementRequest, Planned, Quantity};
use crate::startup::Hub;

/// The most commands one range fetch returns.
pub const MAX_COMMANDS_PAGE: u32 = 1000;

pub fn routes(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    post_movement(hub.clone())
        .or(update_stock(hub.clone()))
        .unify()
        .or(commands_range(hub))
        .unify()
        .boxed()
}

fn idempotency_key(raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(k)
            if !k.is_empty()
                && k.len() <= hub_movements::MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k))
        }
        Some(_) => Err(ApiError::unprocessable(format!(
            "Idempotency-Key must be 1 to {} printable ASCII characters",
            hub_movements::MAX_IDEMPOTENCY_KEY
        ))),
    }
}

/// Applies, then (after the commit) refreshes the cache, evaluates the key's alerts and
/// records the write.
async fn apply_and_refresh(
    hub: &Hub,
    who: &Principal,
    store: &StoreId,
    planned: &Planned,
    idempotency: Option<(&str, &str)>,
    actor: Actor<'_>,
) -> Result<Applied, ApiError> {
    let applied = hub_movements::apply(&hub.pool, store, planned, idempotency, &actor).await?;
    if !applied.replayed {
        let touched = BTreeSet::from([(store.to_string(), planned.sku.to_string())]);
        hub.cache.refresh(&hub.pool, &touched).await;
        hub.alerting.after_change(&touched).await;
        hub.wrote(who).await;
    }
    Ok(applied)
}

fn reply(applied: Applied, status: StatusCode, body: Value) -> Response {
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    if applied.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            warp::http::HeaderValue::from_static("true"),
        );
    }
    response
}

fn post_movement(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stores" / String / "movements")
        .and(warp::post())
        .and(auth(hub.clone()))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(
            |raw: String,
             who: Principal,
             key: Option<String>,
             body: bytes::Bytes,
             from: Option<SocketAddr>,
             hub: Arc<Hub>| async move {
                who.admin()?;
                let store = store_param(raw)?;
                let key = idempotency_key(key)?;
                let value: Value = parse_json(&body)?;
                let request: MovementRequest = serde_json::from_value(value.clone())
                    .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
                let planned = hub_movements::plan(&store, &request)?;
                let hash = hub_movements::request_hash("movements", &value);
                let actor = Actor {
                    name: "admin",
                    action: "movement.post",
                    from,
                };
                let applied = apply_and_refresh(
                    &hub,
                    &who,
                    &store,
                    &planned,
                    key.as_deref().map(|k| (k, hash.as_str())),
                    actor,
                )
                .await?;
                let body = applied.body.clone();
                Ok::<_, Rejection>(reply(applied, StatusCode::ACCEPTED, body))
            },
        )
        .boxed()
}

/// The seed system's write route: sets on-hand by a hub-origin count.
fn update_stock(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("update-stock" / String / String)
        .and(warp::post())
        .and(auth(hub.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(
            |store: String,
             sku: String,
             who: Principal,
             query: HashMap<String, String>,
             key: Option<String>,
             from: Option<SocketAddr>,
             hub: Arc<Hub>| async move {
                who.admin()?;
                let store = store_param(store)?;
                let sku = sku_param(sku)?;
                let key = idempotency_key(key)?;
                let counted = match query.get("quantity").map(|q| q.trim().parse::<i64>()) {
                    Some(Ok(q)) if (0..=bazaar_shared::envelope::MAX_QUANTITY).contains(&q) => q,
                    Some(_) => {
                        return Err(ApiError::unprocessable(
                            "quantity must be an integer ≥ 0 (it sets on-hand)",
                        )
                        .into())
                    }
                    None => {
                        return Err(ApiError::unprocessable(
                            "send ?quantity=N, an integer ≥ 0 (it sets on-hand)",
                        )
                        .into())
                    }
                };
                let request = MovementRequest {
                    kind: "count".into(),
                    sku: sku.to_string(),
                    qty: None,
                    counted: Some(counted),
                    reason: None,
                    reference: None,
                    to_store: None,
                    from_store: None,
                };
                let planned = hub_movements::plan(&store, &request)?;
                debug_assert_eq!(planned.quantity, Quantity::Counted(counted));
                let hash = hub_movements::request_hash(
                    "update-stock",
                    &json!({"sku": sku.as_str(), "quantity": counted}),
                );
                let actor = Actor {
                    name: "admin",
                    action: "stock.update",
                    from,
                };
                let applied = apply_and_refresh(
                    &hub,
                    &who,
                    &store,
                    &planned,
                    key.as_deref().map(|k| (k, hash.as_str())),
                    actor,
                )
                .await?;
                let body = json!({
                    "store_id": store.as_str(),
                    "product_id": sku.as_str(),
                    "quantity": applied.body["stock"]["on_hand"],
                    "movement": applied.body["movement"],
                });
                Ok::<_, Rejection>(reply(applied, StatusCode::OK, body))
            },
        )
        .boxed()
}

/// The agent's missing-range fetch: signed payloads with hub_seq > `after`, in order.
fn commands_range(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "stores" / String / "commands")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(with_hub(hub))
        .and_then(
            |raw: String, who: Principal, query: HashMap<String, String>, hub: Arc<Hub>| async move {
                let store = store_param(raw)?;
                who.may_act_on(&store)?;
                let number = |name: &str, default: u64| -> Result<u64, ApiError> {
                    match query.get(name) {
                        None => Ok(default),
                        Some(v) => v.parse::<u64>().map_err(|_| {
                            ApiError::unprocessable(format!("{name} must be a non-negative integer"))
                        }),
                    }
                };
                let after = number("after", 0)?;
                let limit = number("limit", u64::from(MAX_COMMANDS_PAGE))?;
                if limit == 0 || limit > u64::from(MAX_COMMANDS_PAGE) {
                    return Err(ApiError::unprocessable(format!(
                        "limit must be between 1 and {MAX_COMMANDS_PAGE}"
                    ))
                    .into());
                }
                // From the primary: an agent asks for rows the relay has just announced,
                // which a lagging replica may not hold yet.
                let health = crate::stores::sync_health(&hub.pool, &store)
                    .await
                    .map_err(|e| ApiError::internal("could not read the store's sync state", e))?;
                let Some(health) = health else {
                    return Err(ApiError::not_found(format!("store {store} is not registered")).into());
                };
                let rows = crate::outbox::range(&hub.pool, &store, after, limit as u32)
                    .await
                    .map_err(|e| ApiError::internal("could not read the outbox", e))?;
                let commands: Vec<Value> = rows
                    .into_iter()
                    .map(|r| {
                        json!({
                            "hub_seq": r.hub_seq,
                            "payload": String::from_utf8_lossy(&r.payload),
                        })
                    })
                    .collect();
                Ok::<_, Rejection>(
                    warp::reply::json(&json!({
                        "store": store.as_str(),
                        "after": after,
                        "last_hub_seq": health.last_hub_seq,
                        "commands": commands,
                    }))
                    .into_response(),
                )
            },
        )
        .boxed()
}
