//! Builds a running agent: one builder used by `main` and by tests, which hand it a bound
//! listener and a shutdown future (`run(config, listener, shutdown)`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bazaar_shared::http::ApiError;
use rusqlite::Connection;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::AgentConfig;
use crate::hub_client::HubClient;
use crate::ledger;
use crate::sync::{self, SyncStatus};
use crate::writer::Writer;

pub struct Agent {
    pub config: AgentConfig,
    pub writer: Writer,
    reader: Arc<Mutex<Connection>>,
    /// The sync pump's own read connection: an API caller reading a large status never
    /// makes the pump wait.
    pump_reader: Arc<Mutex<Connection>>,
    pub sync: SyncStatus,
    pub commands: crate::commands::CommandStats,
    pub bootstrap: crate::bootstrap::BootstrapState,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub store: String,
    pub online: bool,
    pub broker_online: bool,
    pub hub_online: bool,
    pub first_contact_done: bool,
    pub pending: u64,
    pub sent: u64,
    /// Acknowledged by the hub and still kept here (older rows are compacted).
    pub acked: u64,
    pub parked: u64,
    pub last_seq: u64,
    pub oldest_pending_age_s: Option<i64>,
    pub last_delivery_at: Option<String>,
    pub hub_applied_seq: u64,
    pub last_ack_at: Option<String>,
    pub disk_bytes: u64,
    pub disk_budget_bytes: u64,
    /// `disk_bytes` over `disk_budget_bytes`: past 1.0 the outbox is over its budget.
    pub disk_budget_used: f64,
    pub over_budget: bool,
    /// The last hub-origin movement applied (its hub_seq).
    pub hub_watermark: u64,
    /// Commands dropped because they did not verify with this store's key.
    pub commands_forged: u64,
    /// Kafka producers started since this run began (each failed delivery starts a fresh
    /// one; at most `MAX_PRODUCERS_PER_HOUR` an hour).
    pub producers_created: u64,
    pub open_alerts: u64,
    /// This data directory was found to be a restored older copy or a clone: nothing is
    /// sent until `bazaar-agent run --resnapshot` (tills are still served).
    pub sending_stopped: bool,
    /// What was found, when sending is stopped.
    pub diverged_copy: Option<String>,
    pub last_error: Option<String>,
    pub bootstrap: crate::bootstrap::BootstrapStatus,
}

impl Agent {
    pub fn open(config: AgentConfig) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let path = config.database_path();
        let writer =
            Writer::start(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let reader = ledger::open(&path)?;
        let pump_reader = ledger::open(&path)?;
        let store = config.store.to_string();
        let agent = Agent {
            config,
            writer,
            reader: Arc::new(Mutex::new(reader)),
            pump_reader: Arc::new(Mutex::new(pump_reader)),
            sync: SyncStatus::default(),
            commands: Default::default(),
            bootstrap: crate::bootstrap::BootstrapState::new(false),
        };
        let existing = agent.read_blocking(|c| ledger::get_meta(c, ledger::META_STORE))?;
        match existing {
            Some(s) if s != store => anyhow::bail!(
                "the database in {} belongs to store {s}, not {store}: use another --data directory",
                agent.config.data_dir.display()
            ),
            _ => {}
        }
        if agent.read_blocking(ledger::diverged)?.is_some() {
            agent.sync.diverged.store(true, Ordering::Relaxed);
        }
        if !agent.read_blocking(crate::bootstrap::needed)? {
            agent.bootstrap.set(crate::bootstrap::Phase::Done, None);
        }
        Ok(agent)
    }

    fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let conn = self
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }

    /// Runs a read on the API's read connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        Self::read_on(self.reader.clone(), f).await
    }

    /// Runs a read on the sync pump's own connection.
    pub async fn read_for_pump<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        Self::read_on(self.pump_reader.clone(), f).await
    }

    async fn read_on<T, F>(reader: Arc<Mutex<Connection>>, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| ApiError::internal("the read task failed", e))?
        .map_err(|e| ApiError::internal("could not read the local database", e))
    }

    pub async fn status(&self) -> Result<Status, ApiError> {
        let progress = self.bootstrap.get();
        let (
            counts,
            last_delivery_at,
            hub_applied,
            last_ack_at,
            open_alerts,
            watermark,
            forged,
            bootstrap,
            diverged,
        ) = self
            .read(move |c| {
                // One read transaction: every figure from the same snapshot, so pending and
                // sent never double-count a row the pump moved in between.
                let snapshot = c.unchecked_transaction()?;
                let c = &*snapshot;
                Ok((
                    ledger::outbox_counts(c)?,
                    ledger::get_meta(c, ledger::META_LAST_DELIVERY_AT)?,
                    ledger::get_meta(c, ledger::META_HUB_APPLIED_SEQ)?,
                    ledger::get_meta(c, ledger::META_LAST_ACK_AT)?,
                    crate::housekeeping::alerts(c, false, 1000)?,
                    ledger::get_meta(c, ledger::META_HUB_WATERMARK)?,
                    ledger::get_meta(c, crate::commands::META_FORGED)?,
                    crate::bootstrap::status(c, progress)?,
                    ledger::diverged(c)?,
                ))
            })
            .await?;
        let disk_bytes = crate::housekeeping::database_bytes(&self.config.database_path());
        let oldest_pending_age_s = counts.oldest_pending_at.as_deref().and_then(|t| {
            chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| {
                (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                    .num_seconds()
                    .max(0)
            })
        });
        let broker_online = self.sync.broker_online.load(Ordering::Relaxed);
        let hub_online = self.sync.hub_online.load(Ordering::Relaxed);
        Ok(Status {
            store: self.config.store.to_string(),
            online: broker_online && hub_online,
            broker_online,
            hub_online,
            first_contact_done: self.sync.first_contact_done.load(Ordering::Relaxed),
            pending: counts.pending,
            sent: counts.sent,
            acked: counts.acked,
            parked: counts.parked,
            last_seq: counts.last_seq,
            oldest_pending_age_s,
            last_delivery_at,
            hub_applied_seq: hub_applied.and_then(|v| v.parse().ok()).unwrap_or(0),
            last_ack_at,
            disk_bytes,
            disk_budget_bytes: self.config.disk_budget_bytes,
            disk_budget_used: disk_bytes as f64 / self.config.disk_budget_bytes.max(1) as f64,
            over_budget: open_alerts
                .iter()
                .any(|a| a.kind == crate::housekeeping::OVER_BUDGET),
            open_alerts: open_alerts.len() as u64,
            sending_stopped: diverged.is_some(),
            diverged_copy: diverged,
            hub_watermark: watermark.and_then(|v| v.parse().ok()).unwrap_or(0),
            commands_forged: forged.and_then(|v| v.parse().ok()).unwrap_or(0),
            producers_created: self.sync.producers_created.load(Ordering::Relaxed),
            last_error: self.sync.last_error.lock().ok().and_then(|e| e.clone()),
            bootstrap,
        })
    }
}

/// How `run` starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Download and install the store's snapshot before sending, even if this ledger has
    /// one already (`bazaar-agent run --resnapshot`).
    pub resnapshot: bool,
}

/// Serves the local API on `listener` and runs the sync pump until `shutdown` resolves,
/// then drains: in-flight requests finish, the pump stops, the writer commits what it has.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, listener, shutdown, RunOptions::default()).await
}

pub async fn run_with(
    config: AgentConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: RunOptions,
) -> anyhow::Result<()> {
    let hub = HubClient::new(&config)?;
    let agent = Arc::new(Agent::open(config)?);
    let store = agent.config.store.to_string();
    let resnapshot = options.resnapshot;
    agent
        .writer
        .write(move |c| {
            ledger::set_meta(c, ledger::META_STORE, &store)?;
            if resnapshot {
                crate::bootstrap::request_resnapshot(c)?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot write to the local database: {e}"))?;
    if resnapshot {
        agent
            .bootstrap
            .set(crate::bootstrap::Phase::WaitingForHub, None);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    // The API takes movements at once; sending and following hub commands wait for
    // bootstrap, so neither acts on a ledger that may still be replaced by a snapshot.
    let sync_task = tokio::spawn({
        let agent = agent.clone();
        let mut stop = stop_rx.clone();
        async move {
            loop {
                if !crate::bootstrap::ensure(&agent, &mut stop).await {
                    return;
                }
                // One round of sending and following, until the agent stops or a
                // re-snapshot is asked for (a hub command, say): then both pause, the
                // snapshot is installed, and a new round begins.
                let (round_stop, round) = watch::channel(false);
                let commands = tokio::spawn(crate::commands::run(agent.clone(), round.clone()));
                let pump = tokio::spawn(sync::run(agent.clone(), hub.clone(), round));
                let resnapshot = crate::bootstrap::requested(&agent, &mut stop).await;
                let _ = round_stop.send(true);
                let _ = pump.await;
                let _ = commands.await;
                if !resnapshot {
                    return;
                }
                tracing::info!(
                    "re-snapshot requested: sending and following pause until it is installed"
                );
            }
        }
    });
    let housekeeping = tokio::spawn(crate::housekeeping::run(agent.clone(), stop_rx.clone()));
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        store = %agent.config.store,
        kafka_properties = %agent.config.kafka_properties.describe(),
        "agent listening"
    );
    let mut server_stop = stop_rx.clone();
    let server = warp::serve(crate::api::routes(agent.clone()))
        .serve_incoming_with_graceful_shutdown(TcpListenerStream::new(listener), async move {
            let _ = server_stop.wait_for(|stop| *stop).await;
        });
    let server = tokio::spawn(server);
    shutdown.await;
    tracing::info!("shutting down: finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = sync_task.await;
    let _ = housekeeping.await;
    Ok(())
}
