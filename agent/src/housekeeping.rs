//! Housekeeping: the outbox's disk budget and compaction (DESIGN §6).
//!
//! Rules:
//! - Over the disk budget the agent still accepts every movement (promise 3: a till is
//!   never refused); it raises one critical `outbox_over_budget` alert, shown in
//!   `/v1/status` and `/v1/alerts`, resolved once usage falls back under the budget.
//! - Only rows the hub has acknowledged are ever deleted, and only once older than the
//!   retention; stock is kept in `stock`, so compaction never changes a figure. Idempotency
//!   keys older than the retention go too (a till retries within minutes, not weeks).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::watch;

use crate::ledger;
use crate::startup::Agent;

pub const OVER_BUDGET: &str = "outbox_over_budget";
const EVERY: Duration = Duration::from_secs(15);
const COMPACT_BATCH: u32 = 5000;

/// Bytes the database takes on disk, WAL included.
pub fn database_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .sum()
}

/// Opens an alert of `kind` for `sku` (or the store) unless one is open already: one open
/// alert per condition, however often the condition is seen.
pub fn raise_alert(
    conn: &Connection,
    kind: &str,
    sku: Option<&str>,
    severity: &str,
    message: &str,
    now: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO alerts (kind, sku, severity, message, raised_at)
         SELECT ?1, ?2, ?3, ?4, ?5
         WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE kind = ?1 AND sku IS ?2 AND resolved_at IS NULL)",
    )?
    .execute(params![kind, sku, severity, message, now])?;
    Ok(())
}

/// Raises or resolves the over-budget alert; returns whether it is open.
pub fn check_budget(conn: &Connection, used: u64, budget: u64) -> rusqlite::Result<bool> {
    let now = ledger::now_rfc3339();
    if used > budget {
        raise_alert(
            conn,
            OVER_BUDGET,
            None,
            "critical",
            &format!(
                "the outbox uses {} MiB of its {} MiB disk budget: movements are still accepted; \
                 restore the network to the broker, or raise disk_budget_mb",
                used / (1024 * 1024),
                budget / (1024 * 1024)
            ),
            &now,
        )?;
        Ok(true)
    } else {
        conn.execute(
            "UPDATE alerts SET resolved_at = ?2 WHERE kind = ?1 AND resolved_at IS NULL",
            params![OVER_BUDGET, now],
        )?;
        Ok(false)
    }
}

/// Deletes at most one batch of acknowledged rows and idempotency keys older than
/// `cutoff` (RFC 3339); returns how many ledger rows went.
pub fn compact(conn: &Connection, cutoff: &str) -> rusqlite::Result<usize> {
    // Rows are acknowledged in ledger order, so the compactable rows are a prefix of the
    // ledger: walking it by rowid from the start, bounded by the first row not yet
    // acknowledged, never scans the (possibly huge) unacknowledged tail.
    let boundary: i64 = conn
        .prepare_cached(
            "SELECT min(
                 ifnull((SELECT local_id FROM movements WHERE state = 'pending' ORDER BY seq LIMIT 1), 9223372036854775807),
                 ifnull((SELECT local_id FROM movements WHERE state = 'sent' ORDER BY seq LIMIT 1), 9223372036854775807))",
        )?
        .query_row([], |r| r.get(0))?;
    let victims: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT local_id, id FROM movements
             WHERE local_id < ?1 AND state = 'acked' AND recorded_at < ?2
             ORDER BY local_id LIMIT ?3",
        )?
        .query_map(params![boundary, cutoff, COMPACT_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut forget_key = conn.prepare_cached("DELETE FROM idempotency WHERE movement_id = ?1")?;
    let mut delete = conn.prepare_cached("DELETE FROM movements WHERE local_id = ?1")?;
    for (local_id, id) in &victims {
        forget_key.execute([id])?;
        delete.execute([local_id])?;
    }
    Ok(victims.len())
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    pub id: i64,
    pub kind: String,
    pub sku: Option<String>,
    pub severity: String,
    pub message: String,
    pub raised_at: String,
    pub resolved_at: Option<String>,
}

pub fn alerts(
    conn: &Connection,
    include_resolved: bool,
    limit: u32,
) -> rusqlite::Result<Vec<AlertView>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, sku, severity, message, raised_at, resolved_at FROM alerts
         WHERE ?1 OR resolved_at IS NULL ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![include_resolved, limit], |r| {
        Ok(AlertView {
            id: r.get(0)?,
            kind: r.get(1)?,
            sku: r.get(2)?,
            severity: r.get(3)?,
            message: r.get(4)?,
            raised_at: r.get(5)?,
            resolved_at: r.get(6)?,
        })
    })?;
    rows.collect()
}

pub async fn run(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let used = database_bytes(&agent.config.database_path());
        let budget = agent.config.disk_budget_bytes;
        let cutoff = ledger::rfc3339(chrono::Utc::now() - agent.config.retention);
        let outcome = agent
            .writer
            .write(move |conn| {
                let over = check_budget(conn, used, budget)?;
                let compacted = compact(conn, &cutoff)?;
                Ok::<_, rusqlite::Error>((over, compacted))
            })
            .await;
        match outcome {
            Ok((true, _)) => tracing::error!(
                used,
                budget,
                "outbox over its disk budget; still accepting movements"
            ),
            Ok((false, compacted)) if compacted > 0 => {
                tracing::info!(compacted, "compacted acknowledged movements")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "housekeeping failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{self, NewMovement, Quantity};
    use bazaar_shared::{Kind, Sku};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        ledger::migrate(&conn).unwrap();
        conn
    }

    #[test]
    fn one_alert_while_over_budget_resolved_when_back_under() {
        let conn = db();
        assert!(check_budget(&conn, 200, 100).unwrap());
        assert!(check_budget(&conn, 300, 100).unwrap());
        let open = alerts(&conn, false, 10).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].kind.as_str(), open[0].severity.as_str()),
            (OVER_BUDGET, "critical")
        );
        assert!(!check_budget(&conn, 50, 100).unwrap());
        assert!(alerts(&conn, false, 10).unwrap().is_empty());
        assert_eq!(alerts(&conn, true, 10).unwrap().len(), 1);
    }

    #[test]
    fn compaction_removes_only_old_acknowledged_rows_and_never_changes_stock() {
        let conn = db();
        let sale = NewMovement {
            kind: Kind::Sale,
            sku: Sku::parse("A").unwrap(),
            quantity: Quantity::Delta(-1),
            reason: None,
            reference: None,
            to_store: None,
            from_store: None,
        };
        for i in 0..4 {
            let key = format!("k{i}");
            ledger::record(
                &conn,
                &sale,
                Some(ledger::IdempotencyKey {
                    key: &key,
                    request_hash: "h",
                }),
            )
            .unwrap();
        }
        ledger::mark_sent(&conn, &[1, 2, 3], "t").unwrap();
        ledger::mark_acked(&conn, 2, "t").unwrap();
        let future = "9999-01-01T00:00:00.000Z";
        assert_eq!(
            compact(&conn, future).unwrap(),
            2,
            "seqs 1 and 2 were acknowledged"
        );
        let left: Vec<u64> = ledger::pending_batch(&conn, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [4], "pending rows stay");
        let sent: i64 = conn
            .query_row(
                "SELECT count(*) FROM movements WHERE state = 'sent'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sent, 1, "sent but unacknowledged rows stay");
        assert_eq!(
            ledger::stock_of(&conn, &Sku::parse("A").unwrap())
                .unwrap()
                .unwrap()
                .on_hand,
            -4
        );
        assert_eq!(
            compact(&conn, "2000-01-01T00:00:00.000Z").unwrap(),
            0,
            "nothing younger than the cutoff goes"
        );
    }
}
