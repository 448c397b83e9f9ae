//! Alert rules (DESIGN §8): which alert kinds hold for one (store, sku) given current facts.
//!
//! Invariants:
//! - [`evaluate`] is a pure function of its arguments (the caller supplies "now").
//! - The stock-level kinds are mutually exclusive, most severe first:
//!   `NegativeStock` (< 0) ⟹ not `OutOfStock` (= 0) ⟹ not `LowStock` (≤ reorder point).
//!   A store whose shelf is empty gets one alert, not three.
//! - A rule whose inputs are absent (no reorder point, no maximum, no forecast, …) does not
//!   fire. Non-finite inputs are treated as absent.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The kinds of alert, one open alert per (store, sku, kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    LowStock,
    OutOfStock,
    NegativeStock,
    Overstock,
    DemandAnomaly,
    StaleStore,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LowStock => "low_stock",
            AlertKind::OutOfStock => "out_of_stock",
            AlertKind::NegativeStock => "negative_stock",
            AlertKind::Overstock => "overstock",
            AlertKind::DemandAnomaly => "demand_anomaly",
            AlertKind::StaleStore => "stale_store",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about one (store, sku) right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertFacts {
    pub on_hand: f64,
    /// Reorder point in force (threshold or computed), if any.
    pub reorder_point: Option<f64>,
    /// Maximum stock in force, if any.
    pub max_stock: Option<f64>,
    /// Units sold on the day being checked, with that day's prediction interval.
    pub day_sales: Option<DaySales>,
    /// Last successful sync of the store's agent (None: never synced).
    pub last_sync: Option<DateTime<Utc>>,
    /// Whether the store should be open (and so syncing) now.
    pub store_open: bool,
    pub now: DateTime<Utc>,
}

/// A day's actual sales against the forecast's prediction interval for that day.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DaySales {
    pub actual: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Tunable bounds of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlertThresholds {
    /// Sales must leave the interval by more than this fraction of its width …
    pub anomaly_width_fraction: f64,
    /// … and by more than this many units (so tiny intervals do not fire on one sale).
    pub anomaly_min_units: f64,
    /// An open store that has not synced for longer than this is stale.
    pub stale_after: Duration,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            anomaly_width_fraction: 0.5,
            anomaly_min_units: 2.0,
            stale_after: Duration::minutes(30),
        }
    }
}

/// The set of alert kinds that hold for these facts.
///
/// * `NegativeStock`: on_hand < 0. `OutOfStock`: on_hand = 0. `LowStock`: 0 < on_hand ≤
///   reorder point.
/// * `Overstock`: on_hand > max_stock.
/// * `DemandAnomaly`: actual < lo − slack or actual > hi + slack, with
///   slack = max(anomaly_width_fraction·(hi − lo), anomaly_min_units) — a likely shrink,
///   promotion or data error.
/// * `StaleStore`: the store should be open and its last sync is older than `stale_after`
///   (or it never synced).
pub fn evaluate(facts: &AlertFacts, thresholds: &AlertThresholds) -> BTreeSet<AlertKind> {
    let mut kinds = BTreeSet::new();
    let on_hand = facts.on_hand;
    if on_hand.is_finite() {
        if on_hand < 0.0 {
            kinds.insert(AlertKind::NegativeStock);
        } else if on_hand == 0.0 {
            kinds.insert(AlertKind::OutOfStock);
        } else if finite(facts.reorder_point).is_some_and(|rop| on_hand <= rop) {
            kinds.insert(AlertKind::LowStock);
        }
        if finite(facts.max_stock).is_some_and(|max| on_hand > max) {
            kinds.insert(AlertKind::Overstock);
        }
    }
    if let Some(day) = facts.day_sales {
        if day.actual.is_finite() && day.lo.is_finite() && day.hi.is_finite() && day.hi >= day.lo {
            let slack = (thresholds.anomaly_width_fraction * (day.hi - day.lo))
                .max(thresholds.anomaly_min_units);
            if day.actual < day.lo - slack || day.actual > day.hi + slack {
                kinds.insert(AlertKind::DemandAnomaly);
            }
        }
    }
    if facts.store_open {
        let stale = match facts.last_sync {
            None => true,
            Some(last) => facts.now.signed_duration_since(last) > thresholds.stale_after,
        };
        if stale {
            kinds.insert(AlertKind::StaleStore);
        }
    }
    kinds
}

fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("valid date")
    }

    fn facts(on_hand: f64) -> AlertFacts {
        AlertFacts {
            on_hand,
            reorder_point: Some(10.0),
            max_stock: Some(100.0),
            day_sales: None,
            last_sync: Some(now()),
            store_open: true,
            now: now(),
        }
    }

    fn kinds(list: &[AlertKind]) -> BTreeSet<AlertKind> {
        list.iter().copied().collect()
    }

    #[test]
    fn stock_level_rules_are_exclusive_and_most_severe_first() {
        let t = AlertThresholds::default();
        assert_eq!(
            evaluate(&facts(-1.0), &t),
            kinds(&[AlertKind::NegativeStock])
        );
        assert_eq!(evaluate(&facts(0.0), &t), kinds(&[AlertKind::OutOfStock]));
        assert_eq!(
            evaluate(&facts(10.0), &t),
            kinds(&[AlertKind::LowStock]),
            "≤ reorder point is low"
        );
        assert_eq!(evaluate(&facts(10.5), &t), kinds(&[]));
        assert_eq!(
            evaluate(&facts(100.0), &t),
            kinds(&[]),
            "at the maximum is fine"
        );
        assert_eq!(evaluate(&facts(100.5), &t), kinds(&[AlertKind::Overstock]));
    }

    #[test]
    fn missing_thresholds_do_not_fire() {
        let mut f = facts(3.0);
        f.reorder_point = None;
        f.max_stock = None;
        assert!(evaluate(&f, &AlertThresholds::default()).is_empty());
        f.on_hand = f64::NAN;
        assert!(evaluate(&f, &AlertThresholds::default()).is_empty());
    }

    #[test]
    fn demand_anomaly_needs_a_clear_margin() {
        // Interval [4, 12], width 8, slack = max(0.5·8, 2) = 4 → fires below 0 or above 16.
        let t = AlertThresholds::default();
        let mut f = facts(50.0);
        for (actual, fires) in [(16.0, false), (16.5, true), (0.0, false), (8.0, false)] {
            f.day_sales = Some(DaySales {
                actual,
                lo: 4.0,
                hi: 12.0,
            });
            assert_eq!(
                evaluate(&f, &t).contains(&AlertKind::DemandAnomaly),
                fires,
                "actual {actual}"
            );
        }
        // Interval [0, 0.5]: slack is the 2-unit minimum, so 2 sales are fine but 3 are not.
        f.day_sales = Some(DaySales {
            actual: 2.0,
            lo: 0.0,
            hi: 0.5,
        });
        assert!(!evaluate(&f, &t).contains(&AlertKind::DemandAnomaly));
        f.day_sales = Some(DaySales {
            actual: 3.0,
            lo: 0.0,
            hi: 0.5,
        });
        assert!(evaluate(&f, &t).contains(&AlertKind::DemandAnomaly));
        // A shrink-like drop: interval [30, 50], slack 10, actual 19 < 20.
        f.day_sales = Some(DaySales {
            actual: 19.0,
            lo: 30.0,
            hi: 50.0,
        });
        assert!(evaluate(&f, &t).contains(&AlertKind::DemandAnomaly));
    }

    #[test]
    fn stale_store_only_while_open() {
        let t = AlertThresholds::default();
        let mut f = facts(50.0);
        f.last_sync = Some(now() - Duration::minutes(30));
        assert!(
            evaluate(&f, &t).is_empty(),
            "exactly at the bound is not stale"
        );
        f.last_sync = Some(now() - Duration::minutes(31));
        assert_eq!(evaluate(&f, &t), kinds(&[AlertKind::StaleStore]));
        f.store_open = false;
        assert!(evaluate(&f, &t).is_empty());
        f.store_open = true;
        f.last_sync = None;
        assert_eq!(evaluate(&f, &t), kinds(&[AlertKind::StaleStore]));
    }

    #[test]
    fn several_kinds_can_hold_together() {
        let mut f = facts(0.0);
        f.last_sync = None;
        f.day_sales = Some(DaySales {
            actual: 40.0,
            lo: 1.0,
            hi: 5.0,
        });
        assert_eq!(
            evaluate(&f, &AlertThresholds::default()),
            kinds(&[
                AlertKind::OutOfStock,
                AlertKind::DemandAnomaly,
                AlertKind::StaleStore
            ])
        );
    }
}
