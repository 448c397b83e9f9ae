//! The stock cache in Redis (DESIGN §7): read-through, refreshed after every ingest commit,
//! never going backwards, and distrusted after an outage.
//!
//! **Layout.** One hash per (store, sku): `{prefix}stock:{store}:{sku}` with the fields
//! `on_hand`, `version`, `updated_at` (RFC 3339, empty when the sku never moved there) and
//! `gen`; it expires after `BAZAAR_HUB_STOCK_CACHE_TTL_SECS` (default one hour) unless
//! written again. `{prefix}` is `BAZAAR_HUB_REDIS_PREFIX`, `bazaar:` by default.
//!
//! **Never backwards.** Every write is the Lua script [`WRITE`]: it replaces the entry only
//! when the entry belongs to an older generation or holds a lower `version` than the one
//! written. MySQL's `stock.version` grows by one with every change, so two hub instances
//! refreshing the same key in either order leave the newer figure, and a cache fill that
//! read MySQL before a commit cannot overwrite the refresh that came after it.
//!
//! **Generations.** `{prefix}stock:gen` is a counter. An entry counts only when its `gen`
//! field equals the counter (the read script checks this atomically), so one `INCR`
//! invalidates every entry at once without scanning. A hub `INCR`s it each time it
//! (re)connects to Redis, before it uses the connection: after Redis was unreachable this hub
//! may have committed batches whose refresh failed, so the entries that are there cannot be
//! trusted. A starting hub does the same, since the process before it may have died in
//! such an outage. The cost is a cold cache after a hub starts or regains Redis; misses
//! refill it from MySQL.
//!
//! Writers also pass the generation they saw *before* reading MySQL, and the script drops
//! the write when the counter has moved since: a value read before another hub's outage
//! ended cannot slip into the new generation.
//!
//! **Fill and refresh.** A read that misses fills the entry from the primary; after each
//! ingest commit the hub re-reads every (store, sku) the batch touched — duplicates too —
//! and writes them, and only then stores the Kafka offsets ([`crate::ingest`]). Writers of
//! `stock` outside ingest must refresh the same way.
//!
//! When Redis is down, reads answer from MySQL and refreshes are skipped; the next
//! connection starts a new generation, so nothing skipped is ever served.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use sqlx::{MySql, MySqlPool, QueryBuilder};

use crate::redis_link::RedisLink;
use crate::stores::StockFigure;

/// The generation counter, under the prefix.
pub const GENERATION_KEY: &str = "stock:gen";

/// KEYS: entry, generation counter. Returns `{'1', version, on_hand, updated_at}` for an
/// entry of the current generation, else `{'0', generation}`.
const READ: &str = r"
local gen = redis.call('GET', KEYS[2]) or '0'
local v = redis.call('HMGET', KEYS[1], 'gen', 'version', 'on_hand', 'updated_at')
if v[1] == gen and v[2] and v[3] then
  return {'1', v[2], v[3], v[4] or ''}
end
return {'0', gen}
";

/// KEYS: entry, generation counter. ARGV: version, on_hand, updated_at, ttl in ms, the
/// generation the writer saw before it read MySQL. Returns 1 written, 0 not newer, -1 the
/// generation moved on.
const WRITE: &str = r"
local gen = redis.call('GET', KEYS[2]) or '0'
if ARGV[5] ~= gen then
  return -1
end
local cur = redis.call('HMGET', KEYS[1], 'gen', 'version')
if cur[1] == gen and cur[2] and tonumber(cur[2]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'gen', gen, 'version', ARGV[1], 'on_hand', ARGV[2], 'updated_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// What a cache read found.
#[derive(Debug)]
pub enum Lookup {
    Hit(StockFigure),
    /// Not cached (or an old generation); fill it with this generation.
    Miss {
        generation: String,
    },
    /// Redis is down or the cache is off.
    Unavailable,
}

/// The outcome of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored,
    /// The entry already holds this version or a newer one.
    NotNewer,
    /// The generation changed since the writer read MySQL.
    StaleGeneration,
    Unavailable,
}

#[derive(Clone)]
pub struct StockCache {
    link: Arc<RedisLink>,
    ttl: Duration,
    read: Arc<Script>,
    write: Arc<Script>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl StockCache {
    /// `ttl` zero turns the cache off (every read goes to MySQL).
    pub fn new(link: Arc<RedisLink>, ttl: Duration) -> StockCache {
        StockCache {
            link,
            ttl,
            read: Arc::new(Script::new(READ)),
            write: Arc::new(Script::new(WRITE)),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// (hits, misses) since start; a read while Redis is down counts as a miss.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn entry_key(&self, store: &str, sku: &str) -> String {
        self.link.key(&format!("stock:{store}:{sku}"))
    }

    pub async fn lookup(&self, store: &str, sku: &str) -> Lookup {
        let found = if self.enabled() {
            self.read_entry(store, sku).await
        } else {
            Lookup::Unavailable
        };
        match &found {
            Lookup::Hit(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            _ => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    async fn read_entry(&self, store: &str, sku: &str) -> Lookup {
        let key = self.entry_key(store, sku);
        let gen_key = self.link.key(GENERATION_KEY);
        let script = self.read.clone();
        let reply: Option<Vec<String>> = self
            .link
            .run("cache read", |mut c| async move {
                script.key(key).key(gen_key).invoke_async(&mut c).await
            })
            .await;
        match reply.as_deref() {
            Some([hit, version, on_hand, updated_at]) if hit == "1" => {
                match (version.parse(), on_hand.parse()) {
                    (Ok(version), Ok(on_hand)) => Lookup::Hit(StockFigure {
                        store: store.to_owned(),
                        sku: sku.to_owned(),
                        on_hand,
                        version,
                        updated_at: DateTime::parse_from_rfc3339(updated_at)
                            .ok()
                            .map(|t| t.with_timezone(&Utc)),
                    }),
                    _ => Lookup::Unavailable,
                }
            }
            Some([_, generation]) => Lookup::Miss {
                generation: generation.clone(),
            },
            _ => Lookup::Unavailable,
        }
    }

    /// The current generation, to be read before the MySQL read whose result is written.
    pub async fn generation(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let key = self.link.key(GENERATION_KEY);
        self.link
            .run("cache generation", |mut c| async move {
                let g: Option<String> = redis::cmd("GET").arg(key).query_async(&mut c).await?;
                Ok(g.unwrap_or_else(|| "0".into()))
            })
            .await
    }

    /// Writes one figure if it is newer than the cached one (compare-and-set).
    pub async fn store(&self, figure: &StockFigure, generation: &str) -> Written {
        self.store_many(std::slice::from_ref(figure), generation)
            .await
            .into_iter()
            .next()
            .unwrap_or(Written::Unavailable)
    }

    /// Writes many figures in one pipeline; one outcome per figure.
    pub async fn store_many(&self, figures: &[StockFigure], generation: &str) -> Vec<Written> {
        if figures.is_empty() || !self.enabled() {
            return vec![Written::Unavailable; figures.len()];
        }
        let mut pipe = redis::pipe();
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let gen_key = self.link.key(GENERATION_KEY);
        for f in figures {
            pipe.cmd("EVALSHA")
                .arg(self.write.get_hash())
                .arg(2)
                .arg(self.entry_key(&f.store, &f.sku))
                .arg(&gen_key)
                .arg(f.version)
                .arg(f.on_hand)
                .arg(f.updated_at.map(|t| t.to_rfc3339()).unwrap_or_default())
                .arg(ttl_ms)
                .arg(generation);
        }
        let script = self.write.clone();
        let replies: Option<Vec<i64>> = self
            .link
            .run("cache write", |mut c| async move {
                match pipe.query_async(&mut c).await {
                    Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                        // Redis restarted since the script was loaded.
                        script.prepare_invoke().load_async(&mut c).await?;
                        pipe.query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await;
        match replies {
            Some(replies) if replies.len() == figures.len() => replies
                .into_iter()
                .map(|r| match r {
                    1 => Written::Stored,
                    0 => Written::NotNewer,
                    _ => Written::StaleGeneration,
                })
                .collect(),
            _ => vec![Written::Unavailable; figures.len()],
        }
    }

    /// After an ingest commit: re-reads every touched (store, sku) from MySQL and writes
    /// what it read. Redis being down skips it (the next connection starts a new
    /// generation); a MySQL error starts a new generation at once, since the touched
    /// entries could not be refreshed.
    pub async fn refresh(&self, pool: &MySqlPool, touched: &BTreeSet<(String, String)>) {
        if touched.is_empty() || !self.enabled() {
            return;
        }
        let Some(generation) = self.generation().await else {
            return;
        };
        let keys: Vec<&(String, String)> = touched.iter().collect();
        for chunk in keys.chunks(crate::db::KEYS_PER_STATEMENT) {
            let figures = match read_figures(pool, chunk).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-read stock after a commit; starting a new cache generation");
                    self.new_generation().await;
                    return;
                }
            };
            let written = self.store_many(&figures, &generation).await;
            if written.contains(&Written::Unavailable) {
                return;
            }
        }
    }

    /// Invalidates every entry at once.
    pub async fn new_generation(&self) -> Option<u64> {
        let key = self.link.key(GENERATION_KEY);
        self.link
            .run("cache generation", |mut c| async move {
                redis::cmd("INCR").arg(key).query_async(&mut c).await
            })
            .await
    }
}

async fn read_figures(
    pool: &MySqlPool,
    keys: &[&(String, String)],
) -> Result<Vec<StockFigure>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT s.store, s.sku, s.on_hand, s.version, s.updated_at FROM ",
    );
    crate::db::push_keys_table(
        &mut q,
        "k",
        keys.iter()
            .map(|(store, sku)| (store.as_str(), sku.as_str())),
    );
    q.push(" JOIN stock s ON s.store = k.store AND s.sku = k.sku");
    q.build_query_as::<StockFigure>().fetch_all(pool).await
}
