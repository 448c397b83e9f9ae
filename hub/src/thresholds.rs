//! Thresholds: the reorder point and maximum stock that the low-stock and overstock alerts
//! use, at the hub and at the stores.
//!
//! # Scopes and precedence
//! A threshold row has one of three scopes, stored in `thresholds` with '' for "any":
//! `(store, sku)` one product at one store, `('', sku)` the product chain-wide, and
//! `(store, '')` every product of one store. Each field — `reorder_point`, `max_stock` — is
//! resolved on its own, taking the first level that sets it:
//!
//! 1. `(store, sku)`: what someone decided for exactly this shelf;
//! 2. `(sku)`: what the product needs everywhere (a product's nature beats a store's blanket
//!    default);
//! 3. `(store)`: the store's default for every product;
//! 4. the forecast-derived figures of the last forecast run (`reorder_suggestions`), only
//!    when `BAZAAR_HUB_PUSH_THRESHOLDS=true`; otherwise the forecasts only advise.
//!
//! A NULL field means "not set at this level", so a `(store, sku)` row may pin the maximum
//! and leave the reorder point to the chain-wide figure.
//!
//! # Invariants
//! - The effective thresholds the hub's alerts use and the document a store's agent fetches
//!   come from the one resolution ([`resolve`]), so both sides alert alike.
//! - Every change commits, in the same MySQL transaction, a bulk-state notice for each store
//!   whose document may have changed ([`crate::outbox::announce_bulk_state`], in ascending
//!   store order) and that store's document version (the notice's hub_seq). An agent that
//!   holds a notice with hub_seq `n` knows a document of version ≥ `n` is current.
//! - Values are whole units ≥ 0, and at one level a reorder point never exceeds the maximum.
//!   Bad input changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bazaar_shared::{Sku, StoreId};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};

/// Largest value a threshold may take (a guard against typos, not a business rule).
pub const MAX_VALUE: i64 = 1_000_000_000_000;

/// Where a threshold applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    StoreSku(StoreId, Sku),
    Sku(Sku),
    Store(StoreId),
}

impl Scope {
    /// None when neither is given: there is no chain-wide-for-everything level.
    pub fn of(store: Option<StoreId>, sku: Option<Sku>) -> Option<Scope> {
        match (store, sku) {
            (Some(store), Some(sku)) => Some(Scope::StoreSku(store, sku)),
            (None, Some(sku)) => Some(Scope::Sku(sku)),
            (Some(store), None) => Some(Scope::Store(store)),
            (None, None) => None,
        }
    }

    /// The row key: '' stands for "any".
    pub fn key(&self) -> (&str, &str) {
        match self {
            Scope::StoreSku(store, sku) => (store.as_str(), sku.as_str()),
            Scope::Sku(sku) => ("", sku.as_str()),
            Scope::Store(store) => (store.as_str(), ""),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scope::StoreSku(..) => "store_sku",
            Scope::Sku(_) => "sku",
            Scope::Store(_) => "store",
        }
    }

    /// `S1/MILK`, `*/MILK`, `S1/*`: the audit target.
    pub fn target(&self) -> String {
        let (store, sku) = self.key();
        let any = |s: &str| {
            if s.is_empty() {
                "*".to_owned()
            } else {
                s.to_owned()
            }
        };
        format!("{}/{}", any(store), any(sku))
    }
}

/// The two figures at one level; `None` = not set here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Levels {
    pub reorder_point: Option<i64>,
    pub max_stock: Option<i64>,
}

impl Levels {
    pub fn is_empty(&self) -> bool {
        self.reorder_point.is_none() && self.max_stock.is_none()
    }

    /// Whole units in `0..=MAX_VALUE`, reorder point ≤ maximum, at least one set.
    pub fn validate(&self) -> Result<(), String> {
        if self.is_empty() {
            return Err(
                "set reorder_point, max_stock or both (to remove a threshold, DELETE it)".into(),
            );
        }
        for (name, value) in [
            ("reorder_point", self.reorder_point),
            ("max_stock", self.max_stock),
        ] {
            if let Some(v) = value {
                if !(0..=MAX_VALUE).contains(&v) {
                    return Err(format!(
                        "{name} must be a whole number from 0 to {MAX_VALUE}"
                    ));
                }
            }
        }
        if let (Some(rop), Some(max)) = (self.reorder_point, self.max_stock) {
            if rop > max {
                return Err(format!(
                    "reorder_point {rop} is above max_stock {max}: the shelf would be low and over at once"
                ));
            }
        }
        Ok(())
    }
}

/// Which level an effective figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    StoreSku,
    Sku,
    Store,
    Forecast,
}

/// The figures in force for one (store, sku), with where each came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Effective {
    pub reorder_point: Option<i64>,
    pub reorder_point_source: Option<Source>,
    pub max_stock: Option<i64>,
    pub max_stock_source: Option<Source>,
}

impl Effective {
    pub fn is_empty(&self) -> bool {
        self.reorder_point.is_none() && self.max_stock.is_none()
    }
}

/// The precedence of the module docs, field by field. Pure.
pub fn resolve(store_sku: Levels, sku: Levels, store: Levels, forecast: Levels) -> Effective {
    let levels = [
        (store_sku, Source::StoreSku),
        (sku, Source::Sku),
        (store, Source::Store),
        (forecast, Source::Forecast),
    ];
    let pick = |field: fn(&Levels) -> Option<i64>| {
        levels
            .iter()
            .find_map(|(l, source)| field(l).map(|v| (v, *source)))
    };
    let rop = pick(|l| l.reorder_point);
    let max = pick(|l| l.max_stock);
    Effective {
        reorder_point: rop.map(|r| r.0),
        reorder_point_source: rop.map(|r| r.1),
        max_stock: max.map(|m| m.0),
        max_stock_source: max.map(|m| m.1),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThresholdError {
    #[error("store {0} is not registered")]
    UnknownStore(String),
    #[error("sku {0} is unknown at this hub (no product record, no movement)")]
    UnknownSku(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no threshold is set for {0}")]
    NotFound(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("could not announce the new thresholds: {0:#}")]
    Announce(anyhow::Error),
}

/// One stored row, as `GET /v1/thresholds` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
pub struct ThresholdRow {
    pub scope: &'static str,
    pub store: Option<String>,
    pub sku: Option<String>,
    pub reorder_point: Option<i64>,
    pub max_stock: Option<i64>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Option<String>,
}

fn row_of(r: &sqlx::mysql::MySqlRow) -> Result<ThresholdRow, sqlx::Error> {
    let store: String = r.try_get("store")?;
    let sku: String = r.try_get("sku")?;
    let scope = match (store.is_empty(), sku.is_empty()) {
        (false, false) => "store_sku",
        (true, _) => "sku",
        (false, true) => "store",
    };
    Ok(ThresholdRow {
        scope,
        store: (!store.is_empty()).then_some(store),
        sku: (!sku.is_empty()).then_some(sku),
        reorder_point: r.try_get("reorder_point")?,
        max_stock: r.try_get("max_stock")?,
        updated_at: r.try_get("updated_at")?,
        updated_by: r.try_get("updated_by")?,
    })
}

/// Rows that bear on `store` and/or `sku`: with both, the three levels that apply to that
/// pair; with one, every row naming it plus (for a store) its store-wide row. Ordered by
/// store, sku; at most `limit` rows after `after` (a `(store, sku)` key, '' for "any").
pub async fn list(
    pool: &MySqlPool,
    store: Option<&StoreId>,
    sku: Option<&Sku>,
    after: Option<(&str, &str)>,
    limit: u32,
) -> Result<Vec<ThresholdRow>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT store, sku, reorder_point, max_stock, updated_at, updated_by FROM thresholds WHERE 1 = 1",
    );
    if let Some(store) = store {
        q.push(" AND store IN (").push_bind(store.as_str());
        if sku.is_some() {
            q.push(", ''");
        }
        q.push(")");
    }
    if let Some(sku) = sku {
        q.push(" AND sku IN (").push_bind(sku.as_str());
        if store.is_some() {
            q.push(", ''");
        }
        q.push(")");
    }
    if let Some((s, k)) = after {
        q.push(" AND (store, sku) > (")
            .push_bind(s.to_owned())
            .push(", ")
            .push_bind(k.to_owned())
            .push(")");
    }
    q.push(" ORDER BY store, sku LIMIT ").push_bind(limit);
    q.build()
        .fetch_all(pool)
        .await?
        .iter()
        .map(row_of)
        .collect()
}

/// Whether a sku exists at the hub: a product record or a movement somewhere.
pub async fn sku_known(pool: &MySqlPool, sku: &Sku) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT 1 FROM products WHERE sku = ? UNION ALL SELECT 1 FROM stock WHERE sku = ? LIMIT 1",
    )
    .bind(sku.as_str())
    .bind(sku.as_str())
    .fetch_optional(pool)
    .await?
    .is_some())
}

async fn check_exists(pool: &MySqlPool, scope: &Scope) -> Result<(), ThresholdError> {
    let (store, sku) = match scope {
        Scope::StoreSku(store, sku) => (Some(store), Some(sku)),
        Scope::Sku(sku) => (None, Some(sku)),
        Scope::Store(store) => (Some(store), None),
    };
    if let Some(store) = store {
        if !crate::stores::exists(pool, store).await? {
            return Err(ThresholdError::UnknownStore(store.to_string()));
        }
    }
    if let Some(sku) = sku {
        if !sku_known(pool, sku).await? {
            return Err(ThresholdError::UnknownSku(sku.to_string()));
        }
    }
    Ok(())
}

/// What a change did: the row before and after, and the stores told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub before: Option<Levels>,
    pub after: Option<Levels>,
    pub stores: Vec<StoreId>,
}

impl Change {
    pub fn audit_json(levels: Option<Levels>, scope: &Scope) -> Option<serde_json::Value> {
        let (store, sku) = scope.key();
        levels.map(|l| {
            serde_json::json!({"scope": scope.name(), "store": store, "sku": sku,
                "reorder_point": l.reorder_point, "max_stock": l.max_stock})
        })
    }
}

/// Sets the figures at `scope` (both fields replaced: an absent one becomes "not set").
pub async fn put(
    pool: &MySqlPool,
    scope: &Scope,
    levels: Levels,
    actor: &str,
) -> Result<Change, ThresholdError> {
    levels.validate().map_err(ThresholdError::Invalid)?;
    check_exists(pool, scope).await?;
    change(pool, scope, Some(levels), actor).await
}

/// Removes the row at `scope`; `NotFound` when there is none.
pub async fn delete(
    pool: &MySqlPool,
    scope: &Scope,
    actor: &str,
) -> Result<Change, ThresholdError> {
    check_exists(pool, scope).await?;
    change(pool, scope, None, actor).await
}

impl ThresholdError {
    /// A deadlock, a lock wait or a lost connection: the change is worth trying again.
    fn is_transient(&self) -> bool {
        match self {
            ThresholdError::Database(e) => crate::ingest::is_transient(e),
            ThresholdError::Announce(e) => e.chain().any(|c| {
                c.downcast_ref::<sqlx::Error>()
                    .is_some_and(crate::ingest::is_transient)
            }),
            _ => false,
        }
    }
}

/// Conflicting changes (16 HQ clients at once, a chain-wide figure announced to every
/// store while store figures change) are tried again inside the hub, with a jittered,
/// growing wait, before a client sees a failure.
async fn change(
    pool: &MySqlPool,
    scope: &Scope,
    after: Option<Levels>,
    actor: &str,
) -> Result<Change, ThresholdError> {
    let mut attempt = 0;
    loop {
        match change_once(pool, scope, after, actor).await {
            Err(e) if e.is_transient() && attempt < crate::db::CONFLICT_RETRIES => {
                attempt += 1;
                tracing::info!(attempt, target = %scope.target(), error = %e, "lock conflict; retrying the thresholds change");
                crate::db::conflict_backoff(attempt).await;
            }
            outcome => return outcome,
        }
    }
}

/// One try of [`change`], in one READ COMMITTED transaction: the row's lock is the only
/// one taken before the store counters (no gap locks on a missing row, which made two
/// first-time store figures deadlock), and those are taken in ascending store order.
async fn change_once(
    pool: &MySqlPool,
    scope: &Scope,
    after: Option<Levels>,
    actor: &str,
) -> Result<Change, ThresholdError> {
    let (store, sku) = scope.key();
    let mut tx = crate::db::begin_read_committed(pool).await?;
    let before = sqlx::query(
        "SELECT reorder_point, max_stock FROM thresholds WHERE store = ? AND sku = ? FOR UPDATE",
    )
    .bind(store)
    .bind(sku)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| -> Result<Levels, sqlx::Error> {
        Ok(Levels {
            reorder_point: r.try_get("reorder_point")?,
            max_stock: r.try_get("max_stock")?,
        })
    })
    .transpose()?;
    match after {
        Some(levels) => {
            sqlx::query(
                "INSERT INTO thresholds (store, sku, reorder_point, max_stock, updated_at, updated_by)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE reorder_point = VALUES(reorder_point),
                     max_stock = VALUES(max_stock), updated_at = VALUES(updated_at),
                     updated_by = VALUES(updated_by)",
            )
            .bind(store)
            .bind(sku)
            .bind(levels.reorder_point)
            .bind(levels.max_stock)
            .bind(Utc::now())
            .bind(actor)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            if before.is_none() {
                return Err(ThresholdError::NotFound(scope.target()));
            }
            sqlx::query("DELETE FROM thresholds WHERE store = ? AND sku = ?")
                .bind(store)
                .bind(sku)
                .execute(&mut *tx)
                .await?;
        }
    }
    let stores = if before == after {
        Vec::new()
    } else {
        let stores = match scope {
            Scope::StoreSku(store, _) | Scope::Store(store) => vec![store.clone()],
            // A chain-wide figure may change every store's document.
            Scope::Sku(_) => sqlx::query_scalar::<_, String>("SELECT id FROM stores ORDER BY id")
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .filter_map(|s| StoreId::parse(s).ok())
                .collect(),
        };
        announce(&mut tx, &stores).await?;
        stores
    };
    tx.commit().await?;
    Ok(Change {
        before,
        after,
        stores,
    })
}

/// Announces a new thresholds document to each store (ascending store order, as the outbox
/// requires) and records each document's version, inside the caller's transaction.
pub async fn announce(
    conn: &mut MySqlConnection,
    stores: &[StoreId],
) -> Result<(), ThresholdError> {
    let mut sorted: Vec<&StoreId> = stores.iter().collect();
    sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    sorted.dedup();
    let now = Utc::now();
    for store in sorted {
        let version = crate::outbox::announce_bulk_state(&mut *conn, store, "thresholds")
            .await
            .map_err(ThresholdError::Announce)?;
        sqlx::query(
            "INSERT INTO threshold_versions (store, version, changed_at) VALUES (?, ?, ?)
             ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version)), changed_at = VALUES(changed_at)",
        )
        .bind(store.as_str())
        .bind(version)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The effective thresholds of each (store, sku) in `keys`, in one statement per
/// [`crate::db::KEYS_PER_STATEMENT`] keys: the three explicit levels and, `with_forecast`,
/// the forecast-derived ones joined onto the keys. Keys where nothing is in force are
/// absent.
pub async fn effective_for(
    pool: &MySqlPool,
    keys: &[(String, String)],
    with_forecast: bool,
) -> Result<HashMap<(String, String), Effective>, sqlx::Error> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(crate::db::KEYS_PER_STATEMENT) {
        let mut q = QueryBuilder::<MySql>::new(format!("SELECT k.store, k.sku, {LEVEL_COLUMNS}"));
        if with_forecast {
            q.push(", r.derived_reorder_point AS d_rp, r.derived_max_stock AS d_ms");
        }
        q.push(" FROM ");
        crate::db::push_keys_table(&mut q, "k", pairs(chunk));
        q.push(LEVEL_JOINS);
        if with_forecast {
            q.push(" LEFT JOIN reorder_suggestions r ON r.store = k.store AND r.sku = k.sku");
        }
        for r in q.build().fetch_all(pool).await? {
            let (exact, chain, store_wide) = levels_of(&r)?;
            let derived = if with_forecast {
                Levels {
                    reorder_point: r.try_get("d_rp")?,
                    max_stock: r.try_get("d_ms")?,
                }
            } else {
                Levels::default()
            };
            let effective = resolve(exact, chain, store_wide, derived);
            if !effective.is_empty() {
                found.insert((r.try_get("store")?, r.try_get("sku")?), effective);
            }
        }
    }
    Ok(found)
}

/// The keys as `(&str, &str)`, for [`crate::db::push_keys_table`].
pub fn pairs(keys: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    keys.iter()
        .map(|(store, sku)| (store.as_str(), sku.as_str()))
}

/// The three explicit levels of a key as columns of one row: the statement fragment
/// `LEFT JOIN`s them onto a keys table `k` (see [`crate::db::push_keys_table`]) and
/// [`levels_of`] reads them back.
pub const LEVEL_JOINS: &str = " LEFT JOIN thresholds te ON te.store = k.store AND te.sku = k.sku
     LEFT JOIN thresholds tc ON tc.store = '' AND tc.sku = k.sku
     LEFT JOIN thresholds ts ON ts.store = k.store AND ts.sku = ''";
/// The columns [`LEVEL_JOINS`] brings, for the `SELECT` list.
pub const LEVEL_COLUMNS: &str = "te.reorder_point AS te_rp, te.max_stock AS te_ms,
     tc.reorder_point AS tc_rp, tc.max_stock AS tc_ms,
     ts.reorder_point AS ts_rp, ts.max_stock AS ts_ms";

/// The explicit levels of a row selected with [`LEVEL_COLUMNS`]: (store and sku, chain-wide
/// sku, store-wide).
pub fn levels_of(r: &sqlx::mysql::MySqlRow) -> Result<(Levels, Levels, Levels), sqlx::Error> {
    let level = |rp: &str, ms: &str| -> Result<Levels, sqlx::Error> {
        Ok(Levels {
            reorder_point: r.try_get(rp)?,
            max_stock: r.try_get(ms)?,
        })
    };
    Ok((
        level("te_rp", "te_ms")?,
        level("tc_rp", "tc_ms")?,
        level("ts_rp", "ts_ms")?,
    ))
}

/// One line of a store's thresholds document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct DocumentLine {
    pub sku: String,
    pub reorder_point: Option<i64>,
    pub max_stock: Option<i64>,
}

/// `GET /v1/stores/{store}/thresholds`: every sku with a figure in force at the store.
/// `default` is the store-wide level, for skus the store has not stocked yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
pub struct StoreDocument {
    pub store: String,
    pub version: u64,
    pub default: Levels,
    pub thresholds: Vec<DocumentLine>,
}

/// The store's effective thresholds: every sku it stocks, every sku with a chain-wide or
/// store-specific row, and (with forecast-derived thresholds on) every sku the job planned.
pub async fn document(
    pool: &MySqlPool,
    store: &StoreId,
    with_forecast: bool,
) -> Result<StoreDocument, sqlx::Error> {
    // The version first: a change committed between this read and the rows below shows up
    // in the rows with the older version, and the agent's next notice fetches again.
    let version: Option<u64> =
        sqlx::query_scalar("SELECT version FROM threshold_versions WHERE store = ?")
            .bind(store.as_str())
            .fetch_optional(pool)
            .await?;
    let mut sql = String::from(
        "SELECT sku FROM stock WHERE store = ?
         UNION SELECT sku FROM thresholds WHERE store IN (?, '') AND sku <> ''",
    );
    if with_forecast {
        sql.push_str(" UNION SELECT sku FROM reorder_suggestions WHERE store = ?");
    }
    let mut q = sqlx::query_scalar::<_, String>(&sql)
        .bind(store.as_str())
        .bind(store.as_str());
    if with_forecast {
        q = q.bind(store.as_str());
    }
    let skus: BTreeSet<String> = q.fetch_all(pool).await?.into_iter().collect();
    let keys: Vec<(String, String)> = skus
        .into_iter()
        .map(|sku| (store.to_string(), sku))
        .collect();
    let effective = effective_for(pool, &keys, with_forecast).await?;
    let default =
        sqlx::query("SELECT reorder_point, max_stock FROM thresholds WHERE store = ? AND sku = ''")
            .bind(store.as_str())
            .fetch_optional(pool)
            .await?
            .map(|r| -> Result<Levels, sqlx::Error> {
                Ok(Levels {
                    reorder_point: r.try_get("reorder_point")?,
                    max_stock: r.try_get("max_stock")?,
                })
            })
            .transpose()?
            .unwrap_or_default();
    let ordered: BTreeMap<&String, &Effective> =
        effective.iter().map(|((_, sku), e)| (sku, e)).collect();
    Ok(StoreDocument {
        store: store.to_string(),
        version: version.unwrap_or(0),
        default,
        thresholds: ordered
            .into_iter()
            .map(|(sku, e)| DocumentLine {
                sku: sku.clone(),
                reorder_point: e.reorder_point,
                max_stock: e.max_stock,
            })
            .collect(),
    })
}

/// The (store, sku) pairs with stock whose thresholds a change at `scope` may move: the
/// alerts to re-evaluate.
pub async fn keys_under(
    pool: &MySqlPool,
    scope: &Scope,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = match scope {
        Scope::StoreSku(store, sku) => {
            return Ok(vec![(store.to_string(), sku.to_string())]);
        }
        Scope::Sku(sku) => {
            sqlx::query("SELECT store, sku FROM stock WHERE sku = ?")
                .bind(sku.as_str())
                .fetch_all(pool)
                .await?
        }
        Scope::Store(store) => {
            sqlx::query("SELECT store, sku FROM stock WHERE store = ?")
                .bind(store.as_str())
                .fetch_all(pool)
                .await?
        }
    };
    rows.iter()
        .map(|r| Ok((r.try_get("store")?, r.try_get("sku")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(rop: Option<i64>, max: Option<i64>) -> Levels {
        Levels {
            reorder_point: rop,
            max_stock: max,
        }
    }

    #[test]
    fn each_field_takes_the_most_specific_level_that_sets_it() {
        let e = resolve(
            l(None, Some(90)),
            l(Some(12), Some(80)),
            l(Some(5), Some(50)),
            l(Some(7), Some(40)),
        );
        assert_eq!(
            (e.reorder_point, e.reorder_point_source),
            (Some(12), Some(Source::Sku))
        );
        assert_eq!(
            (e.max_stock, e.max_stock_source),
            (Some(90), Some(Source::StoreSku))
        );
        let e = resolve(
            l(None, None),
            l(None, None),
            l(Some(5), None),
            l(Some(7), Some(40)),
        );
        assert_eq!(e.reorder_point_source, Some(Source::Store));
        assert_eq!(
            (e.max_stock, e.max_stock_source),
            (Some(40), Some(Source::Forecast))
        );
        assert!(resolve(l(None, None), l(None, None), l(None, None), l(None, None)).is_empty());
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(l(Some(3), Some(10)).validate().is_ok());
        assert!(l(Some(0), None).validate().is_ok());
        assert!(l(None, None).validate().unwrap_err().contains("DELETE"));
        assert!(l(Some(-1), None)
            .validate()
            .unwrap_err()
            .contains("reorder_point"));
        assert!(l(Some(11), Some(10))
            .validate()
            .unwrap_err()
            .contains("above"));
        assert!(l(None, Some(MAX_VALUE + 1)).validate().is_err());
    }

    #[test]
    fn scopes_key_with_empty_for_any() {
        let store = StoreId::parse("S1").unwrap();
        let sku = Sku::parse("MILK").unwrap();
        assert_eq!(Scope::of(None, None), None);
        let s = Scope::of(Some(store.clone()), None).unwrap();
        assert_eq!((s.key(), s.target()), (("S1", ""), "S1/*".to_owned()));
        let s = Scope::of(None, Some(sku.clone())).unwrap();
        assert_eq!((s.key(), s.name()), (("", "MILK"), "sku"));
        let s = Scope::of(Some(store), Some(sku)).unwrap();
        assert_eq!(s.key(), ("S1", "MILK"));
    }
}
