//! Read routing against the stack's MariaDB pair (`scripts/stack up`: primary with binlog on
//! 127.0.0.1:3317, its GTID replica on 127.0.0.1:3318). Each test makes a fresh database on
//! the primary (it replicates) and drives the hub through warp::test.
//!
//! How a test knows which server answered: a `GHOST` stock row is written on the replica
//! only (`sql_log_bin=0`), so it is visible when, and only when, the replica serves.
//!
//! The tests stop and delay replication, which every other test of this file would feel,
//! so each holds a MariaDB named lock on the primary for its whole run (nextest runs tests
//! as separate processes), and starts replication again, undelayed, when it takes the lock
//! in case an earlier run died half-way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_hub::api::Principal;
use bazaar_hub::config::{FileConfig, HubConfig, Secret};
use bazaar_hub::replica::Route;
use bazaar_hub::startup::{build, Hub};
use bazaar_shared::StoreId;
use serde_json::{json, Value};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};

const ADMIN: &str = "test-admin";
const PRIMARY: &str = "127.0.0.1:3317";
const REPLICA: &str = "127.0.0.1:3318";

/// The pair, held for one test.
struct Pair {
    primary: MySqlPool,
    replica: MySqlPool,
    /// Holds `GET_LOCK('bazaar_replica_tests')` until dropped.
    _lock: MySqlConnection,
    database: String,
}

async fn pair() -> Pair {
    let connect = |addr: &'static str| async move {
        MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&format!("mysql://root@{addr}"))
            .await
            .unwrap_or_else(|e| {
                panic!("the stack's MariaDB pair is not answering on {addr} ({e}): run scripts/stack up")
            })
    };
    let primary = connect(PRIMARY).await;
    let replica = connect(REPLICA).await;
    let mut lock = MySqlConnection::connect(&format!("mysql://root@{PRIMARY}"))
        .await
        .expect("a lock connection to the primary");
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('bazaar_replica_tests', 300)")
        .fetch_one(&mut lock)
        .await
        .expect("GET_LOCK");
    assert_eq!(
        got,
        Some(1),
        "another replica test held the lock for 5 minutes"
    );
    let pair = Pair {
        primary,
        replica,
        _lock: lock,
        database: format!(
            "bz_replica_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ),
    };
    pair.replicate(0).await;
    pair
}

impl Pair {
    async fn on_replica(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.replica)
            .await
            .unwrap_or_else(|e| panic!("{sql} on the replica: {e}"));
    }

    async fn on_primary(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.primary)
            .await
            .unwrap_or_else(|e| panic!("{sql} on the primary: {e}"));
    }

    /// Replication running, applying `delay` seconds behind the primary, and checked.
    async fn replicate(&self, delay: u32) {
        self.on_replica("STOP SLAVE").await;
        self.on_replica(&format!("CHANGE MASTER TO MASTER_DELAY = {delay}"))
            .await;
        self.on_replica("START SLAVE").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = sqlx::raw_sql("SHOW SLAVE STATUS")
                .fetch_all(&self.replica)
                .await
                .expect("SHOW SLAVE STATUS");
            let row = rows
                .first()
                .expect("the replica is configured as a replica");
            let field = |n: &str| {
                sqlx::Row::try_get_unchecked::<Option<String>, _>(row, n)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            };
            if field("Slave_IO_Running") == "Yes" && field("Slave_SQL_Running") == "Yes" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replication does not run: IO {:?}, SQL {:?}, errors {:?} / {:?}; try scripts/stack up",
                field("Slave_IO_Running"),
                field("Slave_SQL_Running"),
                field("Last_IO_Error"),
                field("Last_SQL_Error")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the replica has applied everything the primary has now.
    async fn caught_up(&self) {
        let pos: String = sqlx::query_scalar("SELECT @@gtid_binlog_pos")
            .fetch_one(&self.primary)
            .await
            .expect("the primary's position");
        let waited: i64 = sqlx::query_scalar("SELECT CAST(MASTER_GTID_WAIT(?, 20) AS SIGNED)")
            .bind(&pos)
            .fetch_one(&self.replica)
            .await
            .expect("MASTER_GTID_WAIT");
        assert_eq!(waited, 0, "the replica did not reach {pos} within 20 s");
    }

    /// A stock row on the replica only: a read that finds it was served by the replica.
    async fn ghost(&self) {
        let mut c = self.replica.acquire().await.expect("a replica connection");
        sqlx::raw_sql(&format!(
            "SET SESSION sql_log_bin = 0; INSERT INTO `{}`.stock (store, sku, on_hand, version, updated_at) VALUES ('S1', 'GHOST', 42, 1, NOW(6)); SET SESSION sql_log_bin = 1",
            self.database
        ))
        .execute(&mut *c)
        .await
        .expect("the ghost row on the replica");
    }

    async fn set_milk(&self, on_hand: i64) {
        self.on_primary(&format!(
            "UPDATE `{}`.stock SET on_hand = {on_hand}, version = version + 1, updated_at = NOW(6) WHERE store = 'S1' AND sku = 'MILK'",
            self.database
        ))
        .await;
    }

    async fn cleanup(self) {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{}`", self.database))
            .execute(&self.primary)
            .await;
    }
}

struct Setup {
    replica: bool,
    /// The account the hub reads the replica with (root when `None`).
    replica_user: Option<String>,
    /// Where the replica is (the pair's by default).
    replica_addr: String,
    max_lag_ms: u64,
    cache: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            replica: true,
            replica_user: None,
            replica_addr: REPLICA.into(),
            max_lag_ms: 1000,
            cache: false,
        }
    }
}

async fn hub(pair: &Pair, setup: Setup) -> Arc<Hub> {
    let file = FileConfig {
        mysql_url: Some(Secret::new(format!(
            "mysql://root@{PRIMARY}/{}",
            pair.database
        ))),
        mysql_replica_url: setup.replica.then(|| {
            Secret::new(format!(
                "mysql://{}@{}/{}",
                setup.replica_user.as_deref().unwrap_or("root"),
                setup.replica_addr,
                pair.database
            ))
        }),
        replica_max_lag_ms: Some(setup.max_lag_ms),
        admin_token: Some(Secret::new(ADMIN)),
        redis_prefix: Some(format!("{}:", pair.database)),
        rate_limit_get_stock: Some(0),
        // Off: every read reaches MySQL, so routing shows in every answer.
        stock_cache_ttl_secs: Some(if setup.cache { 3600 } else { 0 }),
        ..FileConfig::default()
    };
    let config = HubConfig::from_layers(file, |_| None).expect("a valid configuration");
    build(config).await.expect("hub builds against the pair")
}

async fn call(
    hub: &Arc<Hub>,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = warp::test::request()
        .method(method)
        .path(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(b) = body {
        request = request.body(b.to_string());
    }
    let response = request.reply(&bazaar_hub::api::routes(hub.clone())).await;
    (
        response.status().as_u16(),
        serde_json::from_slice(response.body()).unwrap_or(Value::Null),
    )
}

/// S1 registered with MILK at 7 on the primary, everything on the replica, and the ghost
/// row on the replica only. Returns S1's token.
async fn seed(pair: &Pair, hub: &Arc<Hub>) -> String {
    let (status, body) = call(
        hub,
        "POST",
        "/v1/stores",
        ADMIN,
        Some(json!({"store": "S1"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    pair.on_primary(&format!(
        "INSERT INTO `{}`.stock (store, sku, on_hand, version, updated_at) VALUES ('S1', 'MILK', 7, 1, NOW(6))",
        pair.database
    ))
    .await;
    pair.caught_up().await;
    pair.ghost().await;
    body["token"].as_str().expect("a token").to_owned()
}

async fn stock(hub: &Arc<Hub>, sku: &str, token: &str) -> (u16, Option<i64>) {
    let (status, body) = call(
        hub,
        "GET",
        &format!("/v1/stores/S1/stock/{sku}"),
        token,
        None,
    )
    .await;
    (status, body["on_hand"].as_i64())
}

/// Polls `hub.replica_ready()` until `want` holds for it.
async fn wait_ready(hub: &Hub, what: &str, want: impl Fn(&Option<Result<(), String>>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = hub.replica_ready();
        if want(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited 15 s for the replica to be {what}; it is {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serving(r: &Option<Result<(), String>>) -> bool {
    matches!(r, Some(Ok(())))
}

fn failing_with(needle: &'static str) -> impl Fn(&Option<Result<(), String>>) -> bool {
    move |r| matches!(r, Some(Err(why)) if why.contains(needle))
}

async fn metrics(hub: &Arc<Hub>) -> String {
    let response = warp::test::request()
        .path("/metrics")
        .reply(&bazaar_hub::api::routes(hub.clone()))
        .await;
    String::from_utf8_lossy(response.body()).into_owned()
}

#[tokio::test]
async fn reads_are_served_by_a_healthy_replica() {
    let pair = pair().await;
    let hub = hub(&pair, Setup::default()).await;
    let token = seed(&pair, &hub).await;
    wait_ready(&hub, "serving", serving).await;

    assert_eq!(
        stock(&hub, "GHOST", ADMIN).await,
        (200, Some(42)),
        "the replica's own row"
    );
    assert_eq!(stock(&hub, "MILK", &token).await, (200, Some(7)));
    assert!(hub.reads.reads(Route::Replica) >= 2);
    let text = metrics(&hub).await;
    assert!(
        text.contains("bazaar_hub_db_reads_total{target=\"replica\",reason=\"healthy\"} "),
        "{text}"
    );
    assert!(text.contains("bazaar_hub_replica_serving 1\n"), "{text}");
    let behind = text
        .lines()
        .find_map(|l| l.strip_prefix("bazaar_hub_replica_seconds_behind_master "))
        .unwrap_or_else(|| panic!("no Seconds_Behind_Master in {text}"));
    assert!(
        behind.parse::<u64>().is_ok(),
        "a number while replicating: {behind}"
    );
    pair.cleanup().await;
}

#[tokio::test]
async fn a_stopped_replica_sends_reads_to_the_primary_without_errors_then_serves_again() {
    let pair = pair().await;
    let hub = hub(&pair, Setup::default()).await;
    seed(&pair, &hub).await;
    wait_ready(&hub, "serving", serving).await;

    // Reads keep flowing while replication stops and starts: never a 5xx.
    let reader = {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                statuses.push(stock(&hub, "MILK", ADMIN).await.0);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    pair.on_replica("STOP SLAVE").await;
    wait_ready(&hub, "not replicating", failing_with("not replicating")).await;
    pair.set_milk(5).await;
    assert_eq!(
        stock(&hub, "MILK", ADMIN).await,
        (200, Some(5)),
        "the primary's figure"
    );
    assert_eq!(
        stock(&hub, "GHOST", ADMIN).await.0,
        404,
        "the primary has no ghost row"
    );
    assert!(hub.reads.reads(Route::NotReplicating) >= 2);

    pair.on_replica("START SLAVE").await;
    wait_ready(&hub, "serving again", serving).await;
    assert_eq!(
        stock(&hub, "GHOST", ADMIN).await,
        (200, Some(42)),
        "back on the replica"
    );
    assert_eq!(
        stock(&hub, "MILK", ADMIN).await,
        (200, Some(5)),
        "which has caught up"
    );

    let statuses = reader.await.expect("the reader task");
    assert!(statuses.len() > 50, "only {} reads", statuses.len());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    pair.cleanup().await;
}

#[tokio::test]
async fn a_replica_whose_sql_thread_stopped_behind_writes_is_skipped() {
    let pair = pair().await;
    let hub = hub(&pair, Setup::default()).await;
    seed(&pair, &hub).await;
    wait_ready(&hub, "serving", serving).await;

    pair.on_replica("STOP SLAVE SQL_THREAD").await;
    pair.set_milk(3).await;
    pair.set_milk(2).await;
    wait_ready(&hub, "not replicating", failing_with("SQL thread stopped")).await;
    assert_eq!(stock(&hub, "MILK", ADMIN).await, (200, Some(2)));
    assert_eq!(stock(&hub, "GHOST", ADMIN).await.0, 404);
    let text = metrics(&hub).await;
    assert!(text.contains("bazaar_hub_replica_serving 0\n"), "{text}");
    assert!(
        text.contains("bazaar_hub_replica_seconds_behind_master NaN\n"),
        "{text}"
    );

    pair.on_replica("START SLAVE SQL_THREAD").await;
    wait_ready(&hub, "serving again", serving).await;
    assert_eq!(stock(&hub, "MILK", ADMIN).await, (200, Some(2)));
    assert_eq!(stock(&hub, "GHOST", ADMIN).await, (200, Some(42)));
    pair.cleanup().await;
}

#[tokio::test]
async fn a_replica_lagging_past_the_bound_is_skipped_until_it_catches_up() {
    let pair = pair().await;
    let hub = hub(
        &pair,
        Setup {
            max_lag_ms: 500,
            ..Setup::default()
        },
    )
    .await;
    seed(&pair, &hub).await;
    wait_ready(&hub, "serving", serving).await;

    // Running threads, applying everything 3 s late: only the lag tells.
    pair.replicate(3).await;
    pair.set_milk(4).await;
    wait_ready(&hub, "lagging", failing_with("lagging")).await;
    assert_eq!(stock(&hub, "MILK", ADMIN).await, (200, Some(4)));
    assert_eq!(stock(&hub, "GHOST", ADMIN).await.0, 404);
    assert!(hub.reads.reads(Route::Lagging) >= 2);

    wait_ready(&hub, "caught up", serving).await;
    assert_eq!(stock(&hub, "MILK", ADMIN).await, (200, Some(4)));
    assert_eq!(stock(&hub, "GHOST", ADMIN).await, (200, Some(42)));
    pair.replicate(0).await;
    pair.cleanup().await;
}

#[tokio::test]
async fn a_writer_reads_its_write_on_another_hub_while_others_read_the_replica() {
    let pair = pair().await;
    // A replica 4 s behind is within this bound, so only read-your-writes keeps the
    // writer off it.
    let setup = || Setup {
        max_lag_ms: 60_000,
        ..Setup::default()
    };
    let a = hub(&pair, setup()).await;
    let b = hub(&pair, setup()).await;
    let token = seed(&pair, &a).await;
    wait_ready(&a, "serving", serving).await;
    wait_ready(&b, "serving", serving).await;
    let s1 = Principal::Store(StoreId::parse("S1").expect("a store id"));

    pair.replicate(4).await;
    wait_ready(&b, "serving", serving).await;
    // The write through hub A, as a hub-origin write would be.
    sqlx::query(
        "UPDATE stock SET on_hand = 8, version = version + 1 WHERE store = 'S1' AND sku = 'MILK'",
    )
    .execute(&a.pool)
    .await
    .expect("the write");
    a.wrote(&s1).await;

    assert_eq!(
        stock(&b, "MILK", &token).await,
        (200, Some(8)),
        "the writer sees its write on hub B"
    );
    assert!(b.reads.reads(Route::ReadYourWrites) >= 1);
    assert_eq!(
        stock(&b, "MILK", ADMIN).await,
        (200, Some(7)),
        "someone else reads the (delayed) replica"
    );
    assert_eq!(
        stock(&a, "MILK", &token).await,
        (200, Some(8)),
        "and on hub A"
    );

    // Once the replica has applied the write, the writer reads it there too.
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.reads.route(Some(&s1)).await != Route::Replica {
        assert!(
            Instant::now() < deadline,
            "the writer never went back to the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = b.reads.reads(Route::Replica);
    assert_eq!(stock(&b, "MILK", &token).await, (200, Some(8)));
    assert_eq!(b.reads.reads(Route::Replica), before + 1);
    pair.replicate(0).await;
    pair.cleanup().await;
}

#[tokio::test]
async fn without_a_replica_every_read_uses_the_primary() {
    let pair = pair().await;
    let hub = hub(
        &pair,
        Setup {
            replica: false,
            ..Setup::default()
        },
    )
    .await;
    let token = seed(&pair, &hub).await;

    assert_eq!(hub.replica_ready(), None);
    assert_eq!(stock(&hub, "GHOST", ADMIN).await.0, 404);
    assert_eq!(stock(&hub, "MILK", &token).await, (200, Some(7)));
    hub.wrote(&Principal::Admin).await;
    assert_eq!(hub.reads.reads(Route::NoReplica), 2);
    assert_eq!(hub.reads.reads(Route::Replica), 0);
    let text = metrics(&hub).await;
    assert!(
        text.contains("bazaar_hub_db_reads_total{target=\"primary\",reason=\"no_replica\"} 2\n"),
        "{text}"
    );
    assert!(!text.contains("bazaar_hub_replica_serving"), "{text}");
    pair.cleanup().await;
}

#[tokio::test]
async fn cache_misses_are_filled_from_the_primary() {
    let pair = pair().await;
    let hub = hub(
        &pair,
        Setup {
            cache: true,
            ..Setup::default()
        },
    )
    .await;
    seed(&pair, &hub).await;
    wait_ready(&hub, "serving", serving).await;

    // Redis is up and the replica healthy, yet a miss reads the primary: the ghost row
    // never reaches the cache.
    assert_eq!(stock(&hub, "GHOST", ADMIN).await.0, 404);
    let (status, body) = call(&hub, "GET", "/get-stock/S1/MILK", ADMIN, None).await;
    assert_eq!(
        (status, body["source"].as_str()),
        (200, Some("database")),
        "{body}"
    );
    let (status, body) = call(&hub, "GET", "/get-stock/S1/MILK", ADMIN, None).await;
    assert_eq!(
        (status, body["source"].as_str(), body["quantity"].as_i64()),
        (200, Some("cache"), Some(7)),
        "{body}"
    );
    assert_eq!(hub.reads.reads(Route::Replica), 0);
    pair.cleanup().await;
}

#[tokio::test]
async fn a_read_that_fails_on_the_replica_is_answered_by_the_primary() {
    let pair = pair().await;
    // An account that may watch replication and read `stores`, but not `stock`: the
    // monitor finds the replica healthy, and every stock read there fails.
    let user = format!("bzro_{}", &pair.database[11..]);
    pair.on_replica(&format!(
        "SET SESSION sql_log_bin = 0; CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY ''; GRANT SLAVE MONITOR ON *.* TO '{user}'@'127.0.0.1'"
    ))
    .await;
    let hub = hub(
        &pair,
        Setup {
            replica_user: Some(user.clone()),
            ..Setup::default()
        },
    )
    .await;
    seed(&pair, &hub).await;
    // Once the table exists there (a table grant needs it).
    pair.on_replica(&format!(
        "SET SESSION sql_log_bin = 0; GRANT SELECT ON `{}`.stores TO '{user}'@'127.0.0.1'",
        pair.database
    ))
    .await;
    wait_ready(&hub, "serving", serving).await;

    for _ in 0..3 {
        assert_eq!(stock(&hub, "MILK", ADMIN).await, (200, Some(7)));
    }
    assert_eq!(
        hub.reads.reads(Route::Replica),
        3,
        "each read went to the replica first"
    );
    let text = metrics(&hub).await;
    assert!(
        text.contains("bazaar_hub_db_replica_retries_total 3\n"),
        "{text}"
    );
    assert!(
        serving(&hub.replica_ready()),
        "a refused query is not an outage"
    );
    pair.on_replica(&format!(
        "SET SESSION sql_log_bin = 0; DROP USER '{user}'@'127.0.0.1'"
    ))
    .await;
    pair.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_replica_is_never_read() {
    let pair = pair().await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let hub = hub(
        &pair,
        Setup {
            replica_addr: format!("127.0.0.1:{port}"),
            ..Setup::default()
        },
    )
    .await;
    let token = seed(&pair, &hub).await;
    wait_ready(&hub, "down", failing_with("replica down")).await;

    assert_eq!(stock(&hub, "MILK", &token).await, (200, Some(7)));
    assert_eq!(stock(&hub, "GHOST", ADMIN).await.0, 404);
    assert_eq!(hub.reads.reads(Route::Replica), 0);
    assert_eq!(hub.reads.reads(Route::ReplicaDown), 2);
    let text = metrics(&hub).await;
    assert!(
        text.contains("bazaar_hub_db_reads_total{target=\"primary\",reason=\"replica_down\"} 2\n"),
        "{text}"
    );
    pair.cleanup().await;
}
