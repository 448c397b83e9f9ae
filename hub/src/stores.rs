//! Stores: registration (token and signing key shown once), credentials, sync state.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bazaar_shared::{SigningKey, StoreId};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{MySqlPool, Row};

/// What registration hands out, once.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Credentials {
    pub store: String,
    pub token: String,
    pub key: String,
}

/// Store tokens are 256 random bits, so a plain SHA-256 is a safe way to keep them:
/// nothing to brute-force, and a lookup needs no per-row salt.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("store {0} is already registered")]
    Exists(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn register(
    pool: &MySqlPool,
    store: &StoreId,
    name: Option<&str>,
) -> Result<Credentials, RegisterError> {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("bzs_{}", URL_SAFE_NO_PAD.encode(raw));
    let key = SigningKey::generate().to_base64();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT IGNORE INTO stores (id, name, token_hash, signing_key, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(store.as_str())
    .bind(name)
    .bind(token_hash(&token))
    .bind(&key)
    .bind(Utc::now())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(RegisterError::Exists(store.to_string()));
    }
    sqlx::query("INSERT IGNORE INTO store_sync (store) VALUES (?)")
        .bind(store.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Credentials {
        store: store.to_string(),
        token,
        key,
    })
}

/// The store a token belongs to.
pub async fn store_for_token(
    pool: &MySqlPool,
    token: &str,
) -> Result<Option<StoreId>, sqlx::Error> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM stores WHERE token_hash = ?")
        .bind(token_hash(token))
        .fetch_optional(pool)
        .await?;
    Ok(id.and_then(|id| StoreId::parse(id).ok()))
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct SyncHealth {
    pub store: String,
    pub last_seq: u64,
    /// The id of the store-origin movement at `last_seq`; null when `last_seq` is 0. An
    /// agent checks it is its own (a restored or cloned data directory is not).
    pub last_id: Option<String>,
    pub last_hub_seq: u64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub last_applied_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Messages waiting for a gap to fill.
    pub held: i64,
    /// Parked messages not yet resolved.
    pub parked: i64,
}

pub async fn sync_health(
    pool: &MySqlPool,
    store: &StoreId,
) -> Result<Option<SyncHealth>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.id, y.last_seq,
                (SELECT m.id FROM movements m WHERE m.store = s.id AND m.origin = 'store' AND m.seq = y.last_seq) AS last_id,
                y.last_hub_seq, y.last_event_at, y.last_applied_at, COALESCE(y.last_seen_at, s.last_seen_at) AS last_seen_at,
                (SELECT count(*) FROM held_events h WHERE h.store = s.id) AS held,
                (SELECT count(*) FROM parked_events p WHERE p.store = s.id AND p.resolved_at IS NULL) AS parked
         FROM stores s JOIN store_sync y ON y.store = s.id WHERE s.id = ?",
    )
    .bind(store.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(SyncHealth {
            store: r.try_get("id")?,
            last_seq: r.try_get("last_seq")?,
            last_id: r.try_get("last_id")?,
            last_hub_seq: r.try_get("last_hub_seq")?,
            last_event_at: r.try_get("last_event_at")?,
            last_applied_at: r.try_get("last_applied_at")?,
            last_seen_at: r.try_get("last_seen_at")?,
            held: r.try_get("held")?,
            parked: r.try_get("parked")?,
        })
    })
    .transpose()
}

pub async fn exists(pool: &MySqlPool, store: &StoreId) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 FROM stores WHERE id = ?")
        .bind(store.as_str())
        .fetch_optional(pool)
        .await?
        .is_some())
}

#[derive(Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct StockFigure {
    pub store: String,
    pub sku: String,
    pub on_hand: i64,
    pub version: i64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A sku exists at the hub once it has a product record or a movement anywhere; a known
/// sku that never moved at this store stands at 0, version 0.
pub async fn stock_figure(
    pool: &MySqlPool,
    store: &StoreId,
    sku: &bazaar_shared::Sku,
) -> Result<Option<StockFigure>, sqlx::Error> {
    let figure = sqlx::query_as::<_, StockFigure>(
        "SELECT store, sku, on_hand, version, updated_at FROM stock WHERE store = ? AND sku = ?",
    )
    .bind(store.as_str())
    .bind(sku.as_str())
    .fetch_optional(pool)
    .await?;
    if figure.is_some() {
        return Ok(figure);
    }
    let known = sqlx::query(
        "SELECT 1 FROM products WHERE sku = ? UNION ALL SELECT 1 FROM stock WHERE sku = ? LIMIT 1",
    )
    .bind(sku.as_str())
    .bind(sku.as_str())
    .fetch_optional(pool)
    .await?
    .is_some();
    Ok(known.then(|| StockFigure {
        store: store.to_string(),
        sku: sku.to_string(),
        on_hand: 0,
        version: 0,
        updated_at: None,
    }))
}
