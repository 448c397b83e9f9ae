//! `/readyz`: can this hub instance serve its API right now? Each dependency is checked
//! concurrently under its own deadline, and each failure is named with what to do.
//!
//! Invariants:
//! - the answer comes within about [`CHECK_TIMEOUT`], whatever hangs;
//! - only the MySQL primary is required: without it the hub can neither check a token
//!   nor read, so it answers 503 and the balancer should route around it;
//! - the replica, Redis and Kafka are checked and reported, but their failure answers 200
//!   with `"status": "degraded"`: the hub goes on serving (reads fall back to the primary,
//!   stock to MySQL, ingest waits for the broker), and every instance shares those
//!   dependencies, so failing readiness on them would take the whole fleet out of the
//!   balancer for what is a slowdown (DESIGN §7: Redis down means no 5xx);
//! - ingest is checked only in a hub that runs it (`bazaar-hub serve` starts it; a hub
//!   built without it, as the API tests build theirs, has no ingest check): not running,
//!   or applying nothing for [`INGEST_STALL`] while messages wait, is `degraded`;
//! - anyone may ask, and gets the status alone (`{"status": "ready"}`); what each check
//!   found, which names hosts and settings, is for the admin token ([`Readiness::summary`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bazaar_shared::kafka::base_config;
use bazaar_shared::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::startup::Hub;

/// The deadline of each check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Ingest that has applied nothing for this long while messages wait for it is stalled.
pub const INGEST_STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every check passed.
    Ready,
    /// A check that is not required failed: the hub serves, with less.
    Degraded,
    /// A required check failed: route requests elsewhere.
    NotReady,
}

/// One dependency's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Check {
    pub ok: bool,
    /// Whether its failure makes the hub unready (503).
    pub required: bool,
    /// How long the check took, in milliseconds.
    pub took_ms: u64,
    /// What failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// What the check saw when it passed, where there is something to say (ingest: the
    /// age of the last batch and the messages behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The body of `/readyz`, 200 or 503.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Readiness {
    pub status: Status,
    /// By dependency: `mysql`, `mysql_replica` (when configured), `redis`, `kafka`,
    /// `ingest` (when this hub runs it). Only with the admin token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, Check>>,
}

impl Readiness {
    pub fn from_checks(checks: BTreeMap<String, Check>) -> Readiness {
        let status = if checks.values().any(|c| c.required && !c.ok) {
            Status::NotReady
        } else if checks.values().any(|c| !c.ok) {
            Status::Degraded
        } else {
            Status::Ready
        };
        Readiness {
            status,
            checks: Some(checks),
        }
    }

    /// What an anonymous caller gets: the status, without the checks (they name hosts,
    /// settings and errors).
    pub fn summary(self) -> Readiness {
        Readiness {
            checks: None,
            ..self
        }
    }

    /// 503 only when a required check failed.
    pub fn http_status(&self) -> u16 {
        match self.status {
            Status::NotReady => 503,
            Status::Ready | Status::Degraded => 200,
        }
    }
}

type Outcome = Result<(), (String, String)>;

fn check(required: bool, started: Instant, outcome: Outcome) -> Check {
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(()) => Check {
            ok: true,
            required,
            took_ms,
            error: None,
            fix: None,
            detail: None,
        },
        Err((error, fix)) => Check {
            ok: false,
            required,
            took_ms,
            error: Some(error),
            fix: Some(fix),
            detail: None,
        },
    }
}

/// Runs every check at once.
pub async fn assess(hub: &Hub) -> Readiness {
    let timed = |required| {
        let started = Instant::now();
        move |outcome| check(required, started, outcome)
    };
    let (mysql, replica, redis, kafka) = tokio::join!(
        async { timed(true)(mysql_primary(hub).await) },
        async {
            let done = timed(false);
            replica(hub).map(done)
        },
        async { timed(false)(redis(hub).await) },
        async { timed(false)(kafka(hub).await) },
    );
    let mut checks = BTreeMap::new();
    checks.insert("mysql".to_owned(), mysql);
    if let Some(replica) = replica {
        checks.insert("mysql_replica".to_owned(), replica);
    }
    checks.insert("redis".to_owned(), redis);
    checks.insert("kafka".to_owned(), kafka);
    if let Some(ingest) = ingest(hub) {
        checks.insert("ingest".to_owned(), ingest);
    }
    Readiness::from_checks(checks)
}

/// What ingest is doing in this hub; `None` when this hub never started it.
fn ingest(hub: &Hub) -> Option<Check> {
    let counters = &hub.ingest;
    let started_ms = counters.started_ms.load(Ordering::Relaxed);
    if started_ms == 0 {
        return None;
    }
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let last_batch_ms = counters.last_batch_ms.load(Ordering::Relaxed);
    let behind: Option<i64> = counters
        .lag()
        .latest()
        .map(|(_, partitions)| partitions.values().map(|p| p.lag().max(0)).sum());
    let outcome = ingest_outcome(IngestState {
        running: counters.running.load(Ordering::Relaxed),
        since_start: Duration::from_millis(now_ms.saturating_sub(started_ms)),
        since_last_batch: (last_batch_ms > 0)
            .then(|| Duration::from_millis(now_ms.saturating_sub(last_batch_ms))),
        behind,
    });
    let (result, detail) = match outcome {
        Ok(detail) => (Ok(()), Some(detail)),
        Err(failure) => (Err(failure), None),
    };
    let mut check = check(false, Instant::now(), result);
    check.detail = detail;
    Some(check)
}

/// What the ingest check reads.
#[derive(Debug, Clone, Copy)]
struct IngestState {
    running: bool,
    since_start: Duration,
    since_last_batch: Option<Duration>,
    /// Messages in this hub's partitions not consumed yet (`None` before librdkafka's
    /// first statistics).
    behind: Option<i64>,
}

/// `Ok(detail)` or `Err((error, fix))`.
fn ingest_outcome(state: IngestState) -> Result<String, (String, String)> {
    if !state.running {
        return Err((
            "ingest is not running in this hub: it waits for the broker, or it stopped".to_owned(),
            "see the hub's log (`ingest`, `broker not ready`); check BAZAAR_HUB_KAFKA_BROKERS and BAZAAR_HUB_KAFKA_PROPERTIES; movements wait in Kafka meanwhile".to_owned(),
        ));
    }
    let idle = state.since_last_batch.unwrap_or(state.since_start);
    let last = match state.since_last_batch {
        Some(age) => format!("last batch {} s ago", age.as_secs()),
        None => "no batch applied yet".to_owned(),
    };
    let behind = match state.behind {
        Some(n) => format!("{n} messages behind"),
        None => "lag not sampled yet".to_owned(),
    };
    match state.behind {
        Some(n) if n > 0 && idle > INGEST_STALL => Err((
            format!("ingest has applied nothing for {} s while {n} messages wait", idle.as_secs()),
            "see the hub's log for the batch it is stuck on (`ingest`, `transient`); check that MySQL takes writes; `bazaar_hub_ingest_lag_messages` in /metrics shows the partitions".to_owned(),
        )),
        _ => Ok(format!("running; {last}; {behind}")),
    }
}

async fn mysql_primary(hub: &Hub) -> Outcome {
    let url = crate::db::redact(hub.config.mysql_url.expose());
    let fix = || {
        format!("start MySQL at {url} or correct BAZAAR_HUB_MYSQL_URL; without the primary the hub can neither check tokens nor read")
    };
    match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&hub.pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err((format!("MySQL primary: {e}"), fix())),
        Err(_) => Err((
            format!("MySQL primary did not answer within {CHECK_TIMEOUT:?}"),
            fix(),
        )),
    }
}

/// The read router tracks the replica all the time; readiness only reports its view.
fn replica(hub: &Hub) -> Option<Outcome> {
    hub.replica_ready().map(|state| {
        state.map_err(|why| {
            (
                why,
                "reads go to the primary meanwhile; check the replica's replication (SHOW SLAVE STATUS) or BAZAAR_HUB_MYSQL_REPLICA_URL".to_owned(),
            )
        })
    })
}

async fn redis(hub: &Hub) -> Outcome {
    let url = crate::db::redact(&hub.config.redis_url);
    let failed = || {
        Err((
            format!("Redis at {url} is unreachable"),
            format!("start Redis at {url} or correct BAZAAR_HUB_REDIS_URL; meanwhile stock reads go to MySQL and rate limits are per hub instance"),
        ))
    };
    // Waits for one connection attempt when there is no connection, so a Redis that just
    // came back is seen at once rather than after the link's own retry.
    if !hub.redis.connect().await {
        return failed();
    }
    let pong = hub
        .redis
        .run("readiness", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await;
    match pong {
        Some(_) => Ok(()),
        None => failed(),
    }
}

/// One metadata client per broker list and process, created on first use: a librdkafka
/// client per probe would start and stop its threads every few seconds.
fn kafka_client(brokers: &str) -> Result<Arc<BaseConsumer>, String> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<BaseConsumer>>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(client) = clients.get(brokers) {
        return Ok(client.clone());
    }
    let client: BaseConsumer = base_config(brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| format!("cannot create a Kafka client for {brokers}: {e}"))?;
    let client = Arc::new(client);
    clients.insert(brokers.to_owned(), client.clone());
    Ok(client)
}

async fn kafka(hub: &Hub) -> Outcome {
    let brokers = hub.config.kafka_brokers.clone();
    let topic = Topics::with_prefix(&hub.config.topic_prefix).movements;
    let fix = format!("start the broker at {brokers} or correct BAZAAR_HUB_KAFKA_BROKERS; the API serves meanwhile and ingest resumes when it answers");
    let client = kafka_client(&brokers).map_err(|e| (e, fix.clone()))?;
    let probe_topic = topic.clone();
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .fetch_metadata(Some(&probe_topic), CHECK_TIMEOUT)
            .map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == probe_topic)
                    .map(|t| (t.error(), t.partitions().len()))
            })
    })
    .await;
    match metadata {
        Ok(Ok(Some((None, partitions)))) if partitions > 0 => Ok(()),
        Ok(Ok(_)) => Err((
            format!("topic {topic} does not exist on {brokers}"),
            "`bazaar-hub serve` creates it at start once the broker answers; check BAZAAR_HUB_TOPIC_PREFIX".to_owned(),
        )),
        Ok(Err(e)) => Err((
            format!("Kafka at {brokers} did not answer a metadata request within {CHECK_TIMEOUT:?}: {e}"),
            fix,
        )),
        Err(e) => Err((format!("the Kafka check did not finish: {e}"), fix)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(ok: bool, required: bool) -> Check {
        check(
            required,
            Instant::now(),
            if ok {
                Ok(())
            } else {
                Err(("down".into(), "start it".into()))
            },
        )
    }

    #[test]
    fn only_a_required_failure_makes_the_hub_unready() {
        let of = |list: &[(&str, bool, bool)]| {
            Readiness::from_checks(
                list.iter()
                    .map(|(name, ok, required)| ((*name).to_owned(), c(*ok, *required)))
                    .collect(),
            )
        };
        let ready = of(&[("mysql", true, true), ("redis", true, false)]);
        assert_eq!((ready.status, ready.http_status()), (Status::Ready, 200));
        let degraded = of(&[("mysql", true, true), ("redis", false, false)]);
        assert_eq!(
            (degraded.status, degraded.http_status()),
            (Status::Degraded, 200)
        );
        let unready = of(&[("mysql", false, true), ("redis", true, false)]);
        assert_eq!(
            (unready.status, unready.http_status()),
            (Status::NotReady, 503)
        );
        let json = serde_json::to_value(&unready).unwrap();
        assert_eq!(json["status"], "not_ready");
        assert_eq!(json["checks"]["mysql"]["fix"], "start it");
        assert!(json["checks"]["redis"].get("error").is_none());
        // The anonymous view: the status alone.
        let summary = unready.summary();
        assert_eq!(summary.http_status(), 503);
        assert_eq!(
            serde_json::to_value(&summary).unwrap(),
            serde_json::json!({"status": "not_ready"})
        );
    }

    fn state(running: bool, last_batch_secs: Option<u64>, behind: Option<i64>) -> IngestState {
        IngestState {
            running,
            since_start: Duration::from_secs(3600),
            since_last_batch: last_batch_secs.map(Duration::from_secs),
            behind,
        }
    }

    #[test]
    fn ingest_is_degraded_when_stopped_or_stalled_behind_not_when_idle() {
        // Stopped (waiting for the broker, or ended).
        let stopped = ingest_outcome(state(false, Some(1), Some(0))).unwrap_err();
        assert!(stopped.0.contains("not running"), "{stopped:?}");
        assert!(
            stopped.1.contains("BAZAAR_HUB_KAFKA_BROKERS"),
            "{stopped:?}"
        );
        // Idle chain: nothing to apply, however old the last batch.
        let idle = ingest_outcome(state(true, Some(7200), Some(0))).unwrap();
        assert!(
            idle.contains("last batch 7200 s ago") && idle.contains("0 messages behind"),
            "{idle}"
        );
        // Messages waiting and nothing applied for longer than the stall bound.
        let stalled = ingest_outcome(state(true, Some(INGEST_STALL.as_secs() + 1), Some(12)));
        assert!(stalled.unwrap_err().0.contains("12 messages wait"));
        // Behind but applying.
        assert!(ingest_outcome(state(true, Some(2), Some(500))).is_ok());
        // Started an hour ago, never applied, messages waiting: stalled.
        assert!(ingest_outcome(state(true, None, Some(3))).is_err());
        // Before the first lag sample nothing says it is behind.
        let unsampled = ingest_outcome(state(true, None, None)).unwrap();
        assert!(unsampled.contains("no batch applied yet"), "{unsampled}");
    }
}
