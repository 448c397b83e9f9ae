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
//!   balancer for what is a slowdown (DESIGN §7: Redis down means no 5xx).

use std::collections::{BTreeMap, HashMap};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every check passed.
    Ready,
    /// A check that is not required failed: the hub serves, with less.
    Degraded,
    /// A required check failed: route requests elsewhere.
    Unready,
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
}

/// The body of `/readyz`, 200 or 503.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Readiness {
    pub status: Status,
    /// By dependency: `mysql`, `mysql_replica` (when configured), `redis`, `kafka`.
    pub checks: BTreeMap<String, Check>,
}

impl Readiness {
    pub fn from_checks(checks: BTreeMap<String, Check>) -> Readiness {
        let status = if checks.values().any(|c| c.required && !c.ok) {
            Status::Unready
        } else if checks.values().any(|c| !c.ok) {
            Status::Degraded
        } else {
            Status::Ready
        };
        Readiness { status, checks }
    }

    /// 503 only when a required check failed.
    pub fn http_status(&self) -> u16 {
        match self.status {
            Status::Unready => 503,
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
        },
        Err((error, fix)) => Check {
            ok: false,
            required,
            took_ms,
            error: Some(error),
            fix: Some(fix),
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
    Readiness::from_checks(checks)
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
            (Status::Unready, 503)
        );
        let json = serde_json::to_value(&unready).unwrap();
        assert_eq!(json["status"], "unready");
        assert_eq!(json["checks"]["mysql"]["fix"], "start it");
        assert!(json["checks"]["redis"].get("error").is_none());
    }
}
