//! Read routing between the MySQL primary and an optional replica (DESIGN §7).
//!
//! **Invariants.**
//! - Without `BAZAAR_HUB_MYSQL_REPLICA_URL` every read uses the primary.
//! - A read uses the replica only while the monitor's latest sample, at most
//!   [`STALE_AFTER`] old, found the replica answering, both replication threads running,
//!   `Seconds_Behind_Master` not NULL, and the replica no further behind than
//!   `BAZAAR_HUB_REPLICA_MAX_LAG_MS`. Anything else (an error, a timeout, a monitor that has
//!   stopped sampling) sends reads to the primary.
//! - Read-your-writes: after [`ReadRouter::wrote`], a read by that principal uses the
//!   replica only once the replica's applied GTID position covers the primary's binlog
//!   position read right after the write. The mark is shared by every hub instance through
//!   Redis and kept in this process too; while Redis cannot be asked, reads by a principal
//!   go to the primary. The price is one Redis round trip per authenticated read while the
//!   replica serves; anonymous reads (the open seed route) carry no principal and skip it.
//!
//! **Measuring lag.** `Seconds_Behind_Master` counts whole seconds and reads 0 while the IO
//! thread itself is behind, so the bound is checked on GTID positions instead. Each sample
//! reads the primary's `@@gtid_binlog_pos`, gives the replica up to [`CATCH_UP_WAIT`] to
//! reach it (`MASTER_GTID_WAIT`), then reads the replica's `@@gtid_slave_pos`. The replica
//! has applied every commit made before the newest primary sample it covers, so its
//! staleness is at most that sample's age ([`staleness`]). When it covers none of the
//! samples kept (the last `max_lag` + 2 s), it counts as too far behind.
//! `Seconds_Behind_Master` is still read: NULL means it is not replicating, and it is
//! shown in `/metrics`.
//!
//! **Failures between samples.** A replica that dies between two samples (up to
//! [`SAMPLE_EVERY`]) fails the reads sent to it in that window. [`ReadRouter::read`] runs such
//! a read again on the primary and keeps reads off the replica until the next good sample;
//! code that takes a pool from `Hub::reader` and queries it itself does not get that retry.
//!
//! **Not covered.** A write made while Redis is unreachable is remembered by its own hub
//! only: another hub may route that principal's reads to a replica within the lag bound
//! that has not applied it yet.
//!
//! The monitor needs `SELECT` and `SLAVE MONITOR` (`REPLICATION CLIENT` before MariaDB
//! 10.5) on the replica.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::Script;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySqlPool, Row};

use crate::api::Principal;
use crate::redis_link::RedisLink;

/// How often the monitor samples the replica.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// A sample older than this no longer counts: the replica is treated as unhealthy.
pub const STALE_AFTER: Duration = Duration::from_secs(1);
/// Deadline of one whole sample (both servers).
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long one sample lets the replica catch up with the primary's position.
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(50);
/// Read-your-writes marks outlive the lag bound by this much.
const MARK_MARGIN: Duration = Duration::from_secs(10);

// ---- GTID positions --------------------------------------------------------------------

/// A MariaDB GTID position (`0-1-42,1-2-7`): per replication domain, the last
/// (server id, sequence number). Sequence numbers grow within a domain whatever the
/// server, so coverage compares them per domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, (u32, u64)>);

impl GtidPos {
    /// Whether a server at `self` has applied everything up to `other`.
    pub fn covers(&self, other: &GtidPos) -> bool {
        other
            .0
            .iter()
            .all(|(domain, (_, seq))| self.0.get(domain).is_some_and(|(_, have)| have >= seq))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn seqs(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(d, (_, s))| (*d, *s))
    }
}

impl FromStr for GtidPos {
    type Err = String;

    fn from_str(text: &str) -> Result<GtidPos, String> {
        let mut pos = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.splitn(3, '-');
            let (Some(d), Some(s), Some(n)) = (fields.next(), fields.next(), fields.next()) else {
                return Err(format!("{part:?} is not a GTID (domain-server-seq)"));
            };
            let bad = |_| format!("{part:?} is not a GTID (domain-server-seq)");
            pos.insert(
                d.parse().map_err(bad)?,
                (s.parse().map_err(bad)?, n.parse().map_err(bad)?),
            );
        }
        Ok(GtidPos(pos))
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (d, (s, n)) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// The age of the newest primary sample `replica` covers: every commit older than it is
/// on the replica. `None` when it covers none of `history` (oldest first).
pub fn staleness(
    history: &VecDeque<(Instant, GtidPos)>,
    replica: &GtidPos,
    now: Instant,
) -> Option<Duration> {
    history
        .iter()
        .rev()
        .find(|(_, primary)| replica.covers(primary))
        .map(|(at, _)| now.saturating_duration_since(*at))
}

// ---- health ----------------------------------------------------------------------------

/// What `SHOW SLAVE STATUS` says, reduced to what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveStatus {
    pub io_running: bool,
    pub sql_running: bool,
    /// NULL while either thread is stopped.
    pub seconds_behind: Option<u64>,
    pub last_error: Option<String>,
}

/// Why reads are not on the replica, or that they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Replicating and within the bound.
    Serving,
    /// Unreachable, or the sample failed.
    Down(String),
    /// Reachable but not applying the primary's changes.
    NotReplicating(String),
    /// Replicating, but further behind than the bound.
    Lagging(String),
}

/// The routing decision from one sample; pure.
pub fn assess(
    status: Option<&SlaveStatus>,
    staleness: Option<Duration>,
    max_lag: Duration,
) -> Health {
    let Some(status) = status else {
        return Health::NotReplicating(
            "the server is not a replica (SHOW SLAVE STATUS is empty)".into(),
        );
    };
    if !status.io_running || !status.sql_running || status.seconds_behind.is_none() {
        let error = status
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        return Health::NotReplicating(format!(
            "IO thread {}, SQL thread {}{error}",
            running(status.io_running),
            running(status.sql_running)
        ));
    }
    match staleness {
        Some(lag) if lag <= max_lag => Health::Serving,
        Some(lag) => Health::Lagging(format!(
            "{} ms behind the primary, over the {} ms bound",
            lag.as_millis(),
            max_lag.as_millis()
        )),
        None => Health::Lagging(format!(
            "behind the primary by more than the {} ms bound",
            max_lag.as_millis()
        )),
    }
}

fn running(yes: bool) -> &'static str {
    if yes {
        "running"
    } else {
        "stopped"
    }
}

#[derive(Debug, Clone)]
struct Sample {
    health: Health,
    at: Instant,
    /// The replica's applied position.
    position: Option<GtidPos>,
    lag: Option<Duration>,
    seconds_behind: Option<u64>,
}

// ---- routing ---------------------------------------------------------------------------

/// Where a read went and why; the labels of `bazaar_hub_db_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Replica,
    NoReplica,
    ReplicaDown,
    NotReplicating,
    Lagging,
    ReadYourWrites,
}

impl Route {
    const ALL: [Route; 6] = [
        Route::Replica,
        Route::NoReplica,
        Route::ReplicaDown,
        Route::NotReplicating,
        Route::Lagging,
        Route::ReadYourWrites,
    ];

    pub fn target(self) -> &'static str {
        match self {
            Route::Replica => "replica",
            _ => "primary",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Route::Replica => "healthy",
            Route::NoReplica => "no_replica",
            Route::ReplicaDown => "replica_down",
            Route::NotReplicating => "not_replicating",
            Route::Lagging => "lagging",
            Route::ReadYourWrites => "read_your_writes",
        }
    }
}

/// Chooses the pool of every read; see the module docs.
pub struct ReadRouter {
    primary: MySqlPool,
    replica: Option<Arc<ReplicaSide>>,
    reads: [AtomicU64; 6],
    /// Reads that failed on the replica and were run again on the primary.
    retried: AtomicU64,
}

struct ReplicaSide {
    pool: MySqlPool,
    max_lag: Duration,
    sample: RwLock<Option<Sample>>,
    marks: WriteMarks,
}

impl ReadRouter {
    /// Without `replica_url`, every read uses `primary`. With one, connects lazily (a
    /// replica that is down at startup is not an error) and starts the monitor, which
    /// stops when the router is dropped or the primary pool is closed.
    pub fn new(
        primary: MySqlPool,
        replica_url: Option<&str>,
        max_lag: Duration,
        redis: Arc<RedisLink>,
        statement_timeout: Duration,
    ) -> anyhow::Result<ReadRouter> {
        let replica = match replica_url {
            None => None,
            Some(url) => {
                let seconds = statement_timeout.as_secs_f64();
                let pool = MySqlPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(2))
                    // The API's reads, cut off like those on the primary (db.rs).
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            if seconds > 0.0 {
                                sqlx::query(&format!(
                                    "SET SESSION max_statement_time = {seconds:.3}"
                                ))
                                .execute(&mut *conn)
                                .await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_lazy(url)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "BAZAAR_HUB_MYSQL_REPLICA_URL {} is not usable: {e}",
                            crate::db::redact(url)
                        )
                    })?;
                // The monitor has connections of its own, so a busy read pool never
                // delays a sample, nor a sample a read.
                let probe = || {
                    MySqlPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(SAMPLE_TIMEOUT)
                };
                let monitor_replica = probe().connect_lazy_with((*pool.connect_options()).clone());
                let monitor_primary =
                    probe().connect_lazy_with((*primary.connect_options()).clone());
                let side = Arc::new(ReplicaSide {
                    pool,
                    max_lag,
                    sample: RwLock::new(None),
                    marks: WriteMarks::new(redis, max_lag + MARK_MARGIN),
                });
                tokio::spawn(monitor(
                    Arc::downgrade(&side),
                    primary.clone(),
                    monitor_primary,
                    monitor_replica,
                ));
                Some(side)
            }
        };
        Ok(ReadRouter {
            primary,
            replica,
            reads: Default::default(),
            retried: AtomicU64::new(0),
        })
    }

    /// The pool a read by `who` (`None`: anonymous) should use, counted in `/metrics`.
    pub async fn pool_for(&self, who: Option<&Principal>) -> &MySqlPool {
        let route = self.route(who).await;
        self.reads[Route::ALL.iter().position(|r| *r == route).unwrap_or(0)]
            .fetch_add(1, Ordering::Relaxed);
        match (route, &self.replica) {
            (Route::Replica, Some(side)) => &side.pool,
            _ => &self.primary,
        }
    }

    /// Runs `read` on the pool [`ReadRouter::pool_for`] picks. When that was the replica
    /// and the read failed, runs it again on the primary (reads repeat safely), and when
    /// the replica could not be reached at all, keeps reads off it until the next good
    /// sample: a replica that dies between two samples costs a retry, not an error.
    pub async fn read<T, F, Fut>(&self, who: Option<&Principal>, read: F) -> Result<T, sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let pool = self.pool_for(who).await;
        let on_replica = self
            .replica
            .as_ref()
            .is_some_and(|side| std::ptr::eq(pool, &side.pool));
        match read(pool.clone()).await {
            Err(e) if on_replica => {
                self.retried.fetch_add(1, Ordering::Relaxed);
                if let (true, Some(side)) = (unreachable(&e), &self.replica) {
                    side.failed(&e);
                }
                tracing::debug!(error = %e, "a read failed on the replica; retried on the primary");
                read(self.primary.clone()).await
            }
            other => other,
        }
    }

    /// Where a read by `who` goes now (not counted).
    pub async fn route(&self, who: Option<&Principal>) -> Route {
        let Some(side) = &self.replica else {
            return Route::NoReplica;
        };
        let (health, position) = side.current();
        match health {
            Health::Serving => {}
            Health::Down(_) => return Route::ReplicaDown,
            Health::NotReplicating(_) => return Route::NotReplicating,
            Health::Lagging(_) => return Route::Lagging,
        }
        match who {
            Some(who) if !side.marks.covered(who, position.as_ref()).await => Route::ReadYourWrites,
            _ => Route::Replica,
        }
    }

    /// Records that `who` has just committed a write on the primary, so that its reads
    /// (on any hub instance) see it. Call after the commit; a no-op without a replica.
    pub async fn wrote(&self, who: &Principal) {
        let Some(side) = &self.replica else {
            return;
        };
        // The binlog position read after the commit includes it (and perhaps later
        // commits of others, which only makes the wait a little longer).
        let position = tokio::time::timeout(
            SAMPLE_TIMEOUT,
            sqlx::query_scalar::<_, String>("SELECT @@gtid_binlog_pos").fetch_one(&self.primary),
        )
        .await;
        let position = match position {
            Ok(Ok(text)) => text.parse::<GtidPos>().ok(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the primary's GTID position after a write; this principal reads from the primary for a while");
                None
            }
            Err(_) => None,
        };
        side.marks.record(who, position).await;
    }

    /// For `/readyz`: `None` without a replica; `Some(Ok)` while reads go to it;
    /// `Some(Err(why))` while they fall back to the primary (the hub still serves).
    pub fn replica_ready(&self) -> Option<Result<(), String>> {
        let side = self.replica.as_ref()?;
        Some(match side.current().0 {
            Health::Serving => Ok(()),
            Health::Down(why) => Err(format!("replica down: {why}")),
            Health::NotReplicating(why) => Err(format!("replica not replicating: {why}")),
            Health::Lagging(why) => Err(format!("replica lagging: {why}")),
        })
    }

    /// Reads routed to `route` since start.
    pub fn reads(&self, route: Route) -> u64 {
        Route::ALL
            .iter()
            .position(|r| *r == route)
            .map_or(0, |i| self.reads[i].load(Ordering::Relaxed))
    }

    /// The `/metrics` lines of read routing.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP bazaar_hub_db_reads_total Database reads, by the server that served them and why.\n# TYPE bazaar_hub_db_reads_total counter\n");
        for (i, route) in Route::ALL.iter().enumerate() {
            if self.replica.is_none() && *route != Route::NoReplica {
                continue;
            }
            let _ = writeln!(
                out,
                "bazaar_hub_db_reads_total{{target=\"{}\",reason=\"{}\"}} {}",
                route.target(),
                route.reason(),
                self.reads[i].load(Ordering::Relaxed)
            );
        }
        let Some(side) = &self.replica else {
            return;
        };
        crate::metrics::scalar(
            out,
            "bazaar_hub_db_replica_retries_total",
            "counter",
            "Reads that failed on the replica and were run again on the primary.",
            self.retried.load(Ordering::Relaxed),
        );
        let sample = side
            .sample
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let serving = matches!(side.current().0, Health::Serving);
        let (lag, behind) = match &sample {
            Some(s) => (
                s.lag.map_or(f64::NAN, |l| l.as_secs_f64()),
                s.seconds_behind.map_or(f64::NAN, |b| b as f64),
            ),
            None => (f64::NAN, f64::NAN),
        };
        crate::metrics::scalar(
            out,
            "bazaar_hub_replica_serving",
            "gauge",
            "1 while reads go to the replica (replicating and within BAZAAR_HUB_REPLICA_MAX_LAG_MS).",
            u8::from(serving),
        );
        crate::metrics::scalar(
            out,
            "bazaar_hub_replica_lag_seconds",
            "gauge",
            "Upper bound of the replica's staleness, from GTID positions (NaN: unknown).",
            lag,
        );
        crate::metrics::scalar(
            out,
            "bazaar_hub_replica_seconds_behind_master",
            "gauge",
            "Seconds_Behind_Master as the replica reports it (NaN: NULL, not replicating).",
            behind,
        );
    }
}

/// An error that says the server could not be reached, rather than that it refused the
/// query.
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

impl ReplicaSide {
    /// Reads leave the replica now; the next good sample brings them back.
    fn failed(&self, error: &sqlx::Error) {
        let mut sample = self.sample.write().unwrap_or_else(PoisonError::into_inner);
        *sample = Some(Sample {
            health: Health::Down(format!("a read could not reach it: {error}")),
            at: Instant::now(),
            position: None,
            lag: None,
            seconds_behind: None,
        });
    }

    /// The health to route by, and the replica's applied position.
    fn current(&self) -> (Health, Option<GtidPos>) {
        let sample = self.sample.read().unwrap_or_else(PoisonError::into_inner);
        match &*sample {
            None => (Health::Down("not sampled yet".into()), None),
            Some(s) if s.at.elapsed() > STALE_AFTER => (
                Health::Down(format!("no sample for {} ms", s.at.elapsed().as_millis())),
                None,
            ),
            Some(s) => (s.health.clone(), s.position.clone()),
        }
    }
}

// ---- the monitor -----------------------------------------------------------------------

async fn monitor(
    side: Weak<ReplicaSide>,
    primary: MySqlPool,
    probe_primary: MySqlPool,
    probe_replica: MySqlPool,
) {
    let mut history: VecDeque<(Instant, GtidPos)> = VecDeque::new();
    let mut last_logged: Option<std::mem::Discriminant<Health>> = None;
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(side) = side.upgrade() else { break };
        if primary.is_closed() {
            break;
        }
        let keep = side.max_lag + Duration::from_secs(2);
        let sample = match tokio::time::timeout(
            SAMPLE_TIMEOUT,
            take_sample(&probe_primary, &probe_replica, &mut history, side.max_lag),
        )
        .await
        {
            Ok(s) => s,
            Err(_) => Sample {
                health: Health::Down(format!(
                    "no answer within {} ms",
                    SAMPLE_TIMEOUT.as_millis()
                )),
                at: Instant::now(),
                position: None,
                lag: None,
                seconds_behind: None,
            },
        };
        while history.front().is_some_and(|(at, _)| at.elapsed() > keep) {
            history.pop_front();
        }
        let kind = std::mem::discriminant(&sample.health);
        if last_logged != Some(kind) {
            match &sample.health {
                Health::Serving => tracing::info!("replica serves reads"),
                Health::Down(why) | Health::NotReplicating(why) | Health::Lagging(why) => {
                    tracing::warn!(reason = %why, "reads go to the primary: the replica cannot serve them")
                }
            }
            last_logged = Some(kind);
        }
        *side.sample.write().unwrap_or_else(PoisonError::into_inner) = Some(sample);
        side.marks.prune();
    }
    probe_primary.close().await;
    probe_replica.close().await;
}

async fn take_sample(
    primary: &MySqlPool,
    replica: &MySqlPool,
    history: &mut VecDeque<(Instant, GtidPos)>,
    max_lag: Duration,
) -> Sample {
    let down = |why: String| Sample {
        health: Health::Down(why),
        at: Instant::now(),
        position: None,
        lag: None,
        seconds_behind: None,
    };
    // The primary first: the replica is then asked whether it has caught up with it.
    let primary_pos = match gtid_var(primary, "@@gtid_binlog_pos").await {
        Ok(pos) => {
            history.push_back((Instant::now(), pos.clone()));
            Some(pos)
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read the primary's GTID position");
            None
        }
    };
    let status = match slave_status(replica).await {
        Ok(status) => status,
        Err(e) => return down(e.to_string()),
    };
    if let (Some(pos), Some(s)) = (&primary_pos, &status) {
        if s.sql_running && !pos.is_empty() {
            let _ = sqlx::query("SELECT MASTER_GTID_WAIT(?, ?)")
                .bind(pos.to_string())
                .bind(CATCH_UP_WAIT.as_secs_f64())
                .execute(replica)
                .await;
        }
    }
    let position = match gtid_var(replica, "@@gtid_slave_pos").await {
        Ok(pos) => pos,
        Err(e) => return down(e),
    };
    let lag = if primary_pos.is_some() {
        staleness(history, &position, Instant::now())
    } else {
        // Without the primary's position, the replica's own figure is all there is.
        status
            .as_ref()
            .and_then(|s| s.seconds_behind)
            .map(Duration::from_secs)
    };
    Sample {
        health: assess(status.as_ref(), lag, max_lag),
        at: Instant::now(),
        seconds_behind: status.as_ref().and_then(|s| s.seconds_behind),
        position: Some(position),
        lag,
    }
}

async fn gtid_var(pool: &MySqlPool, var: &str) -> Result<GtidPos, String> {
    let text: String = sqlx::query_scalar(&format!("SELECT {var}"))
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
    text.parse()
}

async fn slave_status(replica: &MySqlPool) -> Result<Option<SlaveStatus>, sqlx::Error> {
    // The text protocol: SHOW is not preparable everywhere, and every column reads as text.
    let row = sqlx::raw_sql("SHOW SLAVE STATUS")
        .fetch_all(replica)
        .await?
        .into_iter()
        .next();
    Ok(row.map(|row| {
        let text = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| {
                row.try_get_unchecked::<Option<String>, _>(*n)
                    .ok()
                    .flatten()
                    .filter(|v| !v.is_empty())
            })
        };
        SlaveStatus {
            io_running: text(&["Slave_IO_Running", "Replica_IO_Running"]).as_deref() == Some("Yes"),
            sql_running: text(&["Slave_SQL_Running", "Replica_SQL_Running"]).as_deref()
                == Some("Yes"),
            seconds_behind: text(&["Seconds_Behind_Master", "Seconds_Behind_Source"])
                .and_then(|s| s.parse().ok()),
            last_error: text(&["Last_SQL_Error"]).or_else(|| text(&["Last_IO_Error"])),
        }
    }))
}

// ---- read-your-writes marks -------------------------------------------------------------

/// Per principal: the primary position its reads must see, in Redis
/// (`{prefix}ryw:{principal}`, a hash of domain → seq merged by maximum, so two hubs
/// recording writes of one principal in either order keep the later one) and in this
/// process. The field `unknown` means the position could not be read: primary until the
/// mark expires.
struct WriteMarks {
    redis: Arc<RedisLink>,
    ttl: Duration,
    merge: Arc<Script>,
    /// Principal → (mark, expiry).
    local: Mutex<HashMap<String, (Mark, Instant)>>,
}

/// KEYS: the mark. ARGV: field, seq, field, seq, ..., ttl in ms. Keeps the larger seq.
const MERGE: &str = r"
for i = 1, #ARGV - 1, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
return 1
";

const UNKNOWN: &str = "unknown";

/// Replication domain (or [`UNKNOWN`]) → the sequence number a read must see.
type Mark = BTreeMap<String, u64>;

fn principal_key(who: &Principal) -> String {
    match who {
        Principal::Admin => "admin".into(),
        Principal::Store(store) => format!("store:{store}"),
    }
}

fn mark_of(position: Option<&GtidPos>) -> Mark {
    match position {
        Some(pos) => pos.seqs().map(|(d, s)| (d.to_string(), s)).collect(),
        None => BTreeMap::from([(UNKNOWN.to_owned(), 1)]),
    }
}

/// Whether a replica at `replica` has applied everything `mark` asks for.
fn mark_covered(mark: &Mark, replica: Option<&GtidPos>) -> bool {
    mark.iter().all(|(field, seq)| {
        let Ok(domain) = field.parse::<u32>() else {
            return false; // `unknown`, or anything we did not write
        };
        replica
            .and_then(|r| r.0.get(&domain))
            .is_some_and(|(_, have)| have >= seq)
    })
}

impl WriteMarks {
    fn new(redis: Arc<RedisLink>, ttl: Duration) -> WriteMarks {
        WriteMarks {
            redis,
            ttl,
            merge: Arc::new(Script::new(MERGE)),
            local: Mutex::default(),
        }
    }

    async fn record(&self, who: &Principal, position: Option<GtidPos>) {
        let key = principal_key(who);
        let mark = mark_of(position.as_ref());
        {
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = local
                .entry(key.clone())
                .or_insert_with(|| (BTreeMap::new(), Instant::now()));
            for (field, seq) in &mark {
                let cur = entry.0.entry(field.clone()).or_insert(0);
                *cur = (*cur).max(*seq);
            }
            entry.1 = Instant::now() + self.ttl;
        }
        let redis_key = self.redis.key(&format!("ryw:{key}"));
        let script = self.merge.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let stored = self
            .redis
            .run("read-your-writes mark", |mut c| async move {
                let mut invocation = script.key(redis_key);
                for (field, seq) in &mark {
                    invocation.arg(field).arg(*seq);
                }
                invocation.arg(ttl_ms);
                invocation.invoke_async::<i64>(&mut c).await
            })
            .await;
        if stored.is_none() {
            tracing::debug!(
                principal = %key,
                "read-your-writes mark kept in this hub only (Redis unavailable)"
            );
        }
    }

    /// Whether `who`'s recorded writes are all on a replica at `replica`.
    async fn covered(&self, who: &Principal, replica: Option<&GtidPos>) -> bool {
        let key = principal_key(who);
        let local = {
            let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local
                .get(&key)
                .filter(|(_, until)| Instant::now() < *until)
                .map(|(mark, _)| mark.clone())
        };
        if let Some(mark) = local {
            if !mark_covered(&mark, replica) {
                return false;
            }
        }
        let redis_key = self.redis.key(&format!("ryw:{key}"));
        let shared: Option<HashMap<String, u64>> = self
            .redis
            .run("read-your-writes lookup", |mut c| async move {
                redis::cmd("HGETALL")
                    .arg(redis_key)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match shared {
            // Another hub's writes cannot be known: the primary is the safe answer.
            None => false,
            Some(mark) => mark_covered(&mark.into_iter().collect(), replica),
        }
    }

    fn prune(&self) {
        let now = Instant::now();
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (_, until)| now < *until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(text: &str) -> GtidPos {
        text.parse().expect("a GTID position")
    }

    #[test]
    fn positions_parse_print_and_compare_per_domain() {
        let p = pos("0-1-42, 1-2-7");
        assert_eq!(p.to_string(), "0-1-42,1-2-7");
        assert!(pos("").is_empty());
        assert!(p.covers(&pos("0-1-42")));
        assert!(p.covers(&pos("0-9-40,1-2-7")), "server ids do not matter");
        assert!(!p.covers(&pos("0-1-43")));
        assert!(!p.covers(&pos("2-1-1")), "a domain the replica never saw");
        assert!(p.covers(&GtidPos::default()));
        assert!(!GtidPos::default().covers(&p));
        assert!("0-1".parse::<GtidPos>().is_err());
        assert!("a-b-c".parse::<GtidPos>().is_err());
    }

    #[test]
    fn staleness_is_the_age_of_the_newest_covered_primary_sample() {
        let start = Instant::now();
        let history: VecDeque<_> = [(0, "0-1-10"), (200, "0-1-20"), (400, "0-1-30")]
            .into_iter()
            .map(|(ms, p)| (start + Duration::from_millis(ms), pos(p)))
            .collect();
        let now = start + Duration::from_millis(450);
        assert_eq!(
            staleness(&history, &pos("0-1-30"), now),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            staleness(&history, &pos("0-1-25"), now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(staleness(&history, &pos("0-1-9"), now), None);
    }

    #[test]
    fn only_a_replicating_replica_within_the_bound_serves() {
        let ok = SlaveStatus {
            io_running: true,
            sql_running: true,
            seconds_behind: Some(0),
            last_error: None,
        };
        let bound = Duration::from_millis(1000);
        assert_eq!(
            assess(Some(&ok), Some(Duration::from_millis(300)), bound),
            Health::Serving
        );
        assert!(matches!(
            assess(Some(&ok), Some(Duration::from_millis(1300)), bound),
            Health::Lagging(_)
        ));
        assert!(matches!(assess(Some(&ok), None, bound), Health::Lagging(_)));
        let sql_stopped = SlaveStatus {
            sql_running: false,
            seconds_behind: None,
            last_error: Some("duplicate key".into()),
            ..ok.clone()
        };
        match assess(Some(&sql_stopped), Some(Duration::ZERO), bound) {
            Health::NotReplicating(why) => {
                assert!(
                    why.contains("SQL thread stopped") && why.contains("duplicate key"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        let null_lag = SlaveStatus {
            seconds_behind: None,
            ..ok
        };
        assert!(matches!(
            assess(Some(&null_lag), Some(Duration::ZERO), bound),
            Health::NotReplicating(_)
        ));
        assert!(matches!(
            assess(None, Some(Duration::ZERO), bound),
            Health::NotReplicating(_)
        ));
    }

    #[tokio::test]
    async fn without_redis_a_principal_reads_the_primary() {
        // Nothing listens on port 1: every Redis call fails at once.
        let link = Arc::new(RedisLink::new("redis://127.0.0.1:1", "t:").expect("a Redis URL"));
        let marks = WriteMarks::new(link, Duration::from_secs(5));
        let replica = pos("0-1-10");
        assert!(
            !marks.covered(&Principal::Admin, Some(&replica)).await,
            "another hub's writes cannot be known"
        );
        marks.record(&Principal::Admin, Some(pos("0-1-12"))).await;
        assert_eq!(
            marks
                .local
                .lock()
                .expect("marks")
                .get("admin")
                .map(|(m, _)| m.clone()),
            Some(BTreeMap::from([("0".to_owned(), 12)])),
            "the mark is kept in the process"
        );
    }

    #[test]
    fn a_mark_is_covered_only_by_a_replica_that_applied_it() {
        let mark = mark_of(Some(&pos("0-1-42")));
        assert!(mark_covered(&mark, Some(&pos("0-1-42"))));
        assert!(mark_covered(&mark, Some(&pos("0-2-50"))));
        assert!(!mark_covered(&mark, Some(&pos("0-1-41"))));
        assert!(!mark_covered(&mark, None));
        let unknown = mark_of(None);
        assert!(!mark_covered(&unknown, Some(&pos("0-1-1000"))));
        // A write on a primary without binlog leaves nothing to wait for.
        assert!(mark_covered(&mark_of(Some(&GtidPos::default())), None));
    }
}
