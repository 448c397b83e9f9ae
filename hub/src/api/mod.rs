//! The hub's HTTP API (DESIGN §7). Each route is a function returning a filter; state is
//! injected; one rejection handler shapes every error.
//!
//! Submodules group the routes by what they serve: `commands` (hub-origin movements and
//! what agents fetch to follow them), `reads` (ledger, stock and store listings, audit,
//! parked, OpenAPI, readiness), `intelligence` (thresholds, alerts, forecasts,
//! suggestions), `bootstrap` (store snapshots) and `dashboard` (the HQ page at `/`). Each
//! exposes `routes` as one boxed filter, which keeps the composed type (and compile times)
//! small.

pub mod bootstrap;
pub mod charts;
pub mod commands;
pub mod dashboard;
pub mod enrolment;
pub mod intelligence;
pub mod reads;

use std::net::SocketAddr;
use std::sync::Arc;

use bazaar_shared::http::{
    bearer, drain_refused_body, parse_json, recover, ApiError, QueryProblems, WrongMethod,
};
use bazaar_shared::{Sku, StoreId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::cache::Lookup;
use crate::openapi::{Access, Explanation, Operation, RouteTable};
use crate::ratelimit::{client_ip, Decision, RateLimiter};
use crate::startup::Hub;
use crate::stores;

pub(crate) const MAX_BODY_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Store(StoreId),
}

impl Principal {
    pub(crate) fn may_act_on(&self, store: &StoreId) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Store(own) if own == store => Ok(()),
            Principal::Store(own) => Err(ApiError::forbidden(format!(
                "the token of store {own} acts on that store only"
            ))),
        }
    }

    pub(crate) fn admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Store(_) => Err(ApiError::forbidden("this needs an admin token")),
        }
    }
}

/// Every operation [`routes`] serves, for `/openapi.json`: each module contributes its own
/// `docs()` (see [`crate::openapi`]); `hub/tests/openapi.rs` fails on a route served but
/// missing here.
pub fn docs() -> Vec<Operation> {
    let mut operations = own_docs();
    operations.extend(reads::docs());
    operations.extend(commands::docs());
    operations.extend(intelligence::docs());
    operations.extend(bootstrap::docs());
    operations.extend(dashboard::docs());
    operations.extend(enrolment::docs());
    operations.extend(charts::docs());
    operations
}

fn own_docs() -> Vec<Operation> {
    vec![
        Operation::get("/healthz", "healthz", "Liveness: the process answers")
            .tag("operations")
            .json::<Health>(200, "Always `{\"status\": \"ok\"}` while the process runs")
            .infallible(),
        Operation::get("/metrics", "metrics", "Prometheus metrics (text format 0.0.4)")
            .tag("operations")
            .content(200, "text/plain; version=0.0.4; charset=utf-8", "The hub's counters, gauges and latency histograms")
            .infallible(),
        Operation::get("/v1/stores/{store}", "storeHealth", "A store's sync health")
            .describe("Last applied seq (store and hub origin), when it last sent and was applied, messages held behind a gap and parked ones.")
            .tag("stores")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .json::<stores::SyncHealth>(200, "The store's sync state")
            .error(404, "The store is not registered")
            .error(422, "Not a valid store id"),
        Operation::get("/v1/stores/{store}/stock/{sku}", "storeSkuStock", "One stock figure")
            .describe("Redis first, then MySQL. A known sku that never moved at this store stands at 0, version 0.")
            .tag("stock")
            .access(Access::AdminOrOwnStore)
            .path_param("store", "The store's id")
            .path_param("sku", "The sku")
            .json::<stores::StockFigure>(200, "The figure")
            .error(404, "The store is not registered, or the sku is unknown at this hub (no product record, no movement)")
            .error(422, "Not a valid store id or sku"),
        Operation::get("/get-stock/{store_id}/{product_id}", "seedGetStock", "The seed system's stock read")
            .describe("Kept as the seed system had it. Needs a token unless BAZAAR_HUB_OPEN_GET_STOCK is set; limited per client IP (BAZAAR_HUB_RATE_LIMIT_GET_STOCK).")
            .tag("seed")
            .access(Access::OpenByConfig)
            .rate_limited()
            .path_param("store_id", "The store's id")
            .path_param("product_id", "The sku")
            .json::<SeedStock>(200, "The figure and where it came from")
            .error(404, "The store is not registered, or the sku is unknown")
            .error(422, "Not a valid store id or sku"),
        Operation::post("/v1/stores", "registerStore", "Register a store")
            .describe("Returns the store's token and signing key, once: the hub keeps only the token's hash. Audited.")
            .tag("stores")
            .access(Access::Admin)
            .body::<RegisterRequest>()
            .json::<stores::Credentials>(201, "Registered; keep the token and key, they are not shown again")
            .error(409, "The store is already registered")
            .error(422, "Not a valid store id, or a name over 200 characters"),
    ]
}

pub fn routes(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    let observed = hub.clone();
    healthz()
        .or(metrics(hub.clone()))
        .or(store_health(hub.clone()))
        .or(store_stock(hub.clone()))
        .or(seed_get_stock(hub.clone()))
        .or(register_store(hub.clone()))
        .or(commands::routes(hub.clone()))
        .or(reads::routes(hub.clone()))
        .or(intelligence::routes(hub.clone()))
        .or(enrolment::routes(hub.clone()))
        .or(charts::routes(hub.clone()))
        .or(bootstrap::routes(hub))
        .or(dashboard::routes())
        // Reached only when every route above refused the request: the first reads what is
        // left of its body, so the refusal reaches a client still writing it; the second
        // says which methods the path takes and what is wrong with its query.
        .or(drain_refused_body())
        .or(last_resort())
        .recover(recover)
        .with(warp::log("bazaar_hub::http"))
        .with(warp::log::custom(move |info| {
            observed.http_metrics.observe(
                info.path(),
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed(),
            );
        }))
}

/// The OpenAPI document of [`docs`], rendered once per process (it depends on the code
/// only): served at `/openapi.json`, and what [`last_resort`] knows the routes from.
pub(crate) fn document() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| crate::openapi::document(&docs()))
}

/// After every route: refuses with what the documented routes say about the request, so
/// that [`recover`] can tell a wrong method (405 with `Allow`, only when no operation of
/// the path takes the method) from a bad query (422 naming each bad parameter) and from
/// an unknown path (404). It never succeeds, and decides nothing when a route refused the
/// request for a reason of its own.
fn last_resort() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(
            |method: warp::http::Method, path: warp::path::FullPath, query: String| async move {
                let rejection = match route_table().explain(method.as_str(), path.as_str(), &query)
                {
                    Explanation::UnknownPath | Explanation::Nothing => warp::reject::not_found(),
                    Explanation::WrongMethod { allow } => warp::reject::custom(WrongMethod {
                        method: method.to_string(),
                        allow,
                    }),
                    Explanation::BadQuery(message) => {
                        warp::reject::custom(QueryProblems { message })
                    }
                };
                Err::<warp::reply::Response, _>(rejection)
            },
        )
}

fn route_table() -> &'static RouteTable {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| RouteTable::of(document()))
}

pub(crate) fn with_hub(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (Arc<Hub>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || hub.clone())
}

pub(crate) async fn authenticate(hub: &Hub, header: Option<&str>) -> Result<Principal, ApiError> {
    let Some(token) = bearer(header) else {
        return Err(ApiError::unauthorized(
            "send `Authorization: Bearer <admin or store token>`",
        ));
    };
    if let Some(admin) = &hub.config.admin_token {
        if constant_time_eq(token.as_bytes(), admin.expose().as_bytes()) {
            return Ok(Principal::Admin);
        }
    }
    match hub.tokens.store_for_token(&hub.pool, token).await {
        Ok(Some(store)) => Ok(Principal::Store(store)),
        Ok(None) => Err(ApiError::unauthorized("unknown token")),
        Err(e) => Err(ApiError::internal("could not check the token", e)),
    }
}

/// Whether `header` carries the admin token (no database involved, so `/readyz` can ask).
pub(crate) fn is_admin(hub: &Hub, header: Option<&str>) -> bool {
    match (bearer(header), &hub.config.admin_token) {
        (Some(token), Some(admin)) => constant_time_eq(token.as_bytes(), admin.expose().as_bytes()),
        _ => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn auth(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_hub(hub))
        .and_then(|header: Option<String>, hub: Arc<Hub>| async move {
            authenticate(&hub, header.as_deref())
                .await
                .map_err(Rejection::from)
        })
}

pub fn store_param(raw: String) -> Result<StoreId, Rejection> {
    StoreId::parse(raw).map_err(|e| ApiError::unprocessable(e.to_string()).into())
}

pub fn sku_param(raw: String) -> Result<Sku, Rejection> {
    Sku::parse(raw).map_err(|e| ApiError::unprocessable(e.to_string()).into())
}

#[derive(Debug, Serialize, JsonSchema)]
struct Health {
    status: &'static str,
}

fn healthz() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&Health { status: "ok" }))
}

/// Prometheus text format; open, like `/healthz`.
fn metrics(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_hub(hub))
        .map(|hub: Arc<Hub>| {
            warp::reply::with_header(
                crate::metrics::render(&hub),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .into_response()
        })
}

fn store_health(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "stores" / String)
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(|raw: String, who: Principal, hub: Arc<Hub>| async move {
            let store = store_param(raw)?;
            who.may_act_on(&store)?;
            match stores::sync_health(&hub.pool, &store).await {
                Ok(Some(health)) => Ok::<_, Rejection>(warp::reply::json(&health)),
                Ok(None) => {
                    Err(ApiError::not_found(format!("store {store} is not registered")).into())
                }
                Err(e) => {
                    Err(ApiError::internal("could not read the store's sync state", e).into())
                }
            }
        })
}

fn store_stock(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "stores" / String / "stock" / String)
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(with_hub(hub))
        .and_then(
            |store: String, sku: String, who: Principal, hub: Arc<Hub>| async move {
                let store = store_param(store)?;
                let sku = sku_param(sku)?;
                who.may_act_on(&store)?;
                let (figure, _) = lookup_stock(&hub, Some(&who), &store, &sku).await?;
                Ok::<_, Rejection>(warp::reply::json(&figure))
            },
        )
}

/// Where a stock figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Database,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Database => "database",
        }
    }
}

/// Redis first, then MySQL; a miss is filled from the primary (compare-and-set on the
/// version, so a slow fill never overwrites a newer refresh). Only registered stores are
/// ever cached, so a hit needs no store check. With the cache off or Redis down, the read
/// goes where [`Hub::reader`] sends `who`'s reads (the replica when it can serve them).
pub(crate) async fn lookup_stock(
    hub: &Hub,
    who: Option<&Principal>,
    store: &StoreId,
    sku: &Sku,
) -> Result<(stores::StockFigure, Source), ApiError> {
    let generation = match hub.cache.lookup(store.as_str(), sku.as_str()).await {
        Lookup::Hit(figure) => return Ok((figure, Source::Cache)),
        Lookup::Miss { generation } => Some(generation),
        Lookup::Unavailable => None,
    };
    let figure = match generation {
        // What goes into the cache must be the primary's figure: a replica's could be
        // older than a refresh that has not happened yet.
        Some(generation) => {
            let figure = read_stock(&hub.pool, store, sku).await?;
            hub.cache.store(&figure, &generation).await;
            figure
        }
        None => stock_answer(
            store,
            sku,
            hub.reads
                .read(who, |db| async move { query_stock(&db, store, sku).await })
                .await,
        )?,
    };
    Ok((figure, Source::Database))
}

pub(crate) async fn read_stock(
    db: &sqlx::MySqlPool,
    store: &StoreId,
    sku: &Sku,
) -> Result<stores::StockFigure, ApiError> {
    stock_answer(store, sku, query_stock(db, store, sku).await)
}

/// `None`: the store is not registered; `Some(None)`: the sku is unknown.
async fn query_stock(
    db: &sqlx::MySqlPool,
    store: &StoreId,
    sku: &Sku,
) -> Result<Option<Option<stores::StockFigure>>, sqlx::Error> {
    if !stores::exists(db, store).await? {
        return Ok(None);
    }
    Ok(Some(stores::stock_figure(db, store, sku).await?))
}

fn stock_answer(
    store: &StoreId,
    sku: &Sku,
    found: Result<Option<Option<stores::StockFigure>>, sqlx::Error>,
) -> Result<stores::StockFigure, ApiError> {
    match found {
        Ok(Some(Some(figure))) => Ok(figure),
        Ok(None) => Err(ApiError::not_found(format!(
            "store {store} is not registered"
        ))),
        Ok(Some(None)) => Err(ApiError::not_found(format!(
            "sku {sku} is unknown at this hub (no product record, no movement)"
        ))),
        Err(e) => Err(ApiError::internal("could not read stock", e)),
    }
}

/// What the seed system's read route answers, kept as it was.
#[derive(Debug, Serialize, JsonSchema)]
struct SeedStock {
    store_id: String,
    product_id: String,
    /// On-hand, in the product's base unit.
    quantity: i64,
    /// `cache` (Redis) or `database` (MySQL).
    source: &'static str,
}

/// The seed system's read route, kept as it was: `{"store_id","product_id","quantity","source"}`.
fn seed_get_stock(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("get-stock" / String / String)
        .and(warp::get())
        .and(rate_limited(hub.clone(), |hub| &hub.get_stock_limit))
        .and(warp::header::optional::<String>("authorization"))
        .and(with_hub(hub))
        .and_then(
            |store: String, sku: String, header: Option<String>, hub: Arc<Hub>| async move {
                let store = store_param(store)?;
                let sku = sku_param(sku)?;
                let who = if hub.config.open_get_stock {
                    None
                } else {
                    let who = authenticate(&hub, header.as_deref()).await?;
                    who.may_act_on(&store)?;
                    Some(who)
                };
                let (figure, source) = lookup_stock(&hub, who.as_ref(), &store, &sku).await?;
                Ok::<_, Rejection>(warp::reply::json(&SeedStock {
                    store_id: figure.store,
                    product_id: figure.sku,
                    quantity: figure.on_hand,
                    source: source.as_str(),
                }))
            },
        )
}

/// Refuses the request with `429`, `Retry-After` and the JSON error once the client (see
/// [`client_ip`]) is past the route's limit; before authentication, so it costs nothing.
pub(crate) fn rate_limited(
    hub: Arc<Hub>,
    limiter: fn(&Hub) -> &RateLimiter,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::addr::remote()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with_hub(hub))
        .and_then(move |peer: Option<SocketAddr>, forwarded: Option<String>, hub: Arc<Hub>| async move {
            let client = client_ip(peer, forwarded.as_deref(), &hub.config.trusted_proxies);
            let limiter = limiter(&hub);
            match limiter.check(client).await {
                Decision::Allow => Ok(()),
                Decision::Deny { retry_after } => {
                    let secs = Decision::retry_after_secs(retry_after);
                    let mut error = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!("at most {} requests per second per client on this route; retry in {secs} s", limiter.per_second()),
                    );
                    error.retry_after_secs = Some(secs);
                    Err(Rejection::from(error))
                }
            }
        })
        .untuple_one()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The new store's id, `^[A-Za-z0-9_-]{1,64}$`.
    #[schemars(pattern(crate::openapi::IDENTIFIER_PATTERN))]
    pub store: String,
    /// A name for people, at most 200 characters.
    #[schemars(length(max = 200))]
    pub name: Option<String>,
}

fn register_store(
    hub: Arc<Hub>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "stores")
        .and(warp::post())
        .and(auth(hub.clone()))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(|who: Principal, body: bytes::Bytes, from: Option<SocketAddr>, hub: Arc<Hub>| async move {
            who.admin()?;
            let request: RegisterRequest = parse_json(&body)?;
            let store = store_param(request.store)?;
            if request.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
                return Err(ApiError::unprocessable("name is longer than 200 characters").into());
            }
            match stores::register(&hub.pool, &store, request.name.as_deref()).await {
                Ok(credentials) => {
                    crate::audit::record(&hub.pool, "admin", "store.register", store.as_str(), None,
                        Some(serde_json::json!({"store": store.as_str(), "name": request.name})), from).await;
                    Ok(warp::reply::with_status(warp::reply::json(&credentials), StatusCode::CREATED).into_response())
                }
                Err(stores::RegisterError::Exists(s)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("store {s} is already registered")).into()),
                Err(e) => Err(Rejection::from(ApiError::internal("could not register the store", e))),
            }
        })
}
