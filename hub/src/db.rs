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
