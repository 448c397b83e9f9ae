//! The admin audit trail: who did what, before and after, when, from where.

use std::net::SocketAddr;

use chrono::Utc;
use sqlx::MySqlPool;

pub async fn record(
    pool: &MySqlPool,
    actor: &str,
    action: &str,
    target: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    from: Option<SocketAddr>,
) {
    let written = sqlx::query(
        "INSERT INTO audit_log (actor, action, target, before_json, after_json, at, from_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(before.map(|v| v.to_string()))
    .bind(after.map(|v| v.to_string()))
    .bind(Utc::now())
    .bind(from.map(|a| a.ip().to_string()))
    .execute(pool)
    .await;
    if let Err(e) = written {
        tracing::error!(error = %e, action, target, "could not write the audit log");
    }
}
