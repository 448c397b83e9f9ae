//! `bazaar-agent doctor`: checks what a store's IT person would check first, each with a
//! next step when it fails. Read-only: it changes nothing.

use std::path::Path;
use std::time::Duration;

use bazaar_shared::Topics;
use rdkafka::producer::{BaseProducer, Producer};
use rusqlite::OpenFlags;
use serde::Serialize;

use crate::config::AgentConfig;
use crate::housekeeping::database_bytes;

/// Clock skew beyond which occurred_at figures and forecasts start to mislead.
const MAX_SKEW_SECS: i64 = 30;

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
        next_step: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, next: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        detail: detail.into(),
        next_step: Some(next.into()),
    }
}

pub async fn run(config: &AgentConfig, config_path: &Path) -> Report {
    let mut checks = vec![pass(
        "config",
        format!("{} (store {})", config_path.display(), config.store),
    )];
    checks.push(disk(config));
    checks.push(sqlite(&config.database_path()));
    if let Some(stopped) = copy_check(&config.database_path()) {
        checks.push(stopped);
    }
    checks.push(local_api(config).await);
    checks.extend(hub(config).await);
    checks.push(broker(config).await);
    Report {
        store: config.store.to_string(),
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

fn disk(config: &AgentConfig) -> Check {
    let used = database_bytes(&config.database_path());
    let budget = config.disk_budget_bytes;
    let free = std::process::Command::new("df")
        .arg("-Pk")
        .arg(&config.data_dir)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|text| {
            text.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let mib = |b: u64| b / (1024 * 1024);
    let detail = format!(
        "database {} MiB of a {} MiB budget; {} free in {}",
        mib(used),
        mib(budget),
        free.map(|f| format!("{} MiB", mib(f)))
            .unwrap_or_else(|| "unknown".into()),
        config.data_dir.display()
    );
    if used > budget {
        return fail(
            "disk",
            detail,
            "the outbox is over budget: restore the broker connection, or raise disk_budget_mb",
        );
    }
    if free.is_some_and(|f| f < 256 * 1024 * 1024) {
        return fail(
            "disk",
            detail,
            "less than 256 MiB free: free space on the data directory's filesystem",
        );
    }
    pass("disk", detail)
}

fn sqlite(path: &Path) -> Check {
    let opened = rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY);
    let conn = match opened {
        Ok(c) => c,
        Err(e) => {
            return fail(
                "sqlite",
                format!("cannot open {}: {e}", path.display()),
                "run `bazaar-agent init` or check the data directory's permissions",
            )
        }
    };
    match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
        Ok(result) if result == "ok" => {
            let mode = conn.pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0)).unwrap_or_default();
            pass("sqlite", format!("{} integrity ok, journal {mode}", path.display()))
        }
        Ok(result) => fail("sqlite", format!("integrity check: {result}"), "stop the agent, back up the data directory and contact support; the hub keeps everything already acknowledged"),
        Err(e) => fail("sqlite", e.to_string(), "check the data directory's permissions"),
    }
}

/// A failed check when this data directory was found to be a restored or cloned copy
/// (sending stopped); nothing when it was not, or the database cannot be read.
fn copy_check(path: &Path) -> Option<Check> {
    let conn =
        rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let finding = crate::ledger::diverged(&conn).ok()??;
    Some(fail(
        "copy",
        format!("sending stopped: {finding}"),
        "make sure only one agent runs for this store, then run `bazaar-agent run --resnapshot` on it",
    ))
}

async fn local_api(config: &AgentConfig) -> Check {
    let url = format!("http://{}/healthz", config.listen);
    match reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            pass("agent", format!("running, local API on {}", config.listen))
        }
        Ok(r) => fail(
            "agent",
            format!("{url} answered {}", r.status()),
            "restart `bazaar-agent run`",
        ),
        Err(_) => fail(
            "agent",
            format!("nothing answers on {}", config.listen),
            "start it: `bazaar-agent run` (tills cannot record movements until it runs)",
        ),
    }
}

async fn hub(config: &AgentConfig) -> Vec<Check> {
    let url = format!("{}/v1/stores/{}", config.hub_url, config.store);
    let sent_at = chrono::Utc::now();
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(config.token.expose())
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            return vec![fail("hub", format!("{url}: {e}"), "check the network to the hub and `hub_url`; the agent keeps accepting movements meanwhile")]
        }
    };
    let received_at = chrono::Utc::now();
    let mut checks = Vec::new();
    let status = response.status();
    let date = response
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
    checks.push(match status.as_u16() {
        200 => pass(
            "hub",
            format!("{} knows store {}", config.hub_url, config.store),
        ),
        401 | 403 => fail(
            "hub",
            format!("the hub refused this store's token ({status})"),
            "re-run `bazaar-agent init` with the token printed by `bazaar-hub store add`",
        ),
        404 => fail(
            "hub",
            format!("the hub does not know store {}", config.store),
            "register it: `bazaar-hub store add ID`",
        ),
        _ => fail(
            "hub",
            format!("{url} answered {status}"),
            "look at the hub's log",
        ),
    });
    if let Some(hub_time) = date {
        // The Date header has whole seconds; the midpoint of the request is our best guess
        // of when the hub read its clock.
        let midpoint = sent_at + (received_at - sent_at) / 2;
        let skew = (midpoint - hub_time.with_timezone(&chrono::Utc)).num_seconds();
        checks.push(if skew.abs() <= MAX_SKEW_SECS {
            pass("clock", format!("{skew:+} s against the hub"))
        } else {
            fail(
                "clock",
                format!("{skew:+} s against the hub"),
                "enable time synchronisation (NTP) on this server",
            )
        });
    }
    checks
}

async fn broker(config: &AgentConfig) -> Check {
    let client = config.kafka_config();
    let topic = Topics::with_prefix(&config.topic_prefix).movements;
    let outcome = tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = client.create().map_err(|e| e.to_string())?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        Ok::<_, String>((topic, partitions))
    })
    .await;
    match outcome {
        Ok(Ok((topic, n))) if n > 0 => pass(
            "broker",
            format!(
                "{} answers; {topic} has {n} partitions; Kafka properties: {}",
                config.kafka_brokers,
                config.kafka_properties.describe()
            ),
        ),
        Ok(Ok((topic, _))) => fail(
            "broker",
            format!("{topic} does not exist yet"),
            "start `bazaar-agent run` or the hub: they create missing topics",
        ),
        Ok(Err(e)) => fail(
            "broker",
            format!(
                "{}: {e} (Kafka properties: {})",
                config.kafka_brokers,
                config.kafka_properties.describe()
            ),
            "check the network to the broker and `kafka_brokers`; movements queue safely meanwhile",
        ),
        Err(e) => fail("broker", e.to_string(), "retry"),
    }
}
