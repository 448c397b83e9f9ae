//! `bazaar-loadgen`: a chain of N simulated stores (default 2,000) against a tansu broker
//! started for the run, H `bazaar-hub` processes in one consumer group, the local MariaDB
//! (a fresh database) and Redis. Most stores are lightweight — they produce the exact signed
//! wire format through one shared idempotent producer and follow their `store-commands`
//! partition; `--agents N` of them are real `bazaar-agent` processes driven through their
//! local HTTP API. Scenarios (issue 10): `steady`, `backlog`, `fanout`, and `smoke` (a short
//! steady run with a hub kill and a few HQ movements, exit status 1 on any loss,
//! duplicate or divergence).
//!
//! Progress goes to stderr every few seconds; the closing table to stdout.

mod chain;
mod report;
mod sim;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Load generator for Bazaar: thousands of stores against real hubs, broker and MariaDB"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Stores in the chain.
    #[arg(long, global = true, default_value_t = 2000)]
    pub stores: usize,
    /// bazaar-hub processes in one consumer group.
    #[arg(long, global = true, default_value_t = 2)]
    pub hubs: usize,
    /// How many of the stores are real bazaar-agent processes (each with its own SQLite).
    #[arg(long, global = true)]
    pub agents: Option<usize>,
    /// Partitions of each topic (created explicitly before the hubs start).
    #[arg(long, global = true, default_value_t = 12)]
    pub partitions: i32,
    /// Skus a store carries on average (each store between half and 1.5 times this).
    #[arg(long, global = true, default_value_t = 300)]
    pub skus: usize,
    /// Skus in the chain's catalogue.
    #[arg(long, global = true, default_value_t = 5000)]
    pub catalogue: usize,
    /// Seed of the traffic model (same seed, same chain and schedule).
    #[arg(long, global = true, default_value_t = 42)]
    pub seed: u64,
    /// Seconds between progress lines.
    #[arg(long, global = true, default_value_t = 5)]
    pub progress: u64,
    /// Keep the run's directory (logs, agents' SQLite) and database.
    #[arg(long, global = true)]
    pub keep: bool,
    /// How long to wait for the hubs to apply everything after the traffic stops (seconds).
    #[arg(long, global = true, default_value_t = 900)]
    pub drain_timeout: u64,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N stores x RATE movements/s for DURATION, one hub killed -9 in the middle and
    /// restarted DOWN seconds later.
    Steady {
        #[arg(long, default_value_t = 300)]
        duration: u64,
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Do not kill a hub.
        #[arg(long)]
        no_kill: bool,
        #[arg(long, default_value_t = 10)]
        down: u64,
    },
    /// N stores come online at once, each with QUEUED movements.
    Backlog {
        #[arg(long, default_value_t = 1000)]
        queued: usize,
    },
    /// HQ changes thresholds for every store and posts hub-origin movements to TARGETS
    /// stores with CLIENTS concurrent clients, while the stores trade at RATE.
    Fanout {
        #[arg(long, default_value_t = 500)]
        targets: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 0.2)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        duration: u64,
    },
    /// 50 stores (2 of them real agents), 20 s, a hub killed and restarted, a few HQ
    /// movements; exit status 1 on any loss, duplicate or divergence.
    Smoke,
}

fn main() {
    let mut cli = Cli::parse();
    if matches!(cli.scenario, Scenario::Smoke) {
        // Smoke's own size unless given.
        if !std::env::args().any(|a| a == "--stores") {
            cli.common.stores = 50;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(chain::run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("[load] FAILED: the exactness checks above found lost, duplicated or diverged movements");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("[load] error: {e:#}");
            std::process::exit(2);
        }
    }
}
