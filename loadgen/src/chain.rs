//! The run: broker, hubs, store registration through the hub API, real agents, the
//! scenarios and their progress lines.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bazaar_e2e::{Agent, Broker, Hub, Names, ADMIN_TOKEN};
use bazaar_shared::{SigningKey, StoreId, Topics};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::report::{self, Report};
use crate::sim::{self, Chain, Intent, Runner, Sinks, Store};
use crate::{Cli, Scenario};

pub fn say(msg: impl AsRef<str>) {
    eprintln!("[load] {}", msg.as_ref());
}

/// CPU seconds of a process from /proc/<pid>/stat (utime + stime, USER_HZ = 100).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU used by one slot (a hub may be killed and restarted: a new pid, the sum carries on).
#[derive(Debug, Clone, Default)]
pub struct CpuMeter {
    pid: Option<u32>,
    start: f64,
    last: f64,
    acc: f64,
}

impl CpuMeter {
    pub fn sample(&mut self, pid: Option<u32>) {
        let Some(pid) = pid else { return };
        let now = cpu_seconds(pid).unwrap_or(self.last);
        if self.pid != Some(pid) {
            let first = self.pid.is_none();
            self.acc += self.last - self.start;
            self.pid = Some(pid);
            // A process restarted during the run counts from its start; the first one seen
            // from now.
            self.start = if first { now } else { 0.0 };
        }
        self.last = now;
    }

    /// Restart the window from the current readings.
    pub fn reset(&mut self) {
        self.acc = 0.0;
        self.start = self.last;
    }

    pub fn seconds(&self) -> f64 {
        self.acc + self.last - self.start
    }
}

/// The local MariaDB server's pid: its pid file, else the first `mariadbd` in /proc.
async fn mariadb_pid(pool: &sqlx::MySqlPool) -> Option<u32> {
    let file: Option<String> = sqlx::query_scalar("SELECT @@pid_file")
        .fetch_one(pool)
        .await
        .ok();
    if let Some(pid) = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(pid);
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "mariadbd" || comm.trim() == "mysqld")
            .then(|| e.file_name().to_string_lossy().parse().ok())
            .flatten()
    })
}

/// Everything a run holds.
pub struct Run {
    pub cli: Cli,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub names: Names,
    pub broker: Broker,
    pub hubs: Arc<Mutex<Vec<Hub>>>,
    pub hub_urls: Vec<String>,
    pub agents: Vec<Agent>,
    pub chain: Arc<Chain>,
    pub pool: sqlx::MySqlPool,
    pub topics: Topics,
    pub http: reqwest::Client,
    pub mariadb: Option<u32>,
    pub meters: Arc<Mutex<Meters>>,
}

#[derive(Default)]
pub struct Meters {
    pub hubs: Vec<CpuMeter>,
    pub mariadb: CpuMeter,
    pub broker: CpuMeter,
    pub agents_start: f64,
    pub agents_last: f64,
    pub this: CpuMeter,
    pub since: Option<Instant>,
    pub load_max: f64,
    pub load_start: f64,
    pub consumer_lag_max: i64,
    pub outbox_max: i64,
    pub behind_max: u64,
}

pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let run = Arc::new(setup(cli).await?);
    let outcome = scenario(&run).await;
    // Every process this run started, by its id.
    if let Ok(mut hubs) = run.hubs.lock() {
        for h in hubs.iter_mut() {
            h.kill();
        }
    }
    for pid in run
        .agents
        .iter()
        .filter_map(Agent::pid)
        .chain(run.broker.pid())
    {
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    }
    if run.cli.common.keep {
        say(format!(
            "kept {} and database {}",
            run.dir.display(),
            run.names.database
        ));
    } else {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", run.names.database))
            .execute(&run.pool)
            .await;
        say(format!("database {} dropped", run.names.database));
    }
    outcome
}

async fn setup(cli: Cli) -> anyhow::Result<Run> {
    let c = &cli.common;
    let pid = std::process::id();
    let tmp = tempfile::Builder::new().prefix("bazaar-load-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let tmp = if c.keep {
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };
    let stamp = Utc::now().format("%H%M%S");
    let names = Names {
        database: format!("bazaar_load_{pid}_{stamp}"),
        prefix: format!("load{pid}x{stamp}."),
        group: format!("hub-load{pid}x{stamp}"),
    };
    say(format!(
        "{} stores, {} hubs, database {}, topic prefix {}, dir {}",
        c.stores,
        c.hubs,
        names.database,
        names.prefix,
        dir.display()
    ));
    let mut broker = Broker::new(&dir);
    broker
        .start()
        .context("starting tansu (/root/.cargo/bin/tansu, or TANSU_BIN)")?;
    let brokers = broker.address();
    let topics = Topics::with_prefix(&names.prefix);
    bazaar_shared::kafka::ensure_topics(&brokers, &topics.all(), c.partitions, 1)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    say(format!(
        "tansu on {brokers}; topics created with {} partitions",
        c.partitions
    ));

    let mut hubs = Vec::new();
    for h in 0..c.hubs.max(1) {
        let hub_dir = dir.join(format!("hub{h}"));
        std::fs::create_dir_all(&hub_dir)?;
        let mut hub = Hub::new(&hub_dir, &names, &brokers);
        hub.start().with_context(|| hub.log_tail())?;
        let url = hub.url();
        let http = reqwest::Client::new();
        wait_healthy(&http, &url)
            .await
            .with_context(|| hub.log_tail())?;
        hubs.push(hub);
    }
    let hub_urls: Vec<String> = hubs.iter().map(Hub::url).collect();
    say(format!("{} hubs up: {}", hubs.len(), hub_urls.join(" ")));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()?;
    // Registration through the hub API (DESIGN §7: POST /v1/stores returns token and key).
    let t = Instant::now();
    let store_names: Vec<String> = (0..c.stores).map(|i| format!("S{i:05}")).collect();
    let registered: Vec<anyhow::Result<(String, String, String)>> =
        stream::iter(store_names.clone())
            .map(|name| {
                let http = http.clone();
                let url = hub_urls[0].clone();
                async move {
                    let r = http
                        .post(format!("{url}/v1/stores"))
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&json!({"store": name, "name": format!("load store {name}")}))
                        .send()
                        .await?;
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if status != 201 {
                        bail!("registering {name}: {status} {v}");
                    }
                    Ok((
                        name,
                        v["token"].as_str().unwrap_or_default().to_owned(),
                        v["key"].as_str().unwrap_or_default().to_owned(),
                    ))
                }
            })
            .buffered(16)
            .collect()
            .await;
    say(format!(
        "registered {} stores through POST /v1/stores in {:.1} s",
        c.stores,
        t.elapsed().as_secs_f64()
    ));

    let agents_wanted = match (&cli.scenario, c.agents) {
        (_, Some(n)) => n,
        (Scenario::Smoke, None) => 2,
        (Scenario::Backlog { .. }, None) => 0,
        (_, None) => 20,
    }
    .min(c.stores);
    let mut rng = StdRng::seed_from_u64(c.seed);
    let catalogue = sim::catalogue(c.catalogue);
    let mut stores = Vec::with_capacity(c.stores);
    for (i, r) in registered.into_iter().enumerate() {
        let (name, token, key) = r?;
        let (skus, popularity) = sim::store_catalogue(&mut rng, c.catalogue, c.skus);
        stores.push(Store {
            id: StoreId::parse(name)?,
            key: SigningKey::from_base64(&key)?,
            token,
            runner: if i < agents_wanted {
                Runner::Agent(i)
            } else {
                Runner::Light
            },
            skus,
            popularity,
            size: sim::store_size(&mut rng),
            on_hand: HashMap::new(),
            ids: Vec::new(),
            occurred: Vec::new(),
            delivered: 0,
            hub: HashMap::new(),
            last_hub_seq: 0,
            hub_redelivered: 0,
            hub_gaps: 0,
            hub_forged: 0,
            hub_misrouted: 0,
            expected_transfers: 0,
            arriving: Vec::new(),
            hq_deltas: HashMap::new(),
        });
    }
    let mut agents = Vec::new();
    if agents_wanted > 0 {
        let t = Instant::now();
        let hub_list = hubs.first().context("a hub")?;
        for s in stores.iter().take(agents_wanted) {
            let mut agent = Agent::init(
                &dir,
                s.id.as_str(),
                hub_list,
                &brokers,
                &names.prefix,
                &s.token,
                &s.key.to_base64(),
            )?;
            agent.start().with_context(|| agent.log_tail())?;
            agents.push(agent);
        }
        say(format!(
            "{} real bazaar-agent processes up in {:.1} s",
            agents.len(),
            t.elapsed().as_secs_f64()
        ));
    }
    let by_name = stores
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.to_string(), i))
        .collect();
    let names_list = stores.iter().map(|s| s.id.clone()).collect();
    let light = stores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.runner == Runner::Light)
        .map(|(i, _)| i)
        .collect();
    let chain = Arc::new(Chain {
        stores: Mutex::new(stores),
        catalogue,
        by_name,
        names: names_list,
        light,
        produced: Default::default(),
        delivered: Default::default(),
        delivery_failures: Default::default(),
        agent_failures: Default::default(),
        commands_seen: Default::default(),
    });
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&names.mysql_url())
        .await?;
    let mariadb = mariadb_pid(&pool).await;
    sim::follow_commands(
        chain.clone(),
        &brokers,
        &topics.store_commands,
        c.partitions,
        &format!("{}-stores", names.group),
    )?;
    let meters = Meters {
        hubs: vec![CpuMeter::default(); hubs.len()],
        load_start: load_average(),
        ..Default::default()
    };
    Ok(Run {
        cli,
        dir,
        _tmp: tmp,
        names,
        broker,
        hubs: Arc::new(Mutex::new(hubs)),
        hub_urls,
        agents,
        chain,
        pool,
        topics,
        http,
        mariadb,
        meters: Arc::new(Mutex::new(meters)),
    })
}

async fn wait_healthy(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the hub at {url} is not ready after 60 s")
}

/// One probe of the chain: what is applied at the hub, per store.
pub struct Probe {
    pub applied: u64,
    pub behind: u64,
    /// Age of each store's oldest unapplied movement (0 when caught up), seconds.
    pub stale_p99: f64,
    pub stale_max: f64,
    pub last_seq: HashMap<String, (u64, u64)>,
}

pub async fn probe(run: &Run) -> anyhow::Result<Probe> {
    let rows: Vec<(String, u64, u64)> =
        sqlx::query_as("SELECT store, last_seq, last_hub_seq FROM store_sync")
            .fetch_all(&run.pool)
            .await?;
    let now = Utc::now().timestamp_micros();
    let stores = run.chain.lock();
    let mut applied = 0;
    let mut behind = 0;
    let mut stale = Vec::with_capacity(stores.len());
    let mut last_seq = HashMap::with_capacity(rows.len());
    for (store, seq, hub_seq) in rows {
        let Some(&i) = run.chain.by_name.get(&store) else {
            continue;
        };
        let s = &stores[i];
        applied += seq;
        let made = s.ids.len() as u64;
        behind += made.saturating_sub(seq);
        let age = if seq < made {
            (now - s.occurred[seq as usize]) as f64 / 1e6
        } else {
            0.0
        };
        stale.push(age);
        last_seq.insert(store, (seq, hub_seq));
    }
    stale.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        stale
            .get(((stale.len() as f64 * q) as usize).min(stale.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Probe {
        applied,
        behind,
        stale_p99: pick(0.99),
        stale_max: stale.last().copied().unwrap_or(0.0),
        last_seq,
    })
}

/// Sum of `bazaar_hub_ingest_lag_messages` for the movements topic over the live hubs.
async fn consumer_lag(run: &Run) -> Option<i64> {
    let mut total = None;
    for url in &run.hub_urls {
        let Ok(r) = run
            .http
            .get(format!("{url}/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = r.text().await else { continue };
        for line in text.lines() {
            if line.starts_with("bazaar_hub_ingest_lag_messages{") && line.contains("movements") {
                if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                    *total.get_or_insert(0) += v as i64;
                }
            }
        }
    }
    total
}

/// Pending rows in the real agents' outboxes.
async fn agent_outbox(run: &Run) -> i64 {
    let mut total = 0;
    for a in &run.agents {
        if let Some(s) = bazaar_e2e::agent_status(&run.http, &a.url()).await {
            total += s["pending"].as_i64().unwrap_or(0);
        }
    }
    total
}

fn sample_cpu(run: &Run) {
    let hub_pids: Vec<Option<u32>> = run
        .hubs
        .lock()
        .map(|h| h.iter().map(Hub::pid).collect())
        .unwrap_or_default();
    let agent_cpu: f64 = run
        .agents
        .iter()
        .filter_map(|a| a.pid())
        .filter_map(cpu_seconds)
        .sum();
    let mut m = run.meters.lock().unwrap_or_else(|p| p.into_inner());
    for (meter, pid) in m.hubs.iter_mut().zip(hub_pids) {
        meter.sample(pid);
    }
    m.mariadb.sample(run.mariadb);
    m.broker.sample(run.broker.pid());
    m.this.sample(Some(std::process::id()));
    m.agents_last = agent_cpu;
    let load = load_average();
    if load > m.load_max {
        m.load_max = load;
    }
}

/// Starts the measurement window for CPU figures.
fn start_window(run: &Run) {
    sample_cpu(run);
    let mut m = run.meters.lock().unwrap_or_else(|p| p.into_inner());
    for h in m.hubs.iter_mut() {
        h.reset();
    }
    m.mariadb.reset();
    m.broker.reset();
    m.agents_start = m.agents_last;
    m.this.reset();
    m.since = Some(Instant::now());
}

/// Prints a progress line every `every` until `stop` flips; keeps the maxima.
fn progress(
    run: Arc<Run>,
    every: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(every).await;
            sample_cpu(&run);
            let p = match probe(&run).await {
                Ok(p) => p,
                Err(e) => {
                    say(format!("probe failed: {e}"));
                    continue;
                }
            };
            let lag = consumer_lag(&run).await;
            let outbox = agent_outbox(&run).await;
            let produced = run.chain.produced.load(Ordering::Relaxed);
            let delivered = run.chain.delivered.load(Ordering::Relaxed);
            let (cpu, load) = {
                let mut m = run.meters.lock().unwrap_or_else(|p| p.into_inner());
                m.consumer_lag_max = m.consumer_lag_max.max(lag.unwrap_or(0));
                m.outbox_max = m.outbox_max.max(outbox);
                m.behind_max = m.behind_max.max(p.behind);
                let wall = m
                    .since
                    .map(|s| s.elapsed().as_secs_f64())
                    .unwrap_or(1.0)
                    .max(0.001);
                let hubs: Vec<String> = m
                    .hubs
                    .iter()
                    .map(|h| format!("{:.0}%", 100.0 * h.seconds() / wall))
                    .collect();
                (
                    format!(
                        "hubs {} mariadb {:.0}% tansu {:.0}%",
                        hubs.join("/"),
                        100.0 * m.mariadb.seconds() / wall,
                        100.0 * m.broker.seconds() / wall
                    ),
                    load_average(),
                )
            };
            say(format!(
                "{:>5.0}s produced {produced} (delivered {delivered}) applied {} behind {} | staleness p99 {:.2}s max {:.2}s | consumer lag {} | agent outbox {outbox} | {cpu} | load {load:.1}",
                t0.elapsed().as_secs_f64(),
                p.applied,
                p.behind,
                p.stale_p99,
                p.stale_max,
                lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            ));
        }
    })
}

/// Waits until the hubs applied every movement made (and delivered), flushing transfers
/// whose goods arrive meanwhile.
async fn drain(run: &Run, sinks: &Sinks, timeout: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        for (i, intent) in sim::arrived(&run.chain, true) {
            sim::dispatch(&run.chain, sinks, i, intent).await?;
        }
        let produced = run.chain.produced.load(Ordering::Relaxed);
        let delivered = run.chain.delivered.load(Ordering::Relaxed);
        if delivered >= produced {
            let p = probe(run).await?;
            let made: u64 = run.chain.lock().iter().map(|s| s.ids.len() as u64).sum();
            if p.behind == 0 && p.applied >= made {
                return Ok(t.elapsed());
            }
        }
        if t.elapsed() > timeout {
            let p = probe(run).await?;
            say(format!(
                "drain timed out after {timeout:?}: {} behind, {delivered} of {produced} delivered",
                p.behind
            ));
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until each store applied every hub_seq the hub numbered for it.
async fn converge_commands(run: &Run, timeout: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let p = probe(run).await?;
        let behind = report::command_shortfall(run, &p.last_seq);
        if behind == 0 {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            say(format!(
                "{behind} hub_seqs still not applied by their stores after {timeout:?}"
            ));
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sinks(run: &Run) -> anyhow::Result<Sinks> {
    let producer = sim::start_producer(
        run.chain.clone(),
        &run.broker.address(),
        &run.topics.movements,
    )?;
    let agents = run
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| sim::drive_agent(run.chain.clone(), i, a.url()))
        .collect();
    Ok(Sinks { producer, agents })
}

/// The kill schedule of the steady scenario: hub #2 killed -9 at `at`, started again
/// `down` later. Returns (killed_at, restarted_at).
fn kill_schedule(
    hubs: Arc<Mutex<Vec<Hub>>>,
    at: Duration,
    down: Duration,
) -> tokio::task::JoinHandle<Option<(DateTime<Utc>, DateTime<Utc>)>> {
    tokio::spawn(async move {
        tokio::time::sleep(at).await;
        let h = hubs.clone();
        let killed = tokio::task::spawn_blocking(move || {
            let mut hubs = h.lock().ok()?;
            let hub = hubs.get_mut(1)?;
            hub.kill();
            Some(Utc::now())
        })
        .await
        .ok()??;
        say("killed hub #2 (kill -9)");
        tokio::time::sleep(down).await;
        let restarted = tokio::task::spawn_blocking(move || {
            let mut hubs = hubs.lock().ok()?;
            let hub = hubs.get_mut(1)?;
            match hub.start() {
                Ok(()) => Some(Utc::now()),
                Err(e) => {
                    say(format!("hub #2 did not restart: {e:#}"));
                    None
                }
            }
        })
        .await
        .ok()??;
        say("restarted hub #2");
        Some((killed, restarted))
    })
}

async fn scenario(shared: &Arc<Run>) -> anyhow::Result<bool> {
    let run = shared;
    let every = Duration::from_secs(run.cli.common.progress.max(1));
    let drain_timeout = Duration::from_secs(run.cli.common.drain_timeout);
    let seed = run.cli.common.seed;
    let scenario = run.cli.scenario.clone();
    let sinks = sinks(run)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    start_window(&shared);
    let started = Utc::now();
    let ticker = progress(shared.clone(), every, stop.clone());
    let mut report = Report::new(&shared, &scenario);
    let result = async {
        match scenario {
            Scenario::Steady { duration, rate, no_kill, down } => {
                let duration = Duration::from_secs(duration);
                let kill = (!no_kill && shared.hub_urls.len() >= 2)
                    .then(|| kill_schedule(shared.hubs.clone(), duration / 2, Duration::from_secs(down)));
                say(format!("steady: {} stores x {rate}/s for {duration:?}", shared.cli.common.stores));
                sim::traffic(&shared.chain, &sinks, rate, duration, seed, |_| {}).await?;
                let traffic_end = Utc::now();
                say("traffic stopped; draining");
                let drained = drain(&shared, &sinks, drain_timeout).await?;
                report.kill = match kill {
                    Some(k) => k.await.ok().flatten(),
                    None => None,
                };
                report.traffic = Some((started, traffic_end));
                report.drained_after = Some(drained);
                report.commands_converged_after = Some(converge_commands(&shared, Duration::from_secs(120)).await?);
            }
            Scenario::Smoke => {
                let duration = Duration::from_secs(20);
                let kill = (shared.hub_urls.len() >= 2)
                    .then(|| kill_schedule(shared.hubs.clone(), Duration::from_secs(8), Duration::from_secs(4)));
                say(format!("smoke: {} stores x 1/s for 20 s, a hub killed at 8 s, HQ movements to 10 stores", shared.cli.common.stores));
                let hq = {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        fanout_requests(&shared, 10, 4, false).await
                    })
                };
                sim::traffic(&shared.chain, &sinks, 1.0, duration, seed, |_| {}).await?;
                let traffic_end = Utc::now();
                report.fanout = Some(hq.await??);
                let drained = drain(&shared, &sinks, drain_timeout.min(Duration::from_secs(120))).await?;
                report.kill = match kill {
                    Some(k) => k.await.ok().flatten(),
                    None => None,
                };
                report.traffic = Some((started, traffic_end));
                report.drained_after = Some(drained);
                report.commands_converged_after = Some(converge_commands(&shared, Duration::from_secs(60)).await?);
            }
            Scenario::Backlog { queued } => {
                report.backlog = Some(backlog(&shared, &sinks, queued, seed, drain_timeout).await?);
                report.traffic = Some((started, Utc::now()));
            }
            Scenario::Fanout { targets, clients, rate, duration } => {
                let duration = Duration::from_secs(duration);
                let hq = {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        fanout_requests(&shared, targets, clients, true).await
                    })
                };
                say(format!("fanout: stores trade at {rate}/s; HQ fans out with {clients} clients after 10 s"));
                sim::traffic(&shared.chain, &sinks, rate, duration, seed, |_| {}).await?;
                let traffic_end = Utc::now();
                report.fanout = Some(hq.await??);
                let drained = drain(&shared, &sinks, drain_timeout).await?;
                report.traffic = Some((started, traffic_end));
                report.drained_after = Some(drained);
                report.commands_converged_after = Some(converge_commands(&shared, Duration::from_secs(180)).await?);
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    sample_cpu(&shared);
    stop.store(true, Ordering::Relaxed);
    ticker.abort();
    result?;
    report.finish(shared).await
}

/// Backlog: every store comes online at once with `queued` movements in its outbox.
pub struct BacklogResult {
    pub queued: usize,
    pub produce_secs: f64,
    pub drain_secs: f64,
    pub first_done_secs: Option<f64>,
    /// When the fastest store finished: the slowest store's applied count, and the median.
    pub slowest_at_first: Option<(u64, u64)>,
    pub last_done_secs: Option<f64>,
}

async fn backlog(
    run: &Arc<Run>,
    sinks: &Sinks,
    queued: usize,
    seed: u64,
    timeout: Duration,
) -> anyhow::Result<BacklogResult> {
    use rand::Rng;
    let chain = &run.chain;
    let n = chain.lock().len();
    say(format!(
        "backlog: {n} stores x {queued} queued movements, produced at once (interleaved by store)"
    ));
    let t0 = Instant::now();
    let producer = {
        let chain = chain.clone();
        let tx = sinks.producer.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut made = vec![0usize; n];
            let mut buffer: Vec<Vec<Intent>> = vec![Vec::new(); n];
            for _round in 0..queued {
                for i in 0..n {
                    if made[i] >= queued {
                        continue;
                    }
                    if buffer[i].is_empty() {
                        let stores = chain.lock();
                        buffer[i] = sim::event(&mut rng, &stores[i], i, &[]);
                        buffer[i].reverse();
                    }
                    let mut intent = buffer[i].pop().context("an intent")?;
                    // No transfers: the other store's transfer_in would not be queued.
                    if let Intent::TransferOut { sku, .. } = intent {
                        intent = Intent::Receipt {
                            sku,
                            qty: rng.gen_range(12..=48),
                        };
                    }
                    made[i] += 1;
                    chain.produced.fetch_add(1, Ordering::Relaxed);
                    let out = {
                        let mut stores = chain.lock();
                        sim::make_light(&chain, &mut stores, i, intent, Utc::now())?
                    };
                    tx.send(out)
                        .await
                        .map_err(|_| anyhow::anyhow!("producer gone"))?;
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut first_done = None;
    let mut slowest_at_first = None;
    let mut last_done = None;
    let mut produce_secs = None;
    let total = (n * queued) as u64;
    loop {
        if produce_secs.is_none() && chain.delivered.load(Ordering::Relaxed) >= total {
            produce_secs = Some(t0.elapsed().as_secs_f64());
        }
        let p = probe(run).await?;
        let mut seqs: Vec<u64> = p.last_seq.values().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        let done = seqs.iter().filter(|&&s| s >= queued as u64).count();
        if first_done.is_none() && done > 0 {
            first_done = Some(t0.elapsed().as_secs_f64());
            slowest_at_first = Some((seqs[0], seqs[seqs.len() / 2]));
            say(format!(
                "first store drained at {:.1} s; then the slowest had {} of {queued} applied (median {})",
                t0.elapsed().as_secs_f64(),
                seqs[0],
                seqs[seqs.len() / 2]
            ));
        }
        if done == n {
            last_done = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if t0.elapsed() > timeout {
            say(format!(
                "backlog not drained after {timeout:?}: {done} of {n} stores done, {} applied",
                p.applied
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    producer.await??;
    Ok(BacklogResult {
        queued,
        produce_secs: produce_secs.unwrap_or(t0.elapsed().as_secs_f64()),
        drain_secs: t0.elapsed().as_secs_f64(),
        first_done_secs: first_done,
        slowest_at_first,
        last_done_secs: last_done,
    })
}

/// What HQ's fan-out got back.
#[derive(Debug, Default)]
pub struct FanoutResult {
    /// (request kind, status) → count.
    pub statuses: BTreeMap<(String, u16), u64>,
    pub lock_errors: u64,
    pub latencies_ms: BTreeMap<String, Vec<f64>>,
    /// (store index, hub_seq, delta, sku) of each accepted hub-origin movement.
    pub accepted: Vec<(usize, u64, i64, String)>,
    pub wall_secs: f64,
    pub clients: usize,
    pub targets: usize,
    pub threshold_puts: usize,
    pub failures: Vec<String>,
}

/// HQ through the hub API with `clients` concurrent clients: a threshold change for every
/// store (one PUT each, plus one chain-wide sku figure announced to all stores in one
/// transaction) when `thresholds`, and one hub-origin receipt to each of `targets` stores
/// (the real agents first).
pub async fn fanout_requests(
    run: &Run,
    targets: usize,
    clients: usize,
    thresholds: bool,
) -> anyhow::Result<FanoutResult> {
    #[derive(Clone)]
    enum Job {
        StoreThreshold(usize),
        ChainThreshold(String),
        Movement(usize, String),
    }
    let mut rng = StdRng::seed_from_u64(run.cli.common.seed ^ 0xfa);
    let (n, skus, known): (usize, Vec<(usize, String)>, Option<String>) = {
        let stores = run.chain.lock();
        // A sku the hub already knows (a chain-wide threshold needs one): one the busiest
        // store has moved.
        let known = stores
            .iter()
            .filter(|s| s.delivered > 0)
            .max_by_key(|s| s.ids.len())
            .and_then(|s| s.on_hand.keys().min().cloned());
        (
            stores.len(),
            stores
                .iter()
                .enumerate()
                .map(|(i, s)| (i, run.chain.catalogue[s.skus[0]].clone()))
                .collect(),
            known,
        )
    };
    let mut jobs = Vec::new();
    if thresholds {
        jobs.extend((0..n).map(Job::StoreThreshold));
        jobs.push(Job::ChainThreshold(
            known.unwrap_or_else(|| skus[0].1.clone()),
        ));
    }
    let mut order: Vec<usize> = (run.agents.len()..n).collect();
    order.shuffle(&mut rng);
    let chosen: Vec<usize> = (0..run.agents.len())
        .chain(order)
        .take(targets.min(n))
        .collect();
    jobs.extend(chosen.iter().map(|&i| Job::Movement(i, skus[i].1.clone())));
    jobs.shuffle(&mut rng);
    let threshold_puts = jobs
        .iter()
        .filter(|j| !matches!(j, Job::Movement(..)))
        .count();
    say(format!(
        "HQ: {} requests ({} threshold changes, {} hub-origin movements) with {clients} clients",
        jobs.len(),
        threshold_puts,
        chosen.len()
    ));
    let url = run.hub_urls[0].clone();
    let t = Instant::now();
    let results: Vec<(String, u16, f64, Value, Option<(usize, String)>)> = stream::iter(jobs)
        .map(|job| {
            let http = run.http.clone();
            let url = url.clone();
            let name = match &job {
                Job::StoreThreshold(i) | Job::Movement(i, _) => run.chain.names[*i].to_string(),
                Job::ChainThreshold(_) => String::new(),
            };
            async move {
                let started = Instant::now();
                let (what, request, target) = match &job {
                    Job::StoreThreshold(i) => (
                        "PUT /v1/thresholds (store)",
                        http.put(format!("{url}/v1/thresholds")).json(&json!({"store": name, "reorder_point": 4 + (i % 7), "max_stock": 400})),
                        None,
                    ),
                    Job::ChainThreshold(sku) => (
                        "PUT /v1/thresholds (sku, chain-wide)",
                        http.put(format!("{url}/v1/thresholds")).json(&json!({"sku": sku, "reorder_point": 6, "max_stock": 600})),
                        None,
                    ),
                    Job::Movement(i, sku) => (
                        "POST /v1/stores/{s}/movements",
                        http.post(format!("{url}/v1/stores/{name}/movements"))
                            .header("Idempotency-Key", format!("load-fanout-{name}"))
                            .json(&json!({"kind": "receipt", "sku": sku, "qty": 24, "ref": "hq/fanout"})),
                        Some((*i, sku.clone())),
                    ),
                };
                let (status, body) = match request.bearer_auth(ADMIN_TOKEN).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        (status, r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(e) => (0, json!({"error": {"message": e.to_string()}})),
                };
                (what.to_owned(), status, started.elapsed().as_secs_f64() * 1000.0, body, target)
            }
        })
        .buffer_unordered(clients.max(1))
        .collect()
        .await;
    let mut out = FanoutResult {
        wall_secs: t.elapsed().as_secs_f64(),
        clients,
        targets: chosen.len(),
        threshold_puts,
        ..Default::default()
    };
    for (what, status, ms, body, target) in results {
        *out.statuses.entry((what.clone(), status)).or_insert(0) += 1;
        out.latencies_ms.entry(what.clone()).or_default().push(ms);
        if status >= 500 || status == 0 {
            let text = body.to_string().to_lowercase();
            if text.contains("deadlock")
                || text.contains("1213")
                || text.contains("lock wait")
                || text.contains("1205")
            {
                out.lock_errors += 1;
            }
            if out.failures.len() < 5 {
                out.failures.push(format!("{what} → {status}: {body}"));
            }
        }
        if let (202, Some((i, sku))) = (status, target) {
            let hub_seq = body["movement"]["hub_seq"].as_u64().unwrap_or(0);
            let delta = body["movement"]["delta"].as_i64().unwrap_or(0);
            out.accepted.push((i, hub_seq, delta, sku));
        }
    }
    // The real agents' model learns HQ's deltas here (lightweight stores apply them from
    // their command partition).
    {
        let mut stores = run.chain.lock();
        for (i, _, delta, sku) in &out.accepted {
            if let Runner::Agent(_) = stores[*i].runner {
                *stores[*i].hq_deltas.entry(sku.clone()).or_insert(0) += delta;
            }
        }
    }
    say(format!("HQ fan-out done in {:.1} s", out.wall_secs));
    Ok(out)
}

/// The agent's SQLite, read only.
pub fn agent_db(dir: &Path) -> anyhow::Result<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(
        dir.join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?)
}
