use std::path::PathBuf;

use anyhow::Context;
use bazaar_hub::config::HubConfig;
use bazaar_hub::{db, startup, stores};
use bazaar_shared::StoreId;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bazaar-hub", version, about = "Bazaar hub: the chain's stock ledger, API and sync")]
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
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn,sqlx=warn,warp=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(dispatch(cli.command)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let cfg = HubConfig::load(config.as_deref())?;
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .with_context(|| format!("cannot listen on {}: set BAZAAR_HUB_LISTEN to a free address", cfg.listen))?;
            startup::run(cfg, listener, shutdown_signal()).await
        }
        Command::Migrate { config } => {
            let cfg = HubConfig::load(config.as_deref())?;
            db::migrate(cfg.mysql_url.expose()).await?;
            eprintln!("database at {} is up to date", db::redact(cfg.mysql_url.expose()));
            Ok(())
        }
        Command::Store { command: StoreCommand::Add { id, name, json, config } } => {
            let store = StoreId::parse(id).context("store id")?;
            let cfg = HubConfig::load(config.as_deref())?;
            let pool = db::migrate(cfg.mysql_url.expose()).await?;
            let credentials = stores::register(&pool, &store, name.as_deref()).await?;
            bazaar_hub::audit::record(&pool, "cli", "store.register", store.as_str(), None,
                Some(serde_json::json!({"store": store.as_str(), "name": name})), None).await;
            if json {
                println!("{}", serde_json::to_string(&credentials)?);
            } else {
                println!("store  {}\ntoken  {}\nkey    {}", credentials.store, credentials.token, credentials.key);
                eprintln!(
                    "shown once: install the agent with\n  bazaar-agent init --store {} --hub <HUB URL> --token {} --key {}",
                    credentials.store, credentials.token, credentials.key
                );
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
