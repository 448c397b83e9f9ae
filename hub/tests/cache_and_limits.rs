//! The stock cache, the shared rate limit and `/metrics` against real components: MariaDB
//! (a fresh database per test) and a private `redis-server` per test on a free port, which
//! the tests kill and restart (the machine's Redis on 6379 is never touched). Requests go
//! through warp::test with a chosen peer address, no socket.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_hub::cache::{Lookup, Written};
use bazaar_hub::config::{FileConfig, HubConfig, Secret};
use bazaar_hub::ingest::BatchOutcome;
use bazaar_hub::startup::{build, Hub};
use bazaar_hub::stores::StockFigure;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private `redis-server` without persistence, killed with its handle.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port, empty.
    fn restart(&mut self) {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {binary} (install redis-server or set REDIS_SERVER): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct App {
    hub: Arc<Hub>,
    database: String,
}

fn config(database: &str, redis_url: &str, prefix: &str) -> HubConfig {
    let file = FileConfig {
        mysql_url: Some(Secret::new(format!(
            "mysql://root@127.0.0.1:3306/{database}"
        ))),
        admin_token: Some(Secret::new(ADMIN)),
        redis_url: Some(redis_url.into()),
        redis_prefix: Some(prefix.into()),
        trusted_proxies: Some(vec!["127.0.0.2".into()]),
        ..FileConfig::default()
    };
    HubConfig::from_layers(file, |_| None).expect("a valid configuration")
}

fn fresh_names() -> (String, String) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    (
        format!("bz_hubcache_{}", &id[20..]),
        format!("t{}:", &id[20..]),
    )
}

async fn spawn_app(redis_url: &str) -> App {
    let (database, prefix) = fresh_names();
    let hub = build(config(&database, redis_url, &prefix))
        .await
        .expect("hub builds");
    App { hub, database }
}

impl App {
    /// A second hub on the same database and Redis namespace.
    async fn twin(&self) -> Arc<Hub> {
        build(self.hub.config.clone())
            .await
            .expect("second hub builds")
    }

    async fn seed(&self) {
        let (status, body) = call(
            &self.hub,
            "POST",
            "/v1/stores",
            None,
            Some(json!({"store": "S1"})),
        )
        .await;
        assert_eq!(status, 201, "{body:?}");
        sqlx::query("INSERT INTO stock (store, sku, on_hand, version, updated_at) VALUES ('S1', 'MILK', 7, 3, NOW(6))")
            .execute(&self.hub.pool)
            .await
            .expect("seed stock");
    }

    async fn cleanup(self) {
        let _ = sqlx::query(&format!("DROP DATABASE `{}`", self.database))
            .execute(&self.hub.pool)
            .await;
    }
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    text: String,
}

async fn call(
    hub: &Arc<Hub>,
    method: &str,
    path: &str,
    peer: Option<SocketAddr>,
    body: Option<Value>,
) -> (u16, Value) {
    let r = request(
        hub,
        method,
        path,
        peer,
        &[("authorization", &format!("Bearer {ADMIN}"))],
        body,
    )
    .await;
    (r.status, r.body)
}

async fn request(
    hub: &Arc<Hub>,
    method: &str,
    path: &str,
    peer: Option<SocketAddr>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut request = warp::test::request().method(method).path(path);
    if let Some(p) = peer {
        request = request.remote_addr(p);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(b) = body {
        request = request.body(b.to_string());
    }
    let response = request.reply(&bazaar_hub::api::routes(hub.clone())).await;
    let text = String::from_utf8_lossy(response.body()).into_owned();
    Reply {
        status: response.status().as_u16(),
        retry_after: response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn peer(ip: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse::<IpAddr>().expect("an IP"), 40000))
}

async fn get_stock(hub: &Arc<Hub>, from: &str) -> (u16, Value) {
    call(hub, "GET", "/get-stock/S1/MILK", peer(from), None).await
}

fn figure(on_hand: i64, version: i64) -> StockFigure {
    StockFigure {
        store: "S1".into(),
        sku: "MILK".into(),
        on_hand,
        version,
        updated_at: None,
    }
}

#[tokio::test]
async fn a_second_read_is_served_from_the_cache() {
    let redis = RedisServer::start();
    let app = spawn_app(&redis.url()).await;
    app.seed().await;
    let (status, first) = get_stock(&app.hub, "192.0.2.1").await;
    assert_eq!(
        (status, &first),
        (
            200,
            &json!({"store_id": "S1", "product_id": "MILK", "quantity": 7, "source": "database"})
        )
    );
    let (status, second) = get_stock(&app.hub, "192.0.2.1").await;
    assert_eq!(
        (status, &second),
        (
            200,
            &json!({"store_id": "S1", "product_id": "MILK", "quantity": 7, "source": "cache"})
        )
    );
    let (status, v1) = call(&app.hub, "GET", "/v1/stores/S1/stock/MILK", None, None).await;
    assert_eq!(
        (status, v1["on_hand"].as_i64(), v1["version"].as_i64()),
        (200, Some(7), Some(3)),
        "the v1 route reads the cache too"
    );
    assert!(
        v1["updated_at"].is_string(),
        "updated_at survives the cache: {v1}"
    );
    assert_eq!(app.hub.cache.counts(), (2, 1), "(hits, misses)");
    app.cleanup().await;
}

#[tokio::test]
async fn cache_writes_never_go_backwards_and_a_refresh_brings_the_committed_figure() {
    let redis = RedisServer::start();
    let app = spawn_app(&redis.url()).await;
    app.seed().await;
    let cache = &app.hub.cache;
    let generation = cache.generation().await.expect("Redis is up");
    assert_eq!(
        cache.store(&figure(50, 5), &generation).await,
        Written::Stored
    );
    assert_eq!(
        cache.store(&figure(30, 3), &generation).await,
        Written::NotNewer,
        "v3 after v5 is refused"
    );
    assert_eq!(
        cache.store(&figure(31, 5), &generation).await,
        Written::NotNewer,
        "the same version is not rewritten"
    );
    // A second hub refreshing the same key in the other order changes nothing either.
    let twin = app.twin().await;
    let twin_generation = twin.cache.generation().await.expect("Redis is up");
    assert_ne!(
        twin_generation, generation,
        "a starting hub begins a new generation"
    );
    assert_eq!(
        twin.cache.store(&figure(50, 5), &twin_generation).await,
        Written::Stored
    );
    assert_eq!(
        cache.store(&figure(30, 3), &twin_generation).await,
        Written::NotNewer
    );
    match cache.lookup("S1", "MILK").await {
        Lookup::Hit(f) => assert_eq!((f.on_hand, f.version), (50, 5)),
        other => panic!("expected v5 cached, got {other:?}"),
    }
    // A writer that read MySQL before the generation moved is dropped.
    assert_eq!(
        cache.store(&figure(60, 6), &generation).await,
        Written::StaleGeneration
    );

    // After a commit: the refresh re-reads MySQL and writes the newer version.
    sqlx::query("UPDATE stock SET on_hand = 70, version = 7 WHERE store = 'S1' AND sku = 'MILK'")
        .execute(&app.hub.pool)
        .await
        .expect("update stock");
    let touched: BTreeSet<(String, String)> = [
        ("S1".to_string(), "MILK".to_string()),
        ("S1".into(), "NEVER-MOVED".into()),
    ]
    .into();
    cache.refresh(&app.hub.pool, &touched).await;
    let (_, seed) = get_stock(&app.hub, "192.0.2.1").await;
    assert_eq!(
        (seed["quantity"].as_i64(), seed["source"].as_str()),
        (Some(70), Some("cache"))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn redis_killed_mid_test_reads_fall_back_to_mysql_and_the_cache_returns_without_a_restart() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let mut redis = RedisServer::start();
    let app = spawn_app(&redis.url()).await;
    app.seed().await;
    get_stock(&app.hub, "192.0.2.1").await;
    assert_eq!(get_stock(&app.hub, "192.0.2.1").await.1["source"], "cache");

    redis.kill();
    for round in 0..2 {
        for i in 0..10 {
            let (status, body) =
                get_stock(&app.hub, &format!("192.0.2.{}", 100 + 10 * round + i)).await;
            assert_eq!(
                (status, body["source"].as_str(), body["quantity"].as_i64()),
                (200, Some("database"), Some(7)),
                "read {i} with Redis down: {body}"
            );
        }
        // Past the retry interval: the next read starts a reconnection, which fails too.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(
        logs.count("Redis is unreachable"),
        1,
        "one warning per outage, not one per request:\n{}",
        logs.text()
    );
    let metrics = request(&app.hub, "GET", "/metrics", None, &[], None)
        .await
        .text;
    assert!(metrics.contains("bazaar_hub_redis_up 0"), "{metrics}");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0u32.. {
        // A new client each time, so the poll never meets the rate limit.
        let client = std::net::Ipv4Addr::from(0xC633_0000 + i).to_string();
        let (status, body) = get_stock(&app.hub, &client).await;
        assert_eq!(status, 200, "{body}");
        if body["source"] == "cache" {
            assert_eq!(body["quantity"], 7);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub never used Redis again after it came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.hub.redis.is_up());
    assert_eq!(logs.count("Redis is reachable again"), 1, "{}", logs.text());
    app.cleanup().await;
}

/// Sends `n` get-stock requests from `client`; the statuses and the time they took.
async fn burst(hubs: &[&Arc<Hub>], client: &str, n: usize) -> (Vec<u16>, Duration) {
    let started = Instant::now();
    let mut statuses = Vec::new();
    for i in 0..n {
        statuses.push(get_stock(hubs[i % hubs.len()], client).await.0);
    }
    (statuses, started.elapsed())
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_two_hubs_and_ignores_forwarded_for_from_untrusted_peers() {
    let redis = RedisServer::start();
    let app = spawn_app(&redis.url()).await;
    app.seed().await;
    let twin = app.twin().await;
    get_stock(&app.hub, "192.0.2.250").await; // warm the cache so every request below is quick
                                              // GCRA with burst = rate = 5: a sixth request within 200 ms of the first is refused.
                                              // A stalled machine can stretch a burst past that; then try again from a new client.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let client = format!("198.51.100.{attempt}");
        let (statuses, took) = burst(&[&app.hub, &twin], &client, 5).await;
        assert_eq!(
            statuses, [200; 5],
            "the first five pass, spread over two hubs"
        );
        let sixth = request(
            &twin,
            "GET",
            "/get-stock/S1/MILK",
            peer(&client),
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
        if sixth.status == 200 && took > Duration::from_millis(150) && attempt < 5 {
            continue;
        }
        assert_eq!(
            sixth.status, 429,
            "the sixth within a second is refused by the other hub: {}",
            sixth.text
        );
        assert_eq!(sixth.body["error"]["code"], "rate_limited");
        assert_eq!(sixth.retry_after.as_deref(), Some("1"));
        // X-Forwarded-For from an untrusted peer is ignored: still the same bucket.
        let forged = request(
            &app.hub,
            "GET",
            "/get-stock/S1/MILK",
            peer(&client),
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("x-forwarded-for", "203.0.113.77"),
            ],
            None,
        )
        .await;
        assert_eq!(
            forged.status, 429,
            "X-Forwarded-For from an untrusted peer must not reset the bucket"
        );
        // Another client is not affected.
        assert_eq!(get_stock(&app.hub, "198.51.100.200").await.0, 200);
        break;
    }
    // Behind the trusted proxy, each forwarded client has its own bucket.
    for client in ["203.0.113.1", "203.0.113.2"] {
        for _ in 0..5 {
            let r = request(
                &app.hub,
                "GET",
                "/get-stock/S1/MILK",
                peer("127.0.0.2"),
                &[
                    ("authorization", &format!("Bearer {ADMIN}")),
                    ("x-forwarded-for", client),
                ],
                None,
            )
            .await;
            assert_eq!(r.status, 200, "{client} through the proxy");
        }
    }
    let metrics = request(&app.hub, "GET", "/metrics", None, &[], None)
        .await
        .text;
    assert!(
        metrics.contains("bazaar_hub_rate_limited_total{route=\"get-stock\"} 1"),
        "this hub refused the forged one; its twin the sixth: {metrics}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn with_redis_down_from_the_start_reads_work_and_the_limit_is_per_process() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let app = spawn_app(&dead).await;
    app.seed().await;
    let (statuses, took) = burst(&[&app.hub], "192.0.2.9", 5).await;
    assert_eq!(statuses, [200; 5]);
    let (status, body) = get_stock(&app.hub, "192.0.2.9").await;
    if took < Duration::from_millis(150) {
        assert_eq!(status, 429, "the in-process bucket limits too: {body}");
    }
    let (status, body) = get_stock(&app.hub, "192.0.2.10").await;
    assert_eq!((status, body["source"].as_str()), (200, Some("database")));
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_are_open_and_count_requests_cache_and_ingest() {
    let redis = RedisServer::start();
    let app = spawn_app(&redis.url()).await;
    app.seed().await;
    get_stock(&app.hub, "192.0.2.1").await;
    get_stock(&app.hub, "192.0.2.1").await;
    assert_eq!(
        call(&app.hub, "GET", "/v1/stores/NOPE", None, None).await.0,
        404
    );
    app.hub.ingest.record(&BatchOutcome {
        applied: 3,
        duplicates: 2,
        held: 1,
        parked: 4,
        ..BatchOutcome::default()
    });
    let r = request(&app.hub, "GET", "/metrics", None, &[], None).await;
    assert_eq!(r.status, 200, "no token needed");
    for line in [
        "bazaar_hub_http_requests_total{route=\"/get-stock/{store_id}/{product_id}\",method=\"GET\",status=\"200\"} 2",
        "bazaar_hub_http_requests_total{route=\"/v1/stores/{store}\",method=\"GET\",status=\"404\"} 1",
        "bazaar_hub_http_request_duration_seconds_count{route=\"/v1/stores\",method=\"POST\",status=\"201\"} 1",
        "bazaar_hub_stock_cache_hits_total 1",
        "bazaar_hub_stock_cache_misses_total 1",
        "bazaar_hub_redis_up 1",
        "bazaar_hub_movements_applied_total 3",
        "bazaar_hub_movements_duplicates_total 2",
        "bazaar_hub_movements_held_total 1",
        "bazaar_hub_movements_parked_total 4",
    ] {
        assert!(r.text.lines().any(|l| l == line), "missing {line:?} in\n{}", r.text);
    }
    app.cleanup().await;
}

fn sale(key: &bazaar_shared::SigningKey, seq: u64, sku: &str) -> bazaar_hub::ingest::RawMessage {
    use bazaar_shared::{Envelope, Kind, Origin, Sku, StoreId};
    let envelope = Envelope::movement(
        StoreId::parse("S1").expect("store id"),
        Origin::Store,
        seq,
        Kind::Sale,
        Sku::parse(sku).expect("sku"),
        -1,
    );
    bazaar_hub::ingest::RawMessage {
        position: bazaar_hub::plan::Position {
            topic: "t".into(),
            partition: 0,
            offset: seq as i64,
        },
        payload: envelope.to_signed_bytes(key).expect("signed"),
    }
}

async fn cached(app: &App, sku: &str) -> Option<(i64, i64)> {
    match app.hub.cache.lookup("S1", sku).await {
        Lookup::Hit(f) => Some((f.on_hand, f.version)),
        _ => None,
    }
}

#[tokio::test]
async fn an_ingest_batch_refreshes_every_key_it_touched_duplicates_included() {
    let redis = RedisServer::start();
    let app = spawn_app(&redis.url()).await;
    let (status, credentials) = call(
        &app.hub,
        "POST",
        "/v1/stores",
        None,
        Some(json!({"store": "S1"})),
    )
    .await;
    assert_eq!(status, 201);
    let key = bazaar_shared::SigningKey::from_base64(credentials["key"].as_str().expect("key"))
        .expect("a signing key");
    let pool = &app.hub.pool;

    let outcome =
        bazaar_hub::ingest::apply_batch(pool, &[sale(&key, 1, "MILK"), sale(&key, 2, "BREAD")])
            .await
            .expect("applied");
    assert_eq!(outcome.applied, 2);
    app.hub.cache.refresh(pool, &outcome.touched).await;
    assert_eq!(cached(&app, "MILK").await, Some((-1, 1)));
    assert_eq!(cached(&app, "BREAD").await, Some((-1, 1)));

    // A hub commits seq 3 and dies before its refresh: the cache trails MySQL...
    let third = sale(&key, 3, "MILK");
    bazaar_hub::ingest::apply_batch(pool, std::slice::from_ref(&third))
        .await
        .expect("applied");
    assert_eq!(cached(&app, "MILK").await, Some((-1, 1)));
    // ...until the re-delivery, all duplicates, refreshes it all the same.
    let again = bazaar_hub::ingest::apply_batch(pool, &[third])
        .await
        .expect("skipped");
    assert_eq!((again.applied, again.duplicates), (0, 1));
    app.hub.cache.refresh(pool, &again.touched).await;
    assert_eq!(cached(&app, "MILK").await, Some((-2, 2)));
    app.cleanup().await;
}
