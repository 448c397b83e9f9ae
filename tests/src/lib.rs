//! Harness for the end-to-end tests: each test gets real processes — a tansu broker with
//! sqlite storage, `bazaar-hub`, `bazaar-agent` — on free ports, with a fresh MySQL
//! database, topic prefix and consumer group, so runs never collide. Processes are
//! killed (`kill -9`) when their handle drops; `kill` is there for the crash tests.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "e2e-admin-token";
pub const MYSQL_ROOT: &str = "mysql://root@127.0.0.1:3306";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// `target/debug` (or release) beside this test binary, where `cargo build --bins` put
/// `bazaar-hub` and `bazaar-agent`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // A binary of the workspace (bazaar-loadgen) finds the others beside itself.
    if let Some(beside) = exe.parent().map(|d| d.join(name)).filter(|p| p.exists()) {
        return beside;
    }
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = Path::new(&home).join(".cargo/bin/tansu");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    "tansu".into()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

fn wait_for_port(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if port_open(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not open port {port}; log:\n{}", tail(log, 40))
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A process that dies with its handle.
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> anyhow::Result<Process> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(Process {
            child: Some(child),
            log,
        })
    }

    /// `kill -9`: no shutdown hook runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tansu broker with sqlite storage in its own directory; stoppable and restartable on
/// the same port and data.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

impl Broker {
    pub fn new(dir: &Path) -> Broker {
        let dir = dir.join("broker");
        std::fs::create_dir_all(&dir).expect("broker directory");
        Broker {
            port: free_port(),
            dir,
            process: None,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.process.as_mut().is_some_and(Process::is_running) {
            return Ok(());
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(tansu_binary());
        command
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"]);
        let log = self.dir.join("tansu.log");
        self.process = Some(Process::spawn(command, log.clone())?);
        wait_for_port(self.port, "tansu", &log)
    }

    /// `kill -9` of the broker.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// A fresh database, prefix and group: the names one test uses.
pub struct Names {
    pub database: String,
    pub prefix: String,
    pub group: String,
}

impl Names {
    pub fn fresh() -> Names {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let short = &id[id.len() - 12..];
        Names {
            database: format!("bz_e2e_{short}"),
            prefix: format!("e2e{short}."),
            group: format!("hub-{short}"),
        }
    }

    pub fn mysql_url(&self) -> String {
        format!("{MYSQL_ROOT}/{}", self.database)
    }
}

pub struct Hub {
    pub port: u16,
    env: Vec<(String, String)>,
    dir: PathBuf,
    process: Option<Process>,
    starts: u32,
}

impl Hub {
    pub fn new(dir: &Path, names: &Names, brokers: &str) -> Hub {
        let port = free_port();
        let env = vec![
            ("BAZAAR_HUB_MYSQL_URL".into(), names.mysql_url()),
            ("BAZAAR_HUB_KAFKA_BROKERS".into(), brokers.into()),
            ("BAZAAR_HUB_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("BAZAAR_HUB_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("BAZAAR_HUB_KAFKA_GROUP".into(), names.group.clone()),
            ("BAZAAR_HUB_TOPIC_PREFIX".into(), names.prefix.clone()),
            // The machine's Redis, in this test's own namespace.
            ("BAZAAR_HUB_REDIS_PREFIX".into(), names.prefix.clone()),
            ("RUST_LOG".into(), "info,rdkafka=warn,sqlx=warn".into()),
        ];
        let dir = dir.join("hub");
        std::fs::create_dir_all(&dir).expect("hub directory");
        Hub {
            port,
            env,
            dir,
            process: None,
            starts: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary("bazaar-hub"));
        command.args(args).current_dir(&self.dir);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// `bazaar-hub store add ID --json` → (token, key).
    pub fn add_store(&self, store: &str) -> anyhow::Result<(String, String)> {
        let output = self.command(&["store", "add", store, "--json"]).output()?;
        if !output.status.success() {
            bail!(
                "store add failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let v: Value =
            serde_json::from_slice(&output.stdout).context("store add --json prints JSON")?;
        Ok((
            v["token"].as_str().unwrap_or_default().into(),
            v["key"].as_str().unwrap_or_default().into(),
        ))
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let log = self.dir.join(format!("hub-{}.log", self.starts));
        self.process = Some(Process::spawn(self.command(&["serve"]), log.clone())?);
        wait_for_port(self.port, "bazaar-hub", &log)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.join(format!("hub-{}.log", self.starts)), 30)
    }
}

pub struct Agent {
    pub port: u16,
    pub store: String,
    data: PathBuf,
    process: Option<Process>,
    starts: u32,
    extra_env: Vec<(String, String)>,
}

impl Agent {
    pub fn init(
        dir: &Path,
        store: &str,
        hub: &Hub,
        brokers: &str,
        prefix: &str,
        token: &str,
        key: &str,
    ) -> anyhow::Result<Agent> {
        let port = free_port();
        let data = dir.join(format!("agent-{store}"));
        let output = Command::new(binary("bazaar-agent"))
            .args([
                "init",
                "--store",
                store,
                "--hub",
                &hub.url(),
                "--token",
                token,
                "--key",
                key,
            ])
            .arg("--data")
            .arg(&data)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--kafka-brokers",
                brokers,
                "--topic-prefix",
                prefix,
            ])
            .output()?;
        if !output.status.success() {
            bail!(
                "agent init failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Agent {
            port,
            store: store.into(),
            data,
            process: None,
            starts: 0,
            extra_env: Vec::new(),
        })
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        self.start_with(&[])
    }

    /// `bazaar-agent run ARGS…`, e.g. `--resnapshot`.
    pub fn start_with(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.starts += 1;
        let log = self.data.join(format!("agent-{}.log", self.starts));
        let mut command = Command::new(binary("bazaar-agent"));
        command
            .arg("run")
            .args(args)
            .env("BAZAAR_AGENT_DATA", &self.data)
            .env("RUST_LOG", "info,rdkafka=warn");
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        self.process = Some(Process::spawn(command, log.clone())?);
        wait_for_port(self.port, "bazaar-agent", &log)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn log_tail(&self) -> String {
        tail(&self.data.join(format!("agent-{}.log", self.starts)), 30)
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Polls `probe` until it yields `Some`, or fails after `timeout` with `context()`.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    mut probe: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?}: {}", context());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn mysql(names: &Names) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&names.mysql_url())
        .await
        .expect("the test database (created by the hub's migrations)")
}

pub async fn drop_database(names: &Names) {
    if let Ok(pool) = sqlx::MySqlPool::connect(MYSQL_ROOT).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", names.database))
            .execute(&pool)
            .await;
    }
}

/// The hub's applied seq for a store, straight from MySQL.
pub async fn hub_last_seq(pool: &sqlx::MySqlPool, store: &str) -> u64 {
    sqlx::query_scalar("SELECT last_seq FROM store_sync WHERE store = ?")
        .bind(store)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Posts a movement to an agent; returns (status, body).
pub async fn post_movement(
    client: &reqwest::Client,
    agent_url: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = client.post(format!("{agent_url}/v1/movements")).json(body);
    if let Some(k) = key {
        request = request.header("Idempotency-Key", k);
    }
    let response = request.send().await.expect("the agent answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// on-hand per sku at the hub, from the `stock` table.
pub async fn hub_stock(
    pool: &sqlx::MySqlPool,
    store: &str,
) -> std::collections::BTreeMap<String, i64> {
    use sqlx::Row;
    sqlx::query("SELECT sku, on_hand FROM stock WHERE store = ?")
        .bind(store)
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.get::<String, _>("sku"), r.get::<i64, _>("on_hand")))
        .collect()
}

/// on-hand per sku at the agent, from its API.
pub async fn agent_stock(
    client: &reqwest::Client,
    agent_url: &str,
) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    let mut after = String::new();
    loop {
        let page: Value = client
            .get(format!("{agent_url}/v1/stock?limit=1000&after={after}"))
            .send()
            .await
            .expect("agent answers")
            .json()
            .await
            .expect("stock JSON");
        for item in page["items"].as_array().cloned().unwrap_or_default() {
            out.insert(
                item["sku"].as_str().unwrap_or_default().to_string(),
                item["on_hand"].as_i64().unwrap_or(0),
            );
        }
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => return out,
        }
    }
}

// Helpers for the throughput bench (tests/benches/throughput.rs).

impl Process {
    /// The OS process id, while the process is held.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Hub {
    /// Whether the hub process is alive (false once it exited or was killed).
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }
}

impl Broker {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }
}

// Helpers for the bootstrap and offline-day tests.

impl Agent {
    /// `kill -9` and delete the data directory: a store server whose disk was lost.
    pub fn wipe(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// `GET /v1/status` of an agent, once it answers.
pub async fn agent_status(client: &reqwest::Client, agent_url: &str) -> Option<Value> {
    client
        .get(format!("{agent_url}/v1/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Every store-origin seq the hub holds for `store`: (rows, distinct seqs, min, max).
pub async fn hub_seq_summary(pool: &sqlx::MySqlPool, store: &str) -> (i64, i64, u64, u64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT seq), CAST(ifnull(min(seq), 0) AS UNSIGNED),
                CAST(ifnull(max(seq), 0) AS UNSIGNED)
         FROM movements WHERE store = ? AND origin = 'store'",
    )
    .bind(store)
    .fetch_one(pool)
    .await
    .expect("the hub's ledger")
}

/// Parked messages the hub holds for `store`.
pub async fn hub_parked(pool: &sqlx::MySqlPool, store: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM parked_events WHERE store = ?")
        .bind(store)
        .fetch_one(pool)
        .await
        .expect("parked_events")
}

/// A scratch directory for one test's processes (logs, SQLite, broker data). With
/// `BAZAAR_E2E_KEEP=1` it survives the test and its path is printed, so a failure's full
/// logs can be read afterwards.
pub fn scratch_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().expect("a temporary directory");
    if std::env::var_os("BAZAAR_E2E_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// One store's processes, the set-up most end-to-end tests begin from: a broker, a hub
/// with the store registered, and the store's agent initialised with its credentials, in a
/// scratch directory of their own with fresh names. [`Stack::new`] starts nothing, so a
/// test can begin from any partial state (broker down, agent not yet run);
/// [`Stack::started`] runs broker, hub and agent, in that order.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub names: Names,
    pub broker: Broker,
    pub hub: Hub,
    pub agent: Agent,
    /// The store's token and signing key, as `bazaar-hub store add` printed them.
    pub token: String,
    pub key: String,
}

impl Stack {
    pub fn new(store: &str) -> Stack {
        let dir = scratch_dir();
        let names = Names::fresh();
        let broker = Broker::new(dir.path());
        let hub = Hub::new(dir.path(), &names, &broker.address());
        let (token, key) = hub.add_store(store).expect("store add");
        let agent = Agent::init(
            dir.path(),
            store,
            &hub,
            &broker.address(),
            &names.prefix,
            &token,
            &key,
        )
        .expect("agent init");
        Stack {
            dir,
            names,
            broker,
            hub,
            agent,
            token,
            key,
        }
    }

    pub fn started(store: &str) -> Stack {
        let mut stack = Stack::new(store);
        stack.start();
        stack
    }

    /// Broker, hub and agent, in that order.
    pub fn start(&mut self) {
        self.broker.start().expect("broker starts");
        self.hub.start().expect("hub starts");
        self.agent.start().expect("agent starts");
    }

    /// `agent init` again for the stack's store, with its credentials, over the same data
    /// directory: what store IT does on a server that lost its disk.
    pub fn reinit_agent(&self) -> Agent {
        Agent::init(
            self.dir.path(),
            &self.agent.store,
            &self.hub,
            &self.broker.address(),
            &self.names.prefix,
            &self.token,
            &self.key,
        )
        .expect("agent init")
    }

    /// The tails of the agent's and the hub's logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "agent:\n{}\nhub:\n{}",
            self.agent.log_tail(),
            self.hub.log_tail()
        )
    }
}

/// HQ posts a hub-origin movement for `store` (DESIGN §7) under `idempotency_key`; it must
/// be accepted. Returns its hub_seq.
pub async fn hq_movement(
    client: &reqwest::Client,
    hub: &Hub,
    store: &str,
    idempotency_key: &str,
    body: Value,
) -> u64 {
    let response = client
        .post(format!("{}/v1/stores/{store}/movements", hub.url()))
        .bearer_auth(ADMIN_TOKEN)
        .header("Idempotency-Key", idempotency_key)
        .json(&body)
        .send()
        .await
        .expect("the hub answers");
    let status = response.status().as_u16();
    let reply: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "{body}: {reply}");
    reply["movement"]["hub_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("a hub_seq in {reply}"))
}

// The randomized fault campaign (`bazaar-chaos`, tests/tests/chaos.rs).
pub mod chaos;
