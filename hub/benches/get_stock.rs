//! `GET /get-stock/{store}/{sku}` over real sockets: 64 concurrent keep-alive connections
//! against three servers measured in the same run, one after the other:
//!
//! - **bare**: a warp handler on the same route pattern returning a constant body, the
//!   ceiling for any handler on this machine;
//! - **cached**: the hub with its stock cache warm in Redis;
//! - **database**: the hub with the cache off (`BAZAAR_HUB_STOCK_CACHE_TTL_SECS=0`), every
//!   request read from MySQL (the primary; no replica configured).
//!
//! Both hubs run with `BAZAAR_HUB_OPEN_GET_STOCK` on and the per-IP limit lifted (`0`), over
//! 1,000 skus of one store. The client is a minimal HTTP/1.1 loop on raw sockets so that it
//! costs the shared cores as little as possible. It prints figures, never asserts on time.
//!
//! ```sh
//! cargo bench -p bazaar-hub --bench get_stock
//! ```
//!
//! Settings: `BENCH_SECS` (5, per server), `BENCH_CONNECTIONS` (64),
//! `BAZAAR_BENCH_MYSQL` (`mysql://root@127.0.0.1:3306`), `BAZAAR_BENCH_REDIS`
//! (`redis://127.0.0.1:6379`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_hub::config::{FileConfig, HubConfig, Secret};
use bazaar_hub::startup::{build, Hub};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use warp::Filter;

const ADMIN: &str = "bench-admin";
const SKUS: usize = 1000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    name: &'static str,
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "{:<9} {:>10.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>8.3} ms   ({} requests in {:.1} s)",
            self.name,
            self.rate(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.requests,
            self.elapsed.as_secs_f64()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One keep-alive connection sending requests back to back until `until`; returns each
/// request's latency. Any answer but 200 stops the benchmark: its figures would be wrong.
async fn connection(addr: SocketAddr, first_sku: usize, until: Instant) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut line = String::new();
    let mut body = Vec::new();
    let mut sku = first_sku;
    while Instant::now() < until {
        sku = (sku + 1) % SKUS;
        let request = format!("GET /get-stock/S1/SKU-{sku:04} HTTP/1.1\r\nHost: bench\r\n\r\n");
        let start = Instant::now();
        write.write_all(request.as_bytes()).await.expect("send");
        line.clear();
        read.read_line(&mut line).await.expect("status line");
        assert!(
            line.starts_with("HTTP/1.1 200"),
            "answer {line:?} to {request:?}"
        );
        let mut length = 0usize;
        loop {
            line.clear();
            read.read_line(&mut line).await.expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("content-length");
                }
            }
        }
        body.resize(length, 0);
        read.read_exact(&mut body).await.expect("body");
        latencies.push(start.elapsed());
    }
    latencies
}

async fn measure(name: &'static str, addr: SocketAddr, connections: usize, secs: u64) -> Figures {
    // Warm-up: connections open, caches and pools filled.
    let warm = Instant::now() + Duration::from_millis(1000);
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(connection(addr, i * 13, warm)))
        .collect();
    for t in tasks {
        t.await.expect("warm-up connection");
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(connection(addr, i * 17, until)))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("connection"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Figures {
        name,
        requests: all.len(),
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: *all.last().expect("at least one request"),
    }
}

fn hub_config(mysql: &str, redis: &str, database: &str, cache: bool) -> HubConfig {
    let file = FileConfig {
        mysql_url: Some(Secret::new(format!("{mysql}/{database}"))),
        redis_url: Some(redis.into()),
        redis_prefix: Some(format!("{database}:")),
        admin_token: Some(Secret::new(ADMIN)),
        open_get_stock: Some(true),
        rate_limit_get_stock: Some(0),
        stock_cache_ttl_secs: Some(if cache { 3600 } else { 0 }),
        ..FileConfig::default()
    };
    HubConfig::from_layers(file, |_| None).expect("a valid configuration")
}

/// Serves `filter` on a free port until `stop` fires.
fn serve<F>(filter: F) -> (SocketAddr, oneshot::Sender<()>)
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, server) =
        warp::serve(filter).bind_with_graceful_shutdown(([127, 0, 0, 1], 0), async move {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    (addr, stop)
}

async fn seed(hub: &Arc<Hub>) {
    let reply = warp::test::request()
        .method("POST")
        .path("/v1/stores")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(r#"{"store":"S1"}"#)
        .reply(&bazaar_hub::api::routes(hub.clone()))
        .await;
    assert_eq!(reply.status(), 201, "registering S1");
    let mut q =
        sqlx::QueryBuilder::new("INSERT INTO stock (store, sku, on_hand, version, updated_at) ");
    q.push_values(0..SKUS, |mut row, i| {
        row.push_bind("S1")
            .push_bind(format!("SKU-{i:04}"))
            .push_bind(i as i64)
            .push_bind(1i64)
            .push("NOW(6)");
    });
    q.build().execute(&hub.pool).await.expect("seeding stock");
}

fn main() {
    let secs: u64 = env_or("BENCH_SECS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 64);
    let mysql: String = env_or(
        "BAZAAR_BENCH_MYSQL",
        "mysql://root@127.0.0.1:3306".to_owned(),
    );
    let redis: String = env_or("BAZAAR_BENCH_REDIS", "redis://127.0.0.1:6379".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let database = format!(
            "bz_bench_getstock_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let cached = build(hub_config(&mysql, &redis, &database, true))
            .await
            .expect("the hub builds (is MariaDB up? scripts/stack up)");
        let uncached = build(hub_config(&mysql, &redis, &database, false))
            .await
            .expect("the second hub builds");
        seed(&cached).await;
        if !cached.redis.is_up() {
            panic!("Redis is not reachable at {redis}: the cached figures would be the database's");
        }

        let body = serde_json::json!({"store_id": "S1", "product_id": "SKU-0000", "quantity": 0, "source": "cache"}).to_string();
        let bare = warp::path!("get-stock" / String / String).map(move |_: String, _: String| {
            warp::reply::with_header(body.clone(), "content-type", "application/json")
        });
        let (bare_addr, stop_bare) = serve(bare);
        let (cached_addr, stop_cached) = serve(bazaar_hub::api::routes(cached.clone()));
        let (db_addr, stop_db) = serve(bazaar_hub::api::routes(uncached.clone()));

        println!(
            "GET /get-stock/{{store}}/{{sku}}: {connections} keep-alive connections, {secs} s per server, {SKUS} skus, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let bare = measure("bare", bare_addr, connections, secs).await;
        bare.print();
        let (hits_before, _) = cached.cache.counts();
        let cache = measure("cached", cached_addr, connections, secs).await;
        cache.print();
        let (hits_after, misses) = cached.cache.counts();
        let db = measure("database", db_addr, connections, secs).await;
        db.print();
        println!(
            "cached:   {:.0}% of bare (target >= 50%), p99 {:.3} ms (target < 5 ms); {} cache hits, {} misses in all",
            100.0 * cache.rate() / bare.rate(),
            ms(cache.p99),
            hits_after - hits_before,
            misses
        );
        println!(
            "database: {:.0}% of bare, {:.0}% of cached, p99 {:.3} ms",
            100.0 * db.rate() / bare.rate(),
            100.0 * db.rate() / cache.rate(),
            ms(db.p99)
        );
        let _ = (stop_bare.send(()), stop_cached.send(()), stop_db.send(()));
        let _ = sqlx::raw_sql(&format!("DROP DATABASE `{database}`"))
            .execute(&cached.pool)
            .await;
    });
}
