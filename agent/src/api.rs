//! The store's local HTTP API (DESIGN §6). Handlers are thin: parse, hand to the ledger
//! through the writer or a read connection, shape the reply.
//!
//! The API runs on a shared store PC, where any web page the browser opens can send it
//! requests. So, before any route (`local_only`):
//! - a `Host` that is not an address the agent listens on is refused (421): a DNS-rebound
//!   name never reads stock or status. A loopback listener answers to `127.0.0.1`,
//!   `localhost` and `[::1]`, with or without its port; one bound to all interfaces
//!   answers to any host, the local token (required there) guarding it;
//! - a request from a browser page of another origin (`Origin` not one of the agent's own,
//!   `Origin: null` included) is refused (403);
//! - a POST whose body is not declared `application/json` is refused (415), so no form
//!   post or `no-cors` fetch (which can only send text/plain, form or multipart bodies) is
//!   ever read, let alone recorded;
//! - the local token, when configured, is compared in constant time (SHA-256 digests).

use std::sync::Arc;

use bazaar_shared::envelope::{MAX_QUANTITY, MAX_REF_LEN};
use bazaar_shared::http::{bearer, parse_json, recover, ApiError, WrongMethod};
use bazaar_shared::{Kind, Reason, Sku, StoreId};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::ledger::{self, IdempotencyKey, NewMovement, Quantity, RecordError};
use crate::startup::Agent;
use crate::writer::WriteError;

const MAX_BODY_BYTES: u64 = 16 * 1024;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

pub fn routes(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    let api = post_movement(agent.clone())
        .or(get_stock_item(agent.clone()))
        .or(get_stock(agent.clone()))
        .or(get_status(agent.clone()))
        .or(get_alerts(agent.clone()))
        .or(get_expected_transfers(agent.clone()));
    let api = api.or(get_parked(agent.clone()));
    let authorised = local_auth(agent.clone()).and(api).map(|(), reply| reply);
    local_only(agent)
        .and(healthz().or(authorised).or(wrong_method()))
        .map(|(), reply| reply)
        // A refused request's body is read (bounded) before the refusal is sent.
        .or(bazaar_shared::http::drain_refused_body())
        .recover(recover)
        .with(warp::log("bazaar_agent::http"))
}

/// Every path the agent serves (`*` is one segment) and the method it takes there: what a
/// 405's `Allow` names.
const ROUTES: &[(&str, &str)] = &[
    ("/healthz", "GET"),
    ("/v1/movements", "POST"),
    ("/v1/stock", "GET"),
    ("/v1/stock/*", "GET"),
    ("/v1/status", "GET"),
    ("/v1/alerts", "GET"),
    ("/v1/parked", "GET"),
    ("/v1/transfers/expected", "GET"),
];

/// The methods `path` takes, when it is one of [`ROUTES`].
fn methods_of(path: &str) -> Option<&'static str> {
    let given: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ROUTES.iter().find_map(|(pattern, method)| {
        let wanted: Vec<&str> = pattern.split('/').collect();
        let same = wanted.len() == given.len()
            && wanted
                .iter()
                .zip(&given)
                .all(|(w, g)| w == g || (*w == "*" && !g.is_empty()));
        same.then_some(*method)
    })
}

/// After every route: a known path asked with a method it does not take is a 405 that
/// names the method it does take (`Allow`); anything else is left to the routes' own
/// refusals.
fn wrong_method() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::method().and(warp::path::full()).and_then(
        |method: warp::http::Method, path: warp::path::FullPath| async move {
            let rejection = match methods_of(path.as_str()) {
                Some(allow)
                    if method.as_str() != allow
                        && !(allow == "GET" && method == warp::http::Method::HEAD) =>
                {
                    warp::reject::custom(WrongMethod {
                        method: method.to_string(),
                        allow: allow.to_owned(),
                    })
                }
                _ => warp::reject::not_found(),
            };
            Err::<warp::reply::Response, _>(rejection)
        },
    )
}

/// The `Host` values the agent answers to; `None` when it listens on every interface.
fn own_hosts(listen: std::net::SocketAddr) -> Option<Vec<String>> {
    let ip = listen.ip();
    if ip.is_unspecified() {
        return None;
    }
    let names: Vec<String> = if ip.is_loopback() {
        vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()]
    } else {
        match ip {
            std::net::IpAddr::V4(v4) => vec![v4.to_string()],
            std::net::IpAddr::V6(v6) => vec![format!("[{v6}]")],
        }
    };
    let port = listen.port();
    Some(
        names
            .into_iter()
            .flat_map(|n| [format!("{n}:{port}"), n])
            .collect(),
    )
}

/// Whether a `Content-Type` is JSON (`application/json`, parameters allowed).
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// What a request must be to reach any route: see the module's header.
pub fn check_local(
    listen: std::net::SocketAddr,
    method: &warp::http::Method,
    host: Option<&str>,
    origin: Option<&str>,
    content_type: Option<&str>,
) -> Result<(), ApiError> {
    let own = own_hosts(listen);
    let host = host.map(str::trim).unwrap_or_default().to_ascii_lowercase();
    if let Some(own) = &own {
        if !own.contains(&host) {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong_host",
                format!(
                    "this agent answers only to {}, not to Host {host:?}; use http://{listen}",
                    own.join(", ")
                ),
            ));
        }
    }
    if let Some(origin) = origin {
        let origin = origin.trim().to_ascii_lowercase();
        let trusted = match &own {
            Some(own) => own.iter().any(|h| origin == format!("http://{h}")),
            None => origin == format!("http://{host}"),
        };
        if !trusted {
            return Err(ApiError::forbidden(format!(
                "requests from web pages of origin {origin:?} are refused: the local API serves the \
                 store's tills and scanners, not other sites"
            )));
        }
    }
    if method == warp::http::Method::POST && !is_json(content_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the body as JSON with `Content-Type: application/json` (got {})",
                content_type.map_or_else(|| "no Content-Type".to_owned(), |c| format!("{c:?}"))
            ),
        ));
    }
    Ok(())
}

fn local_only(agent: Arc<Agent>) -> impl Filter<Extract = ((),), Error = Rejection> + Clone {
    let listen = agent.config.listen;
    warp::method()
        .and(warp::header::optional::<String>("host"))
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("content-type"))
        .and_then(
            move |method: warp::http::Method,
                  host: Option<String>,
                  origin: Option<String>,
                  content_type: Option<String>| async move {
                check_local(
                    listen,
                    &method,
                    host.as_deref(),
                    origin.as_deref(),
                    content_type.as_deref(),
                )
                .map_err(Rejection::from)
            },
        )
}

/// Equal secrets, in time that does not depend on where they differ: the digests are
/// compared byte by byte without stopping early.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn with_agent(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (Arc<Agent>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || agent.clone())
}

/// Bound to loopback, the API is open to the machine; bound wider, it needs the local token.
fn local_auth(agent: Arc<Agent>) -> impl Filter<Extract = ((),), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let agent = agent.clone();
        async move {
            match &agent.config.local_token {
                None => Ok(()),
                Some(token)
                    if bearer(header.as_deref())
                        .is_some_and(|given| same_secret(given, token.expose())) =>
                {
                    Ok(())
                }
                Some(_) => Err(Rejection::from(ApiError::unauthorized(
                    "this agent listens beyond localhost: send `Authorization: Bearer <local_token>`",
                ))),
            }
        }
    })
}

fn healthz() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})))
}

/// What a till sends. Unknown fields are refused so a typo never silently records
/// something else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementRequest {
    pub kind: String,
    pub sku: String,
    pub qty: Option<i64>,
    pub counted: Option<i64>,
    pub reason: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub to_store: Option<String>,
    pub from_store: Option<String>,
}

impl MovementRequest {
    /// Parse, don't validate: the result can be recorded as is.
    pub fn into_new_movement(self, own_store: &StoreId) -> Result<NewMovement, ApiError> {
        let invalid = |m: String| Err(ApiError::unprocessable(m));
        let Some(kind) = Kind::parse(&self.kind) else {
            return invalid(format!(
                "kind {:?} is not one of sale, return, receipt, adjustment, count, transfer_out, transfer_in",
                self.kind
            ));
        };
        let sku = Sku::parse(self.sku).map_err(|e| ApiError::unprocessable(e.to_string()))?;
        let quantity = match (kind, self.qty, self.counted) {
            (Kind::Count, None, Some(c)) if (0..=MAX_QUANTITY).contains(&c) => Quantity::Counted(c),
            (Kind::Count, None, Some(c)) => return invalid(format!("counted {c} must be between 0 and {MAX_QUANTITY}")),
            (Kind::Count, _, _) => return invalid("a count sends `counted` (the units on the shelf) and no `qty`".into()),
            (_, _, Some(_)) => return invalid(format!("a {} sends `qty`, not `counted`", kind.as_str())),
            (_, None, None) => return invalid(format!("a {} needs `qty`", kind.as_str())),
            // unsigned_abs: i64::MIN.abs() overflows (found by fuzz/agent_requests).
            (Kind::Adjustment, Some(q), None) if q != 0 && q.unsigned_abs() <= MAX_QUANTITY.unsigned_abs() => {
                Quantity::Delta(q)
            }
            (Kind::Adjustment, Some(q), None) => {
                return invalid(format!("adjustment qty {q} must be a non-zero signed delta within ±{MAX_QUANTITY}"))
            }
            (_, Some(q), None) if q > 0 && q <= MAX_QUANTITY => {
                Quantity::Delta(q * kind.sign_of_quantity().unwrap_or(1))
            }
            (_, Some(q), None) => {
                return invalid(format!(
                    "qty {q} must be a positive number of units (1 to {MAX_QUANTITY}); the kind gives the sign"
                ))
            }
        };
        let reason = match (kind, self.reason) {
            (Kind::Adjustment, Some(r)) => Some(Reason::parse(&r).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "reason {r:?} is not one of damage, theft, expiry, correction"
                ))
            })?),
            (Kind::Adjustment, None) => {
                return invalid(
                    "an adjustment needs a reason: damage, theft, expiry or correction".into(),
                )
            }
            (_, Some(_)) => return invalid(format!("a {} takes no reason", kind.as_str())),
            (_, None) => None,
        };
        let other_store = |raw: Option<String>, field: &str| -> Result<Option<StoreId>, ApiError> {
            let parsed = raw
                .map(StoreId::parse)
                .transpose()
                .map_err(|e| ApiError::unprocessable(format!("{field}: {e}")))?;
            if parsed.as_ref() == Some(own_store) {
                return Err(ApiError::unprocessable(format!(
                    "{field} must name another store"
                )));
            }
            Ok(parsed)
        };
        let to_store = other_store(self.to_store, "to_store")?;
        let from_store = other_store(self.from_store, "from_store")?;
        match (kind, &to_store, &from_store) {
            (Kind::TransferOut, Some(_), None) | (Kind::TransferIn, None, Some(_)) => {}
            (Kind::TransferOut, _, _) => {
                return invalid("a transfer_out names the receiving store in `to_store`".into())
            }
            (Kind::TransferIn, _, _) => {
                return invalid("a transfer_in names the sending store in `from_store`".into())
            }
            (_, None, None) => {}
            _ => return invalid(format!("a {} names no other store", kind.as_str())),
        }
        if let Some(r) = &self.reference {
            if r.chars().count() > MAX_REF_LEN || r.chars().any(char::is_control) {
                return invalid(format!(
                    "ref must be at most {MAX_REF_LEN} printable characters"
                ));
            }
        }
        Ok(NewMovement {
            kind,
            sku,
            quantity,
            reason,
            reference: self.reference,
            to_store,
            from_store,
        })
    }
}

pub fn idempotency_key(raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(k)
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Ok(Some(k))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        ))),
    }
}

fn post_movement(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "movements")
        .and(warp::post())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(with_agent(agent))
        .and_then(
            |key: Option<String>, body: bytes::Bytes, agent: Arc<Agent>| async move {
                record_movement(agent, key, &body)
                    .await
                    .map_err(Rejection::from)
            },
        )
}

async fn record_movement(
    agent: Arc<Agent>,
    key: Option<String>,
    body: &[u8],
) -> Result<warp::reply::Response, ApiError> {
    let key = idempotency_key(key)?;
    let request: MovementRequest = parse_json(body)?;
    let new = request.into_new_movement(&agent.config.store)?;
    let request_hash = hex::encode(Sha256::digest(serde_json::to_vec(&new).unwrap_or_default()));
    let outcome = agent
        .writer
        .write(move |conn| {
            let idem = key.as_deref().map(|k| IdempotencyKey {
                key: k,
                request_hash: &request_hash,
            });
            ledger::record(conn, &new, idem)
        })
        .await;
    match outcome {
        Ok(recorded) => {
            let status = if recorded.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(warp::reply::with_status(warp::reply::json(&recorded.movement), status).into_response())
        }
        Err(WriteError::Job(RecordError::IdempotencyMismatch(k))) => Err(ApiError::unprocessable(format!(
            "Idempotency-Key {k:?} was already used with a different request; use a new key for a new movement"
        ))),
        Err(WriteError::Job(RecordError::Invalid(m))) => Err(ApiError::unprocessable(m)),
        Err(e) => Err(ApiError::internal("could not record the movement durably", e)),
    }
}

fn get_stock_item(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "stock" / String)
        .and(warp::get())
        .and(with_agent(agent))
        .and_then(|raw: String, agent: Arc<Agent>| async move {
            let sku = Sku::parse(raw)
                .map_err(|e| Rejection::from(ApiError::unprocessable(e.to_string())))?;
            let shown = sku.clone();
            let found = agent.read(move |conn| ledger::stock_of(conn, &sku)).await?;
            match found {
                Some(view) => Ok(warp::reply::json(&view)),
                None => Err(Rejection::from(ApiError::not_found(format!(
                    "sku {shown} has no movement at this store"
                )))),
            }
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockQuery {
    pub after: Option<String>,
    pub limit: Option<u32>,
}

fn get_stock(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "stock")
        .and(warp::get())
        .and(warp::query::<StockQuery>())
        .and(with_agent(agent))
        .and_then(|q: StockQuery, agent: Arc<Agent>| async move {
            let limit = q.limit.unwrap_or(500).clamp(1, 5000);
            let after = q.after.unwrap_or_default();
            let items = agent
                .read(move |conn| ledger::stock_page(conn, &after, limit))
                .await?;
            let next = (items.len() == limit as usize)
                .then(|| items.last().map(|i| i.sku.clone()))
                .flatten();
            Ok::<_, Rejection>(warp::reply::json(
                &serde_json::json!({"items": items, "next_after": next}),
            ))
        })
}

fn get_status(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "status")
        .and(warp::get())
        .and(with_agent(agent))
        .and_then(|agent: Arc<Agent>| async move {
            let status = agent.status().await?;
            Ok::<_, Rejection>(warp::reply::json(&status))
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    pub all: Option<bool>,
    pub limit: Option<u32>,
}

/// Open alerts (or all with `?all=true`), newest first. Raised locally, with no network.
fn get_alerts(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "alerts")
        .and(warp::get())
        .and(warp::query::<AlertsQuery>())
        .and(with_agent(agent))
        .and_then(|q: AlertsQuery, agent: Arc<Agent>| async move {
            let limit = q.limit.unwrap_or(100).clamp(1, 1000);
            let all = q.all.unwrap_or(false);
            let items = agent
                .read(move |conn| crate::housekeeping::alerts(conn, all, limit))
                .await?;
            Ok::<_, Rejection>(warp::reply::json(&serde_json::json!({"items": items})))
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkedQuery {
    pub after: Option<i64>,
    pub limit: Option<u32>,
}

/// Movements parked here (never sent, or refused by the hub), oldest first, paged by
/// `after` = the last page's `next_after`. Each one's stock change was reversed and a void
/// took its seq.
fn get_parked(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "parked")
        .and(warp::get())
        .and(warp::query::<ParkedQuery>())
        .and(with_agent(agent))
        .and_then(|q: ParkedQuery, agent: Arc<Agent>| async move {
            let limit = q.limit.unwrap_or(100).clamp(1, 1000);
            let after = q.after.unwrap_or(0);
            let items = agent
                .read(move |conn| ledger::parked_page(conn, after, limit))
                .await?;
            let next = (items.len() == limit as usize)
                .then(|| items.last().map(|i| i.parked_id))
                .flatten();
            Ok::<_, Rejection>(warp::reply::json(
                &serde_json::json!({"parked": items, "next_after": next}),
            ))
        })
}

/// Transfers the hub announced as on their way here, not yet received (all with
/// `?all=true`), newest first. Record the goods with `transfer_in` and `ref` = transfer_id.
fn get_expected_transfers(
    agent: Arc<Agent>,
) -> impl Filter<Extract = (warp::reply::Json,), Error = Rejection> + Clone {
    warp::path!("v1" / "transfers" / "expected")
        .and(warp::get())
        .and(warp::query::<AlertsQuery>())
        .and(with_agent(agent))
        .and_then(|q: AlertsQuery, agent: Arc<Agent>| async move {
            let limit = q.limit.unwrap_or(100).clamp(1, 1000);
            let open_only = !q.all.unwrap_or(false);
            let items = agent
                .read(move |conn| crate::commands::expected_transfers(conn, open_only, limit))
                .await?;
            Ok::<_, Rejection>(warp::reply::json(&serde_json::json!({"items": items})))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, FileConfig, Secret};

    fn agent(dir: &std::path::Path, local_token: Option<&str>) -> Arc<Agent> {
        let file = FileConfig {
            store: "S1".into(),
            hub_url: "http://127.0.0.1:9".into(),
            token: Secret::new("t"),
            key: Secret::new(bazaar_shared::SigningKey::generate().to_base64()),
            data_dir: Some(dir.to_path_buf()),
            listen: None,
            local_token: local_token.map(Secret::new),
            kafka_brokers: None,
            topic_prefix: None,
            disk_budget_mb: None,
            resend_after_secs: None,
            retention_days: None,
            kafka: Default::default(),
        };
        let config = AgentConfig::from_layers(file, dir.to_path_buf(), |_| None).unwrap();
        Arc::new(Agent::open(config).unwrap())
    }

    async fn post(agent: &Arc<Agent>, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let mut request = local_request()
            .method("POST")
            .path("/v1/movements")
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            request = request.header("idempotency-key", k);
        }
        let response = request.reply(&routes(agent.clone())).await;
        (
            response.status().as_u16(),
            serde_json::from_slice(response.body()).unwrap_or_default(),
        )
    }

    /// A request as a till on this machine sends it (the agent listens on 127.0.0.1:7171).
    fn local_request() -> warp::test::RequestBuilder {
        warp::test::request().header("host", "127.0.0.1:7171")
    }

    async fn pending(agent: &Arc<Agent>) -> u64 {
        agent.status().await.unwrap().pending
    }

    #[tokio::test]
    async fn recording_answers_201_then_200_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        let body = r#"{"kind":"receipt","sku":"A","qty":5}"#;
        let (status, first) = post(&agent, Some("k1"), body).await;
        assert_eq!(status, 201);
        assert_eq!(
            (
                first["seq"].as_u64(),
                first["delta"].as_i64(),
                first["kind"].as_str()
            ),
            (Some(1), Some(5), Some("receipt"))
        );
        let (status, again) = post(&agent, Some("k1"), body).await;
        assert_eq!((status, &again), (200, &first));
        let response = local_request()
            .path("/v1/stock/A")
            .reply(&routes(agent.clone()))
            .await;
        let stock: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            (stock["on_hand"].as_i64(), stock["pending"].as_u64()),
            (Some(5), Some(1))
        );
    }

    #[tokio::test]
    async fn every_rejection_is_a_json_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        post(
            &agent,
            Some("k1"),
            r#"{"kind":"receipt","sku":"A","qty":5}"#,
        )
        .await;
        let cases: &[(Option<&str>, String, u16, &str)] = &[
            (None, "not json".into(), 400, "bad_request"),
            (
                None,
                r#"{"kind":"sale","sku":"A","qty":1,"extra":1}"#.into(),
                400,
                "bad_request",
            ),
            (
                None,
                r#"{"kind":"sale","sku":"A B","qty":1}"#.into(),
                422,
                "invalid",
            ),
            (
                None,
                r#"{"kind":"sale","sku":"A","qty":-1}"#.into(),
                422,
                "invalid",
            ),
            (
                Some("k1"),
                r#"{"kind":"receipt","sku":"A","qty":6}"#.into(),
                422,
                "invalid",
            ),
            (
                Some("bad key with spaces"),
                r#"{"kind":"sale","sku":"A","qty":1}"#.into(),
                400,
                "bad_request",
            ),
            (
                None,
                format!(
                    r#"{{"kind":"sale","sku":"A","qty":1,"ref":"{}"}}"#,
                    "x".repeat(20_000)
                ),
                413,
                "too_large",
            ),
        ];
        for (key, body, status, code) in cases {
            let (got, error) = post(&agent, *key, body).await;
            assert_eq!(got, *status, "{body:.80}: {error}");
            assert_eq!(error["error"]["code"], *code, "{error}");
            assert!(error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(
            pending(&agent).await,
            1,
            "no rejected request recorded anything"
        );
        let response = local_request()
            .path("/v1/nowhere")
            .reply(&routes(agent.clone()))
            .await;
        assert_eq!(response.status(), 404);
        let response = local_request()
            .path("/v1/stock/NOPE")
            .reply(&routes(agent.clone()))
            .await;
        assert_eq!(response.status(), 404);
    }

    #[tokio::test]
    async fn status_shows_the_outbox_the_hubs_acknowledgement_the_disk_and_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        for i in 0..3 {
            post(
                &agent,
                Some(&format!("k{i}")),
                r#"{"kind":"receipt","sku":"A","qty":5}"#,
            )
            .await;
        }
        let status = |agent: Arc<Agent>| async move {
            let response = local_request()
                .path("/v1/status")
                .reply(&routes(agent))
                .await;
            assert_eq!(response.status(), 200);
            serde_json::from_slice::<serde_json::Value>(response.body()).unwrap()
        };
        let before = status(agent.clone()).await;
        for field in [
            "store",
            "online",
            "pending",
            "sent",
            "acked",
            "parked",
            "oldest_pending_age_s",
            "last_delivery_at",
            "hub_applied_seq",
            "last_ack_at",
            "disk_bytes",
            "disk_budget_bytes",
            "disk_budget_used",
            "bootstrap",
        ] {
            assert!(before.get(field).is_some(), "{field} missing from {before}");
        }
        assert_eq!(
            (&before["pending"], &before["acked"], &before["last_seq"]),
            (
                &serde_json::json!(3),
                &serde_json::json!(0),
                &serde_json::json!(3)
            )
        );
        assert_eq!(before["bootstrap"]["state"], "waiting_for_hub");
        assert_eq!(
            before["bootstrap"]["bootstrapped_at"],
            serde_json::Value::Null
        );
        assert!(before["oldest_pending_age_s"]
            .as_i64()
            .is_some_and(|a| a >= 0));
        assert!(before["disk_budget_used"]
            .as_f64()
            .is_some_and(|u| u > 0.0 && u < 1.0));

        // The hub's snapshot arrives (it already holds seq 1 and 2), then the pump
        // delivers seq 3 and the hub acknowledges it.
        agent
            .writer
            .write(|conn| {
                let snapshot = crate::bootstrap::Snapshot {
                    last_seq: 0,
                    last_hub_seq: 0,
                    as_of: "2026-11-26T09:00:00Z".into(),
                    stock: vec![],
                };
                crate::bootstrap::install(conn, &snapshot, "2026-11-26T09:00:01.000Z")?;
                ledger::mark_sent(conn, &[1, 2, 3], "2026-11-26T09:00:02.000Z")?;
                ledger::mark_acked(conn, 2, "2026-11-26T09:00:03.000Z")?;
                Ok::<_, crate::bootstrap::InstallError>(())
            })
            .await
            .unwrap();
        agent.bootstrap.set(crate::bootstrap::Phase::Done, None);
        let after = status(agent.clone()).await;
        assert_eq!(
            (
                &after["pending"],
                &after["sent"],
                &after["acked"],
                &after["hub_applied_seq"]
            ),
            (
                &serde_json::json!(0),
                &serde_json::json!(1),
                &serde_json::json!(2),
                &serde_json::json!(2)
            ),
            "{after}"
        );
        assert_eq!(after["oldest_pending_age_s"], serde_json::Value::Null);
        assert_eq!(after["last_delivery_at"], "2026-11-26T09:00:02.000Z");
        assert_eq!(after["last_ack_at"], "2026-11-26T09:00:03.000Z");
        assert_eq!(after["bootstrap"]["state"], "done");
        assert_eq!(
            after["bootstrap"]["bootstrapped_at"],
            "2026-11-26T09:00:01.000Z"
        );
        assert_eq!(after["bootstrap"]["snapshot"]["last_seq"], 0);
    }

    #[tokio::test]
    async fn a_local_token_guards_the_api_but_not_healthz() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), Some("till-secret"));
        let denied = local_request()
            .path("/v1/status")
            .reply(&routes(agent.clone()))
            .await;
        assert_eq!(denied.status(), 401);
        let allowed = local_request()
            .path("/v1/status")
            .header("authorization", "Bearer till-secret")
            .reply(&routes(agent.clone()))
            .await;
        assert_eq!(allowed.status(), 200);
        let health = local_request()
            .path("/healthz")
            .reply(&routes(agent.clone()))
            .await;
        assert_eq!(health.status(), 200);
    }

    fn request(json: serde_json::Value) -> Result<NewMovement, ApiError> {
        let req: MovementRequest =
            serde_json::from_value(json).map_err(|e| ApiError::bad_request(e.to_string()))?;
        req.into_new_movement(&StoreId::parse("S1").unwrap())
    }

    #[test]
    fn quantities_take_their_sign_from_the_kind() {
        let sale = request(serde_json::json!({"kind": "sale", "sku": "A", "qty": 2})).unwrap();
        assert_eq!(sale.quantity, Quantity::Delta(-2));
        let adj = request(
            serde_json::json!({"kind": "adjustment", "sku": "A", "qty": -3, "reason": "theft"}),
        )
        .unwrap();
        assert_eq!(adj.quantity, Quantity::Delta(-3));
        let count =
            request(serde_json::json!({"kind": "count", "sku": "A", "counted": 0})).unwrap();
        assert_eq!(count.quantity, Quantity::Counted(0));
    }

    /// Found by fuzz/agent_requests: `i64::MIN.abs()` overflowed (a panic in a debug
    /// build, an accepted delta of −2^63 in a release one).
    #[test]
    fn an_adjustment_of_i64_min_is_refused_not_a_panic() {
        for qty in [i64::MIN, i64::MIN + 1, -MAX_QUANTITY - 1, i64::MAX] {
            let err = request(
                serde_json::json!({"kind": "adjustment", "sku": "A", "qty": qty, "reason": "theft"}),
            )
            .unwrap_err();
            assert_eq!(err.status, 422, "{qty}");
            assert!(err.message.contains("within"), "{qty}: {}", err.message);
        }
        let edge = request(
            serde_json::json!({"kind": "adjustment", "sku": "A", "qty": -MAX_QUANTITY, "reason": "theft"}),
        )
        .unwrap();
        assert_eq!(edge.quantity, Quantity::Delta(-MAX_QUANTITY));
    }

    #[test]
    fn every_bad_request_is_refused_with_a_reason() {
        let cases = [
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": -2}),
                "positive",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": 0}),
                "positive",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A"}),
                "needs `qty`",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A B", "qty": 1}),
                "sku",
            ),
            (
                serde_json::json!({"kind": "steal", "sku": "A", "qty": 1}),
                "not one of",
            ),
            (
                serde_json::json!({"kind": "adjustment", "sku": "A", "qty": 1}),
                "reason",
            ),
            (
                serde_json::json!({"kind": "adjustment", "sku": "A", "qty": 0, "reason": "theft"}),
                "non-zero",
            ),
            (
                serde_json::json!({"kind": "adjustment", "sku": "A", "qty": 1, "reason": "fun"}),
                "not one of",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": 1, "reason": "theft"}),
                "no reason",
            ),
            (
                serde_json::json!({"kind": "count", "sku": "A", "qty": 1}),
                "counted",
            ),
            (
                serde_json::json!({"kind": "count", "sku": "A", "counted": -1}),
                "between",
            ),
            (
                serde_json::json!({"kind": "transfer_out", "sku": "A", "qty": 1}),
                "to_store",
            ),
            (
                serde_json::json!({"kind": "transfer_out", "sku": "A", "qty": 1, "to_store": "S1"}),
                "another store",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": 1, "to_store": "S2"}),
                "no other store",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": 1, "ref": "x".repeat(200)}),
                "ref",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": MAX_QUANTITY + 1}),
                "positive",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": 1, "colour": "red"}),
                "unknown field",
            ),
            (
                serde_json::json!({"kind": "sale", "sku": "A", "qty": 1.5}),
                "invalid type",
            ),
        ];
        for (body, expected) in cases {
            let err = request(body.clone()).unwrap_err();
            assert!(
                err.message.contains(expected),
                "{body}: {:?} should mention {expected:?}",
                err.message
            );
        }
    }

    /// A request exactly as given: method, path, headers and body, nothing added.
    async fn raw(
        agent: &Arc<Agent>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, serde_json::Value) {
        let mut request = warp::test::request().method(method).path(path).body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.reply(&routes(agent.clone())).await;
        (
            response.status().as_u16(),
            serde_json::from_slice(response.body()).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn a_wrong_method_is_a_405_naming_the_one_the_path_takes() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        let cases = [
            ("GET", "/v1/movements", "POST"),
            ("DELETE", "/v1/movements", "POST"),
            ("PUT", "/v1/stock/A", "GET"),
            ("POST", "/v1/stock", "GET"),
            ("PATCH", "/v1/status", "GET"),
            ("DELETE", "/v1/parked", "GET"),
            ("POST", "/v1/transfers/expected", "GET"),
            ("POST", "/healthz", "GET"),
        ];
        for (method, path, allow) in cases {
            let mut request = local_request().method(method).path(path);
            if method == "POST" || method == "PUT" || method == "PATCH" {
                request = request
                    .header("content-type", "application/json")
                    .body("{}");
            }
            let response = request.reply(&routes(agent.clone())).await;
            let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(
                (
                    response.status().as_u16(),
                    response.headers().get("allow").map(|v| v.to_str().unwrap())
                ),
                (405, Some(allow)),
                "{method} {path}: {body}"
            );
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{method} {path}: {body}"
            );
        }
        // Unknown paths stay 404 whatever the method; a right method is never a 405.
        for (method, path) in [
            ("DELETE", "/v1/nothing"),
            ("GET", "/v1/stock/A/extra"),
            ("GET", "/v1/status"),
        ] {
            let status = local_request()
                .method(method)
                .path(path)
                .reply(&routes(agent.clone()))
                .await
                .status();
            assert_ne!(status.as_u16(), 405, "{method} {path}");
        }
        assert_eq!(pending(&agent).await, 0, "nothing was recorded");
    }

    #[tokio::test]
    async fn movements_past_the_wire_bounds_get_422_and_nothing_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        let (status, _) = post(
            &agent,
            None,
            r#"{"kind":"receipt","sku":"A","qty":1000000000000}"#,
        )
        .await;
        assert_eq!(status, 201, "exactly MAX_QUANTITY is fine");
        let (status, error) = post(&agent, None, r#"{"kind":"receipt","sku":"A","qty":1}"#).await;
        assert_eq!(status, 422, "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("on-hand")
                && message.contains("1000000000001")
                && message.contains("nothing was recorded"),
            "{message}"
        );
        // From -MAX_QUANTITY, a count of 1 would move MAX_QUANTITY + 1 units.
        let (status, _) = post(
            &agent,
            None,
            r#"{"kind":"sale","sku":"B","qty":1000000000000}"#,
        )
        .await;
        assert_eq!(status, 201);
        let (status, error) = post(&agent, None, r#"{"kind":"count","sku":"B","counted":1}"#).await;
        assert_eq!(status, 422, "{error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("1000000000001") && message.contains("count"),
            "{message}"
        );
        let (status, _) = post(&agent, None, r#"{"kind":"sale","sku":"B","qty":1}"#).await;
        assert_eq!(
            status, 422,
            "the on-hand may not go below -MAX_QUANTITY either"
        );
        let (status, _) = post(&agent, None, r#"{"kind":"count","sku":"A","counted":0}"#).await;
        assert_eq!(status, 201, "a count within the bounds is recorded");
        assert_eq!(
            pending(&agent).await,
            3,
            "the refused ones recorded nothing"
        );
        let stock = |sku: &'static str| {
            let agent = agent.clone();
            async move {
                let conn = ledger::open(&agent.config.database_path()).unwrap();
                ledger::stock_of(&conn, &Sku::parse(sku).unwrap())
                    .unwrap()
                    .unwrap()
                    .on_hand
            }
        };
        assert_eq!((stock("A").await, stock("B").await), (0, -MAX_QUANTITY));
        // Every accepted row goes on the wire.
        let conn = ledger::open(&agent.config.database_path()).unwrap();
        for row in ledger::pending_batch(&conn, 10).unwrap() {
            row.envelope(&agent.config.store)
                .to_signed_bytes(&agent.config.key)
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_till_can_never_post_a_void() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        let (status, error) = post(&agent, None, r#"{"kind":"void","sku":"A","qty":1}"#).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (422, Some("invalid")),
            "{error}"
        );
        assert_eq!(pending(&agent).await, 0);
    }

    #[tokio::test]
    async fn a_hostile_web_page_records_nothing_and_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path(), None);
        let sale = r#"{"kind":"sale","sku":"A","qty":5}"#;
        let host = ("host", "127.0.0.1:7171");
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
        let cases: &[Case<'_>] = &[
            // fetch(url, {method: "POST", mode: "no-cors", body: JSON.stringify(sale)})
            (
                "POST",
                "/v1/movements",
                vec![
                    host,
                    ("content-type", "text/plain;charset=UTF-8"),
                    ("origin", "https://evil.example"),
                ],
                sale,
                403,
            ),
            // The same from a page whose origin is opaque (sandboxed iframe, file:).
            (
                "POST",
                "/v1/movements",
                vec![
                    host,
                    ("content-type", "text/plain;charset=UTF-8"),
                    ("origin", "null"),
                ],
                sale,
                403,
            ),
            // A plain HTML form, and one with no Origin (an old browser): the body type alone refuses it.
            (
                "POST",
                "/v1/movements",
                vec![
                    host,
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("origin", "https://evil.example"),
                ],
                "kind=sale&sku=A&qty=5",
                403,
            ),
            (
                "POST",
                "/v1/movements",
                vec![host, ("content-type", "application/x-www-form-urlencoded")],
                sale,
                415,
            ),
            (
                "POST",
                "/v1/movements",
                vec![host, ("content-type", "text/plain")],
                sale,
                415,
            ),
            (
                "POST",
                "/v1/movements",
                vec![host, ("content-type", "multipart/form-data; boundary=x")],
                sale,
                415,
            ),
            ("POST", "/v1/movements", vec![host], sale, 415),
            // DNS rebinding: evil.example now resolves to 127.0.0.1; same-origin to the page.
            (
                "POST",
                "/v1/movements",
                vec![
                    ("host", "evil.example:7171"),
                    ("content-type", "application/json"),
                    ("origin", "http://evil.example:7171"),
                ],
                sale,
                421,
            ),
            (
                "GET",
                "/v1/status",
                vec![("host", "evil.example:7171")],
                "",
                421,
            ),
            ("GET", "/v1/stock", vec![("host", "evil.example")], "", 421),
            (
                "GET",
                "/v1/stock/A",
                vec![
                    ("host", "evil.example:7171"),
                    ("origin", "http://evil.example:7171"),
                ],
                "",
                421,
            ),
            (
                "GET",
                "/v1/alerts",
                vec![("host", "127.0.0.1.evil.example:7171")],
                "",
                421,
            ),
            (
                "GET",
                "/healthz",
                vec![("host", "evil.example:7171")],
                "",
                421,
            ),
            ("GET", "/v1/status", vec![], "", 421),
            // A cross-site read with the right Host (the browser would hide the answer,
            // but the request is refused outright).
            (
                "GET",
                "/v1/status",
                vec![host, ("origin", "https://evil.example")],
                "",
                403,
            ),
            (
                "GET",
                "/v1/status",
                vec![host, ("origin", "http://127.0.0.1:7172")],
                "",
                403,
            ),
        ];
        for (method, path, headers, body, expected) in cases {
            let (status, error) = raw(&agent, method, path, headers, body).await;
            assert_eq!(status, *expected, "{method} {path} {headers:?}: {error}");
            assert!(
                error["error"]["code"].is_string()
                    && error["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                "{method} {path} {headers:?}: a JSON error, got {error}"
            );
        }
        assert_eq!(pending(&agent).await, 0, "nothing was recorded");
        // The agent's own origins and JSON with parameters still work.
        for (host, origin) in [
            ("127.0.0.1:7171", Some("http://127.0.0.1:7171")),
            ("localhost:7171", Some("http://localhost:7171")),
            ("[::1]:7171", None),
            ("LOCALHOST:7171", None),
            ("127.0.0.1", None),
        ] {
            let mut headers = vec![
                ("host", host),
                ("content-type", "application/json; charset=utf-8"),
            ];
            if let Some(o) = origin {
                headers.push(("origin", o));
            }
            let (status, reply) = raw(
                &agent,
                "POST",
                "/v1/movements",
                &headers,
                r#"{"kind":"receipt","sku":"A","qty":1}"#,
            )
            .await;
            assert_eq!(status, 201, "{host} {origin:?}: {reply}");
        }
        assert_eq!(pending(&agent).await, 5);
    }

    #[test]
    fn a_listener_on_every_interface_answers_any_host_but_only_its_own_origin() {
        let any: std::net::SocketAddr = "0.0.0.0:7171".parse().unwrap();
        let post = warp::http::Method::POST;
        let json = Some("application/json");
        assert!(check_local(any, &post, Some("till-pc.store.local:7171"), None, json).is_ok());
        assert!(check_local(
            any,
            &post,
            Some("10.1.2.3:7171"),
            Some("http://10.1.2.3:7171"),
            json
        )
        .is_ok());
        assert_eq!(
            check_local(
                any,
                &post,
                Some("10.1.2.3:7171"),
                Some("https://evil.example"),
                json
            )
            .unwrap_err()
            .status,
            StatusCode::FORBIDDEN
        );
        let lan: std::net::SocketAddr = "10.1.2.3:7171".parse().unwrap();
        assert!(check_local(lan, &post, Some("10.1.2.3:7171"), None, json).is_ok());
        assert_eq!(
            check_local(lan, &post, Some("evil.example:7171"), None, json)
                .unwrap_err()
                .status,
            StatusCode::MISDIRECTED_REQUEST
        );
    }

    #[test]
    fn the_local_token_is_compared_whole() {
        assert!(same_secret("till-secret", "till-secret"));
        assert!(!same_secret("till-secre", "till-secret"));
        assert!(!same_secret("till-secreT", "till-secret"));
        assert!(!same_secret("", "till-secret"));
    }
}
