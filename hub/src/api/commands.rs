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
use crate::hub_movements::{
    self, Actor, Applied, MovementReply, MovementRequest, Planned, Quantity, SeedUpdateReply,
};
use crate::openapi::{Access, Operation};
use crate::startup::Hub;

/// The most commands one range fetch returns.
pub const MAX_COMMANDS_PAGE: u32 = 1000;

/// One page of the missing-range fetch.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct CommandsPage {
    pub store: String,
    pub after: u64,
    /// The store's counter now (rows past the page may exist).
    pub last_hub_seq: u64,
    pub commands: Vec<CommandRow>,
}

/// One signed message, byte for byte as the relay publishes it.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct CommandRow {
    pub hub_seq: u64,
    /// The signed JSON message (an Envelope v1 movement, or a command with `type`), as
    /// text: verify `sig` over these exact fields.
    pub payload: String,
}

pub fn docs() -> Vec<Operation> {
    vec![
        Operation::post("/v1/stores/{store}/movements", "postHubMovement", "A hub-origin movement at a store")
            .describe("receipt, adjustment (signed qty + reason), count (counted ≥ 0; delta = counted − the hub's on-hand), transfer_out (to_store, registered: it also gets an expected-transfer notice) or transfer_in. Applied at once to stock and ledger (origin hub, seq = the store's next hub_seq) and written, signed, to the outbox in the same transaction; the relay sends it to the store. Audited.")
            .tag("movements")
            .access(Access::Admin)
            .path_param("store", "The store's id")
            .header::<String>("Idempotency-Key", false, "A retry with the same key and request returns the original reply (header `idempotent-replayed: true`); the same key with another request is 422")
            .body::<MovementRequest>()
            .json::<MovementReply>(202, "Applied, with its hub_seq")
            .error(404, "The store is not registered")
            .error(422, "A bad store id, kind, sku, quantity, reason, ref or other store; an unregistered to_store; an Idempotency-Key reused with another request"),
        Operation::post("/update-stock/{store_id}/{product_id}", "seedUpdateStock", "The seed system's write: set on-hand")
            .describe("Sets on-hand by a hub-origin count (delta = quantity − the hub's on-hand), applied at once and sent to the store. Audited.")
            .tag("seed")
            .access(Access::Admin)
            .path_param("store_id", "The store's id")
            .path_param("product_id", "The sku")
            .query_param::<i64>("quantity", true, "The new on-hand, an integer ≥ 0")
            .header::<String>("Idempotency-Key", false, "As on POST /v1/stores/{store}/movements")
            .json::<SeedUpdateReply>(200, "On-hand set")
            .error(404, "The store is not registered")
            .error(422, "quantity missing, not an integer or below 0; a bad store id or sku"),
        Operation::get("/v1/stores/{store}/commands", "storeCommands", "The store's signed commands after a hub_seq")
            .describe("The agent's missing-range fetch: every outbox row with hub_seq > after, in order, exactly as published on store-commands.")
            .tag("stores")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .query_param::<u64>("after", false, "The last hub_seq the caller has; 0 when absent")
            .query_param::<u32>("limit", false, "1 to 1000; 1000 when absent")
            .json::<CommandsPage>(200, "The commands, in hub_seq order")
            .error(404, "The store is not registered")
            .error(422, "A bad store id, after or limit"),
    ]
}

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
                let original: MovementReply = serde_json::from_value(applied.body.clone())
                    .map_err(|e| ApiError::internal("stored reply is damaged", e))?;
                let body = SeedUpdateReply {
                    store_id: store.to_string(),
                    product_id: sku.to_string(),
                    quantity: original.stock.on_hand,
                    movement: original.movement,
                };
                let body = serde_json::to_value(&body)
                    .map_err(|e| ApiError::internal("could not encode the reply", e))?;
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
                let page = CommandsPage {
                    store: store.to_string(),
                    after,
                    last_hub_seq: health.last_hub_seq,
                    commands: rows
                        .into_iter()
                        .map(|r| CommandRow {
                            hub_seq: r.hub_seq,
                            payload: String::from_utf8_lossy(&r.payload).into_owned(),
                        })
                        .collect(),
                };
                Ok::<_, Rejection>(warp::reply::json(&page).into_response())
            },
        )
        .boxed()
}
