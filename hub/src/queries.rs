//! Read-side queries of the API: keyset pages over stores, a store's stock, the movement
//! ledger, the admin audit trail and parked events, plus chain-wide stock of one sku.
//!
//! Invariants:
//! - every list is ordered by a unique key and continues strictly after the last key it
//!   returned, never by OFFSET: a page boundary cannot skip or repeat a row that existed
//!   when the first page was read, whatever is inserted meanwhile;
//! - cursors are opaque to clients (base64url of the route's name and the last key), and
//!   one route refuses another route's cursor;
//! - each function takes the pool to read from, so the caller decides between replica and
//!   primary ([`crate::startup::Hub::reader`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlRow;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

/// One page of a list, and where the next one starts.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "PageOf{T}")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass it back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cursor is not one this route issued (pass back `next_cursor` unchanged)")]
pub struct BadCursor;

#[derive(Serialize, Deserialize)]
struct CursorDoc<R, K> {
    r: R,
    k: K,
}

/// The opaque cursor for `route` continuing after `key`.
pub fn encode_cursor<K: Serialize>(route: &str, key: &K) -> String {
    let doc = CursorDoc { r: route, k: key };
    // Serializing a tuple of strings, numbers and times cannot fail.
    let json = serde_json::to_vec(&doc).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

pub fn decode_cursor<K: DeserializeOwned>(route: &str, cursor: &str) -> Result<K, BadCursor> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| BadCursor)?;
    let doc: CursorDoc<String, K> = serde_json::from_slice(&bytes).map_err(|_| BadCursor)?;
    if doc.r == route {
        Ok(doc.k)
    } else {
        Err(BadCursor)
    }
}

/// Fetches `limit + 1` rows: the extra one only says whether another page exists.
fn paged<T, K: Serialize>(
    route: &str,
    mut rows: Vec<T>,
    limit: u32,
    key: impl Fn(&T) -> K,
) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|last| encode_cursor(route, &key(last)))
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

// --- stores -------------------------------------------------------------------------

/// A registered store and its sync health.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct StoreSummary {
    pub store: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the hub last received anything from the store.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The last store-origin seq applied, gapless.
    pub last_seq: u64,
    /// The last hub-origin seq the hub numbered for the store.
    pub last_hub_seq: u64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub last_applied_at: Option<DateTime<Utc>>,
    /// Messages waiting for a gap in seq to fill.
    pub held: i64,
    /// Parked messages not yet resolved.
    pub parked: i64,
}

pub const STORES_ROUTE: &str = "stores";

pub async fn stores_page(
    pool: &MySqlPool,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Result<Page<StoreSummary>, BadCursor>, sqlx::Error> {
    let after: Option<(String,)> = match cursor.map(|c| decode_cursor(STORES_ROUTE, c)) {
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT s.id, s.name, s.created_at, COALESCE(y.last_seen_at, s.last_seen_at) AS last_seen_at,
                y.last_seq, y.last_hub_seq, y.last_event_at, y.last_applied_at,
                (SELECT COUNT(*) FROM held_events h WHERE h.store = s.id) AS held,
                (SELECT COUNT(*) FROM parked_events p WHERE p.store = s.id AND p.resolved_at IS NULL) AS parked
         FROM stores s JOIN store_sync y ON y.store = s.id",
    );
    if let Some((after,)) = &after {
        q.push(" WHERE s.id > ").push_bind(after);
    }
    q.push(" ORDER BY s.id LIMIT ").push_bind(limit + 1);
    let rows = q
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StoreSummary {
                store: r.try_get("id")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                last_seen_at: r.try_get("last_seen_at")?,
                last_seq: r.try_get("last_seq")?,
                last_hub_seq: r.try_get("last_hub_seq")?,
                last_event_at: r.try_get("last_event_at")?,
                last_applied_at: r.try_get("last_applied_at")?,
                held: r.try_get("held")?,
                parked: r.try_get("parked")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Ok(paged(STORES_ROUTE, rows, limit, |s| (s.store.clone(),))))
}

// --- stock --------------------------------------------------------------------------

pub const STOCK_ROUTE: &str = "stock";

/// One page of a store's stock figures, by sku. Only skus that ever moved at the store
/// have a figure.
pub async fn stock_page(
    pool: &MySqlPool,
    store: &str,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Result<Page<crate::stores::StockFigure>, BadCursor>, sqlx::Error> {
    let after: Option<(String,)> = match cursor.map(|c| decode_cursor(STOCK_ROUTE, c)) {
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT store, sku, on_hand, version, updated_at FROM stock WHERE store = ",
    );
    q.push_bind(store);
    if let Some((after,)) = &after {
        q.push(" AND sku > ").push_bind(after);
    }
    q.push(" ORDER BY sku LIMIT ").push_bind(limit + 1);
    let rows = q
        .build_query_as::<crate::stores::StockFigure>()
        .fetch_all(pool)
        .await?;
    Ok(Ok(paged(STOCK_ROUTE, rows, limit, |f| (f.sku.clone(),))))
}

/// One store's figure in a chain-wide view.
#[derive(Debug, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
pub struct StoreFigure {
    pub store: String,
    pub on_hand: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// One sku across the chain.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProductStock {
    pub sku: String,
    /// The sum of `on_hand` over `stores`.
    pub total: i64,
    /// Every store where the sku ever moved, by store id; a store absent here stands at 0.
    pub stores: Vec<StoreFigure>,
}

/// `None` when the sku is unknown: no product record and no movement anywhere.
pub async fn product_stock(
    pool: &MySqlPool,
    sku: &str,
) -> Result<Option<ProductStock>, sqlx::Error> {
    let stores = sqlx::query_as::<_, StoreFigure>(
        "SELECT store, on_hand, version, updated_at FROM stock WHERE sku = ? ORDER BY store",
    )
    .bind(sku)
    .fetch_all(pool)
    .await?;
    if stores.is_empty() {
        let product = sqlx::query("SELECT 1 FROM products WHERE sku = ?")
            .bind(sku)
            .fetch_optional(pool)
            .await?;
        if product.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(ProductStock {
        sku: sku.to_owned(),
        total: stores.iter().map(|s| s.on_hand).sum(),
        stores,
    }))
}

// --- movements ----------------------------------------------------------------------

/// One row of the immutable ledger.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Movement {
    pub store: String,
    /// `store` (numbered by the agent) or `hub` (hub-origin, numbered by the hub).
    #[schemars(extend("enum" = ["store", "hub"]))]
    pub origin: String,
    /// Gapless per (store, origin), from 1.
    pub seq: u64,
    /// The event's UUIDv7.
    pub id: String,
    #[schemars(extend("enum" = ["sale", "return", "receipt", "adjustment", "count", "transfer_out", "transfer_in"]))]
    pub kind: String,
    pub sku: String,
    /// The change to on-hand as applied at the hub (for a count: against the hub's view).
    pub delta: i64,
    /// What a count found.
    pub counted: Option<i64>,
    /// The last hub-origin seq the counting side had applied.
    pub hub_watermark: u64,
    /// An adjustment's reason: damage, theft, expiry, correction.
    pub reason: Option<String>,
    /// The till's or scanner's own reference.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub to_store: Option<String>,
    pub from_store: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// When the hub applied it: the order of `/v1/movements` and what `since` filters on.
    pub received_at: DateTime<Utc>,
}

impl Movement {
    /// The ledger's order: (received_at, store, origin, seq), unique. `origin` ranks as the
    /// ENUM does in MySQL (store = 1, hub = 2), not alphabetically.
    fn key(&self) -> MovementKey {
        (
            self.received_at,
            self.store.clone(),
            origin_rank(&self.origin),
            self.seq,
        )
    }
}

type MovementKey = (DateTime<Utc>, String, u8, u64);

fn origin_rank(origin: &str) -> u8 {
    match origin {
        "store" => 1,
        _ => 2,
    }
}

fn movement(r: &MySqlRow) -> Result<Movement, sqlx::Error> {
    Ok(Movement {
        store: r.try_get("store")?,
        origin: r.try_get("origin")?,
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        sku: r.try_get("sku")?,
        delta: r.try_get("delta")?,
        counted: r.try_get("counted")?,
        hub_watermark: r.try_get("hub_watermark")?,
        reason: r.try_get("reason")?,
        reference: r.try_get("ref")?,
        to_store: r.try_get("to_store")?,
        from_store: r.try_get("from_store")?,
        occurred_at: r.try_get("occurred_at")?,
        received_at: r.try_get("received_at")?,
    })
}

const MOVEMENT_COLUMNS: &str = "SELECT store, origin, seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, to_store, from_store, occurred_at, received_at FROM movements";

#[derive(Debug, Default, Clone)]
pub struct MovementFilter {
    pub store: Option<String>,
    pub sku: Option<String>,
    /// Received at the hub at or after this.
    pub since: Option<DateTime<Utc>>,
}

pub const MOVEMENTS_ROUTE: &str = "movements";

/// One page of the ledger in its order, filtered.
pub async fn movements_page(
    pool: &MySqlPool,
    filter: &MovementFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Result<Page<Movement>, BadCursor>, sqlx::Error> {
    let after: Option<MovementKey> = match cursor.map(|c| decode_cursor(MOVEMENTS_ROUTE, c)) {
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    let mut q = QueryBuilder::<MySql>::new(MOVEMENT_COLUMNS);
    q.push(" WHERE TRUE");
    if let Some(store) = &filter.store {
        q.push(" AND store = ").push_bind(store.clone());
    }
    if let Some(sku) = &filter.sku {
        q.push(" AND sku = ").push_bind(sku.clone());
    }
    if let Some(since) = filter.since {
        q.push(" AND received_at >= ").push_bind(since);
    }
    if let Some((at, store, origin, seq)) = after {
        // The leading `received_at >= t` lets the index range start at the cursor; the
        // rest is the strict tuple comparison, spelled out.
        q.push(" AND received_at >= ")
            .push_bind(at)
            .push(" AND (received_at > ")
            .push_bind(at)
            .push(" OR (received_at = ")
            .push_bind(at)
            .push(" AND (store > ")
            .push_bind(store.clone())
            .push(" OR (store = ")
            .push_bind(store)
            .push(" AND (origin + 0 > ")
            .push_bind(origin)
            .push(" OR (origin + 0 = ")
            .push_bind(origin)
            .push(" AND seq > ")
            .push_bind(seq)
            .push("))))))");
    }
    q.push(" ORDER BY received_at, store, origin, seq LIMIT ")
        .push_bind(limit + 1);
    let rows = q
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(movement)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ok(paged(MOVEMENTS_ROUTE, rows, limit, Movement::key)))
}

/// The most recent movements, newest first (the seed's `/audit-logs`).
pub async fn recent_movements(
    pool: &MySqlPool,
    store: Option<&str>,
    limit: u32,
) -> Result<Vec<Movement>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(MOVEMENT_COLUMNS);
    if let Some(store) = store {
        q.push(" WHERE store = ").push_bind(store.to_owned());
    }
    q.push(" ORDER BY received_at DESC, store DESC, origin DESC, seq DESC LIMIT ")
        .push_bind(limit);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(movement)
        .collect()
}

// --- audit --------------------------------------------------------------------------

/// One admin action.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Who: `admin`, or the principal that acted.
    pub actor: String,
    /// What, e.g. `store.register`.
    pub action: String,
    pub target: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub at: DateTime<Utc>,
    /// The client's address.
    pub from: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

pub const AUDIT_ROUTE: &str = "audit";

fn json_column(r: &MySqlRow, column: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
    // MariaDB's JSON is LONGTEXT with a binary collation: read the bytes, parse them here.
    let raw: Option<Vec<u8>> = r.try_get(column)?;
    raw.map(|bytes| {
        serde_json::from_slice(&bytes).map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
    })
    .transpose()
}

/// Newest first.
pub async fn audit_page(
    pool: &MySqlPool,
    filter: &AuditFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Result<Page<AuditEntry>, BadCursor>, sqlx::Error> {
    let before: Option<(i64,)> = match cursor.map(|c| decode_cursor(AUDIT_ROUTE, c)) {
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT id, actor, action, target, before_json, after_json, at, from_addr FROM audit_log WHERE TRUE",
    );
    if let Some(actor) = &filter.actor {
        q.push(" AND actor = ").push_bind(actor.clone());
    }
    if let Some(action) = &filter.action {
        q.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(since) = filter.since {
        q.push(" AND at >= ").push_bind(since);
    }
    if let Some((id,)) = before {
        q.push(" AND id < ").push_bind(id);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
    let rows = q
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get("id")?,
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                before: json_column(r, "before_json")?,
                after: json_column(r, "after_json")?,
                at: r.try_get("at")?,
                from: r.try_get("from_addr")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Ok(paged(AUDIT_ROUTE, rows, limit, |e| (e.id,))))
}

// --- parked -------------------------------------------------------------------------

/// A message that could not be applied, kept with where it came from.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ParkedEvent {
    pub id: i64,
    /// The store the message names, when it could be read.
    pub store: Option<String>,
    pub seq: Option<u64>,
    pub event_id: Option<String>,
    /// bad_signature, conflict, unknown_store, malformed, id_reused, too_far_ahead,
    /// apply_failed, unexpected_origin
    pub reason: String,
    pub detail: String,
    /// The hub consumed this message's seq with a void: the store's later movements were
    /// applied, this one is in neither figure (the agent parks its own copy).
    pub consumed: bool,
    /// The message's full length in bytes; `payload` keeps at most its first 4 KiB.
    pub payload_len: u64,
    /// SHA-256 of the whole message, hex.
    pub payload_sha256: Option<String>,
    /// The message as received (its first 4 KiB), when it is UTF-8 (it is JSON when well
    /// formed).
    pub payload: Option<String>,
    /// The message in standard base64 when it is not UTF-8.
    pub payload_base64: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub parked_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

pub const PARKED_ROUTE: &str = "parked";

/// Oldest first: the order they need looking at.
pub async fn parked_page(
    pool: &MySqlPool,
    store: Option<&str>,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Result<Page<ParkedEvent>, BadCursor>, sqlx::Error> {
    let after: Option<(i64,)> = match cursor.map(|c| decode_cursor(PARKED_ROUTE, c)) {
        Some(Err(e)) => return Ok(Err(e)),
        Some(Ok(key)) => Some(key),
        None => None,
    };
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT id, store, seq, event_id, reason, detail, consumed_seq, payload_len, payload_sha256, payload, topic, kafka_partition, kafka_offset, parked_at, resolved_at FROM parked_events WHERE TRUE",
    );
    if let Some(store) = store {
        q.push(" AND store = ").push_bind(store.to_owned());
    }
    if let Some((id,)) = after {
        q.push(" AND id > ").push_bind(id);
    }
    q.push(" ORDER BY id LIMIT ").push_bind(limit + 1);
    let rows = q
        .build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            let raw: Vec<u8> = r.try_get("payload")?;
            let (payload, payload_base64) = match String::from_utf8(raw) {
                Ok(text) => (Some(text), None),
                Err(e) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
                ),
            };
            Ok(ParkedEvent {
                id: r.try_get("id")?,
                store: r.try_get("store")?,
                seq: r.try_get("seq")?,
                event_id: r.try_get("event_id")?,
                reason: r.try_get("reason")?,
                detail: r.try_get("detail")?,
                consumed: r.try_get("consumed_seq")?,
                payload_len: r.try_get("payload_len")?,
                payload_sha256: r.try_get("payload_sha256")?,
                payload,
                payload_base64,
                topic: r.try_get("topic")?,
                partition: r.try_get("kafka_partition")?,
                offset: r.try_get("kafka_offset")?,
                parked_at: r.try_get("parked_at")?,
                resolved_at: r.try_get("resolved_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Ok(paged(PARKED_ROUTE, rows, limit, |p| (p.id,))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_belong_to_their_route() {
        let at: DateTime<Utc> = "2026-11-26T10:00:00.123456Z".parse().unwrap();
        let key: MovementKey = (at, "S1".into(), 2, 17);
        let cursor = encode_cursor(MOVEMENTS_ROUTE, &key);
        assert!(cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(
            decode_cursor::<MovementKey>(MOVEMENTS_ROUTE, &cursor),
            Ok(key)
        );
        assert_eq!(
            decode_cursor::<(i64,)>(AUDIT_ROUTE, &cursor),
            Err(BadCursor)
        );
        assert_eq!(
            decode_cursor::<(i64,)>(AUDIT_ROUTE, "not base64!"),
            Err(BadCursor)
        );
        let wrong_shape = encode_cursor(AUDIT_ROUTE, &("x",));
        assert_eq!(
            decode_cursor::<(i64,)>(AUDIT_ROUTE, &wrong_shape),
            Err(BadCursor)
        );
    }

    #[test]
    fn a_page_says_whether_another_follows() {
        let page = paged("t", vec![1, 2, 3], 2, |n| (*n,));
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(
            decode_cursor::<(i32,)>("t", page.next_cursor.as_deref().unwrap()),
            Ok((2,))
        );
        let last = paged("t", vec![1, 2], 2, |n| (*n,));
        assert_eq!((last.items.len(), last.next_cursor), (2, None));
    }

    #[test]
    fn the_documented_kinds_are_the_wire_formats() {
        let schema = schemars::generate::SchemaSettings::openapi3()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<Movement>();
        let documented: Vec<String> =
            serde_json::from_value(schema.as_value()["properties"]["kind"]["enum"].clone())
                .unwrap();
        let wire: Vec<String> = bazaar_shared::Kind::ALL
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(documented, wire);
    }

    #[test]
    fn origins_rank_as_the_enum_does() {
        assert!(origin_rank("store") < origin_rank("hub"));
    }
}
