//! Stock alerts raised at the store, with no network: negative and out-of-stock always,
//! low stock and overstock once the hub has pushed thresholds into `products`. The rules
//! are the hub's own (`bazaar_intelligence::alerts::evaluate`), so both sides agree.
//!
//! One open alert per (sku, kind); evaluated in the transaction that changes the stock, so
//! an alert never disagrees with the figure it is about.

use bazaar_intelligence::alerts::{evaluate, AlertFacts, AlertKind, AlertThresholds};
use rusqlite::{params, Connection, OptionalExtension};

const STOCK_KINDS: [AlertKind; 4] = [
    AlertKind::NegativeStock,
    AlertKind::OutOfStock,
    AlertKind::LowStock,
    AlertKind::Overstock,
];

fn severity(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::NegativeStock => "critical",
        AlertKind::OutOfStock | AlertKind::LowStock => "warning",
        _ => "info",
    }
}

fn message(kind: AlertKind, sku: &str, on_hand: i64) -> String {
    match kind {
        AlertKind::NegativeStock => {
            format!("{sku} is at {on_hand}: more sold than the ledger holds — count the shelf")
        }
        AlertKind::OutOfStock => format!("{sku} is out of stock"),
        AlertKind::LowStock => format!("{sku} is down to {on_hand}, at or below its reorder point"),
        _ => format!("{sku} is at {on_hand}, above its maximum"),
    }
}

/// Raises and resolves the stock alerts of `sku` for its new on-hand.
pub fn refresh(conn: &Connection, sku: &str, on_hand: i64, now: &str) -> rusqlite::Result<()> {
    let (reorder_point, max_stock): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT reorder_point, max_stock FROM products WHERE sku = ?1")?
        .query_row([sku], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((None, None));
    let facts = AlertFacts {
        on_hand: on_hand as f64,
        reorder_point: reorder_point.map(|v| v as f64),
        max_stock: max_stock.map(|v| v as f64),
        day_sales: None,
        last_sync: None,
        store_open: false,
        now: chrono::Utc::now(),
    };
    let holding = evaluate(&facts, &AlertThresholds::default());
    // At most one stock-level kind holds at a time (the rules are exclusive, most severe
    // first); overstock never coincides with the others.
    let current = STOCK_KINDS.into_iter().find(|k| holding.contains(k));
    conn.prepare_cached(
        "UPDATE alerts SET resolved_at = ?3
         WHERE sku = ?1 AND resolved_at IS NULL
           AND kind IN ('negative_stock', 'out_of_stock', 'low_stock', 'overstock') AND kind <> ?2",
    )?
    .execute(params![
        sku,
        current.map(AlertKind::as_str).unwrap_or(""),
        now
    ])?;
    if let Some(kind) = current {
        crate::housekeeping::raise_alert(
            conn,
            kind.as_str(),
            Some(sku),
            severity(kind),
            &message(kind, sku, on_hand),
            now,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::housekeeping::alerts;

    fn open(conn: &Connection) -> Vec<String> {
        alerts(conn, false, 100)
            .unwrap()
            .into_iter()
            .map(|a| a.kind)
            .collect()
    }

    #[test]
    fn one_alert_per_condition_most_severe_only_resolved_when_it_clears() {
        let conn = Connection::open_in_memory().unwrap();
        crate::ledger::migrate(&conn).unwrap();
        refresh(&conn, "A", 0, "t1").unwrap();
        assert_eq!(open(&conn), ["out_of_stock"]);
        refresh(&conn, "A", -2, "t2").unwrap();
        refresh(&conn, "A", -3, "t3").unwrap();
        assert_eq!(
            open(&conn),
            ["negative_stock"],
            "out_of_stock resolved, one negative alert"
        );
        refresh(&conn, "A", 10, "t4").unwrap();
        assert!(open(&conn).is_empty());
        conn.execute(
            "INSERT INTO products (sku, reorder_point, max_stock) VALUES ('A', 5, 50)",
            [],
        )
        .unwrap();
        refresh(&conn, "A", 4, "t5").unwrap();
        assert_eq!(open(&conn), ["low_stock"]);
        refresh(&conn, "A", 60, "t6").unwrap();
        assert_eq!(open(&conn), ["overstock"]);
    }
}
