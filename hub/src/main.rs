use std::path::PathBuf;

use anyhow::Context;
use bazaar_hub::config::HubConfig;
use bazaar_hub::{db, startup, stores};
use bazaar_shared::StoreId;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bazaar-hub",
    version,
    about = "Bazaar hub: the chain's stock ledger, API and sync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and consume every store's movements.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create the database if missing and apply the embedded migrations.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Forecast daily demand from a CSV of `series,date,qty`; writes
    /// `series,date,forecast,lo,hi,model` (DESIGN §8).
    Forecast {
        #[arg(long)]
        input: PathBuf,
        /// Days to forecast after each series' last date.
        #[arg(long, default_value_t = 28, value_parser = clap::value_parser!(u16).range(1..=366))]
        horizon: u16,
        #[arg(long)]
        output: PathBuf,
    },
    /// Import a sales history (CSV `store,sku,date,qty`) into `daily_sales`: every row
    /// checked on its own, bad rows reported with their line, idempotent on re-import.
    ImportSales {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check the configuration `serve` would load, connecting to nothing (the unit's ExecStartPre).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage stores.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Register a store; prints its token and signing key, shown this once.
    Add {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Issue a one-time enrolment code instead of showing the token and key (registers the store if needed).
        #[arg(long)]
        enrolment: bool,
        /// How long the enrolment code stays valid.
        #[arg(long, default_value_t = bazaar_hub::enrolment::DEFAULT_VALID_HOURS)]
        valid_hours: u32,
    },
}

fn main() {
    bazaar_shared::service::init_logging("info,rdkafka=warn,sqlx=warn,warp=warn");
    let cli = Cli::parse();
    bazaar_shared::service::run_main(dispatch(cli.command));
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let cfg = HubConfig::load(config.as_deref())?;
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {}: set BAZAAR_HUB_LISTEN to a free address",
                        cfg.listen
                    )
                })?;
            bazaar_hub::enrolment::systemd::spawn(cfg.listen);
            startup::run(cfg, listener, bazaar_shared::service::shutdown_signal()).await
        }
        Command::ImportSales { file, config } => {
            let cfg = HubConfig::load(config.as_deref())?;
            let pool = db::migrate(cfg.mysql_url.expose()).await?;
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let started = std::time::Instant::now();
            let summary = bazaar_hub::import_sales::import(
                &pool,
                std::io::BufReader::new(input),
                |read, imported, bad| {
                    eprintln!("[import-sales] {read} rows read, {imported} imported, {bad} refused ({:.1} s)", started.elapsed().as_secs_f64())
                },
            )
            .await?;
            for row in &summary.reported {
                eprintln!("{}:{}: {}", file.display(), row.line, row.why);
            }
            if summary.bad > summary.reported.len() as u64 {
                eprintln!(
                    "... and {} more refused rows",
                    summary.bad - summary.reported.len() as u64
                );
            }
            println!(
                "{} sales days imported, {} rows refused",
                summary.imported, summary.bad
            );
            if summary.bad > 0 {
                anyhow::bail!("{} rows were refused (listed above with their lines); fix them and import again: the import is idempotent", summary.bad);
            }
            Ok(())
        }
        Command::CheckConfig { config } => bazaar_hub::enrolment::check_config(config.as_deref()),
        Command::Migrate { config } => {
            let cfg = HubConfig::load(config.as_deref())?;
            db::migrate(cfg.mysql_url.expose()).await?;
            eprintln!(
                "database at {} is up to date",
                db::redact(cfg.mysql_url.expose())
            );
            Ok(())
        }
        Command::Forecast {
            input,
            horizon,
            output,
        } => forecast(&input, horizon.into(), &output),
        Command::Store {
            command:
                StoreCommand::Add {
                    id,
                    name,
                    json,
                    config,
                    enrolment,
                    valid_hours,
                },
        } => {
            let store = StoreId::parse(id).context("store id")?;
            let cfg = HubConfig::load(config.as_deref())?;
            let pool = db::migrate(cfg.mysql_url.expose()).await?;
            if enrolment {
                return bazaar_hub::enrolment::cli_issue(
                    &pool,
                    &store,
                    name.as_deref(),
                    valid_hours,
                    json,
                )
                .await;
            }
            let credentials = stores::register(&pool, &store, name.as_deref()).await?;
            bazaar_hub::audit::record(
                &pool,
                "cli",
                "store.register",
                store.as_str(),
                None,
                Some(serde_json::json!({"store": store.as_str(), "name": name})),
                None,
            )
            .await;
            if json {
                println!("{}", serde_json::to_string(&credentials)?);
            } else {
                println!(
                    "store  {}\ntoken  {}\nkey    {}",
                    credentials.store, credentials.token, credentials.key
                );
                eprintln!(
                    "shown once: install the agent with\n  bazaar-agent init --store {} --hub <HUB URL> --token {} --key {}",
                    credentials.store, credentials.token, credentials.key
                );
            }
            Ok(())
        }
    }
}

/// Forecasts into a temporary file beside `output` and renames it into place, so a bad
/// input never leaves a half-written forecast behind.
fn forecast(
    input: &std::path::Path,
    horizon: usize,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let reader = std::fs::File::open(input).with_context(|| {
        format!(
            "cannot open {}: give a CSV with columns series,date,qty",
            input.display()
        )
    })?;
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let staging = dir.join(format!(".bazaar-forecast-{}.tmp", std::process::id()));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} forecasting {pos}/{len} series [{elapsed_precise}, {per_sec}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let summary = bazaar_intelligence::csv_io::forecast_csv(
        std::io::BufReader::new(reader),
        std::io::BufWriter::new(
            std::fs::File::create(&staging)
                .with_context(|| format!("cannot write in {}", dir.display()))?,
        ),
        horizon,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(anyhow::anyhow!("{}: {e}", input.display()));
        }
    };
    std::fs::rename(&staging, output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let models = summary
        .models
        .iter()
        .map(|(model, n)| format!("{model:?} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "forecast {} series ({} input rows) for {horizon} days in {:.1}s -> {} ({} rows)\nmodels chosen: {models}",
        summary.series,
        summary.input_rows,
        started.elapsed().as_secs_f64(),
        output.display(),
        summary.output_rows,
    );
    Ok(())
}
