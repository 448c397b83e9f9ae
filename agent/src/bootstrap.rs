//! Bootstrap: what the agent learns from the hub before its first send (DESIGN §6).
//!
//! An agent that has never heard from the hub (new, re-installed or wiped), or one told to
//! re-snapshot (`run --resnapshot`, or a hub command while it runs; kept in `meta` until
//! done so a crash cannot skip it), downloads the store's snapshot — stock, `last_seq`, `last_hub_seq` — and installs it.
//! Until then it accepts movements and sends none, and follows no hub command.
//!
//! Invariants:
//! - The snapshot comes only from a hub that has consumed the store's partition to its
//!   end (the hub refuses otherwise), so `last_seq` covers every movement a lost agent
//!   ever delivered, and continuing after it never reuses a seq. Even a store the hub
//!   reports as new goes through the snapshot: an old agent's movements may still be in
//!   the log, unapplied.
//! - Installing is one SQLite transaction: provisional rows are renumbered past
//!   `last_seq`; rows at or below it are acknowledged; stock becomes the snapshot plus
//!   every movement it does not contain — store rows past `last_seq` and hub rows past
//!   `last_hub_seq` — replayed in the order this ledger recorded them; the hub watermark
//!   and the commands position move so the agent follows commands after `last_hub_seq`.
//! - A count the snapshot does not contain is re-taken against the snapshot: its
//!   watermark becomes at least `last_hub_seq` (the view it is now measured against holds
//!   every hub movement up to there) and its delta becomes `counted` less the replayed
//!   on-hand. That is exactly the delta the hub will work out for it (DESIGN §4), so the
//!   two sides agree on every sku after sync.
//! - A hub that reports less than this agent already had acknowledged (restored from an
//!   old backup) is refused: nothing is renumbered, nothing sent.
//! - A ledger found to be a restored older copy or a clone (`ledger::check_copy`) keeps
//!   every movement past its last acknowledgement: they are renumbered, in order and
//!   gapless, after the snapshot's `last_seq` and replayed on it; the stop flag clears.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::ledger::{self, get_meta, set_meta};
use crate::startup::Agent;

/// When the last snapshot was installed (RFC 3339).
pub const META_BOOTSTRAPPED_AT: &str = "bootstrapped_at";
/// The installed snapshot's positions, as JSON ([`SnapshotMarker`]).
pub const META_SNAPSHOT: &str = "snapshot";
/// A re-snapshot was asked for and is not installed yet.
pub const META_RESNAPSHOT_REQUESTED: &str = "resnapshot_requested";

/// How often a page may find the store moved on before the agent waits and retries.
const MAX_RESTARTS: u32 = 5;
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);
const REFUSED_WAIT: Duration = Duration::from_secs(30);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// How often a running agent looks for a re-snapshot request (one indexed meta read).
const REQUEST_POLL: Duration = Duration::from_secs(2);

/// One page as the hub serves it (`GET /v1/stores/{store}/snapshot`).
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotPage {
    pub store: String,
    pub last_seq: u64,
    pub last_hub_seq: u64,
    pub as_of: String,
    pub sku_count: u64,
    pub stock: Vec<StockLine>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub sku: String,
    pub on_hand: i64,
}

/// A whole snapshot: every page at the same positions.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub last_seq: u64,
    pub last_hub_seq: u64,
    pub as_of: String,
    pub stock: Vec<StockLine>,
}

/// What `meta` keeps of the installed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMarker {
    pub last_seq: u64,
    pub last_hub_seq: u64,
    pub as_of: String,
    pub skus: u64,
}

/// Where bootstrap stands, for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the hub (unreachable, catching up, or refusing: see `detail`).
    WaitingForHub,
    Downloading,
    Installing,
    Done,
}

#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub state: Phase,
    pub detail: Option<String>,
    pub skus_received: u64,
    pub skus_total: u64,
}

/// Shared between the bootstrap task and the status route.
#[derive(Debug)]
pub struct BootstrapState(Mutex<Progress>);

impl BootstrapState {
    pub fn new(done: bool) -> Self {
        BootstrapState(Mutex::new(Progress {
            state: if done {
                Phase::Done
            } else {
                Phase::WaitingForHub
            },
            detail: None,
            skus_received: 0,
            skus_total: 0,
        }))
    }

    pub fn get(&self) -> Progress {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(crate) fn set(&self, state: Phase, detail: Option<String>) {
        self.update(|p| {
            p.state = state;
            p.detail = detail;
        });
    }
}

/// The bootstrap part of `/v1/status`: live progress plus what `meta` says was installed.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapStatus {
    #[serde(flatten)]
    pub progress: Progress,
    pub bootstrapped_at: Option<String>,
    pub snapshot: Option<SnapshotMarker>,
    pub resnapshot_requested: bool,
}

pub fn status(conn: &Connection, progress: Progress) -> rusqlite::Result<BootstrapStatus> {
    Ok(BootstrapStatus {
        progress,
        bootstrapped_at: get_meta(conn, META_BOOTSTRAPPED_AT)?,
        snapshot: get_meta(conn, META_SNAPSHOT)?.and_then(|v| serde_json::from_str(&v).ok()),
        resnapshot_requested: get_meta(conn, META_RESNAPSHOT_REQUESTED)?.is_some(),
    })
}

/// Whether this ledger still needs a snapshot before it may send.
pub fn needed(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(get_meta(conn, ledger::META_HUB_CONFIRMED)?.is_none()
        || get_meta(conn, META_RESNAPSHOT_REQUESTED)?.is_some())
}

/// Records that a re-snapshot is wanted; it survives restarts until one is installed.
pub fn request_resnapshot(conn: &Connection) -> rusqlite::Result<()> {
    set_meta(conn, META_RESNAPSHOT_REQUESTED, &ledger::now_rfc3339())
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The hub is unreachable, catching up, or busy: try again after the pause.
    #[error("{reason}")]
    Retry { after: Duration, reason: String },
    /// The hub answered and refused: an operator must act (wrong token, unknown store,
    /// movements held at the hub). Retried slowly.
    #[error("{0}")]
    Refused(String),
    /// The store moved on between two pages: start again.
    #[error("the store's state moved on while its snapshot was being read")]
    Moved,
}

/// HTTP to the hub's snapshot route, with a page-sized timeout of its own (the sync
/// pump's client keeps short ones for its polls).
pub struct SnapshotClient {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl SnapshotClient {
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(PAGE_TIMEOUT)
            .user_agent(concat!("bazaar-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            url: format!("{}/v1/stores/{}/snapshot", config.hub_url, config.store),
            token: config.token.expose().to_owned(),
        })
    }

    pub async fn page(&self, cursor: Option<&str>) -> Result<SnapshotPage, FetchError> {
        let mut request = self.http.get(&self.url).bearer_auth(&self.token);
        if let Some(c) = cursor {
            request = request.query(&[("cursor", c)]);
        }
        let response = request.send().await.map_err(|e| FetchError::Retry {
            after: Duration::from_secs(2),
            reason: format!("the hub at {} did not answer: {e}", self.url),
        })?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(|e| FetchError::Retry {
                after: Duration::from_secs(2),
                reason: format!("the hub's snapshot page was not the expected JSON: {e}"),
            });
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no details")
            .to_owned();
        Err(match status.as_u16() {
            409 if code == "snapshot_moved" => FetchError::Moved,
            401 | 403 => FetchError::Refused(format!(
                "the hub refused this agent's token ({status}): check `token` in the agent configuration"
            )),
            404 => FetchError::Refused(format!(
                "the hub does not know this store ({message}): register it with `bazaar-hub store add ID` \
                 and re-run `bazaar-agent init` with the token and key it prints"
            )),
            400..=499 => FetchError::Refused(format!("the hub refused the snapshot ({status} {code}): {message}")),
            _ => FetchError::Retry {
                after: retry_after.unwrap_or(Duration::from_secs(2)).min(MAX_RETRY_WAIT),
                reason: format!("the hub cannot serve the snapshot yet ({status} {code}): {message}"),
            },
        })
    }

    /// Every page, at one (last_seq, last_hub_seq); starts again if the store moves on.
    pub async fn download(&self, state: &BootstrapState) -> Result<Snapshot, FetchError> {
        let mut restarts = 0;
        'restart: loop {
            let first = self.page(None).await?;
            state.update(|p| {
                p.state = Phase::Downloading;
                p.detail = None;
                p.skus_total = first.sku_count;
                p.skus_received = first.stock.len() as u64;
            });
            let bar = progress_bar(first.sku_count);
            bar.set_position(first.stock.len() as u64);
            tracing::info!(
                last_seq = first.last_seq,
                last_hub_seq = first.last_hub_seq,
                skus = first.sku_count,
                "downloading the store's snapshot"
            );
            let mut stock = first.stock;
            let mut cursor = first.next_cursor;
            while let Some(c) = cursor.take() {
                let page = match self.page(Some(&c)).await {
                    Ok(p) => p,
                    Err(FetchError::Moved) if restarts < MAX_RESTARTS => {
                        restarts += 1;
                        bar.finish_and_clear();
                        tracing::info!(restarts, "the store moved on mid-snapshot; starting again");
                        continue 'restart;
                    }
                    Err(FetchError::Moved) => {
                        bar.finish_and_clear();
                        return Err(FetchError::Retry {
                            after: Duration::from_secs(5),
                            reason: "the store kept moving while its snapshot was read".into(),
                        });
                    }
                    Err(e) => {
                        bar.finish_and_clear();
                        return Err(e);
                    }
                };
                // The hub pins pages to the first one's positions; trust but verify.
                if (page.last_seq, page.last_hub_seq) != (first.last_seq, first.last_hub_seq) {
                    restarts += 1;
                    bar.finish_and_clear();
                    continue 'restart;
                }
                stock.extend(page.stock);
                bar.set_position(stock.len() as u64);
                state.update(|p| p.skus_received = stock.len() as u64);
                tracing::info!(
                    received = stock.len(),
                    total = first.sku_count,
                    "snapshot page"
                );
                cursor = page.next_cursor;
            }
            bar.finish_and_clear();
            return Ok(Snapshot {
                last_seq: first.last_seq,
                last_hub_seq: first.last_hub_seq,
                as_of: first.as_of,
                stock,
            });
        }
    }
}

/// A bar on stderr when it is a terminal (an operator running `run --resnapshot` by
/// hand); hidden under a service manager, where the per-page log lines say the same.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("snapshot {bar:40} {pos}/{len} skus ({eta})")
    {
        bar.set_style(style);
    }
    bar
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    /// How far provisional rows were renumbered.
    pub shift: u64,
    /// Local movements the snapshot does not contain, replayed on top of it.
    pub replayed: u64,
    /// Counts re-taken against the snapshot.
    pub counts_retaken: u64,
    pub skus: u64,
    pub hub_watermark: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the hub's snapshot ends at seq {hub} but this agent already had seq {local} acknowledged: \
         the hub's database may have been restored from an old backup; refusing to install it"
    )]
    HubBehind { local: u64, hub: u64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl From<ledger::RebaseError> for InstallError {
    fn from(e: ledger::RebaseError) -> Self {
        match e {
            ledger::RebaseError::HubBehind { local, hub } => InstallError::HubBehind { local, hub },
            ledger::RebaseError::Sqlite(e) => InstallError::Sqlite(e),
        }
    }
}

fn meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(get_meta(conn, key)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Installs `snapshot` on `conn`, which the caller has put inside one transaction (the
/// writer does): see the module's invariants.
pub fn install(
    conn: &Connection,
    snapshot: &Snapshot,
    now: &str,
) -> Result<Installed, InstallError> {
    let (last_seq, last_hub_seq) = (snapshot.last_seq, snapshot.last_hub_seq);
    let confirmed = get_meta(conn, ledger::META_HUB_CONFIRMED)?.is_some();
    let shift = if confirmed {
        let acknowledged = meta_u64(conn, ledger::META_HUB_APPLIED_SEQ)?;
        if acknowledged > last_seq {
            return Err(InstallError::HubBehind {
                local: acknowledged,
                hub: last_seq,
            });
        }
        // A copy found diverged (restored or cloned): what it numbered past its last
        // acknowledgement was never applied as its own, so it goes after the hub's seq.
        ledger::renumber_after_divergence(conn, last_seq, now)?
    } else {
        ledger::rebase_on_first_contact(conn, last_seq)?
    };
    ledger::acknowledge_through(conn, last_seq, now)?;
    // Sent but not in the snapshot: the hub has consumed past them without applying them,
    // so they go again at once rather than after the resend timeout.
    ledger::requeue_unacknowledged(conn, last_seq)?;

    let mut on_hand: BTreeMap<String, i64> = snapshot
        .stock
        .iter()
        .map(|l| (l.sku.clone(), l.on_hand))
        .collect();
    let before: Vec<String> = conn
        .prepare("SELECT sku FROM stock")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;

    let mut retaken: Vec<(i64, i64, u64)> = Vec::new();
    let mut replayed = 0u64;
    {
        let mut rows = conn.prepare(
            "SELECT local_id, origin, kind, sku, delta, counted, hub_watermark FROM movements
             WHERE (origin = 'store' AND seq > ?1) OR (origin = 'hub' AND hub_seq > ?2)
             ORDER BY local_id",
        )?;
        let mut rows = rows.query(params![last_seq, last_hub_seq])?;
        while let Some(row) = rows.next()? {
            let local_id: i64 = row.get(0)?;
            let origin: String = row.get(1)?;
            let kind: String = row.get(2)?;
            let sku: String = row.get(3)?;
            let delta: i64 = row.get(4)?;
            let counted: Option<i64> = row.get(5)?;
            let watermark: u64 = row.get(6)?;
            let figure = on_hand.entry(sku).or_insert(0);
            match (origin.as_str(), kind.as_str(), counted) {
                ("store", "count", Some(counted)) => {
                    let retaken_delta = counted - *figure;
                    let retaken_watermark = watermark.max(last_hub_seq);
                    if (retaken_delta, retaken_watermark) != (delta, watermark) {
                        retaken.push((local_id, retaken_delta, retaken_watermark));
                    }
                    *figure = counted;
                }
                _ => *figure += delta,
            }
            replayed += 1;
        }
    }
    let mut retake = conn.prepare(
        "UPDATE movements SET delta = ?2, hub_watermark = ?3 WHERE local_id = ?1 AND state = 'pending'",
    )?;
    for (local_id, delta, watermark) in &retaken {
        retake.execute(params![local_id, delta, watermark])?;
    }

    conn.execute("DELETE FROM stock", [])?;
    let mut insert =
        conn.prepare("INSERT INTO stock (sku, on_hand, updated_at) VALUES (?1, ?2, ?3)")?;
    for (sku, figure) in &on_hand {
        insert.execute(params![sku, figure, now])?;
        crate::stock_alerts::refresh(conn, sku, *figure, now)?;
    }
    let mut resolve =
        conn.prepare("UPDATE alerts SET resolved_at = ?2 WHERE sku = ?1 AND resolved_at IS NULL")?;
    for gone in before.iter().filter(|s| !on_hand.contains_key(*s)) {
        resolve.execute(params![gone, now])?;
    }

    let local_watermark = meta_u64(conn, ledger::META_HUB_WATERMARK)?;
    let hub_watermark = local_watermark.max(last_hub_seq);
    if local_watermark < last_hub_seq {
        // Commands up to last_hub_seq are in the snapshot. Read the partition again from
        // its start: what the watermark covers is skipped, the rest applies in order.
        set_meta(conn, ledger::META_HUB_WATERMARK, &hub_watermark.to_string())?;
        conn.execute(
            "DELETE FROM meta WHERE key = ?1",
            [crate::commands::META_OFFSET],
        )?;
        conn.execute(
            "UPDATE alerts SET resolved_at = ?2 WHERE kind = ?1 AND resolved_at IS NULL",
            params![crate::commands::GAP_ALERT, now],
        )?;
    }
    let marker = SnapshotMarker {
        last_seq,
        last_hub_seq,
        as_of: snapshot.as_of.clone(),
        skus: snapshot.stock.len() as u64,
    };
    set_meta(
        conn,
        META_SNAPSHOT,
        &serde_json::to_string(&marker)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
    )?;
    set_meta(conn, META_BOOTSTRAPPED_AT, now)?;
    conn.execute(
        "DELETE FROM meta WHERE key = ?1",
        [META_RESNAPSHOT_REQUESTED],
    )?;
    conn.execute(
        "UPDATE alerts SET resolved_at = ?2 WHERE kind = ?1 AND resolved_at IS NULL",
        params![crate::commands::RESNAPSHOT_ALERT, now],
    )?;
    Ok(Installed {
        shift,
        replayed,
        counts_retaken: retaken.len() as u64,
        skus: on_hand.len() as u64,
        hub_watermark,
    })
}

/// Resolves true once a re-snapshot is asked for while the agent runs (by a hub command
/// or another process writing the flag), false when the agent stops.
pub async fn requested(agent: &Arc<Agent>, shutdown: &mut watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REQUEST_POLL) => {}
            _ = shutdown.changed() => return false,
        }
        if *shutdown.borrow() {
            return false;
        }
        let wanted = agent
            .read(|conn| Ok(get_meta(conn, META_RESNAPSHOT_REQUESTED)?.is_some()))
            .await;
        if matches!(wanted, Ok(true)) {
            agent.bootstrap.set(Phase::WaitingForHub, None);
            return true;
        }
    }
}

/// Runs until the ledger may send: at once when it needs no snapshot, else once one is
/// downloaded and installed. False if shutdown came first.
pub async fn ensure(agent: &Arc<Agent>, shutdown: &mut watch::Receiver<bool>) -> bool {
    let needed = agent.read(needed).await.unwrap_or(true);
    if !needed {
        agent.bootstrap.set(Phase::Done, None);
        agent.sync.first_contact_done.store(true, Ordering::Relaxed);
        return true;
    }
    let client = match SnapshotClient::new(&agent.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot build the HTTP client; nothing will be sent");
            return false;
        }
    };
    let mut last_reason: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            return false;
        }
        let wait = match client.download(&agent.bootstrap).await {
            Ok(snapshot) => {
                agent.bootstrap.set(Phase::Installing, None);
                let now = ledger::now_rfc3339();
                let shared = Arc::new(snapshot);
                let job = shared.clone();
                match agent
                    .writer
                    .write(move |conn| install(conn, &job, &now))
                    .await
                {
                    Ok(installed) => {
                        tracing::info!(
                            last_seq = shared.last_seq,
                            last_hub_seq = shared.last_hub_seq,
                            as_of = %shared.as_of,
                            skus = installed.skus,
                            shift = installed.shift,
                            replayed = installed.replayed,
                            counts_retaken = installed.counts_retaken,
                            "snapshot installed; sending begins"
                        );
                        agent.bootstrap.set(Phase::Done, None);
                        // The install renumbered a diverged copy's movements after the hub.
                        agent.sync.diverged.store(false, Ordering::Relaxed);
                        agent.sync.hub_online.store(true, Ordering::Relaxed);
                        agent.sync.first_contact_done.store(true, Ordering::Relaxed);
                        agent.sync.set_error(None);
                        return true;
                    }
                    Err(e) => {
                        let reason = format!("cannot install the snapshot: {e}");
                        tracing::error!(error = %reason, "nothing will be sent until this is resolved");
                        agent.sync.set_error(Some(reason.clone()));
                        agent.bootstrap.set(Phase::WaitingForHub, Some(reason));
                        REFUSED_WAIT
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                let wait = match &e {
                    FetchError::Retry { after, .. } => {
                        agent.sync.hub_online.store(false, Ordering::Relaxed);
                        *after
                    }
                    FetchError::Refused(_) => REFUSED_WAIT,
                    FetchError::Moved => Duration::from_millis(200),
                };
                if last_reason.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(reason = %reason, "waiting for the store's snapshot before the first send; movements are accepted meanwhile");
                }
                agent.sync.set_error(Some(reason.clone()));
                agent
                    .bootstrap
                    .set(Phase::WaitingForHub, Some(reason.clone()));
                last_reason = Some(reason);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{NewMovement, Quantity};
    use bazaar_shared::{Kind, Sku};
    use std::collections::HashMap;

    const NOW: &str = "2026-11-26T10:00:00.000Z";

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        ledger::migrate(&conn).unwrap();
        conn
    }

    fn record(conn: &Connection, kind: Kind, sku: &str, quantity: Quantity) -> u64 {
        ledger::record(
            conn,
            &NewMovement {
                kind,
                sku: Sku::parse(sku).unwrap(),
                quantity,
                reason: None,
                reference: None,
                to_store: None,
                from_store: None,
            },
            None,
        )
        .unwrap()
        .movement
        .seq
        .unwrap()
    }

    fn stock(conn: &Connection) -> HashMap<String, i64> {
        conn.prepare("SELECT sku, on_hand FROM stock")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn snapshot(last_seq: u64, last_hub_seq: u64, lines: &[(&str, i64)]) -> Snapshot {
        Snapshot {
            last_seq,
            last_hub_seq,
            as_of: "2026-11-26T09:59:59Z".into(),
            stock: lines
                .iter()
                .map(|(sku, on_hand)| StockLine {
                    sku: (*sku).into(),
                    on_hand: *on_hand,
                })
                .collect(),
        }
    }

    /// A hub-origin movement as the commands follower applies it.
    fn hub_movement(conn: &Connection, hub_seq: u64, sku: &str, delta: i64) {
        let envelope = bazaar_shared::Envelope::movement(
            bazaar_shared::StoreId::parse("S1").unwrap(),
            bazaar_shared::Origin::Hub,
            hub_seq,
            if delta > 0 { Kind::Receipt } else { Kind::Sale },
            Sku::parse(sku).unwrap(),
            delta,
        );
        let key = bazaar_shared::SigningKey::generate();
        let payload = envelope.to_signed_bytes(&key).unwrap();
        let outcome = crate::commands::apply(conn, "S1", &key, &payload, hub_seq as i64).unwrap();
        assert_eq!(outcome, crate::commands::Outcome::Applied);
    }

    #[test]
    fn a_wiped_agent_continues_after_the_hub_with_its_offline_movements_on_top() {
        let conn = db();
        assert!(needed(&conn).unwrap());
        // Taken before the hub answered: numbered provisionally, counted against nothing.
        assert_eq!(record(&conn, Kind::Receipt, "A", Quantity::Delta(5)), 1);
        assert_eq!(record(&conn, Kind::Count, "A", Quantity::Counted(3)), 2);
        record(&conn, Kind::Sale, "C", Quantity::Delta(-1));

        let installed = install(&conn, &snapshot(10, 2, &[("A", 7), ("B", 4)]), NOW).unwrap();
        assert_eq!(
            (
                installed.shift,
                installed.replayed,
                installed.counts_retaken
            ),
            (10, 3, 1)
        );
        let expected: HashMap<String, i64> =
            [("A".into(), 3), ("B".into(), 4), ("C".into(), -1)].into();
        assert_eq!(stock(&conn), expected, "snapshot 7 +5 received, counted 3");
        let rows = ledger::pending_batch(&conn, 10).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [11, 12, 13]);
        let count = &rows[1];
        assert_eq!(
            (count.delta, count.counted, count.hub_watermark),
            (-9, Some(3), 2),
            "the count re-taken against the snapshot: the delta the hub will work out"
        );
        assert_eq!(record(&conn, Kind::Sale, "B", Quantity::Delta(-1)), 14);
        assert_eq!(meta_u64(&conn, ledger::META_HUB_WATERMARK).unwrap(), 2);
        assert!(!needed(&conn).unwrap(), "done once");
        let marker: SnapshotMarker =
            serde_json::from_str(&get_meta(&conn, META_SNAPSHOT).unwrap().unwrap()).unwrap();
        assert_eq!(
            (marker.last_seq, marker.last_hub_seq, marker.skus),
            (10, 2, 2)
        );
        assert_eq!(
            get_meta(&conn, META_BOOTSTRAPPED_AT).unwrap().as_deref(),
            Some(NOW)
        );
    }

    #[test]
    fn a_store_with_history_and_no_local_movement_starts_after_last_seq() {
        let conn = db();
        install(&conn, &snapshot(500, 0, &[("A", 1)]), NOW).unwrap();
        assert_eq!(record(&conn, Kind::Sale, "A", Quantity::Delta(-1)), 501);
        assert_eq!(stock(&conn)["A"], 0);
    }

    #[test]
    fn a_resnapshot_keeps_unsent_movements_and_hub_movements_past_the_snapshot() {
        let conn = db();
        install(&conn, &snapshot(0, 0, &[]), NOW).unwrap();
        for _ in 0..5 {
            record(&conn, Kind::Receipt, "A", Quantity::Delta(10));
        }
        ledger::mark_sent(&conn, &[1, 2, 3, 4], NOW).unwrap();
        ledger::mark_acked(&conn, 2, NOW).unwrap();
        for hub_seq in 1..=4 {
            hub_movement(&conn, hub_seq, "B", 1);
        }
        set_meta(&conn, crate::commands::META_OFFSET, "4").unwrap();
        request_resnapshot(&conn).unwrap();
        crate::housekeeping::raise_alert(
            &conn,
            crate::commands::RESNAPSHOT_ALERT,
            None,
            "warning",
            "asked",
            NOW,
        )
        .unwrap();
        assert!(needed(&conn).unwrap());

        // The hub has applied seq 1..=4 (A = 40) and hub movements 1..=3 (B = 3), and
        // knows of a sku this ledger lost track of.
        let installed = install(
            &conn,
            &snapshot(4, 3, &[("A", 40), ("B", 3), ("Z", 9)]),
            NOW,
        )
        .unwrap();
        assert_eq!((installed.shift, installed.replayed), (0, 2));
        let expected: HashMap<String, i64> =
            [("A".into(), 50), ("B".into(), 4), ("Z".into(), 9)].into();
        assert_eq!(stock(&conn), expected);
        let counts = ledger::outbox_counts(&conn).unwrap();
        assert_eq!((counts.pending, counts.sent, counts.acked), (1, 0, 4));
        assert_eq!(
            meta_u64(&conn, ledger::META_HUB_WATERMARK).unwrap(),
            4,
            "the ledger already had hub_seq 4"
        );
        assert_eq!(
            get_meta(&conn, crate::commands::META_OFFSET)
                .unwrap()
                .as_deref(),
            Some("4"),
            "a follower ahead of the snapshot keeps its position"
        );
        assert!(!needed(&conn).unwrap());
        assert!(
            crate::housekeeping::alerts(&conn, false, 10)
                .unwrap()
                .is_empty(),
            "the request's alert is resolved once the snapshot is in"
        );
        assert_eq!(record(&conn, Kind::Sale, "A", Quantity::Delta(-1)), 6);
    }

    #[test]
    fn a_follower_behind_the_snapshot_reads_its_partition_again() {
        let conn = db();
        install(&conn, &snapshot(0, 0, &[]), NOW).unwrap();
        hub_movement(&conn, 1, "B", 1);
        set_meta(&conn, crate::commands::META_OFFSET, "1").unwrap();
        crate::housekeeping::raise_alert(
            &conn,
            crate::commands::GAP_ALERT,
            None,
            "critical",
            "gap",
            NOW,
        )
        .unwrap();
        request_resnapshot(&conn).unwrap();
        install(&conn, &snapshot(0, 7, &[("B", 30)]), NOW).unwrap();
        assert_eq!(meta_u64(&conn, ledger::META_HUB_WATERMARK).unwrap(), 7);
        assert_eq!(get_meta(&conn, crate::commands::META_OFFSET).unwrap(), None);
        assert!(crate::housekeeping::alerts(&conn, false, 10)
            .unwrap()
            .iter()
            .all(|a| a.kind != crate::commands::GAP_ALERT));
        assert_eq!(stock(&conn)["B"], 30);
    }

    #[test]
    fn a_hub_behind_what_was_acknowledged_is_refused() {
        let conn = db();
        install(&conn, &snapshot(0, 0, &[]), NOW).unwrap();
        for _ in 0..3 {
            record(&conn, Kind::Receipt, "A", Quantity::Delta(1));
        }
        ledger::mark_sent(&conn, &[1, 2, 3], NOW).unwrap();
        ledger::mark_acked(&conn, 3, NOW).unwrap();
        request_resnapshot(&conn).unwrap();
        let refused = install(&conn, &snapshot(1, 0, &[("A", 1)]), NOW);
        assert!(matches!(
            refused,
            Err(InstallError::HubBehind { local: 3, hub: 1 })
        ));
    }

    #[test]
    fn a_diverged_copy_keeps_its_unsent_movements_and_renumbers_them_after_the_hub() {
        let conn = db();
        install(&conn, &snapshot(0, 0, &[]), NOW).unwrap();
        for _ in 0..3 {
            record(&conn, Kind::Receipt, "A", Quantity::Delta(10));
        }
        ledger::mark_sent(&conn, &[1, 2, 3], NOW).unwrap();
        ledger::mark_acked(&conn, 3, NOW).unwrap();
        // Restored from this state while another copy went on to seq 8; tills kept selling.
        let sold = [
            record(&conn, Kind::Sale, "A", Quantity::Delta(-2)),
            record(&conn, Kind::Count, "B", Quantity::Counted(4)),
        ];
        assert_eq!(sold, [4, 5]);
        ledger::mark_diverged(&conn, "the hub applied seq 8").unwrap();
        request_resnapshot(&conn).unwrap();
        let installed = install(&conn, &snapshot(8, 0, &[("A", 25), ("B", 1)]), NOW).unwrap();
        assert_eq!((installed.shift, installed.replayed), (5, 2));
        let rows = ledger::pending_batch(&conn, 10).unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| (r.seq, r.kind, r.delta))
                .collect::<Vec<_>>(),
            [(9, Kind::Sale, -2), (10, Kind::Count, 3)],
            "after the hub's last seq, in order; the count re-taken against the snapshot"
        );
        let expected: HashMap<String, i64> = [("A".into(), 23), ("B".into(), 4)].into();
        assert_eq!(stock(&conn), expected);
        assert_eq!(ledger::diverged(&conn).unwrap(), None, "sending may resume");
        assert!(crate::housekeeping::alerts(&conn, false, 10)
            .unwrap()
            .iter()
            .all(|a| a.kind != ledger::DIVERGED_ALERT));
        assert_eq!(record(&conn, Kind::Sale, "A", Quantity::Delta(-1)), 11);
    }
}
