//! Issue 2, point 8: throughput of the agent's accept path and of the hub's apply path,
//! each beside a raw baseline measured in the same run on the same machine.
//!
//! Real processes through the e2e harness: a tansu broker with sqlite storage,
//! `bazaar-hub`, `bazaar-agent` (release builds beside this bench's executable), and the
//! machine's MariaDB at 127.0.0.1:3306. Every run uses fresh names and drops its databases.
//!
//! Run:
//!   cargo build --release --bins -p bazaar-hub -p bazaar-agent
//!   cargo bench -p bazaar-e2e --bench throughput
//!   (`BENCH_ONLY=agent` or `BENCH_ONLY=hub` runs one half)
//!
//! Progress goes to stderr; the figures to stdout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bazaar_e2e::*;
use bazaar_shared::{Envelope, Kind, Origin, Reason, SigningKey, Sku, StoreId, Topics};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

/// Agent workload. The one-client run and the raw SQLite baseline alternate in rounds, so
/// that both see the same disk (fsync latency on a shared machine drifts by several times
/// within a minute, with other processes' writes).
const AGENT_WARMUP: usize = 200;
const ROUNDS: usize = 6;
const AGENT_SERIAL_PER_ROUND: usize = 500;
const AGENT_CONCURRENT: usize = 5_000;
const AGENT_CLIENTS: usize = 16;
const AGENT_SKUS: usize = 40;
/// Raw SQLite baseline, per round (and once more after the concurrent run).
const RAW_SQLITE_WARMUP: usize = 100;
const RAW_SQLITE_PER_ROUND: usize = 500;
/// Hub backlog.
/// A chain's worth of stores, so each consumer batch spans thousands of stores (issue 10:
/// the figures measured with 100 stores hid the per-store cost of a batch).
const STORES: usize = 2_000;
const SEQ_PER_STORE: u64 = 50;
const SKUS_PER_STORE: u64 = 10;
const BACKLOG: u64 = STORES as u64 * SEQ_PER_STORE;
const HUB_APPLY_TIMEOUT: Duration = Duration::from_secs(150);
/// Raw MariaDB baseline.
const RAW_MYSQL_ROWS: usize = 100_000;
const RAW_MYSQL_BATCH: usize = 2_000;

fn progress(msg: impl AsRef<str>) {
    eprintln!("[throughput] {}", msg.as_ref());
}

#[derive(Debug, Clone)]
struct Rate {
    count: usize,
    elapsed: Duration,
    p50: Option<Duration>,
    p99: Option<Duration>,
    max: Option<Duration>,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn with_latencies(count: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> Rate {
        latencies.sort_unstable();
        let pick = |q: f64| -> Option<Duration> {
            if latencies.is_empty() {
                return None;
            }
            let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
            Some(latencies[i])
        };
        Rate {
            count,
            elapsed,
            p50: pick(0.50),
            p99: pick(0.99),
            max: latencies.last().copied(),
        }
    }

    /// Several runs of the same measure as one.
    fn merge(runs: Vec<(usize, Duration, Vec<Duration>)>) -> Rate {
        let count = runs.iter().map(|r| r.0).sum();
        let elapsed = runs.iter().map(|r| r.1).sum();
        Rate::with_latencies(count, elapsed, runs.into_iter().flat_map(|r| r.2).collect())
    }

    fn plain(count: usize, elapsed: Duration) -> Rate {
        Rate {
            count,
            elapsed,
            p50: None,
            p99: None,
            max: None,
        }
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}

#[derive(Default)]
struct Results {
    agent_serial: Option<Rate>,
    agent_concurrent: Option<Rate>,
    raw_sqlite: Option<Rate>,
    hub_total: Option<Rate>,
    hub_steady: Option<Rate>,
    hub_first_apply_after: Option<Duration>,
    produce: Option<Rate>,
    raw_mysql: Option<Rate>,
    /// CPU seconds per process over each phase.
    cpu: Vec<CpuUse>,
    /// MariaDB statement counters over a phase: (phase, [(counter, delta)]).
    statements: Vec<(String, Vec<(String, i64)>)>,
    /// A plain consumer reading the whole backlog from the broker (a ceiling, not a target).
    broker_read: Option<Rate>,
    /// The hub's apply path on the same backlog, fed in consumer-sized batches without a
    /// broker: what the hub's own MySQL work costs.
    hub_apply_only: Option<Rate>,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("a tokio runtime")?;
    runtime.block_on(async {
        let dir = tempfile::tempdir().context("a temp dir")?;
        let names = Names::fresh();
        let raw_db = format!("{}_raw", names.database);
        progress(format!(
            "database {}, topic prefix {}, group {}, dir {}",
            names.database,
            names.prefix,
            names.group,
            dir.path().display()
        ));
        let mut results = Results::default();
        let outcome = run(dir.path(), &names, &raw_db, &mut results).await;
        // Clean up whatever happened: processes died with their handles inside `run`.
        drop_database(&names).await;
        drop_scratch(&raw_db).await;
        progress("databases dropped");
        print_table(&results);
        outcome
    })
}

async fn run(
    dir: &std::path::Path,
    names: &Names,
    raw_db: &str,
    results: &mut Results,
) -> anyhow::Result<()> {
    // 1 and 2. The agent's accept path, with no broker and no hub (movements stay
    // pending), alternating with raw durable SQLite commits on the same filesystem.
    // `BENCH_ONLY=hub` measures the hub alone, `BENCH_ONLY=agent` the agent alone.
    let only = std::env::var("BENCH_ONLY").ok();
    if only.as_deref() != Some("hub") {
        bench_agent(dir, names, results).await?;
    }
    if only.as_deref() == Some("agent") {
        return Ok(());
    }

    // 3. The hub applying a backlog of 100,000 movements from 2,000 stores.
    bench_hub(dir, names, results).await?;

    // 3b. The same backlog through the hub's apply path alone, no broker in the way.
    bench_hub_apply_only(names, results).await?;

    // 4. Raw batched MariaDB upserts in a scratch database.
    let (rate, cpu, statements) = raw_mysql(raw_db).await?;
    results.raw_mysql = Some(rate);
    results.cpu.push(cpu);
    results
        .statements
        .push(("raw MariaDB upserts".into(), statements));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Agent

fn movement(i: usize) -> Value {
    let sku = format!("SKU-{:03}", i % AGENT_SKUS);
    match i % 5 {
        0 | 1 => json!({"kind": "receipt", "sku": sku, "qty": 7}),
        2 | 3 => json!({"kind": "sale", "sku": sku, "qty": 3, "ref": format!("till1/r{i}")}),
        _ => json!({"kind": "adjustment", "sku": sku, "qty": -1, "reason": "damage"}),
    }
}

async fn post_timed(client: &reqwest::Client, url: &str, i: usize) -> anyhow::Result<Duration> {
    let body = movement(i);
    let started = Instant::now();
    let response = client
        .post(format!("{url}/v1/movements"))
        .header("Idempotency-Key", format!("bench-{i}"))
        .json(&body)
        .send()
        .await
        .context("the agent answers")?;
    let status = response.status().as_u16();
    let _ = response.bytes().await?;
    let took = started.elapsed();
    ensure!(
        status == 201,
        "movement {i}: the agent answered {status}, not 201"
    );
    Ok(took)
}

/// A run's raw figures.
struct Run {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn into_rate(self) -> Rate {
        Rate::with_latencies(self.count, self.elapsed, self.latencies)
    }
}

/// Posts movements `from..from+n` with `clients` concurrent clients; latencies of each.
async fn post_many(
    client: &reqwest::Client,
    url: &str,
    from: usize,
    n: usize,
    clients: usize,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, next) = (client.clone(), url.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n / clients + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                latencies.push(post_timed(&client, &url, from + i).await?);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Run {
        count: n,
        elapsed: started.elapsed(),
        latencies,
    })
}

async fn bench_agent(
    dir: &std::path::Path,
    names: &Names,
    results: &mut Results,
) -> anyhow::Result<()> {
    // Neither the broker nor the hub is started: the agent waits for first contact with
    // the hub (sending nothing) and keeps accepting movements.
    let broker = Broker::new(&dir.join("agent-bench"));
    let hub = Hub::new(&dir.join("agent-bench"), names, &broker.address());
    let key = SigningKey::generate().to_base64();
    let mut agent = Agent::init(
        dir,
        "BENCH-AGENT",
        &hub,
        &broker.address(),
        &names.prefix,
        "bench-token",
        &key,
    )?;
    agent.start()?;
    progress(format!(
        "agent up on {} (broker and hub down: accept path only)",
        agent.url()
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(AGENT_CLIENTS * 2)
        .build()?;
    let url = agent.url();
    // The baseline's database sits beside the agent's, in the same temp dir.
    let raw_dir = dir.join("raw-sqlite");
    std::fs::create_dir_all(&raw_dir)?;
    let mut raw = RawSqlite::open(&raw_dir.join("raw.db"))?;
    progress(format!("raw SQLite baseline in {}", raw_dir.display()));

    post_many(&client, &url, 0, AGENT_WARMUP, 1)
        .await
        .with_context(|| agent.log_tail())?;
    tokio::task::block_in_place(|| raw.commits(RAW_SQLITE_WARMUP))?;
    progress(format!(
        "warm-up: {AGENT_WARMUP} movements, {RAW_SQLITE_WARMUP} raw commits"
    ));

    let mut from = AGENT_WARMUP;
    let mut serial_runs = Vec::new();
    let mut raw_runs = Vec::new();
    let mut serial_agent_cpu = 0.0;
    for round in 1..=ROUNDS {
        let r = tokio::task::block_in_place(|| raw.commits(RAW_SQLITE_PER_ROUND))?;
        let raw_rate = r.0 as f64 / r.1.as_secs_f64();
        raw_runs.push(r);
        let before = cpu_seconds_of(agent.pid());
        let a = post_many(&client, &url, from, AGENT_SERIAL_PER_ROUND, 1)
            .await
            .with_context(|| agent.log_tail())?;
        serial_agent_cpu += cpu_seconds_of(agent.pid()) - before;
        from += AGENT_SERIAL_PER_ROUND;
        progress(format!(
            "round {round}/{ROUNDS}: raw SQLite {raw_rate:.0} commits/s; agent, 1 client: {:.0} movements/s",
            a.per_second()
        ));
        serial_runs.push((a.count, a.elapsed, a.latencies));
    }

    let serial_wall: Duration = serial_runs
        .iter()
        .map(|r: &(usize, Duration, Vec<Duration>)| r.1)
        .sum();
    results.cpu.push(CpuUse {
        phase: "agent, 1 client".into(),
        wall: serial_wall,
        items: ROUNDS * AGENT_SERIAL_PER_ROUND,
        used: vec![("agent".into(), serial_agent_cpu)],
    });
    progress(format!(
        "agent, {AGENT_CLIENTS} clients: {AGENT_CONCURRENT} movements…"
    ));
    let cpu_before = cpu_snapshot(&[("agent", agent.pid())]);
    let concurrent = post_many(&client, &url, from, AGENT_CONCURRENT, AGENT_CLIENTS)
        .await
        .with_context(|| agent.log_tail())?
        .into_rate();
    results.cpu.push(cpu_delta(
        format!("agent, {AGENT_CLIENTS} clients"),
        &cpu_before,
        concurrent.elapsed,
        AGENT_CONCURRENT,
    ));
    from += AGENT_CONCURRENT;
    progress(format!(
        "  {:.0} movements/s, p50 {} ms, p99 {} ms",
        concurrent.per_second(),
        ms(concurrent.p50),
        ms(concurrent.p99)
    ));
    let r = tokio::task::block_in_place(|| raw.commits(RAW_SQLITE_PER_ROUND))?;
    progress(format!(
        "raw SQLite after the concurrent run: {:.0} commits/s",
        r.0 as f64 / r.1.as_secs_f64()
    ));
    raw_runs.push(r);

    // Everything accepted is in the outbox, durably.
    let status: Value = client
        .get(format!("{url}/v1/status"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        status["pending"] == json!(from),
        "the agent should hold {from} pending movements: {status}"
    );
    agent.kill();
    results.agent_serial = Some(Rate::merge(serial_runs));
    results.agent_concurrent = Some(concurrent);
    results.raw_sqlite = Some(Rate::merge(raw_runs));
    Ok(())
}

/// One single-row INSERT per transaction, WAL with `synchronous=FULL`, as the agent's
/// database is configured.
struct RawSqlite {
    conn: rusqlite::Connection,
    next: usize,
}

impl RawSqlite {
    fn open(path: &std::path::Path) -> anyhow::Result<RawSqlite> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        ensure!(
            mode == "wal" && sync == 2,
            "raw SQLite runs in {mode} with synchronous={sync}, not wal/FULL(2)"
        );
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, v INTEGER NOT NULL, at TEXT NOT NULL) STRICT",
        )?;
        Ok(RawSqlite { conn, next: 0 })
    }

    /// `n` durable commits: (n, elapsed, latency of each).
    fn commits(&mut self, n: usize) -> anyhow::Result<(usize, Duration, Vec<Duration>)> {
        let mut latencies = Vec::with_capacity(n);
        let started = Instant::now();
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let t = Instant::now();
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.conn
                .prepare_cached("INSERT INTO t (k, v, at) VALUES (?1, ?2, ?3)")?
                .execute(rusqlite::params![
                    format!("key-{i}"),
                    i as i64,
                    chrono::Utc::now().to_rfc3339()
                ])?;
            self.conn.execute_batch("COMMIT")?;
            latencies.push(t.elapsed());
        }
        Ok((n, started.elapsed(), latencies))
    }
}

// ---------------------------------------------------------------------------------------
// CPU accounting, from /proc (Linux): where a phase's time goes, process by process.

/// USER_HZ, which is 100 on every Linux platform Rust supports.
const CLOCK_TICKS: f64 = 100.0;

fn cpu_seconds_of(pid: Option<u32>) -> f64 {
    pid.and_then(|p| cpu_seconds(&p.to_string())).unwrap_or(0.0)
}

fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// The MariaDB server's pid, found by name in /proc (read only).
fn mariadb_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(name)
    })
}

type CpuSnapshot = Vec<(String, String, f64)>;

/// CPU seconds each process used over one phase that handled `items` movements or rows.
struct CpuUse {
    phase: String,
    wall: Duration,
    items: usize,
    used: Vec<(String, f64)>,
}

fn cpu_snapshot(processes: &[(&str, Option<u32>)]) -> CpuSnapshot {
    let mut all: Vec<(String, String)> = processes
        .iter()
        .filter_map(|(name, pid)| pid.map(|p| (name.to_string(), p.to_string())))
        .collect();
    all.push(("this bench (client)".into(), "self".into()));
    if let Some(pid) = mariadb_pid() {
        all.push(("mariadbd".into(), pid));
    }
    all.into_iter()
        .filter_map(|(name, pid)| cpu_seconds(&pid).map(|s| (name, pid, s)))
        .collect()
}

fn cpu_delta(
    phase: impl Into<String>,
    before: &CpuSnapshot,
    wall: Duration,
    items: usize,
) -> CpuUse {
    let used = before
        .iter()
        .filter_map(|(name, pid, was)| cpu_seconds(pid).map(|now| (name.clone(), now - was)))
        .collect();
    CpuUse {
        phase: phase.into(),
        wall,
        items,
        used,
    }
}

// ---------------------------------------------------------------------------------------
// Hub

fn store_name(i: usize) -> String {
    format!("ST{i:03}")
}

fn backlog_envelope(
    store: &StoreId,
    seq: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Envelope> {
    let sku = Sku::parse(format!("SKU-{:03}", seq % SKUS_PER_STORE))?;
    let (kind, delta, reference, reason) = match round_of(seq) {
        0 | 1 => (Kind::Receipt, 7, None, None),
        2 | 3 => (Kind::Sale, -3, Some(format!("till1/r{seq}")), None),
        _ => (Kind::Adjustment, -1, None, Some(Reason::Damage)),
    };
    Ok(Envelope {
        v: 1,
        store: store.clone(),
        origin: Origin::Store,
        seq,
        id: uuid::Uuid::now_v7(),
        kind,
        sku,
        delta,
        counted: None,
        hub_watermark: 0,
        occurred_at: now,
        reference,
        reason,
        to_store: None,
        from_store: None,
        voids: None,
    })
}

/// Each sku of a store moves once per round of `SKUS_PER_STORE` seqs: two rounds of
/// receipts, two of sales, one of damage, so stock never goes below zero. (Kinds by
/// `seq % 5` with one movement per sku made 60% of the chain's skus negative, and the
/// bench measured an alert storm instead of ingest.)
fn round_of(seq: u64) -> u64 {
    ((seq - 1) / SKUS_PER_STORE) % 5
}

/// The on-hand sum the backlog leaves behind, over every store and sku.
fn expected_on_hand_total() -> i64 {
    let per_store: i64 = (1..=SEQ_PER_STORE)
        .map(|seq| match round_of(seq) {
            0 | 1 => 7,
            2 | 3 => -3,
            _ => -1,
        })
        .sum();
    per_store * STORES as i64
}

/// Registers the stores through `bazaar-hub store add` (real keys); the first alone, as it
/// creates the database and applies the migrations, then the rest four at a time.
fn register_stores(hub: &Hub) -> anyhow::Result<Vec<(StoreId, SigningKey)>> {
    let first = store_name(0);
    let (_, key) = hub.add_store(&first)?;
    let mut keys = vec![(StoreId::parse(first)?, SigningKey::from_base64(&key)?)];
    let rest: Vec<usize> = (1..STORES).collect();
    let registered: Vec<anyhow::Result<Vec<(StoreId, SigningKey)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .chunks(rest.len().div_ceil(4))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&i| {
                            let name = store_name(i);
                            let (_, key) = hub.add_store(&name)?;
                            Ok((StoreId::parse(name)?, SigningKey::from_base64(&key)?))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a registration thread panicked")))
            })
            .collect()
    });
    for r in registered {
        keys.extend(r?);
    }
    Ok(keys)
}

fn backlog_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "250000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "120000")
        .create()?)
}

/// Signs and produces the whole backlog, interleaved by store as agents would send it;
/// returns once every message is acknowledged by the broker.
async fn produce_backlog(
    brokers: &str,
    topic: &str,
    stores: &[(StoreId, SigningKey)],
) -> anyhow::Result<Rate> {
    let now = chrono::Utc::now();
    let signing = Instant::now();
    let mut messages: Vec<(String, Vec<u8>)> = Vec::with_capacity(BACKLOG as usize);
    for seq in 1..=SEQ_PER_STORE {
        for (store, key) in stores {
            let bytes = backlog_envelope(store, seq, now)?.to_signed_bytes(key)?;
            messages.push((store.to_string(), bytes));
        }
    }
    progress(format!(
        "signed {} envelopes in {:.1} s",
        messages.len(),
        signing.elapsed().as_secs_f64()
    ));

    let producer = backlog_producer(brokers)?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(messages.len());
    for (key, payload) in &messages {
        let mut record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        let mut attempts = 0;
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((e, back)) => {
                    attempts += 1;
                    if attempts > 600 {
                        bail!("cannot enqueue a message: {e}");
                    }
                    record = back;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let mut delivered = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    for delivery in deliveries {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, delivery).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err((e, _)))) => bail!("a backlog message was not delivered: {e}"),
            Ok(Err(_)) => bail!("a delivery report was dropped"),
            Err(_) => bail!("producing the backlog took over 120 s ({delivered} delivered)"),
        }
        delivered += 1;
        if delivered % 25_000 == 0 {
            progress(format!("  {delivered} delivered"));
        }
    }
    let _ = producer.flush(Duration::from_secs(10));
    Ok(Rate::plain(delivered, started.elapsed()))
}

async fn applied_total(pool: &sqlx::MySqlPool) -> u64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT CAST(COALESCE(SUM(last_seq), 0) AS SIGNED) FROM store_sync",
    )
    .fetch_one(pool)
    .await
    .map(|v| v.max(0) as u64)
    .unwrap_or(0)
}

async fn bench_hub(
    dir: &std::path::Path,
    names: &Names,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut broker = Broker::new(dir);
    broker.start()?;
    let brokers = broker.address();
    let topics = Topics::with_prefix(&names.prefix);
    bazaar_shared::kafka::ensure_topics(&brokers, &topics.all(), 12, 1)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    progress(format!("broker up on {brokers}; topics created"));

    let mut hub = Hub::new(dir, names, &brokers);
    let started = Instant::now();
    let stores = register_stores(&hub)?;
    progress(format!(
        "registered {} stores with `bazaar-hub store add` in {:.1} s",
        stores.len(),
        started.elapsed().as_secs_f64()
    ));

    progress(format!(
        "producing {BACKLOG} signed movements to {} before the hub consumes…",
        topics.movements
    ));
    let produced = produce_backlog(&brokers, &topics.movements, &stores).await?;
    progress(format!(
        "  produced in {:.1} s ({:.0} msg/s)",
        produced.elapsed.as_secs_f64(),
        produced.per_second()
    ));
    results.produce = Some(produced);

    let pool = mysql(names).await;
    ensure!(
        applied_total(&pool).await == 0,
        "nothing is applied before the hub starts"
    );
    progress("starting the hub…");
    let t0 = Instant::now();
    hub.start()?;
    let cpu_before = cpu_snapshot(&[("bazaar-hub", hub.pid()), ("tansu", broker.pid())]);
    let status_before = mariadb_status(&pool).await;
    let mut polls = 0;
    let deadline = t0 + HUB_APPLY_TIMEOUT;
    let mut first: Option<(Duration, u64)> = None;
    let mut last_report = Instant::now();
    let done = loop {
        let applied = applied_total(&pool).await;
        polls += 1;
        let now = Instant::now();
        if applied > 0 && first.is_none() {
            first = Some((t0.elapsed(), applied));
        }
        if applied >= BACKLOG {
            break t0.elapsed();
        }
        if now > deadline {
            bail!(
                "the hub applied {applied} of {BACKLOG} in {HUB_APPLY_TIMEOUT:?}\n{}",
                hub.log_tail()
            );
        }
        if !hub.is_running() {
            bail!("the hub exited\n{}", hub.log_tail());
        }
        if last_report.elapsed() >= Duration::from_secs(3) {
            progress(format!(
                "  {:.1} s: {applied} applied",
                t0.elapsed().as_secs_f64()
            ));
            last_report = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    results
        .cpu
        .push(cpu_delta("hub apply", &cpu_before, done, BACKLOG as usize));
    results.statements.push((
        format!("hub apply (incl. {polls} progress polls by this bench)"),
        status_delta(&status_before, &mariadb_status(&pool).await),
    ));
    progress(format!(
        "  all {BACKLOG} applied {:.1} s after the hub started",
        done.as_secs_f64()
    ));

    // Sanity: exactly once, nothing parked, totals exact.
    let (rows, parked, on_hand): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM movements),
                (SELECT COUNT(*) FROM parked_events),
                (SELECT CAST(COALESCE(SUM(on_hand), 0) AS SIGNED) FROM stock)",
    )
    .fetch_one(&pool)
    .await?;
    ensure!(
        rows == BACKLOG as i64,
        "the ledger holds {rows} rows, not {BACKLOG}"
    );
    ensure!(parked == 0, "{parked} messages were parked");
    ensure!(
        on_hand == expected_on_hand_total(),
        "on-hand totals {on_hand}, expected {}",
        expected_on_hand_total()
    );
    progress(format!(
        "  verified: {rows} ledger rows, 0 parked, on-hand total {on_hand}"
    ));

    results.hub_total = Some(Rate::plain(BACKLOG as usize, done));
    if let Some((at, applied_then)) = first {
        results.hub_first_apply_after = Some(at);
        let steady = done.saturating_sub(at);
        if !steady.is_zero() {
            results.hub_steady = Some(Rate::plain((BACKLOG - applied_then) as usize, steady));
        }
    }
    pool.close().await;
    hub.kill();

    // For comparison: how fast a plain consumer reads the same backlog from the broker.
    let cpu_before = cpu_snapshot(&[("tansu", broker.pid())]);
    let read = read_backlog(
        &brokers,
        &topics.movements,
        &format!("{}-read", names.group),
    )
    .await?;
    results.cpu.push(cpu_delta(
        "plain consumer read",
        &cpu_before,
        read.elapsed,
        BACKLOG as usize,
    ));
    results.broker_read = Some(read);
    broker.kill();
    Ok(())
}

/// A plain consumer group (the hub's client settings) reading the whole backlog.
async fn read_backlog(brokers: &str, topic: &str, group: &str) -> anyhow::Result<Rate> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    progress("plain consumer reading the backlog from the broker (the broker's ceiling)…");
    let consumer: StreamConsumer = bazaar_shared::kafka::base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut read = 0u64;
    while read < BACKLOG {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(_)) => read += 1,
            Ok(Err(e)) => bail!("consumer error after {read} messages: {e}"),
            Err(_) => bail!("read {read} of {BACKLOG} in 60 s"),
        }
    }
    let rate = Rate::plain(read as usize, started.elapsed());
    progress(format!(
        "  {:.0} messages/s ({:.1} s, including the group join)",
        rate.per_second(),
        rate.elapsed.as_secs_f64()
    ));
    Ok(rate)
}

const STATUS_COUNTERS: &[&str] = &[
    "Questions",
    "Com_select",
    "Com_insert",
    "Com_update",
    "Com_delete",
    "Com_commit",
    "Innodb_os_log_fsyncs",
];

async fn mariadb_status(pool: &sqlx::MySqlPool) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for name in STATUS_COUNTERS {
        let row: Option<(String, String)> =
            sqlx::query_as(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
                .fetch_optional(pool)
                .await
                .ok()
                .flatten();
        if let Some((n, v)) = row {
            out.push((n, v.parse().unwrap_or(0)));
        }
    }
    out
}

fn status_delta(before: &[(String, i64)], after: &[(String, i64)]) -> Vec<(String, i64)> {
    after
        .iter()
        .filter_map(|(name, now)| {
            before
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, was)| (name.clone(), now - was))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Raw MariaDB

async fn raw_mysql(database: &str) -> anyhow::Result<(Rate, CpuUse, Vec<(String, i64)>)> {
    let admin = sqlx::MySqlPool::connect(MYSQL_ROOT).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE `{database}`"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{MYSQL_ROOT}/{database}"))
        .await?;
    // The hub's `stock` table, as migrations/hub declares it.
    sqlx::query(
        "CREATE TABLE stock (
             store      VARCHAR(64) NOT NULL,
             sku        VARCHAR(64) NOT NULL,
             on_hand    BIGINT      NOT NULL,
             version    BIGINT      NOT NULL,
             updated_at DATETIME(6) NOT NULL,
             PRIMARY KEY (store, sku),
             KEY stock_sku (sku)
         ) ENGINE = InnoDB",
    )
    .execute(&pool)
    .await?;
    progress(format!("raw MariaDB: {RAW_MYSQL_ROWS} rows upserted in batches of {RAW_MYSQL_BATCH}, one transaction each…"));
    let rows: Vec<(String, String, i64)> = (0..RAW_MYSQL_ROWS)
        .map(|i| {
            (
                store_name(i % STORES),
                format!("SKU-{:04}", i / STORES),
                (i % 7) as i64,
            )
        })
        .collect();
    let cpu_before = cpu_snapshot(&[]);
    let status_before = mariadb_status(&pool).await;
    let started = Instant::now();
    let mut latencies = Vec::new();
    for chunk in rows.chunks(RAW_MYSQL_BATCH) {
        let t = Instant::now();
        let now = chrono::Utc::now();
        let mut tx = pool.begin().await?;
        let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "INSERT INTO stock (store, sku, on_hand, version, updated_at) ",
        );
        q.push_values(chunk, |mut b, (store, sku, delta)| {
            b.push_bind(store)
                .push_bind(sku)
                .push_bind(*delta)
                .push_bind(1i64)
                .push_bind(now);
        });
        q.push(" ON DUPLICATE KEY UPDATE on_hand = on_hand + VALUES(on_hand), version = version + 1, updated_at = VALUES(updated_at)");
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        latencies.push(t.elapsed());
    }
    let rate = Rate::with_latencies(RAW_MYSQL_ROWS, started.elapsed(), latencies);
    let cpu = cpu_delta(
        "raw MariaDB upserts",
        &cpu_before,
        rate.elapsed,
        RAW_MYSQL_ROWS,
    );
    let statements = status_delta(&status_before, &mariadb_status(&pool).await);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock")
        .fetch_one(&pool)
        .await?;
    ensure!(
        count == RAW_MYSQL_ROWS as i64,
        "the scratch table holds {count} rows"
    );
    pool.close().await;
    progress(format!(
        "  {:.0} rows/s (batch p50 {} ms, p99 {} ms)",
        rate.per_second(),
        ms(rate.p50),
        ms(rate.p99)
    ));
    Ok((rate, cpu, statements))
}

async fn drop_scratch(database: &str) {
    if let Ok(pool) = sqlx::MySqlPool::connect(MYSQL_ROOT).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

/// The hub's `apply_batch` on the backlog, in batches of the consumer's size and in the
/// order a consumer of 12 partitions reads them (partition by partition, each partition's
/// stores interleaved): the broker's own speed taken out of the measure.
async fn bench_hub_apply_only(names: &Names, results: &mut Results) -> anyhow::Result<()> {
    use bazaar_hub::ingest::{apply_batch, RawMessage, MAX_BATCH};
    use bazaar_hub::plan::Position;
    let database = format!("{}_apply", names.database);
    let url = format!("{MYSQL_ROOT}/{database}");
    let pool = bazaar_hub::db::migrate(&url).await?;
    let mut stores = Vec::with_capacity(STORES);
    for i in 0..STORES {
        let id = StoreId::parse(store_name(i))?;
        let credentials = bazaar_hub::stores::register(&pool, &id, None).await?;
        stores.push((id, SigningKey::from_base64(&credentials.key)?));
    }
    let now = chrono::Utc::now();
    let mut partitions: std::collections::BTreeMap<i32, Vec<RawMessage>> =
        std::collections::BTreeMap::new();
    for seq in 1..=SEQ_PER_STORE {
        for (store, key) in &stores {
            let partition =
                bazaar_shared::partition::partition_for_key(store.as_str().as_bytes(), 12);
            let queue = partitions.entry(partition).or_default();
            let payload = backlog_envelope(store, seq, now)?.to_signed_bytes(key)?;
            let position = Position {
                topic: "bench".into(),
                partition,
                offset: queue.len() as i64,
            };
            queue.push(RawMessage { position, payload });
        }
    }
    let backlog: Vec<RawMessage> = partitions.into_values().flatten().collect();
    progress(format!(
        "hub apply path alone: {} movements in batches of {MAX_BATCH}…",
        backlog.len()
    ));
    let started = Instant::now();
    for batch in backlog.chunks(MAX_BATCH) {
        apply_batch(&pool, batch).await?;
    }
    let elapsed = started.elapsed();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM movements")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        applied as u64 == BACKLOG,
        "apply-only run applied {applied} of {BACKLOG}"
    );
    let rate = Rate::plain(backlog.len(), elapsed);
    progress(format!("  {:.0} movements/s", rate.per_second()));
    results.hub_apply_only = Some(rate);
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Report

fn print_table(r: &Results) {
    let rate = |x: &Option<Rate>| {
        x.as_ref()
            .map(|x| format!("{:>10.0}", x.per_second()))
            .unwrap_or_else(|| format!("{:>10}", "-"))
    };
    let lat = |x: &Option<Rate>| {
        x.as_ref()
            .map(|x| format!("{:>8} {:>8} {:>8}", ms(x.p50), ms(x.p99), ms(x.max)))
            .unwrap_or_else(|| format!("{:>8} {:>8} {:>8}", "-", "-", "-"))
    };
    let n = |x: &Option<Rate>| {
        x.as_ref()
            .map(|x| format!("{:>7}", x.count))
            .unwrap_or_else(|| format!("{:>7}", "-"))
    };
    let secs = |x: &Option<Rate>| {
        x.as_ref()
            .map(|x| format!("{:>7.2}", x.elapsed.as_secs_f64()))
            .unwrap_or_else(|| format!("{:>7}", "-"))
    };
    let ratio = |a: &Option<Rate>, b: &Option<Rate>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}%", 100.0 * a.per_second() / b.per_second()),
        _ => "-".into(),
    };
    println!();
    println!("Bazaar throughput (release build; real tansu/sqlite broker, bazaar-hub, bazaar-agent, MariaDB)");
    println!(
        "{:<46} {:>7} {:>7} {:>10} {:>8} {:>8} {:>8}",
        "measure", "n", "secs", "per sec", "p50 ms", "p99 ms", "max ms"
    );
    let line = |name: &str, x: &Option<Rate>| {
        println!("{name:<46} {} {} {} {}", n(x), secs(x), rate(x), lat(x))
    };
    line("agent POST /v1/movements, 1 client", &r.agent_serial);
    line(
        &format!("agent POST /v1/movements, {AGENT_CLIENTS} clients"),
        &r.agent_concurrent,
    );
    line(
        "raw SQLite 1-row durable commits (WAL, FULL)",
        &r.raw_sqlite,
    );
    line("backlog produce to tansu (not a target)", &r.produce);
    line(
        "tansu read by a plain consumer (not a target)",
        &r.broker_read,
    );
    line("hub apply, from hub start", &r.hub_total);
    line("hub apply, from first applied row", &r.hub_steady);
    line("hub apply path alone (no broker)", &r.hub_apply_only);
    line(
        &format!("raw MariaDB upserts, {RAW_MYSQL_BATCH} rows per tx"),
        &r.raw_mysql,
    );
    println!("(raw MariaDB latencies are per {RAW_MYSQL_BATCH}-row transaction; hub rates are timed by polling store_sync every 50 ms)");
    println!();
    if let Some(at) = r.hub_first_apply_after {
        println!(
            "hub: first movement applied {:.2} s after the process started",
            at.as_secs_f64()
        );
    }
    println!(
        "agent / raw SQLite, 1 client:   {:>5}  (target >= 50%)",
        ratio(&r.agent_serial, &r.raw_sqlite)
    );
    println!(
        "agent / raw SQLite, {AGENT_CLIENTS} clients: {:>5}  (target >= 150%)",
        ratio(&r.agent_concurrent, &r.raw_sqlite)
    );
    println!(
        "hub apply (from start) / raw MariaDB upserts: {:>5}  (target >= 30%)",
        ratio(&r.hub_total, &r.raw_mysql)
    );
    println!(
        "hub apply (steady)     / raw MariaDB upserts: {:>5}  (target >= 30%)",
        ratio(&r.hub_steady, &r.raw_mysql)
    );
    println!("hub apply path alone   / raw MariaDB upserts: {:>5}  (target >= 30%; the broker taken out)", ratio(&r.hub_apply_only, &r.raw_mysql));
    println!(
        "tansu plain consumer read / raw MariaDB upserts: {:>5}  (the broker's own ceiling)",
        ratio(&r.broker_read, &r.raw_mysql)
    );
    if !r.cpu.is_empty() {
        println!();
        println!("CPU used during each phase, per process: seconds (µs per movement or row); 2 cores = 2 s per wall second");
        for c in &r.cpu {
            let parts: Vec<String> = c
                .used
                .iter()
                .map(|(name, secs)| {
                    format!(
                        "{name} {secs:.2} s ({:.0} µs)",
                        secs * 1e6 / c.items.max(1) as f64
                    )
                })
                .collect();
            println!(
                "  {:<28} wall {:>5.2} s, n {:>6}: {}",
                c.phase,
                c.wall.as_secs_f64(),
                c.items,
                parts.join(", ")
            );
        }
    }
    if !r.statements.is_empty() {
        println!();
        println!("MariaDB server counters during each phase (SHOW GLOBAL STATUS deltas; the whole server):");
        for (phase, counters) in &r.statements {
            let parts: Vec<String> = counters
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            println!("  {phase}: {}", parts.join(", "));
        }
    }
}
