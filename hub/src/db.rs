//! MySQL: the pool, the embedded migrations, and creating the database when missing.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySql, MySqlPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/hub");

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to MySQL at {}: is it running, and is BAZAAR_HUB_MYSQL_URL right?",
                redact(url)
            )
        })
}

/// A pool whose sessions cut every statement off after `statement_timeout` (MariaDB's
/// `max_statement_time`): the API's reads, so a slow one can never hold the connections
/// ingest and writes need.
pub async fn connect_with_timeout(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> anyhow::Result<MySqlPool> {
    let seconds = statement_timeout.as_secs_f64();
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if seconds > 0.0 {
                    sqlx::query(&format!("SET SESSION max_statement_time = {seconds:.3}"))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "cannot connect to MySQL at {}: is it running, and is BAZAAR_HUB_MYSQL_URL right?",
                redact(url)
            )
        })
}

/// A transaction in READ COMMITTED: locking reads take no gap locks, so writers of
/// different stores never deadlock on the gaps between their rows (InnoDB's REPEATABLE
/// READ locks the gap of a missing row read FOR UPDATE). Writers of one store are
/// serialised by its `store_sync` row, locked first.
pub async fn begin_read_committed(
    pool: &MySqlPool,
) -> Result<sqlx::Transaction<'static, MySql>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    sqlx::Transaction::begin(conn, None).await
}

/// How many times a write that met a deadlock, a lock wait or a lost connection is tried
/// again inside the hub before a client sees the failure (HQ movements, thresholds).
pub const CONFLICT_RETRIES: u32 = 10;

/// The wait before retry `attempt` (1 for the first) of such a write: jittered and
/// growing (10 ms to 640 ms, plus up to as much again), so writers that met once do not
/// meet again.
pub async fn conflict_backoff(attempt: u32) {
    let wait = 5u64 << attempt.min(6);
    tokio::time::sleep(std::time::Duration::from_millis(
        wait + rand::random::<u64>() % wait,
    ))
    .await;
}

/// Creates the database if it does not exist, then applies every pending migration.
pub async fn migrate(url: &str) -> anyhow::Result<MySqlPool> {
    if !MySql::database_exists(url).await.unwrap_or(false) {
        MySql::create_database(url)
            .await
            .with_context(|| format!("cannot create the database at {}", redact(url)))?;
    }
    let pool = connect(url, 4).await?;
    MIGRATOR
        .run(&pool)
        .await
        .context("applying the hub's migrations")?;
    Ok(pool)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("mysql://root:pw@h:3306/db"),
            "mysql://root@h:3306/db"
        );
        assert_eq!(super::redact("mysql://root@h/db"), "mysql://root@h/db");
    }
}

/// The collation of every identifier column (migration 0005): a table of keys built in a
/// statement must declare it, or MariaDB refuses to compare it with the columns (1267) or,
/// with a weaker coercion, gives up their indexes.
pub const ID_COLLATION: &str = "utf8mb4_uca1400_as_cs";

/// Keys per statement built with [`push_keys_table`]: the JSON stays a few hundred KB, far
/// inside `max_allowed_packet`.
pub const KEYS_PER_STATEMENT: usize = 5000;

/// Appends `JSON_TABLE(?, …) AS {alias}`: the (store, sku) keys as a table with columns
/// `store` and `sku`, bound as one JSON parameter, to join on the tables' primary keys.
///
/// Why a table and not a list in `WHERE`: MariaDB 10.11 plans a row-value list
/// `(store, sku) IN ((?, ?), …)` as one range per pair, in time that grows faster than the
/// list (measured: 1 s for 500 pairs, 23 to 29 s for 2,000, over a 100,000-row `stock`),
/// and an OR of per-store ranges costs a statement per 16 stores (160 ms for 2,000 keys
/// from 2,000 stores). Joined from a JSON table, each key is one primary-key lookup
/// (`eq_ref`): 22 to 39 ms for the same 2,000 keys, one statement for a whole batch.
pub fn push_keys_table<'k>(
    q: &mut sqlx::QueryBuilder<'_, MySql>,
    alias: &str,
    keys: impl IntoIterator<Item = (&'k str, &'k str)>,
) {
    let pairs: Vec<serde_json::Value> = keys
        .into_iter()
        .map(|(s, k)| serde_json::json!([s, k]))
        .collect();
    let json = serde_json::Value::Array(pairs).to_string();
    q.push("JSON_TABLE(")
        .push_bind(json)
        .push(format!(
            ", '$[*]' COLUMNS (store VARCHAR(64) CHARACTER SET utf8mb4 COLLATE {ID_COLLATION} PATH '$[0]', \
             sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE {ID_COLLATION} PATH '$[1]')) AS {alias}"
        ));
}

/// Appends `JSON_TABLE(?, …) AS {alias}` with one column `{column}`: a list of strings as
/// a table, for the same reason as [`push_keys_table`] (lists of 1,000 scalars or more are
/// turned into a materialized table that MariaDB joins by a full scan).
pub fn push_strings_table<'v>(
    q: &mut sqlx::QueryBuilder<'_, MySql>,
    alias: &str,
    column: &str,
    width: usize,
    values: impl IntoIterator<Item = &'v str>,
) {
    let json = serde_json::Value::Array(values.into_iter().map(serde_json::Value::from).collect())
        .to_string();
    q.push("JSON_TABLE(").push_bind(json).push(format!(
        ", '$[*]' COLUMNS ({column} VARCHAR({width}) CHARACTER SET utf8mb4 COLLATE {ID_COLLATION} PATH '$')) AS {alias}"
    ));
}
