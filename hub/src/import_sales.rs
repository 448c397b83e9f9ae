//! `bazaar-hub import-sales FILE`: a chain's sales history from the system it leaves, into
//! `daily_sales`, so the forecasts start from a year of history instead of nothing.
//!
//! Rules:
//! - The file is CSV with the header `store,sku,date,qty` (ISO dates, whole non-negative
//!   quantities). Every row is validated on its own: a bad row is reported with its line
//!   and why, and never written; the good rows are written.
//! - Idempotent: a (store, sku, day) row *sets* that day's figure (it never adds), so
//!   importing the same file twice leaves what importing it once did. The importer owns
//!   the days it imports; days the hub records itself (from movements) go on adding.
//! - Stores must be registered (an unknown one is a bad row: register it first); skus need
//!   not exist (a sku exists at the hub once it has a movement or a sales day).
//! - Memory is bounded by one chunk of rows, whatever the file's size; progress goes to
//!   stderr every chunk.

use std::collections::HashSet;
use std::io::Read;

use anyhow::Context;
use bazaar_shared::envelope::MAX_QUANTITY;
use bazaar_shared::{Sku, StoreId};
use chrono::NaiveDate;
use sqlx::{MySql, MySqlPool, QueryBuilder};

/// Rows per INSERT.
const CHUNK: usize = 2_000;
/// Bad rows reported one by one; past this only counted.
const REPORTED: usize = 50;

/// One good row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesDay {
    pub store: StoreId,
    pub sku: Sku,
    pub day: NaiveDate,
    pub qty: i64,
}

/// A row refused, with its line in the file (the header is line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub why: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub imported: u64,
    pub bad: u64,
    /// The first [`REPORTED`] bad rows.
    pub reported: Vec<BadRow>,
}

/// Parses one record; pure.
pub fn parse_row(record: &csv::StringRecord) -> Result<SalesDay, String> {
    if record.len() != 4 {
        return Err(format!("{} fields; want store,sku,date,qty", record.len()));
    }
    let store = StoreId::parse(record[0].trim()).map_err(|e| format!("store: {e}"))?;
    let sku = Sku::parse(record[1].trim()).map_err(|e| format!("sku: {e}"))?;
    let day = NaiveDate::parse_from_str(record[2].trim(), "%Y-%m-%d")
        .map_err(|_| format!("date {:?} is not YYYY-MM-DD", &record[2]))?;
    if day < NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or(NaiveDate::MIN)
        || day > chrono::Utc::now().date_naive()
    {
        return Err(format!("date {day} is before 2000 or in the future"));
    }
    let qty: i64 = record[3]
        .trim()
        .parse()
        .map_err(|_| format!("qty {:?} is not a whole number", &record[3]))?;
    if !(0..=MAX_QUANTITY).contains(&qty) {
        return Err(format!("qty {qty} is outside 0..={MAX_QUANTITY}"));
    }
    Ok(SalesDay {
        store,
        sku,
        day,
        qty,
    })
}

/// Reads `input` and writes its good rows; `progress` hears (rows read, imported, bad).
pub async fn import(
    pool: &MySqlPool,
    input: impl Read,
    mut progress: impl FnMut(u64, u64, u64),
) -> anyhow::Result<Summary> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(input);
    let header = reader.headers().context("reading the CSV header")?.clone();
    let names: Vec<&str> = header.iter().map(str::trim).collect();
    anyhow::ensure!(
        names == ["store", "sku", "date", "qty"],
        "the header is {names:?}; the file must start with store,sku,date,qty"
    );
    let registered: HashSet<String> = sqlx::query_scalar("SELECT id FROM stores")
        .fetch_all(pool)
        .await
        .context("reading the registered stores")?
        .into_iter()
        .collect();
    let mut summary = Summary::default();
    let mut chunk: Vec<SalesDay> = Vec::with_capacity(CHUNK);
    let mut read = 0u64;
    let bad = |summary: &mut Summary, line: u64, why: String| {
        summary.bad += 1;
        if summary.reported.len() < REPORTED {
            summary.reported.push(BadRow { line, why });
        }
    };
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        read += 1;
        let row = match record {
            Ok(r) => parse_row(&r),
            Err(e) => Err(format!("not CSV: {e}")),
        };
        match row {
            Ok(day) if !registered.contains(day.store.as_str()) => bad(
                &mut summary,
                line,
                format!(
                    "store {} is not registered (bazaar-hub store add {})",
                    day.store, day.store
                ),
            ),
            Ok(day) => chunk.push(day),
            Err(why) => bad(&mut summary, line, why),
        }
        if chunk.len() == CHUNK {
            summary.imported += write(pool, &chunk).await?;
            chunk.clear();
            progress(read, summary.imported, summary.bad);
        }
    }
    summary.imported += write(pool, &chunk).await?;
    progress(read, summary.imported, summary.bad);
    Ok(summary)
}

async fn write(pool: &MySqlPool, rows: &[SalesDay]) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::<MySql>::new("INSERT INTO daily_sales (store, sku, day, qty) ");
    q.push_values(rows, |mut b, r| {
        b.push_bind(r.store.as_str())
            .push_bind(r.sku.as_str())
            .push_bind(r.day)
            .push_bind(r.qty);
    });
    // Sets, never adds: a second import of the same file changes nothing.
    q.push(" ON DUPLICATE KEY UPDATE qty = VALUES(qty)");
    q.build()
        .execute(pool)
        .await
        .context("writing daily_sales")?;
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn rows_are_checked_one_by_one_with_a_reason() {
        let ok = parse_row(&record(&["S1", "MILK", "2025-03-01", "4"])).unwrap();
        assert_eq!(ok.qty, 4);
        for (fields, why) in [
            (vec!["S 1", "MILK", "2025-03-01", "4"], "store"),
            (vec!["S1", "MILK", "01/03/2025", "4"], "YYYY-MM-DD"),
            (vec!["S1", "MILK", "2999-03-01", "4"], "future"),
            (vec!["S1", "MILK", "2025-03-01", "-1"], "outside"),
            (vec!["S1", "MILK", "2025-03-01", "1.5"], "whole"),
            (vec!["S1", "MILK", "2025-03-01"], "fields"),
        ] {
            let err = parse_row(&record(&fields)).unwrap_err();
            assert!(err.contains(why), "{fields:?}: {err}");
        }
    }
}
