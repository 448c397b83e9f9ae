//! The hub's one link to Redis, shared by the stock cache and the rate limiter.
//!
//! Redis is an accelerator, never a dependency: every caller gets `None` when Redis cannot
//! answer and falls back (stock reads go to MySQL, rate limits become per process). The link
//! is a small circuit breaker around a [`ConnectionManager`]:
//!
//! - the hub connects at startup; after that no request ever waits for a connection:
//!   while there is none, callers fall back at once and one background task reconnects,
//!   at most once every [`RETRY_EVERY`], so a dead (or black-holed) Redis costs a request
//!   nothing;
//! - every operation has a deadline ([`OP_TIMEOUT`]); an I/O error or a timeout drops the
//!   connection and opens the circuit;
//! - going down logs ONE warning; coming back logs one line at info;
//! - each (re)connection starts a new stock-cache generation (`INCR {prefix}stock:gen`)
//!   before the connection is handed to anyone. See [`crate::cache`] for why.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult};

/// Deadline of one Redis operation (a command, a script, a pipeline).
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the link stays shut after a failure before it tries to connect again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct RedisLink {
    client: redis::Client,
    prefix: String,
    manager: RwLock<Option<ConnectionManager>>,
    connecting: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
    /// Whether the last attempt worked; starts true so the first failure is logged.
    up: AtomicBool,
    failures: AtomicU64,
    generation: AtomicU64,
}

impl RedisLink {
    /// Parses the URL; connects on first use.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<RedisLink> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("BAZAAR_HUB_REDIS_URL is not a Redis URL ({e})"))?;
        Ok(RedisLink {
            client,
            prefix: prefix.to_owned(),
            manager: RwLock::new(None),
            connecting: AtomicBool::new(false),
            retry_at: Mutex::new(None),
            up: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        })
    }

    /// Every key this hub writes starts with this (`BAZAAR_HUB_REDIS_PREFIX`, `bazaar:`).
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Whether the link is connected right now (for `/metrics`).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
            && self
                .manager
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
    }

    /// Operations that found Redis unreachable, since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The stock-cache generation this process started at its last (re)connection.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Runs `op` on a connection, under [`OP_TIMEOUT`]. `None` when Redis is down (the
    /// caller falls back) or answered with an error. Never waits for a connection: while
    /// there is none, a reconnection runs in the background and this returns `None` at once.
    pub async fn run<T, F, Fut>(self: &Arc<Self>, what: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(connection) = self.current() else {
            self.reconnect_in_background();
            return None;
        };
        match tokio::time::timeout(OP_TIMEOUT, op(connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) if is_answer(&e) => {
                // Redis is there but refused the command: a bug of ours, not an outage.
                tracing::error!(error = %e, what, "Redis refused a command");
                None
            }
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed(&format!("no answer within {OP_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Connects now and waits for the outcome (at startup); true when connected.
    pub async fn connect(&self) -> bool {
        if self.current().is_some() {
            return true;
        }
        match tokio::time::timeout(OP_TIMEOUT * 2, self.establish()).await {
            Ok(Ok((manager, generation))) => {
                *self.manager.write().unwrap_or_else(PoisonError::into_inner) = Some(manager);
                *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
                self.generation.store(generation, Ordering::Relaxed);
                if self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        generation,
                        "Redis connected; stock cache generation {generation}"
                    );
                } else {
                    tracing::info!(generation, "Redis is reachable again: cache and shared rate limits resume, on a new cache generation");
                }
                true
            }
            Ok(Err(e)) => {
                self.failed(&e);
                false
            }
            Err(_) => {
                self.failed(&"connecting took too long");
                false
            }
        }
    }

    /// At most one attempt at a time, and none before `retry_at`.
    fn reconnect_in_background(self: &Arc<Self>) {
        if self
            .retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| Instant::now() < at)
        {
            return;
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            link.connect().await;
            link.connecting.store(false, Ordering::Release);
        });
    }

    fn current(&self) -> Option<ConnectionManager> {
        self.manager
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn establish(&self) -> RedisResult<(ConnectionManager, u64)> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(OP_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT);
        let mut manager = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        // A new generation before anyone reads or writes through this connection: entries
        // written before it may have missed refreshes while we could not reach Redis.
        let generation: u64 = redis::cmd("INCR")
            .arg(self.key(crate::cache::GENERATION_KEY))
            .query_async(&mut manager)
            .await?;
        Ok((manager, generation))
    }

    fn failed(&self, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.manager.write().unwrap_or_else(PoisonError::into_inner) = None;
        *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + RETRY_EVERY);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis is unreachable: stock reads go to MySQL and rate limits are kept per process until it is back (logged once per outage)");
        } else {
            tracing::debug!(%error, "Redis still unreachable");
        }
    }
}

/// An error Redis itself answered with (the connection is fine).
fn is_answer(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ResponseError
            | ErrorKind::TypeError
            | ErrorKind::NoScriptError
            | ErrorKind::ExtensionError
            | ErrorKind::ExecAbortError
    )
}
