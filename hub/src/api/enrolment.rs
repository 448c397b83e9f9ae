//! Enrolment routes (issue 11, see [`crate::enrolment`]):
//! `POST /v1/stores/{store}/enrolment` (admin) issues a one-time code, registering the
//! store when it is not; `POST /v1/enrol` (no token: the code is the credential) exchanges
//! it once for the store's token and signing key.

use std::net::SocketAddr;
use std::sync::Arc;

use bazaar_shared::http::{parse_json, ApiError};
use schemars::JsonSchema;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{auth, store_param, with_hub, Principal, MAX_BODY_BYTES};
use crate::enrolment::{self, IssueError, Issued, RedeemError};
use crate::openapi::{Access, Operation};
use crate::startup::Hub;
use crate::stores::Credentials;

pub fn routes(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    issue_route(hub.clone())
        .or(enrol_route(hub))
        .unify()
        .boxed()
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// How long the code stays valid, 1 to 744 hours; 24 when absent. An empty body is
    /// the same as `{}`.
    #[schemars(range(min = 1, max = 744))]
    pub valid_hours: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The store's id, as HQ gave it with the code.
    #[schemars(pattern(crate::openapi::IDENTIFIER_PATTERN))]
    pub store: String,
    /// The one-time code (`XXXXX-XXXXX-XXXXX-XXXXX`; case, dashes and spaces do not matter).
    pub code: String,
}

/// For `/openapi.json` (see [`crate::openapi`]).
pub fn docs() -> Vec<Operation> {
    vec![
        Operation::post("/v1/stores/{store}/enrolment", "issueEnrolment", "Issue a one-time enrolment code for a store")
            .describe("The store's server exchanges the code once, before it expires, for the store's token and signing key (`bazaar-agent enroll`, `POST /v1/enrol`). Registers the store when it is not registered yet. The code is shown this once; the hub keeps its hash. Audited (`enrolment.issue`).")
            .tag("stores")
            .access(Access::Admin)
            .path_param("store", "The store's id")
            .body::<IssueRequest>()
            .json::<Issued>(201, "The code and when it expires")
            .error(422, "Not a valid store id, or a validity outside 1 to 744 hours"),
        Operation::post("/v1/enrol", "enrol", "Exchange an enrolment code for the store's credentials")
            .describe("No token: the code is the credential, and it works once. Rotates the store's token (the hub keeps only hashes, so the one shown at registration cannot be shown again): an agent still running with the old token is refused from then on. Every use and refusal is audited (`enrolment.use`, `enrolment.refused`).")
            .tag("stores")
            .access(Access::Open)
            .body::<EnrolRequest>()
            .json::<Credentials>(200, "The store's new token and its signing key; keep them, they are not shown again")
            .error(404, "`not_found`: no such code for this store (check the store id and the code, or ask HQ for a new one)")
            .error(409, "`code_used`: the code was already used; ask HQ for a new one")
            .error(410, "`code_expired`: the code has expired; ask HQ for a new one")
            .error(422, "Not a valid store id"),
    ]
}

fn issue_route(hub: Arc<Hub>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "stores" / String / "enrolment")
        .and(warp::post())
        .and(auth(hub.clone()))
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(
            |raw: String,
             who: Principal,
             body: bytes::Bytes,
             from: Option<SocketAddr>,
             hub: Arc<Hub>| async move {
                who.admin()?;
                let store = store_param(raw)?;
                let request: IssueRequest = if body.iter().all(u8::is_ascii_whitespace) {
                    IssueRequest::default()
                } else {
                    parse_json(&body)?
                };
                let hours = request
                    .valid_hours
                    .unwrap_or(enrolment::DEFAULT_VALID_HOURS);
                match enrolment::issue(&hub.pool, &store, None, hours, "admin", from).await {
                    Ok(issued) => Ok(warp::reply::with_status(
                        warp::reply::json(&issued),
                        StatusCode::CREATED,
                    )
                    .into_response()),
                    Err(e @ IssueError::Validity(_)) => {
                        Err(Rejection::from(ApiError::unprocessable(e.to_string())))
                    }
                    Err(IssueError::Database(e)) => Err(Rejection::from(ApiError::internal(
                        "could not issue the enrolment code",
                        e,
                    ))),
                }
            },
        )
}

fn enrol_route(hub: Arc<Hub>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "enrol")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::bytes())
        .and(warp::addr::remote())
        .and(with_hub(hub))
        .and_then(
            |body: bytes::Bytes, from: Option<SocketAddr>, hub: Arc<Hub>| async move {
                let request: EnrolRequest = parse_json(&body)?;
                let store = store_param(request.store)?;
                match enrolment::redeem(&hub.pool, &store, &request.code, from).await {
                    Ok(credentials) => {
                        // The old token stops working here at once (elsewhere within
                        // stores::TOKEN_CACHE_TTL).
                        hub.tokens.forget_store(&store);
                        Ok(warp::reply::json(&credentials).into_response())
                    }
                    Err(e @ RedeemError::Unknown(_)) => {
                        Err(Rejection::from(ApiError::not_found(e.to_string())))
                    }
                    Err(e @ RedeemError::Used { .. }) => Err(Rejection::from(ApiError::new(
                        StatusCode::CONFLICT,
                        "code_used",
                        e.to_string(),
                    ))),
                    Err(e @ RedeemError::Expired { .. }) => Err(Rejection::from(ApiError::new(
                        StatusCode::GONE,
                        "code_expired",
                        e.to_string(),
                    ))),
                    Err(RedeemError::Database(e)) => Err(Rejection::from(ApiError::internal(
                        "could not exchange the enrolment code",
                        e,
                    ))),
                }
            },
        )
}
