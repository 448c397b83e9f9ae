//! Hub-origin movements: HQ's receipts, adjustments, counts and transfers for a store,
//! applied at the hub at once and sent to the store through the outbox (DESIGN §4, §5).
//!
//! Invariants:
//! - One MySQL transaction does everything: the store's hub_seq counter (and the receiving
//!   store's, for a transfer) locked in ascending store order — ingest's lock order — then
//!   the stock row, the ledger row (origin `hub`, seq = hub_seq), the stock change, the
//!   signed outbox row(s), the audit row and the idempotency row. A failure anywhere
//!   leaves nothing behind, and the hub_seq is returned to the counter.
//! - A count's delta is `counted − on_hand` at the hub, with `hub_watermark` = the hub's
//!   own last hub_seq: the hub has seen every hub-origin delta, so nothing is unseen.
//! - The request is fully validated (the envelope included) before anything is written.
//! - An `Idempotency-Key` is scoped to the store; a retry with the same request returns
//!   the original reply, another request under the same key is refused.

use std::net::SocketAddr;

use bazaar_shared::envelope::MAX_QUANTITY;
use bazaar_shared::http::ApiError;
use bazaar_shared::{Envelope, Kind, Origin, Reason, Sku, StoreId};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, MySqlPool, Row};

use crate::outbox::{Counter, OutboxError};

pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The body of `POST /v1/stores/{store}/movements`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MovementRequest {
    /// receipt, adjustment, count, transfer_out or transfer_in.
    #[schemars(extend("enum" = ["receipt", "adjustment", "count", "transfer_out", "transfer_in"]))]
    pub kind: String,
    #[schemars(pattern(crate::openapi::IDENTIFIER_PATTERN))]
    pub sku: String,
    /// Units, positive (the kind gives the sign); an adjustment's signed delta, not 0.
    #[schemars(range(min = -bazaar_shared::envelope::MAX_QUANTITY, max = bazaar_shared::envelope::MAX_QUANTITY))]
    pub qty: Option<i64>,
    /// A count's figure (≥ 0) instead of `qty`: the delta is counted − the hub's on-hand.
    #[schemars(range(min = 0, max = bazaar_shared::envelope::MAX_QUANTITY))]
    pub counted: Option<i64>,
    /// An adjustment's reason: damage, theft, expiry or correction.
    #[schemars(extend("enum" = ["damage", "theft", "expiry", "correction", null]))]
    pub reason: Option<String>,
    #[serde(rename = "ref")]
    #[schemars(length(max = 128))]
    pub reference: Option<String>,
    /// A transfer_out's receiving store (registered here): it gets an expected-transfer notice.
    #[schemars(pattern(crate::openapi::IDENTIFIER_PATTERN))]
    pub to_store: Option<String>,
    /// A transfer_in's sending store.
    #[schemars(pattern(crate::openapi::IDENTIFIER_PATTERN))]
    pub from_store: Option<String>,
}

/// A hub-origin movement as the hub applied it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HubMovement {
    pub store: String,
    /// Always `hub`.
    pub origin: String,
    /// The store's hub_seq: this movement's place in what the store follows.
    pub hub_seq: u64,
    pub id: String,
    pub kind: String,
    pub sku: String,
    pub delta: i64,
    pub counted: Option<i64>,
    pub hub_watermark: u64,
    pub reason: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub to_store: Option<String>,
    pub from_store: Option<String>,
    pub occurred_at: String,
}

/// The store's figure after the movement.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StockAfter {
    pub on_hand: i64,
    pub version: i64,
}

/// The expected-transfer notice a transfer_out sent to its receiving store.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NoticeSent {
    pub store: String,
    pub hub_seq: u64,
}

/// `202` of `POST /v1/stores/{store}/movements` (the same on an idempotent retry).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MovementReply {
    pub movement: HubMovement,
    pub stock: StockAfter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_transfer_notice: Option<NoticeSent>,
}

/// `200` of the seed's `POST /update-stock/{store_id}/{product_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SeedUpdateReply {
    pub store_id: String,
    pub product_id: String,
    /// On-hand now.
    pub quantity: i64,
    pub movement: HubMovement,
}

/// A request checked and ready to apply: everything but the numbers only the locked
/// transaction knows (hub_seq, and a count's delta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub kind: Kind,
    pub sku: Sku,
    pub quantity: Quantity,
    pub reason: Option<Reason>,
    pub reference: Option<String>,
    pub to_store: Option<StoreId>,
    pub from_store: Option<StoreId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Delta(i64),
    Counted(i64),
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable(message)
}

/// Checks a request against DESIGN §4 without touching the database.
pub fn plan(store: &StoreId, request: &MovementRequest) -> Result<Planned, ApiError> {
    let kind = Kind::parse(&request.kind).ok_or_else(|| {
        invalid(format!(
            "kind {:?} is not one of receipt, adjustment, count, transfer_out, transfer_in",
            request.kind
        ))
    })?;
    if matches!(kind, Kind::Sale | Kind::Return) {
        return Err(invalid(format!(
            "a {} is recorded by the store's till, not at the hub",
            kind.as_str()
        )));
    }
    let sku = Sku::parse(request.sku.clone()).map_err(|e| invalid(format!("sku: {e}")))?;
    let quantity = match (kind, request.qty, request.counted) {
        (Kind::Count, None, Some(c)) if (0..=MAX_QUANTITY).contains(&c) => Quantity::Counted(c),
        (Kind::Count, None, Some(c)) => {
            return Err(invalid(format!(
                "counted {c} must be between 0 and {MAX_QUANTITY}"
            )))
        }
        (Kind::Count, _, _) => {
            return Err(invalid("a count sends `counted` (and no `qty`)"));
        }
        (_, _, Some(_)) => {
            return Err(invalid(format!(
                "a {} sends `qty`, not `counted`",
                kind.as_str()
            )))
        }
        (_, None, None) => return Err(invalid(format!("a {} needs `qty`", kind.as_str()))),
        (Kind::Adjustment, Some(q), None)
            if q != 0 && q.unsigned_abs() <= MAX_QUANTITY.unsigned_abs() =>
        {
            Quantity::Delta(q)
        }
        (Kind::Adjustment, Some(q), None) => {
            return Err(invalid(format!(
            "an adjustment's qty is its signed delta: non-zero and within ±{MAX_QUANTITY}, not {q}"
        )))
        }
        (_, Some(q), None) if (1..=MAX_QUANTITY).contains(&q) => {
            Quantity::Delta(kind.sign_of_quantity().unwrap_or(1) * q)
        }
        (_, Some(q), None) => {
            return Err(invalid(format!(
                "qty {q} must be a positive number of units (at most {MAX_QUANTITY})"
            )))
        }
    };
    let reason = match (&request.reason, kind) {
        (Some(raw), Kind::Adjustment) => Some(Reason::parse(raw).ok_or_else(|| {
            invalid(format!(
                "reason {raw:?} is not one of damage, theft, expiry, correction"
            ))
        })?),
        (None, Kind::Adjustment) => {
            return Err(invalid(
                "an adjustment needs a reason: damage, theft, expiry or correction",
            ))
        }
        (Some(_), _) => {
            return Err(invalid(format!(
                "a {} does not carry a reason",
                kind.as_str()
            )))
        }
        (None, _) => None,
    };
    let other = |raw: &Option<String>, field: &str| -> Result<Option<StoreId>, ApiError> {
        raw.as_ref()
            .map(|s| StoreId::parse(s.clone()).map_err(|e| invalid(format!("{field}: {e}"))))
            .transpose()
    };
    let to_store = other(&request.to_store, "to_store")?;
    let from_store = other(&request.from_store, "from_store")?;
    let planned = Planned {
        kind,
        sku,
        quantity,
        reason,
        reference: request.reference.clone(),
        to_store,
        from_store,
    };
    // Everything a single message is held to (transfers' other store, ref bounds):
    // checked on a stand-in envelope so that the rules live in one place.
    envelope(store, &planned, 1, 0, 0)
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(planned)
}

fn envelope(
    store: &StoreId,
    planned: &Planned,
    hub_seq: u64,
    on_hand: i64,
    watermark: u64,
) -> Envelope {
    let (delta, counted) = match planned.quantity {
        Quantity::Delta(d) => (d, None),
        Quantity::Counted(c) => (bazaar_shared::envelope::count_delta(c, on_hand), Some(c)),
    };
    let mut e = Envelope::movement(
        store.clone(),
        Origin::Hub,
        hub_seq,
        planned.kind,
        planned.sku.clone(),
        delta,
    );
    e.counted = counted;
    e.hub_watermark = watermark;
    e.reason = planned.reason;
    e.reference = planned.reference.clone();
    e.to_store = planned.to_store.clone();
    e.from_store = planned.from_store.clone();
    e
}

/// Who asked, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub action: &'a str,
    pub from: Option<SocketAddr>,
}

/// The reply of an applied (or replayed) hub-origin movement.
#[derive(Debug, Clone)]
pub struct Applied {
    pub body: Value,
    pub replayed: bool,
}

/// The hash an `Idempotency-Key` is bound to: the route and the request, canonically.
pub fn request_hash(route: &str, request: &Value) -> String {
    let canonical =
        bazaar_shared::canonical::canonical_bytes(&json!({"route": route, "request": request}))
            .unwrap_or_else(|_| request.to_string().into_bytes());
    hex::encode(Sha256::digest(canonical))
}

/// Applies `planned` at `store` in one transaction (see the module's invariants).
pub async fn apply(
    pool: &MySqlPool,
    store: &StoreId,
    planned: &Planned,
    idempotency: Option<(&str, &str)>,
    actor: &Actor<'_>,
) -> Result<Applied, ApiError> {
    let mut attempt = 0;
    loop {
        let mut tx = crate::db::begin_read_committed(pool)
            .await
            .map_err(|e| ApiError::internal("could not start a transaction", e))?;
        match apply_in(&mut tx, store, planned, idempotency, actor).await {
            Ok(applied) => match tx.commit().await {
                Ok(()) => return Ok(applied),
                Err(e) if crate::ingest::is_transient(&e) && attempt < RETRIES => {}
                Err(e) => return Err(ApiError::internal("could not commit the movement", e)),
            },
            Err(Failure::Retry(_)) if attempt < RETRIES => {
                let _ = tx.rollback().await;
            }
            Err(Failure::Retry(e)) => {
                return Err(ApiError::internal("could not apply the movement", e))
            }
            Err(Failure::Refused(e)) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        }
        attempt += 1;
        tracing::info!(attempt, %store, "lock conflict; retrying the hub-origin movement");
        crate::db::conflict_backoff(attempt).await;
    }
}

/// Deadlocks, lock waits and lost connections are tried again inside the hub (with a
/// jittered backoff) before a client ever sees a failure.
const RETRIES: u32 = crate::db::CONFLICT_RETRIES;

enum Failure {
    Refused(ApiError),
    Retry(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if crate::ingest::is_transient(&e) {
            Failure::Retry(e)
        } else {
            Failure::Refused(ApiError::internal("could not apply the movement", e))
        }
    }
}

impl From<OutboxError> for Failure {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::UnknownStore(s) => {
                Failure::Refused(ApiError::not_found(format!("store {s} is not registered")))
            }
            OutboxError::Invalid { detail, .. } => Failure::Refused(invalid(detail)),
            OutboxError::Database(e) => e.into(),
            other => Failure::Refused(ApiError::internal("could not write the outbox", other)),
        }
    }
}

async fn apply_in(
    conn: &mut MySqlConnection,
    store: &StoreId,
    planned: &Planned,
    idempotency: Option<(&str, &str)>,
    actor: &Actor<'_>,
) -> Result<Applied, Failure> {
    let mut stores = vec![store.clone()];
    if let (Kind::TransferOut, Some(to)) = (planned.kind, &planned.to_store) {
        stores.push(to.clone());
    }
    let mut counters = match Counter::lock_many(conn, &stores).await {
        Ok(c) => c,
        Err(OutboxError::UnknownStore(s)) if s != store.as_str() => {
            return Err(Failure::Refused(invalid(format!(
                "to_store {s} is not registered at this hub"
            ))))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some((key, hash)) = idempotency {
        let previous = sqlx::query(
            "SELECT request_hash, CAST(response AS CHAR) AS response FROM hub_idempotency WHERE store = ? AND idem_key = ?",
        )
        .bind(store.as_str())
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = previous {
            let stored_hash: String = row.try_get("request_hash")?;
            if stored_hash != hash {
                return Err(Failure::Refused(invalid(
                    "this Idempotency-Key was used with another request",
                )));
            }
            let response: String = row.try_get("response")?;
            let body = serde_json::from_str(&response)
                .map_err(|e| Failure::Refused(ApiError::internal("stored reply is damaged", e)))?;
            return Ok(Applied {
                body,
                replayed: true,
            });
        }
    }
    let index = |counters: &[Counter], s: &StoreId| counters.iter().position(|c| c.store() == s);
    let Some(own) = index(&counters, store) else {
        return Err(Failure::Refused(ApiError::not_found(format!(
            "store {store} is not registered"
        ))));
    };
    let before =
        sqlx::query("SELECT on_hand, version FROM stock WHERE store = ? AND sku = ? FOR UPDATE")
            .bind(store.as_str())
            .bind(planned.sku.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| {
                Ok::<_, sqlx::Error>((
                    r.try_get::<i64, _>("on_hand")?,
                    r.try_get::<i64, _>("version")?,
                ))
            })
            .transpose()?;
    let (on_hand, version) = before.unwrap_or((0, 0));
    let counter = &mut counters[own];
    let e = envelope(
        store,
        planned,
        counter.next_seq(),
        on_hand,
        counter.last_seq(),
    );
    e.validate()
        .map_err(|err| Failure::Refused(invalid(err.to_string())))?;
    let bound = bazaar_shared::envelope::MAX_QUANTITY;
    match on_hand.checked_add(e.delta) {
        Some(after) if after.abs() <= bound => {}
        _ => {
            return Err(Failure::Refused(invalid(format!(
                "{} at {store} would go from {on_hand} to past ±{bound}, the bound of an on-hand figure",
                e.sku
            ))))
        }
    }
    counter.push_movement(conn, &e).await?;
    let now = Utc::now();
    sqlx::query(
        "INSERT INTO movements (store, origin, seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, to_store, from_store, occurred_at, received_at)
         VALUES (?, 'hub', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(store.as_str())
    .bind(e.seq)
    .bind(e.id.to_string())
    .bind(e.kind.as_str())
    .bind(e.sku.as_str())
    .bind(e.delta)
    .bind(e.counted)
    .bind(e.hub_watermark)
    .bind(e.reason.map(|r| r.as_str()))
    .bind(e.reference.as_deref())
    .bind(e.to_store.as_ref().map(|s| s.as_str()))
    .bind(e.from_store.as_ref().map(|s| s.as_str()))
    .bind(e.occurred_at)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO stock (store, sku, on_hand, version, updated_at) VALUES (?, ?, ?, 1, ?)
         ON DUPLICATE KEY UPDATE on_hand = on_hand + VALUES(on_hand), version = version + 1, updated_at = VALUES(updated_at)",
    )
    .bind(store.as_str())
    .bind(e.sku.as_str())
    .bind(e.delta)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    // Hub-origin kinds are never sales or returns, so daily_sales does not move.
    let mut notice_seq = None;
    if let (Kind::TransferOut, Some(to)) = (e.kind, &e.to_store) {
        if let Some(i) = index(&counters, to) {
            notice_seq = Some(
                counters[i]
                    .push_command(conn, crate::outbox::expected_transfer(&e))
                    .await?,
            );
        }
    }
    let reply = MovementReply {
        movement: HubMovement {
            store: store.to_string(),
            origin: Origin::Hub.as_str().into(),
            hub_seq: e.seq,
            id: e.id.to_string(),
            kind: e.kind.as_str().into(),
            sku: e.sku.to_string(),
            delta: e.delta,
            counted: e.counted,
            hub_watermark: e.hub_watermark,
            reason: e.reason.map(|r| r.as_str().into()),
            reference: e.reference.clone(),
            to_store: e.to_store.as_ref().map(|s| s.to_string()),
            from_store: e.from_store.as_ref().map(|s| s.to_string()),
            occurred_at: e
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        },
        stock: StockAfter {
            on_hand: on_hand + e.delta,
            version: version + 1,
        },
        expected_transfer_notice: notice_seq.zip(e.to_store.as_ref()).map(|(hub_seq, to)| {
            NoticeSent {
                store: to.to_string(),
                hub_seq,
            }
        }),
    };
    let body = serde_json::to_value(&reply)
        .map_err(|err| Failure::Refused(ApiError::internal("could not encode the reply", err)))?;
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target, before_json, after_json, at, from_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(actor.name)
    .bind(actor.action)
    .bind(format!("{store}/{}", e.sku))
    .bind(json!({"on_hand": on_hand, "version": version}).to_string())
    .bind(body.to_string())
    .bind(now)
    .bind(actor.from.map(|a| a.ip().to_string()))
    .execute(&mut *conn)
    .await?;
    if let Some((key, hash)) = idempotency {
        sqlx::query(
            "INSERT INTO hub_idempotency (store, idem_key, request_hash, hub_seq, response, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(store.as_str())
        .bind(key)
        .bind(hash)
        .bind(e.seq)
        .bind(body.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Applied {
        body,
        replayed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str) -> MovementRequest {
        MovementRequest {
            kind: kind.into(),
            sku: "A".into(),
            qty: Some(5),
            counted: None,
            reason: None,
            reference: None,
            to_store: None,
            from_store: None,
        }
    }

    fn s1() -> StoreId {
        StoreId::parse("S1").unwrap()
    }

    #[test]
    fn quantities_take_their_kind_s_sign() {
        assert_eq!(
            plan(&s1(), &request("receipt")).unwrap().quantity,
            Quantity::Delta(5)
        );
        let out = MovementRequest {
            to_store: Some("S2".into()),
            ..request("transfer_out")
        };
        assert_eq!(plan(&s1(), &out).unwrap().quantity, Quantity::Delta(-5));
        let adj = MovementRequest {
            qty: Some(-3),
            reason: Some("damage".into()),
            ..request("adjustment")
        };
        assert_eq!(plan(&s1(), &adj).unwrap().quantity, Quantity::Delta(-3));
        let count = MovementRequest {
            qty: None,
            counted: Some(0),
            ..request("count")
        };
        assert_eq!(plan(&s1(), &count).unwrap().quantity, Quantity::Counted(0));
    }

    /// Found by fuzz/hub_bodies: `i64::MIN.abs()` overflowed (a panic in a debug build, an
    /// accepted delta of −2^63 in a release one).
    #[test]
    fn an_adjustment_of_i64_min_is_refused_not_a_panic() {
        for qty in [i64::MIN, i64::MIN + 1, -MAX_QUANTITY - 1, i64::MAX] {
            let adj = MovementRequest {
                qty: Some(qty),
                reason: Some("damage".into()),
                ..request("adjustment")
            };
            let err = plan(&s1(), &adj).unwrap_err();
            assert_eq!(err.status, 422, "{qty}");
            assert!(err.message.contains("within"), "{qty}: {}", err.message);
        }
        let edge = MovementRequest {
            qty: Some(-MAX_QUANTITY),
            reason: Some("damage".into()),
            ..request("adjustment")
        };
        assert_eq!(
            plan(&s1(), &edge).unwrap().quantity,
            Quantity::Delta(-MAX_QUANTITY)
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cases = [
            (request("sale"), "till"),
            (request("teleport"), "not one of"),
            (
                MovementRequest {
                    sku: "A B".into(),
                    ..request("receipt")
                },
                "sku",
            ),
            (
                MovementRequest {
                    qty: Some(0),
                    ..request("receipt")
                },
                "positive",
            ),
            (
                MovementRequest {
                    qty: Some(-2),
                    ..request("receipt")
                },
                "positive",
            ),
            (
                MovementRequest {
                    qty: None,
                    ..request("receipt")
                },
                "needs `qty`",
            ),
            (
                MovementRequest {
                    counted: Some(3),
                    ..request("receipt")
                },
                "not `counted`",
            ),
            (
                MovementRequest {
                    counted: Some(-1),
                    qty: None,
                    ..request("count")
                },
                "between 0",
            ),
            (request("count"), "sends `counted`"),
            (request("adjustment"), "needs a reason"),
            (
                MovementRequest {
                    reason: Some("lost".into()),
                    ..request("adjustment")
                },
                "not one of damage",
            ),
            (
                MovementRequest {
                    qty: Some(0),
                    reason: Some("theft".into()),
                    ..request("adjustment")
                },
                "non-zero",
            ),
            (
                MovementRequest {
                    reason: Some("theft".into()),
                    ..request("receipt")
                },
                "does not carry a reason",
            ),
            (request("transfer_out"), "to_store"),
            (
                MovementRequest {
                    to_store: Some("S1".into()),
                    ..request("transfer_out")
                },
                "to_store",
            ),
            (
                MovementRequest {
                    to_store: Some("S 2".into()),
                    ..request("transfer_out")
                },
                "to_store",
            ),
            (request("transfer_in"), "from_store"),
            (
                MovementRequest {
                    to_store: Some("S2".into()),
                    ..request("receipt")
                },
                "names no other store",
            ),
            (
                MovementRequest {
                    reference: Some("x".repeat(200)),
                    ..request("receipt")
                },
                "longer than",
            ),
            (
                MovementRequest {
                    qty: Some(MAX_QUANTITY + 1),
                    ..request("receipt")
                },
                "at most",
            ),
        ];
        for (req, expected) in cases {
            let err = plan(&s1(), &req).unwrap_err();
            assert_eq!(err.status.as_u16(), 422);
            assert!(
                err.message.contains(expected),
                "{:?} should mention {expected:?}",
                err.message
            );
        }
    }

    #[test]
    fn a_count_is_a_delta_against_the_hub_s_on_hand() {
        let count = plan(
            &s1(),
            &MovementRequest {
                qty: None,
                counted: Some(4),
                ..request("count")
            },
        )
        .unwrap();
        let e = envelope(&s1(), &count, 8, 10, 7);
        assert_eq!(
            (e.delta, e.counted, e.hub_watermark, e.seq),
            (-6, Some(4), 7, 8)
        );
        e.validate().unwrap();
    }

    #[test]
    fn the_idempotency_hash_binds_route_and_request() {
        let a = request_hash("movements", &json!({"kind": "receipt", "qty": 5}));
        assert_eq!(
            a,
            request_hash("movements", &json!({"qty": 5, "kind": "receipt"}))
        );
        assert_ne!(
            a,
            request_hash("movements", &json!({"kind": "receipt", "qty": 6}))
        );
        assert_ne!(
            a,
            request_hash("update-stock", &json!({"kind": "receipt", "qty": 5}))
        );
    }
}
