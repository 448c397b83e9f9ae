//! Agent memory and drain time with 1,000,000 pending movements (issue 4, point 9).
//!
//! The outbox is filled through the agent's own `ledger::record` (the code the API runs,
//! in large transactions, so the fill takes seconds, not the hours a million HTTP posts
//! would), then the release `bazaar-agent` starts with the broker up. The bench samples
//! the agent's RSS from /proc while it drains, and times the drain until no row is pending.
//!
//! Run: `cargo build --release --bins && cargo bench -p bazaar-e2e --bench outbox_memory`
//! (`BAZAAR_BENCH_PENDING` overrides the million).

use std::time::{Duration, Instant};

use anyhow::Context;
use bazaar_agent::ledger::{self, NewMovement, Quantity};
use bazaar_e2e::*;
use bazaar_shared::{Kind, Sku};

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn main() -> anyhow::Result<()> {
    let pending: u64 = std::env::var("BAZAAR_BENCH_PENDING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let dir = tempfile::tempdir()?;
        let names = Names::fresh();
        let mut broker = Broker::new(dir.path());
        // The hub answers first contact; it consumes another prefix, so the drain measured
        // is the agent's alone.
        let mut hub = Hub::new(dir.path(), &Names { prefix: format!("{}other.", names.prefix), ..Names::fresh() }, &broker.address());
        let (token, key) = hub.add_store("S1")?;
        hub.start()?;
        // The hub here never acknowledges (it consumes another prefix), so the agent's
        // re-send rule is pushed out of the way: this measures the drain alone.
        let mut agent = Agent::init(dir.path(), "S1", &hub, &broker.address(), &names.prefix, &token, &key)?
            .env("BAZAAR_AGENT_RESEND_AFTER_SECS", "86400");

        eprintln!("[outbox] filling {pending} pending movements through ledger::record…");
        let started = Instant::now();
        let conn = ledger::open(&agent.data_dir().join("agent.db"))?;
        let skus: Vec<Sku> = (0..500).map(|i| Sku::parse(format!("SKU-{i:04}"))).collect::<Result<_, _>>()?;
        let mut done = 0u64;
        while done < pending {
            let tx = conn.unchecked_transaction()?;
            let end = (done + 50_000).min(pending);
            for i in done..end {
                let movement = NewMovement {
                    kind: if i % 3 == 0 { Kind::Receipt } else { Kind::Sale },
                    sku: skus[(i % 500) as usize].clone(),
                    quantity: Quantity::Delta(if i % 3 == 0 { 4 } else { -1 }),
                    reason: None,
                    reference: Some(format!("till{}/r{i}", i % 8)),
                    to_store: None,
                    from_store: None,
                };
                ledger::record(&tx, &movement, None).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            tx.commit()?;
            done = end;
            eprintln!("[outbox]   {done}/{pending} ({:.0}/s)", done as f64 / started.elapsed().as_secs_f64());
        }
        drop(conn);
        let db_bytes = std::fs::metadata(agent.data_dir().join("agent.db")).map(|m| m.len()).unwrap_or(0);

        agent.start()?;
        let pid = agent_pid(&agent).context("agent pid")?;
        let (idle_rss, _) = rss_kib(pid).unwrap_or_default();
        eprintln!("[outbox] agent up with the broker down: RSS {} KiB", idle_rss);
        broker.start()?;
        let drain_started = Instant::now();
        let client = http();
        let mut peak = 0u64;
        let deadline = Instant::now() + Duration::from_secs(1200);
        let mut last_report = Instant::now();
        loop {
            if let Some((rss, hwm)) = rss_kib(pid) {
                peak = peak.max(rss).max(hwm);
            }
            let status: serde_json::Value = client.get(format!("{}/v1/status", agent.url())).send().await?.json().await?;
            let left = status["pending"].as_u64().unwrap_or(u64::MAX);
            anyhow::ensure!(status["sent"].as_u64().unwrap_or(0) + left <= pending, "rows appeared from nowhere: {status}");
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("[outbox]   {left} pending, RSS peak so far {peak} KiB, {:.0} s", drain_started.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            if left == 0 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "drain did not finish in time: {left} left");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let drain = drain_started.elapsed();
        let (_, hwm) = rss_kib(pid).unwrap_or_default();
        peak = peak.max(hwm);
        println!();
        println!("Agent outbox: {pending} pending movements (database {} MiB)", db_bytes / (1024 * 1024));
        println!("  agent RSS, broker down, outbox full   {:>8} KiB", idle_rss);
        println!("  agent RSS peak (VmHWM) over the drain {:>8} KiB  (target < 40 MiB = 40960 KiB)", peak);
        println!("  drain to the broker                   {:>8.1} s  ({:.0} movements/s, every row produced, delivery-reported and marked sent)",
            drain.as_secs_f64(), pending as f64 / drain.as_secs_f64());
        println!("  fill through ledger::record           {:>8.1} s", started.elapsed().as_secs_f64() - drain.as_secs_f64());
        drop_database(&names).await;
        Ok(())
    })
}

fn agent_pid(agent: &Agent) -> Option<u32> {
    agent.pid()
}
