//! Builds a running hub: one builder for `main` and the tests, given a bound listener and
//! a shutdown future.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bazaar_shared::kafka::ensure_topics_with;
use bazaar_shared::topics::DEFAULT_PARTITIONS;
use bazaar_shared::Topics;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::cache::StockCache;
use crate::config::HubConfig;
use crate::db;
use crate::ingest::{self, BatchOutcome};
use crate::metrics::HttpMetrics;
use crate::ratelimit::RateLimiter;
use crate::redis_link::RedisLink;
use crate::replica::ReadRouter;

pub struct Hub {
    pub config: HubConfig,
    /// The primary, for the API's writes and the intelligence jobs.
    pub pool: MySqlPool,
    /// The primary, for ingest alone: a burst of API traffic never starves it (and the
    /// reverse).
    pub ingest_pool: MySqlPool,
    /// The primary, for the outbox relay alone.
    pub relay_pool: MySqlPool,
    pub ingest: IngestCounters,
    pub redis: Arc<RedisLink>,
    pub cache: StockCache,
    pub get_stock_limit: RateLimiter,
    pub http_metrics: HttpMetrics,
    /// Chooses primary or replica for every read (`reader`, `wrote`).
    pub reads: ReadRouter,
    /// How far this hub's consumer group has read each store's partition (snapshots).
    pub consumed: Arc<crate::snapshot::ConsumedProbe>,
    /// Alerts: evaluation after changes, the stale-store check, the alerts-topic relay.
    pub alerting: Arc<crate::alerting::Alerting>,
    /// The forecast job's state in this hub (runs hold a Redis lease across hubs).
    pub forecasts: crate::forecast_job::ForecastJobs,
    /// The outbox relay's counters (`/metrics`).
    pub relay: Arc<crate::relay::RelayStats>,
    /// Whom recently seen store tokens belong to (`crate::stores::TOKEN_CACHE_TTL`).
    pub tokens: crate::stores::TokenCache,
}

impl Hub {
    /// The pool a read for `who` should use: the replica while it replicates within
    /// `BAZAAR_HUB_REPLICA_MAX_LAG_MS` and has applied `who`'s own writes, else the primary
    /// (DESIGN §7; see [`crate::replica`]). Call it for every read-only query; `None` for
    /// an anonymous read.
    pub async fn reader(&self, who: Option<&crate::api::Principal>) -> &MySqlPool {
        self.reads.pool_for(who).await
    }

    /// Records that `who` has just committed a write on the primary through this hub, so
    /// that its next reads, on any hub instance, see it. Call it after the commit.
    pub async fn wrote(&self, who: &crate::api::Principal) {
        self.reads.wrote(who).await
    }

    /// For `/readyz`: `None` without a replica; `Some(Ok)` while reads go to it;
    /// `Some(Err(why))` while they fall back to the primary (the hub still serves them).
    pub fn replica_ready(&self) -> Option<Result<(), String>> {
        self.reads.replica_ready()
    }
}

#[derive(Clone, Default)]
pub struct IngestCounters {
    inner: Arc<[AtomicU64; 4]>,
    /// Isolations, capped transfer notices, transient failures, rejoins.
    more: Arc<[AtomicU64; 4]>,
    /// The consumer loop is running (set by `consume`, cleared when it ends).
    pub running: Arc<std::sync::atomic::AtomicBool>,
    /// Unix milliseconds of the last batch applied (0: none yet).
    pub last_batch_ms: Arc<AtomicU64>,
    /// Unix milliseconds when this process started ingest (0: it does not run it), for
    /// `/readyz`.
    pub started_ms: Arc<AtomicU64>,
    lag: crate::metrics::IngestLag,
}

impl IngestCounters {
    pub fn record(&self, outcome: &BatchOutcome) {
        let add = |i: usize, n: usize| self.inner[i].fetch_add(n as u64, Ordering::Relaxed);
        add(0, outcome.applied);
        add(1, outcome.duplicates);
        add(2, outcome.held);
        add(3, outcome.parked);
        self.more[0].fetch_add(outcome.isolations as u64, Ordering::Relaxed);
        self.more[1].fetch_add(outcome.transfer_notices_capped, Ordering::Relaxed);
        self.last_batch_ms.store(
            chrono::Utc::now().timestamp_millis().max(0) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn transient_failure(&self) {
        self.more[2].fetch_add(1, Ordering::Relaxed);
    }

    /// The consumer left its group and joined again as a new member (stranded partitions).
    pub fn rejoined(&self) {
        self.more[3].fetch_add(1, Ordering::Relaxed);
    }

    /// (isolations, transfer notices capped, transient failures, rejoins) since start.
    pub fn more_totals(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.more[i].load(Ordering::Relaxed))
    }

    /// Ingest lag per partition, sampled by the consumer's statistics.
    pub fn lag(&self) -> &crate::metrics::IngestLag {
        &self.lag
    }

    /// (applied, duplicates, held, parked) since start.
    pub fn totals(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.inner[i].load(Ordering::Relaxed))
    }
}

pub async fn build(config: HubConfig) -> anyhow::Result<Arc<Hub>> {
    let pool = db::migrate(config.mysql_url.expose()).await?;
    let pool_size = 16;
    let pool = if pool.options().get_max_connections() < pool_size {
        pool.close().await;
        db::connect(config.mysql_url.expose(), pool_size).await?
    } else {
        pool
    };
    let ingest_pool = db::connect(config.mysql_url.expose(), 4).await?;
    let relay_pool = db::connect(config.mysql_url.expose(), 2).await?;
    let api_reads = db::connect_with_timeout(
        config.mysql_url.expose(),
        pool_size,
        Duration::from_millis(config.api_statement_timeout_ms),
    )
    .await?;
    let redis = Arc::new(RedisLink::new(&config.redis_url, &config.redis_prefix)?);
    let cache = StockCache::new(
        redis.clone(),
        Duration::from_secs(config.stock_cache_ttl_secs),
    );
    let get_stock_limit = RateLimiter::new("get-stock", config.rate_limit_get_stock, redis.clone());
    // Connect now (and start this process's cache generation); Redis being down is not
    // an error: the link warns once and keeps retrying in the background.
    redis.connect().await;
    let reads = ReadRouter::new(
        api_reads,
        config.mysql_replica_url.as_ref().map(|u| u.expose()),
        Duration::from_millis(config.replica_max_lag_ms),
        redis.clone(),
        Duration::from_millis(config.api_statement_timeout_ms),
    )?;
    let consumed = Arc::new(crate::snapshot::ConsumedProbe::new(
        &config.kafka_brokers,
        &config.kafka_properties,
        &config.kafka_group,
        &Topics::with_prefix(&config.topic_prefix).movements,
    ));
    let alerting = Arc::new(crate::alerting::Alerting::new(
        pool.clone(),
        &config.intelligence,
    ));
    let forecasts = crate::forecast_job::ForecastJobs::new(redis.clone(), &instance_name());
    Ok(Arc::new(Hub {
        alerting,
        forecasts,
        config,
        pool,
        ingest_pool,
        relay_pool,
        ingest: IngestCounters::default(),
        redis,
        cache,
        get_stock_limit,
        http_metrics: HttpMetrics::default(),
        reads,
        consumed,
        relay: Arc::default(),
        tokens: crate::stores::TokenCache::new(
            crate::stores::TOKEN_CACHE_TTL,
            crate::stores::TOKEN_CACHE_CAPACITY,
        ),
    }))
}

/// Serves the API on `listener` and consumes movements until `shutdown` resolves; then
/// stops taking new batches, finishes the one in hand and drains HTTP requests.
pub async fn run(
    config: HubConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let hub = build(config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer_task = tokio::spawn(supervise_ingest(hub.clone(), stop_rx.clone()));
    let intelligence_tasks = spawn_intelligence(&hub, &stop_rx);
    let relay_task = tokio::spawn(
        crate::relay::Relay::new(
            hub.relay_pool.clone(),
            hub.redis.clone(),
            &hub.config.kafka_brokers,
            &hub.config.kafka_properties,
            &hub.config.topic_prefix,
            &instance_name(),
            hub.relay.clone(),
        )
        .run(stop_rx.clone()),
    );
    let address = listener.local_addr()?;
    tracing::info!(%address, "hub listening");
    let mut server_stop = stop_rx.clone();
    let server = warp::serve(crate::api::routes(hub.clone()))
        .serve_incoming_with_graceful_shutdown(TcpListenerStream::new(listener), async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(server);
    shutdown.await;
    tracing::info!("shutting down: finishing the batch in hand and requests in flight");
    let _ = stop_tx.send(true);
    let _ = consumer_task.await;
    let _ = relay_task.await;
    for task in intelligence_tasks {
        let _ = task.await;
    }
    let _ = server.await;
    hub.pool.close().await;
    hub.ingest_pool.close().await;
    hub.relay_pool.close().await;
    Ok(())
}

/// `host/pid`: names this hub in leases and forecast runs.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".into());
    format!("{host}/{}", std::process::id())
}

/// The nightly forecast, the stale-store check and the alerts relay; each stops with `stop`.
fn spawn_intelligence(
    hub: &Arc<Hub>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::lease::Lease;
    let mut tasks = vec![tokio::spawn(crate::forecast_job::schedule(
        hub.clone(),
        stop.clone(),
    ))];
    let instance = instance_name();
    let stale_lease = Lease::new(
        hub.redis.clone(),
        "stale-check",
        &instance,
        Duration::from_secs(60),
    );
    tasks.push(tokio::spawn(hub.alerting.clone().run_stale_checks(
        stale_lease,
        Duration::from_secs(30),
        stop.clone(),
    )));
    let lease = Lease::new(
        hub.redis.clone(),
        "alerts-relay",
        &instance,
        Duration::from_secs(15),
    );
    let (brokers, properties) = (
        hub.config.kafka_brokers.clone(),
        hub.config.kafka_properties.clone(),
    );
    tasks.push(tokio::spawn(hub.alerting.clone().run_relay(
        move || crate::alerting::producer(&brokers, &properties),
        Topics::with_prefix(&hub.config.topic_prefix).alerts,
        lease,
        Duration::from_secs(1),
        stop.clone(),
    )));
    tasks
}

/// Runs ingest; a panic that escapes it (ingest isolates the panics of a batch's own data,
/// so this is a bug) ends the process non-zero, for its supervisor (systemd, Kubernetes)
/// to start it again, rather than leaving a hub that serves HTTP and applies nothing.
async fn supervise_ingest(hub: Arc<Hub>, stop: watch::Receiver<bool>) {
    hub.ingest.started_ms.store(
        chrono::Utc::now().timestamp_millis().max(1) as u64,
        Ordering::Relaxed,
    );
    let running = hub.ingest.running.clone();
    let task = tokio::spawn(consume(hub, stop));
    if let Err(e) = task.await {
        running.store(false, Ordering::Relaxed);
        if e.is_panic() {
            tracing::error!(error = %e, "ingest panicked; exiting so that the supervisor restarts the hub");
            std::process::exit(70);
        }
    }
    running.store(false, Ordering::Relaxed);
}

async fn consume(hub: Arc<Hub>, mut stop: watch::Receiver<bool>) {
    let topics = Topics::with_prefix(&hub.config.topic_prefix);
    let brokers = hub.config.kafka_brokers.clone();
    let mut wait = Duration::from_millis(200);
    loop {
        // Raced against the stop signal: with the broker down, topic creation can wait out
        // librdkafka's request timeout, and shutdown must not wait with it.
        let names = topics.all();
        let created = tokio::select! {
            created = ensure_topics_with(&brokers, &hub.config.kafka_properties, &names, DEFAULT_PARTITIONS, 1) => created,
            _ = stop.wait_for(|s| *s) => return,
        };
        match created {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "broker not ready; ingest waits"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    let source = ingest::Source {
        brokers: brokers.clone(),
        properties: hub.config.kafka_properties.clone(),
        group: hub.config.kafka_group.clone(),
        topic: topics.movements.clone(),
        lag: hub.ingest.lag().clone(),
    };
    let subscription = match source.subscribe() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, topic = %topics.movements, "cannot create the Kafka consumer or subscribe");
            return;
        }
    };
    tracing::info!(topic = %topics.movements, group = %hub.config.kafka_group,
        kafka_properties = %hub.config.kafka_properties.describe(), "ingest started");
    hub.ingest.running.store(true, Ordering::Relaxed);
    ingest::run(
        subscription,
        hub.ingest_pool.clone(),
        stop,
        hub.ingest.clone(),
        hub.cache.clone(),
        hub.alerting.clone(),
        hub.config.limits,
    )
    .await;
}
