//! Store snapshots for a re-installed or re-snapshotting agent (DESIGN §6):
//! `GET /v1/stores/{store}/snapshot[?cursor=&limit=]`, admin or the store's own token.
//!
//! The first page (no cursor) is served only once this hub's consumer group has consumed
//! the store's partition to its end; until then `503 catching_up` with `Retry-After`.
//! Later pages are pinned to the first page's (last_seq, last_hub_seq) by their cursor and
//! refused with `409 snapshot_moved` if the store moved on; see [`crate::snapshot`].

use std::sync::Arc;

use bazaar_shared::http::ApiError;
use bazaar_shared::StoreId;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{auth, with_hub, Principal};
use crate::openapi::{Access, Operation};
use crate::snapshot::{self, Cursor, PageOutcome, ProbeError};
use crate::startup::Hub;
use crate::stores;

/// Catching up is usually a matter of one ingest batch and one offset commit (500 ms).
const RETRY_CATCHING_UP_SECS: u64 = 1;
const RETRY_BROKER_SECS: u64 = 2;
/// How long a request waits for ingest to reach the end it saw before answering 503.
const CATCH_UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

pub fn routes(hub: Arc<Hub>) -> BoxedFilter<(Response,)> {
    snapshot_route(hub).boxed()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
    /// Skus per page, 1 to 20,000; 5,000 when absent.
    #[schemars(range(min = 1, max = 20_000))]
    pub limit: Option<u32>,
}

/// For `/openapi.json` (see [`crate::openapi`]).
pub fn docs() -> Vec<Operation> {
    vec![Operation::get("/v1/stores/{store}/snapshot", "storeSnapshot", "A store's stock and positions, for a (re-)installed agent")
        .describe("One consistent view (REPEATABLE READ) of the store's stock with the last store-origin seq and hub_seq it contains. The first page is served only once this hub's consumer group has consumed the store's partition of the movements topic to its end (as of the request); pages after it carry the first page's positions in their cursor, and are refused if the store has moved on since.")
        .tag("stores")
        .access(Access::AdminOrOwnStore)
        .path_param("store", "The store's id")
        .query::<SnapshotQuery>()
        .json::<snapshot::Snapshot>(200, "One page, by sku")
        .error(404, "The store is not registered")
        .error(409, "`snapshot_moved`: the store moved on since the cursor's first page (start again without a cursor); `held_movements`: the hub holds movements behind a gap, which an operator must resolve")
        .error(422, "A bad store id, cursor or limit")
        .error(503, "`catching_up`: ingest has not yet consumed the store's partition to its end; `broker_unavailable`: the broker did not answer")
        .with_header("Retry-After", "Seconds to wait before asking again")]
}

fn snapshot_route(hub: Arc<Hub>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "stores" / String / "snapshot")
        .and(warp::get())
        .and(auth(hub.clone()))
        .and(warp::query::<SnapshotQuery>())
        .and(with_hub(hub))
        .and_then(
            |raw: String, who: Principal, query: SnapshotQuery, hub: Arc<Hub>| async move {
                serve(&hub, raw, &who, query).await.map_err(Rejection::from)
            },
        )
}

fn unavailable(code: &'static str, message: String, retry_after: u64) -> ApiError {
    let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
    error.retry_after_secs = Some(retry_after);
    error
}

async fn serve(
    hub: &Hub,
    raw_store: String,
    who: &Principal,
    query: SnapshotQuery,
) -> Result<Response, ApiError> {
    let store = StoreId::parse(raw_store).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    who.may_act_on(&store)?;
    let cursor = query
        .cursor
        .as_deref()
        .map(|raw| {
            Cursor::parse(raw).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "cursor {raw:?} is not one this hub handed out; start again without a cursor"
                ))
            })
        })
        .transpose()?;
    let limit = match query.limit {
        None => snapshot::DEFAULT_PAGE,
        Some(l) if (1..=snapshot::MAX_PAGE).contains(&l) => l,
        Some(l) => {
            return Err(ApiError::unprocessable(format!(
                "limit {l} must be between 1 and {}",
                snapshot::MAX_PAGE
            )))
        }
    };
    if cursor.is_none() {
        if !stores::exists(&hub.pool, &store)
            .await
            .map_err(|e| ApiError::internal("could not read stores", e))?
        {
            return Err(ApiError::not_found(format!(
                "store {store} is not registered"
            )));
        }
        // Later pages are pinned to the first page's positions, so one check suffices.
        match snapshot::wait_consumed(&hub.consumed, &store, CATCH_UP_PATIENCE).await {
            Ok(None) => {}
            Ok(Some(progress)) => {
                return Err(unavailable(
                    "catching_up",
                    format!(
                        "this hub has not yet consumed {} partition {} to its end ({} messages to go); retry shortly",
                        progress.topic,
                        progress.partition,
                        progress.behind()
                    ),
                    RETRY_CATCHING_UP_SECS,
                ))
            }
            Err(e @ ProbeError::NoTopic(_)) => {
                return Err(unavailable("catching_up", e.to_string(), RETRY_BROKER_SECS))
            }
            Err(e @ ProbeError::Broker(_)) => {
                // Every waiting agent asks every few seconds: the broker outage itself is
                // logged by ingest, so this stays quiet.
                tracing::debug!(error = %e, %store, "cannot tell whether ingest has caught up");
                return Err(unavailable(
                    "broker_unavailable",
                    format!("cannot tell whether this hub has caught up with the store's movements: {e}"),
                    RETRY_BROKER_SECS,
                ));
            }
        }
    }
    // The primary, never a replica: see `crate::snapshot`.
    let outcome = snapshot::read_page(&hub.pool, &store, cursor.as_ref(), limit)
        .await
        .map_err(|e| ApiError::internal("could not read the snapshot", e))?;
    match outcome {
        PageOutcome::Page(page) => Ok(warp::reply::json(&page).into_response()),
        PageOutcome::NotRegistered => {
            Err(ApiError::not_found(format!("store {store} is not registered")))
        }
        PageOutcome::Moved { now } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "snapshot_moved",
            format!(
                "store {store} moved on to last_seq {}, last_hub_seq {} since the first page; start again without a cursor",
                now.last_seq, now.last_hub_seq
            ),
        )),
        PageOutcome::Held { count, positions } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "held_movements",
            format!(
                "the hub holds {count} movements of store {store} waiting for seq {} to arrive; \
                 a new agent cannot continue the store's numbering until an operator resolves them",
                positions.last_seq + 1
            ),
        )),
    }
}
