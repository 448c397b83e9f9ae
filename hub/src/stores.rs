//! Stores: registration (token and signing key shown once), credentials and the cache of
//! whom a token belongs to ([`TokenCache`]), sync state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// How long [`TokenCache`] remembers whom a token belongs to (or that it is unknown). A
/// token rotated through this hub stops working here at once; through another hub (or
/// `bazaar-hub` on the command line) it keeps working here for at most this long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// At most this many tokens are remembered; past it the oldest are forgotten first.
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;

type TokenKey = [u8; 32];

/// Whom each recently seen token belongs to, so that every request of a store does not
/// cost a MySQL lookup. Keyed by the token's SHA-256 (the token itself is not kept).
///
/// Invariants: an entry is used for at most its TTL after the lookup that filled it; at
/// most `capacity` entries are held; [`TokenCache::forget_store`] drops every entry of a
/// store, and a lookup that was in flight while it ran does not put its (possibly stale)
/// answer back.
pub struct TokenCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<TokenEntries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct TokenEntries {
    by_token: HashMap<TokenKey, (Option<StoreId>, Instant)>,
    /// Insertion order, for expiry and eviction; an element whose instant is not its
    /// entry's any more is stale and skipped.
    order: VecDeque<(TokenKey, Instant)>,
    /// Bumped by `forget_store`: a lookup that began under an older generation does not
    /// fill the cache.
    generation: u64,
}

impl TokenEntries {
    fn pop_oldest(&mut self) {
        while let Some((key, at)) = self.order.pop_front() {
            if self.by_token.get(&key).is_some_and(|(_, t)| *t == at) {
                self.by_token.remove(&key);
                return;
            }
        }
    }
}

impl TokenCache {
    pub fn new(ttl: Duration, capacity: usize) -> TokenCache {
        TokenCache {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, TokenEntries> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store `token` belongs to (`None`: no store's), from the cache when it answered
    /// within the TTL, else from MySQL.
    pub async fn store_for_token(
        &self,
        pool: &MySqlPool,
        token: &str,
    ) -> Result<Option<StoreId>, sqlx::Error> {
        let key: TokenKey = Sha256::digest(token.as_bytes()).into();
        let generation = {
            let entries = self.entries();
            if let Some((owner, at)) = entries.by_token.get(&key) {
                if at.elapsed() < self.ttl {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(owner.clone());
                }
            }
            entries.generation
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let owner = store_for_token(pool, token).await?;
        self.put(key, owner.clone(), generation);
        Ok(owner)
    }

    fn put(&self, key: TokenKey, owner: Option<StoreId>, generation: u64) {
        let mut entries = self.entries();
        if entries.generation != generation {
            return;
        }
        let now = Instant::now();
        // The front is the oldest: drop what has expired, then make room.
        while let Some((front, at)) = entries.order.front().copied() {
            if at.elapsed() < self.ttl {
                break;
            }
            entries.order.pop_front();
            if entries.by_token.get(&front).is_some_and(|(_, t)| *t == at) {
                entries.by_token.remove(&front);
            }
        }
        while entries.by_token.len() >= self.capacity && !entries.by_token.contains_key(&key) {
            entries.pop_oldest();
        }
        entries.by_token.insert(key, (owner, now));
        entries.order.push_back((key, now));
        // Re-seen tokens leave stale elements behind; keep the queue within twice the map.
        if entries.order.len() > 2 * self.capacity {
            let TokenEntries {
                by_token, order, ..
            } = &mut *entries;
            order.retain(|(k, at)| by_token.get(k).is_some_and(|(_, t)| t == at));
        }
    }

    /// Forgets every token of `store` (its token was rotated or revoked through this hub),
    /// and any answer being looked up right now.
    pub fn forget_store(&self, store: &StoreId) {
        let mut entries = self.entries();
        entries.generation += 1;
        entries
            .by_token
            .retain(|_, (owner, _)| owner.as_ref() != Some(store));
    }

    /// Tokens remembered now (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.entries().by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (answered from the cache, looked up in MySQL) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// The store a token belongs to, from MySQL (requests go through [`TokenCache`]).
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(n: u32) -> TokenKey {
        Sha256::digest(n.to_be_bytes()).into()
    }

    fn store(id: &str) -> Option<StoreId> {
        Some(StoreId::parse(id).unwrap())
    }

    fn cached(cache: &TokenCache, key: &TokenKey) -> Option<Option<StoreId>> {
        let entries = cache.entries();
        entries
            .by_token
            .get(key)
            .filter(|(_, at)| at.elapsed() < cache.ttl)
            .map(|(owner, _)| owner.clone())
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_forgets_the_oldest_first() {
        let cache = TokenCache::new(Duration::from_secs(60), 100);
        for n in 0..1_000 {
            cache.put(key(n), store("S1"), 0);
            assert!(cache.len() <= 100, "{} entries after {n}", cache.len());
        }
        assert_eq!(cache.len(), 100);
        assert!(cached(&cache, &key(0)).is_none(), "the oldest went first");
        assert_eq!(cached(&cache, &key(999)), Some(store("S1")));
        // Seeing the same tokens again and again keeps the queue bounded too.
        for round in 0..50 {
            for n in 900..1_000 {
                cache.put(key(n), store("S1"), 0);
            }
            assert!(cache.entries().order.len() <= 200, "round {round}");
        }
    }

    #[test]
    fn entries_expire_and_a_store_is_forgotten_at_once() {
        let cache = TokenCache::new(Duration::from_millis(50), 10);
        cache.put(key(1), store("S1"), 0);
        cache.put(key(2), store("S2"), 0);
        cache.put(key(3), None, 0);
        cache.forget_store(&StoreId::parse("S1").unwrap());
        assert_eq!(cached(&cache, &key(1)), None);
        assert_eq!(cached(&cache, &key(2)), Some(store("S2")));
        assert_eq!(
            cached(&cache, &key(3)),
            Some(None),
            "unknown tokens are remembered too"
        );
        // A lookup that began before the forget does not put its answer back.
        cache.put(key(1), store("S1"), 0);
        assert_eq!(cached(&cache, &key(1)), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(cached(&cache, &key(2)), None, "expired after the TTL");
        // An expired entry is swept when the next one comes in.
        cache.put(key(4), store("S4"), 1);
        assert_eq!(cache.len(), 1);
    }
}
