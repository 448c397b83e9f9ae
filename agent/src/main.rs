// Tests state their expectations with unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bazaar_agent::config::{self, AgentConfig, FileConfig, Secret};
use bazaar_agent::{ledger, startup};
use bazaar_shared::{SigningKey, StoreId};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bazaar-agent",
    version,
    about = "Bazaar store agent: takes every stock movement, works offline, syncs through Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store the store's id, credentials and settings under --data. Needs no network.
    Init {
        #[arg(long)]
        store: String,
        /// The hub's base URL, e.g. https://hub.example:8080
        #[arg(long)]
        hub: String,
        /// The store token printed by `bazaar-hub store add`.
        #[arg(long)]
        token: String,
        /// The signing key printed by `bazaar-hub store add` (standard base64).
        #[arg(long)]
        key: String,
        #[arg(long, env = "BAZAAR_AGENT_DATA", default_value = config::DEFAULT_DATA_DIR)]
        data: PathBuf,
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        kafka_brokers: Option<String>,
        #[arg(long)]
        topic_prefix: Option<String>,
    },
    /// Run the agent: local API, durable outbox, sync.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Download the store's stock and positions from the hub again before sending
        /// (pending movements are kept and replayed on top).
        #[arg(long)]
        resnapshot: bool,
    },
    /// Show sync health: pending, sent, acknowledged, parked, last delivery and hub
    /// acknowledgement, disk budget, bootstrap.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Record a movement through the running agent, e.g. `record sale MILK-1L 2`.
    Record {
        kind: String,
        sku: String,
        /// Units (the kind gives the sign); a signed delta for an adjustment; the counted
        /// figure for a count.
        qty: i64,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long = "ref")]
        reference: Option<String>,
        #[arg(long)]
        to_store: Option<String>,
        #[arg(long)]
        from_store: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check configuration, disk, SQLite, the local API, the hub, the broker and the clock.
    Doctor {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Exchange a one-time code from HQ for the store's credentials and write the
    /// configuration (as root with no --data: the installed service's).
    Enroll(bazaar_agent::enroll::EnrollArgs),
    /// Check the configuration `run` would load and its data directory (the unit's ExecStartPre).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the ledger schema version this binary migrates to.
    SchemaVersion,
    /// Show on-hand stock, one sku or all.
    Stock {
        sku: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    bazaar_shared::service::init_logging("info,rdkafka=warn,warp=warn");
    let cli = Cli::parse();
    bazaar_shared::service::run_main(dispatch(cli.command));
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init {
            store,
            hub,
            token,
            key,
            data,
            listen,
            kafka_brokers,
            topic_prefix,
        } => init(
            store,
            hub,
            token,
            key,
            data,
            listen,
            kafka_brokers,
            topic_prefix,
        ),
        Command::Run { config, resnapshot } => run(config, resnapshot).await,
        Command::Enroll(args) => bazaar_agent::enroll::main(args).await,
        Command::CheckConfig { config } => bazaar_agent::enroll::check_config(config.as_deref()),
        Command::SchemaVersion => bazaar_agent::enroll::print_schema_version(),
        Command::Status { config, json } => status(config, json).await,
        Command::Doctor { config, json } => {
            let path = AgentConfig::locate(config.as_deref());
            let cfg = AgentConfig::load(config.as_deref())?;
            let report = bazaar_agent::doctor::run(&cfg, &path).await;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for check in &report.checks {
                    println!(
                        "{} {:<7} {}",
                        if check.ok { "ok  " } else { "FAIL" },
                        check.name,
                        check.detail
                    );
                    if let Some(next) = &check.next_step {
                        println!("             next: {next}");
                    }
                }
            }
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Record {
            kind,
            sku,
            qty,
            reason,
            reference,
            to_store,
            from_store,
            idempotency_key,
            config,
        } => {
            let mut body = serde_json::json!({"kind": kind, "sku": sku});
            if kind == "count" {
                body["counted"] = qty.into();
            } else {
                body["qty"] = qty.into();
            }
            for (field, value) in [
                ("reason", reason),
                ("ref", reference),
                ("to_store", to_store),
                ("from_store", from_store),
            ] {
                if let Some(v) = value {
                    body[field] = v.into();
                }
            }
            let cfg = AgentConfig::load(config.as_deref())?;
            let mut request = local(&cfg, reqwest::Method::POST, "/v1/movements")?.json(&body);
            if let Some(k) = idempotency_key {
                request = request.header("Idempotency-Key", k);
            }
            let reply = send(&cfg, request).await?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
            Ok(())
        }
        Command::Stock { sku, config, json } => {
            let cfg = AgentConfig::load(config.as_deref())?;
            let path = match &sku {
                Some(s) => format!("/v1/stock/{s}"),
                None => "/v1/stock?limit=5000".into(),
            };
            let reply = send(&cfg, local(&cfg, reqwest::Method::GET, &path)?).await?;
            if json {
                println!("{}", serde_json::to_string(&reply)?);
                return Ok(());
            }
            let items = match reply.get("items") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                _ => vec![reply.clone()],
            };
            println!("{:<40} {:>12} {:>8}", "SKU", "ON HAND", "PENDING");
            for item in items {
                println!(
                    "{:<40} {:>12} {:>8}",
                    item["sku"].as_str().unwrap_or("?"),
                    item["on_hand"],
                    item["pending"]
                );
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn init(
    store: String,
    hub: String,
    token: String,
    key: String,
    data: PathBuf,
    listen: Option<String>,
    kafka_brokers: Option<String>,
    topic_prefix: Option<String>,
) -> anyhow::Result<()> {
    StoreId::parse(store.clone()).context("--store")?;
    SigningKey::from_base64(&key).context("--key (the `key` printed by `bazaar-hub store add`)")?;
    let file = FileConfig {
        store,
        hub_url: hub,
        token: Secret::new(token),
        key: Secret::new(key),
        data_dir: Some(data.clone()),
        listen,
        local_token: None,
        kafka_brokers,
        topic_prefix,
        disk_budget_mb: None,
        resend_after_secs: None,
        retention_days: None,
        kafka: Default::default(),
    };
    // Check the whole configuration as `run` will see it before writing anything.
    let checked = AgentConfig::from_layers(file.clone(), data.clone(), |_| None)?;
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let path = data.join(config::CONFIG_FILE);
    let text = toml::to_string_pretty(&file)?;
    write_private(&path, &text)?;
    let conn = ledger::open(&checked.database_path())?;
    ledger::set_meta(&conn, ledger::META_STORE, checked.store.as_str())?;
    eprintln!(
        "initialised store {} in {}\nnext: BAZAAR_AGENT_DATA={} bazaar-agent run",
        checked.store,
        data.display(),
        data.display()
    );
    Ok(())
}

/// The configuration holds the store's secrets: readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

async fn run(config: Option<PathBuf>, resnapshot: bool) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(config.as_deref())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another agent running? set `listen` or BAZAAR_AGENT_LISTEN", cfg.listen))?;
    bazaar_agent::enroll::systemd::spawn(cfg.listen);
    startup::run_with(
        cfg,
        listener,
        bazaar_shared::service::shutdown_signal(),
        startup::RunOptions { resnapshot },
    )
    .await
}

fn local(
    cfg: &AgentConfig,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut request = client.request(method, format!("http://{}{}", cfg.listen, path));
    if let Some(token) = &cfg.local_token {
        request = request.bearer_auth(token.expose());
    }
    Ok(request)
}

async fn send(
    cfg: &AgentConfig,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<serde_json::Value> {
    let response = request.send().await.with_context(|| {
        format!(
            "the agent at {} did not answer: is `bazaar-agent run` running?",
            cfg.listen
        )
    })?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("the agent refused ({status}): {message}");
    }
    Ok(body)
}

async fn status(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(config.as_deref())?;
    let status = send(&cfg, local(&cfg, reqwest::Method::GET, "/v1/status")?).await?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

/// `bazaar-agent status` for people: one line per figure, `-` for what is not known yet.
fn render_status(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let field = |k: &str| text(&status[k]);
    let boot = &status["bootstrap"];
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<18}{value}");
    };
    line("store", field("store"));
    line(
        "online",
        format!(
            "{} (broker {}, hub {})",
            field("online"),
            field("broker_online"),
            field("hub_online")
        ),
    );
    line(
        "pending",
        format!(
            "{} (oldest {} s)",
            field("pending"),
            field("oldest_pending_age_s")
        ),
    );
    line("sent, not acked", field("sent"));
    line("acked (kept)", field("acked"));
    line("parked", field("parked"));
    line(
        "last seq",
        format!(
            "{} (hub has applied {})",
            field("last_seq"),
            field("hub_applied_seq")
        ),
    );
    line("last delivery", field("last_delivery_at"));
    line(
        "last hub ack",
        format!(
            "{} (seq {})",
            field("last_ack_at"),
            field("hub_applied_seq")
        ),
    );
    line(
        "hub commands",
        format!("applied to hub_seq {}", field("hub_watermark")),
    );
    line(
        "disk budget used",
        format!(
            "{:.1}% ({} of {} MiB){}",
            status["disk_budget_used"].as_f64().unwrap_or(0.0) * 100.0,
            status["disk_bytes"].as_u64().unwrap_or(0) / (1024 * 1024),
            status["disk_budget_bytes"].as_u64().unwrap_or(0) / (1024 * 1024),
            if status["over_budget"] == true {
                " OVER BUDGET"
            } else {
                ""
            }
        ),
    );
    let snapshot = match &boot["snapshot"] {
        serde_json::Value::Null => String::new(),
        s => format!(
            ", snapshot at seq {} / hub_seq {} as of {}",
            text(&s["last_seq"]),
            text(&s["last_hub_seq"]),
            text(&s["as_of"])
        ),
    };
    let mut bootstrap = format!("{}{snapshot}", text(&boot["state"]));
    if boot["state"] == "downloading" {
        let _ = write!(
            bootstrap,
            " ({} of {} skus)",
            text(&boot["skus_received"]),
            text(&boot["skus_total"])
        );
    }
    if let Some(at) = boot["bootstrapped_at"].as_str() {
        let _ = write!(bootstrap, ", installed {at}");
    }
    if let Some(detail) = boot["detail"].as_str() {
        let _ = write!(bootstrap, ": {detail}");
    }
    line("bootstrap", bootstrap);
    if status["sending_stopped"] == true {
        line(
            "SENDING STOPPED",
            format!(
                "{}; tills are still served. Run `bazaar-agent run --resnapshot` on the one agent \
                 that stays for this store",
                text(&status["diverged_copy"])
            ),
        );
    }
    if let Some(e) = status["last_error"].as_str() {
        line("last error", e.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render_status;

    #[test]
    fn status_for_people_shows_every_figure() {
        let status = serde_json::json!({
            "store": "S1", "online": false, "broker_online": false, "hub_online": true,
            "pending": 12, "oldest_pending_age_s": 40, "sent": 3, "acked": 100, "parked": 1,
            "last_seq": 115, "hub_applied_seq": 100, "last_delivery_at": "2026-11-26T10:00:00.000Z",
            "last_ack_at": "2026-11-26T10:00:01.000Z", "hub_watermark": 7,
            "disk_bytes": 3 * 1024 * 1024, "disk_budget_bytes": 4 * 1024 * 1024,
            "disk_budget_used": 0.75, "over_budget": false, "last_error": "broker unreachable",
            "bootstrap": {"state": "done", "detail": null, "skus_received": 0, "skus_total": 0,
                "bootstrapped_at": "2026-11-26T09:00:00.000Z", "resnapshot_requested": false,
                "snapshot": {"last_seq": 90, "last_hub_seq": 5, "as_of": "2026-11-26T08:59:59Z", "skus": 40}}
        });
        let text = render_status(&status);
        for expected in [
            "pending           12 (oldest 40 s)",
            "sent, not acked   3",
            "acked (kept)      100",
            "parked            1",
            "last hub ack      2026-11-26T10:00:01.000Z (seq 100)",
            "last delivery     2026-11-26T10:00:00.000Z",
            "disk budget used  75.0% (3 of 4 MiB)",
            "bootstrap         done, snapshot at seq 90 / hub_seq 5 as of 2026-11-26T08:59:59Z, installed 2026-11-26T09:00:00.000Z",
            "last error        broker unreachable",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        assert!(!text.contains("SENDING STOPPED"));
        let copy = serde_json::json!({"sending_stopped": true, "diverged_copy": "the hub applied seq 9 (id x), but ...",
            "bootstrap": {"state": "done"}});
        assert!(render_status(&copy).contains(
            "SENDING STOPPED   the hub applied seq 9 (id x), but ...; tills are still served. Run `bazaar-agent run --resnapshot`"
        ));
        let waiting = serde_json::json!({"bootstrap": {"state": "waiting_for_hub",
            "detail": "the hub cannot serve the snapshot yet (503 catching_up)"}});
        assert!(render_status(&waiting)
            .contains("bootstrap         waiting_for_hub: the hub cannot serve the snapshot yet"));
    }
}
