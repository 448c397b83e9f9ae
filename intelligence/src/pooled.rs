//! A model pooled across series: per-group weekday and yearly profiles estimated from the
//! demand of many series, put on top of each series' own level (SES on the weekday-adjusted
//! demand).
//!
//! ```text
//! level_t   = level_{t−1} + α (y_t / w[dow t] − level_{t−1})     (α per series, SES grid)
//! ŷ_{o+h}   = level_o · w[dow(o+h)] · Y(o, o+h)^β
//! w[k]      = group demand on weekday k / mean group demand, last 364 days of the group
//! Y(o, d)   = W(d − 364) / mean_{j ∈ [o−378, o−364)} W(j),   W(j) = Σ_{|i−j| ≤ 3} G(i)
//! ```
//!
//! `G` is the group's total demand per day (sum over its series), so `Y` is the shape of
//! the group's curve over the same weeks last year relative to its level just before the
//! origin last year: it forecasts seasonal change (a December ramp, a summer peak) that one
//! slow series cannot estimate on its own. `Y` is 1 where last year is not covered, and is
//! clamped to [1/4, 4]. Only days before the origin enter `Y` (for horizons ≤ 360 days).
//!
//! A group is all series of a panel (chain-wide), a store, or a store and category, by
//! the series id ([`group_key`]). Profiles are fitted once per group ([`fit_profile`]) on
//! the training days only — on a sample of the group's series if it is large — and shared
//! by all its series; forecasting a series with them costs one more SES-sized pass.

use serde::{Deserialize, Serialize};

/// Which series share a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Every series of the panel.
    Chain,
    /// Series of the same store: the id up to its first `/`.
    Store,
    /// Series of the same store and category: the id up to its second `/`.
    StoreCategory,
}

/// The group of a series id under `pooling`: a prefix of `id` ending before its first
/// (`Store`) or second (`StoreCategory`) `/`; ids without that many `/` fall back to the
/// coarser group (down to the chain, `""`).
pub fn group_key(id: &str, pooling: Pooling) -> &str {
    let parts = match pooling {
        Pooling::Chain => return "",
        Pooling::Store => 1,
        Pooling::StoreCategory => 2,
    };
    match id.match_indices('/').map(|(i, _)| i).take(parts).last() {
        Some(last) => &id[..last],
        None => "",
    }
}

/// The key of the same item across stores: the id without its store part (up to and
/// including the first `/`); ids without `/` are their own item.
pub fn item_key(id: &str) -> &str {
    id.split_once('/').map_or(id, |(_, rest)| rest)
}

/// Top-down pooling of one item across stores: the item's chain-wide demand per day, and
/// the SES level of it (weekday-adjusted by its own profile) before each day. A store's
/// series is then forecast as `share · level · w[dow]`, its share of the item's demand over
/// the last 364 days times the chain-wide level: much less noisy than the store's own
/// level for slow movers, as long as the shares are stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemLevel {
    /// Series (stores) the item was fitted from; top-down needs at least 2.
    pub members: usize,
    /// Absolute day of `prefix[0]`'s first day.
    pub first_day: i64,
    /// `prefix[j]` = the item's chain-wide demand over its first `j` days.
    prefix: Vec<f64>,
    /// `level[j]`: weekday-adjusted SES level using days `< j` (`level[0]` the initial one).
    level: Vec<f64>,
}

impl ItemLevel {
    fn index(&self, day: i64) -> Option<usize> {
        let j = day - self.first_day;
        (j >= 0 && j < self.prefix.len() as i64).then_some(j as usize)
    }

    /// Chain-wide demand over absolute days `from..to` (clipped to what is covered).
    pub fn demand_between(&self, from: i64, to: i64) -> f64 {
        let clip = |d: i64| (d - self.first_day).clamp(0, self.prefix.len() as i64 - 1) as usize;
        if self.prefix.is_empty() || to <= from {
            return 0.0;
        }
        self.prefix[clip(to)] - self.prefix[clip(from)]
    }

    /// The weekday-adjusted level before absolute day `day` (from days before it only).
    pub fn level_before(&self, day: i64) -> Option<f64> {
        self.index(day).map(|j| self.level[j])
    }
}

/// Days ahead at which [`fit_item_level`] scores α.
pub const ITEM_LEVEL_LAG: usize = 14;

/// Fits an item's chain-wide level from its store series (absolute first day, daily
/// demand), with α from the SES grid by the SSE of forecasts [`ITEM_LEVEL_LAG`] days ahead.
pub fn fit_item_level<'a>(series: impl IntoIterator<Item = (i64, &'a [f64])>) -> ItemLevel {
    let series: Vec<(i64, &[f64])> = series.into_iter().collect();
    let members = series.len();
    let profile = fit_profile(series);
    let n = profile.totals.len();
    let w: Vec<f64> = (0..n)
        .map(|t| profile.weekday_factor(profile.first_day + t as i64))
        .collect();
    let z: Vec<f64> = profile.totals.iter().zip(&w).map(|(g, w)| g / w).collect();
    let warm = n.min(crate::models::WEEK);
    let init = z[..warm].iter().sum::<f64>() / warm.max(1) as f64;
    // α is chosen for the horizon the level is used at (two weeks ahead), not one step:
    // the chain-wide total is smooth enough that a one-step criterion picks an α that
    // chases promotions and then carries them into the following weeks.
    // All α side by side; the levels of the last ITEM_LEVEL_LAG days in a ring.
    const GRID: usize = crate::models::SES_ALPHAS.len();
    let mut levels = [init; GRID];
    let mut ring = vec![[init; GRID]; ITEM_LEVEL_LAG];
    let mut sses = [0.0; GRID];
    for (t, (&g, &zt)) in profile.totals.iter().zip(&z).enumerate() {
        let slot = t % ITEM_LEVEL_LAG;
        if t >= warm + ITEM_LEVEL_LAG {
            for k in 0..GRID {
                let e = g - ring[slot][k] * w[t];
                sses[k] += e * e;
            }
        }
        ring[slot] = levels;
        for (l, a) in levels.iter_mut().zip(crate::models::SES_ALPHAS) {
            *l += a * (zt - *l);
        }
    }
    let best = (0..GRID)
        .min_by(|&a, &b| sses[a].total_cmp(&sses[b]))
        .unwrap_or(0);
    let alpha = crate::models::SES_ALPHAS[best];
    let mut level = Vec::with_capacity(n + 1);
    let mut current = init;
    for &zt in &z {
        level.push(current);
        current += alpha * (zt - current);
    }
    level.push(current);
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    let mut total = 0.0;
    for &g in &profile.totals {
        total += g;
        prefix.push(total);
    }
    ItemLevel {
        members,
        first_day: profile.first_day,
        prefix,
        level,
    }
}

/// Days since 1970-01-01 of a date (the absolute day numbering of [`GroupProfile`]).
pub fn day_number(date: chrono::NaiveDate) -> i64 {
    date.signed_duration_since(chrono::NaiveDate::default())
        .num_days()
}

/// A group's pooled profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupProfile {
    /// Weekday factors indexed by `day_number.rem_euclid(7)`, mean 1.
    pub weekday: [f64; 7],
    /// Absolute day of `totals[0]`.
    pub first_day: i64,
    /// Group demand per day (sum over the fitted series).
    pub totals: Vec<f64>,
    /// `week_prefix[j]` = Σ_{i<j} W(i), W(i) the centred 7-day total (0 where not covered).
    week_prefix: Vec<f64>,
}

impl GroupProfile {
    /// No pooled information: flat weekday profile and no yearly curve.
    pub fn flat() -> Self {
        GroupProfile {
            weekday: [1.0; 7],
            first_day: 0,
            totals: Vec::new(),
            week_prefix: vec![0.0],
        }
    }

    /// Weekday factor of absolute day `day`.
    pub fn weekday_factor(&self, day: i64) -> f64 {
        self.weekday[day.rem_euclid(7) as usize]
    }

    /// Index into `totals` of the 7-day window centred on `day`, if it is covered.
    fn centre(&self, day: i64) -> Option<usize> {
        let j = day - self.first_day;
        (j >= 3 && j + 3 < self.totals.len() as i64).then_some(j as usize)
    }

    /// Group demand of the 7 days centred on `day`, if all are covered.
    fn week_total(&self, day: i64) -> Option<f64> {
        let j = self.centre(day)?;
        Some(self.week_prefix[j + 1] - self.week_prefix[j])
    }

    /// Mean centred 7-day total over the 14 days before `origin` last year (days
    /// `origin − 378 .. origin − 364`), if covered: the base of [`Self::yearly_factor`].
    pub fn yearly_base(&self, origin: i64) -> Option<f64> {
        let first = self.centre(origin - 364 - 14)?;
        let last = self.centre(origin - 364 - 1)?;
        Some((self.week_prefix[last + 1] - self.week_prefix[first]) / 14.0)
    }

    /// `Y(origin, target)` given `base` = [`Self::yearly_base`]`(origin)`.
    pub fn yearly_factor_from(&self, base: Option<f64>, target: i64) -> f64 {
        match (base, self.week_total(target - 364)) {
            (Some(base), Some(then)) if base > 0.0 && then.is_finite() => {
                (then / base).clamp(0.25, 4.0)
            }
            _ => 1.0,
        }
    }

    /// `Y(origin, target)` of the module docs: 1 where last year is not covered.
    pub fn yearly_factor(&self, origin: i64, target: i64) -> f64 {
        self.yearly_factor_from(self.yearly_base(origin), target)
    }
}

/// Fits a group's profile from its series, each given as (absolute day of its first
/// element, daily demand). Non-finite and negative days count as 0. The weekday factors
/// come from the last 364 days covered by any series (all days if fewer), floored at 0.05
/// (a closing day); without any demand the profile is flat.
pub fn fit_profile<'a>(series: impl IntoIterator<Item = (i64, &'a [f64])>) -> GroupProfile {
    let series: Vec<(i64, &[f64])> = series.into_iter().filter(|s| !s.1.is_empty()).collect();
    let (Some(first), Some(end)) = (
        series.iter().map(|s| s.0).min(),
        series.iter().map(|s| s.0 + s.1.len() as i64).max(),
    ) else {
        return GroupProfile::flat();
    };
    let mut totals = vec![0.0; (end - first) as usize];
    for (start, values) in &series {
        let offset = (start - first) as usize;
        for (t, &y) in values.iter().enumerate() {
            if y.is_finite() && y > 0.0 {
                totals[offset + t] += y;
            }
        }
    }
    let recent = totals.len().saturating_sub(364);
    let mut sums = [0.0; 7];
    let mut counts = [0usize; 7];
    for (t, &g) in totals.iter().enumerate().skip(recent) {
        let k = (first + t as i64).rem_euclid(7) as usize;
        sums[k] += g;
        counts[k] += 1;
    }
    let means: Vec<f64> = (0..7).map(|k| sums[k] / counts[k].max(1) as f64).collect();
    let overall = means.iter().sum::<f64>() / 7.0;
    let mut weekday = [1.0; 7];
    if overall > 0.0 && counts.iter().all(|&c| c > 0) {
        for k in 0..7 {
            // A weekday with no demand at all (a closing day) keeps a small factor so the
            // deseasonalised demand stays finite.
            weekday[k] = (means[k] / overall).max(0.05);
        }
    }
    let mut week_prefix = vec![0.0; totals.len() + 1];
    let mut running = 0.0;
    for j in 0..totals.len() {
        let w = if j >= 3 && j + 3 < totals.len() {
            totals[j - 3..=j + 3].iter().sum()
        } else {
            0.0
        };
        running += w;
        week_prefix[j + 1] = running;
    }
    GroupProfile {
        weekday,
        first_day: first,
        totals,
        week_prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_by_store_and_category() {
        assert_eq!(group_key("s01/food/sku7", Pooling::Chain), "");
        assert_eq!(group_key("s01/food/sku7", Pooling::Store), "s01");
        assert_eq!(
            group_key("s01/food/sku7", Pooling::StoreCategory),
            "s01/food"
        );
        // Ids without separators pool chain-wide; with one, by store at most.
        assert_eq!(group_key("Jekyll Carbon 2", Pooling::Store), "");
        assert_eq!(group_key("s01/sku7", Pooling::StoreCategory), "s01");
    }

    #[test]
    fn weekday_profile_is_the_groups_share_by_weekday() {
        // Two series from day 0 (a Thursday: 0.rem_euclid(7) = 0), weekly pattern on day
        // index 5 only: 6 units on k = 5, 1 on the others → mean 12/7, factors 7/12 and 42/12.
        let pattern = |t: usize| if t % 7 == 5 { 6.0 } else { 1.0 };
        let a: Vec<f64> = (0..70).map(pattern).collect();
        let b: Vec<f64> = (0..70).map(|t| 2.0 * pattern(t)).collect();
        let p = fit_profile([(0, a.as_slice()), (0, b.as_slice())]);
        assert!((p.weekday[5] - 42.0 / 12.0).abs() < 1e-9, "{:?}", p.weekday);
        assert!((p.weekday[0] - 7.0 / 12.0).abs() < 1e-9);
        assert!((p.weekday.iter().sum::<f64>() - 7.0).abs() < 1e-9);
        assert_eq!(p.totals.len(), 70);
        assert_eq!(p.totals[5], 18.0);
        assert_eq!(fit_profile(std::iter::empty()), GroupProfile::flat());
    }

    #[test]
    fn series_starting_later_are_aligned_by_absolute_day() {
        let a = vec![1.0; 14];
        let b = vec![2.0; 7];
        let p = fit_profile([(100, a.as_slice()), (107, b.as_slice())]);
        assert_eq!(p.first_day, 100);
        assert_eq!(p.totals[0], 1.0);
        assert_eq!(p.totals[7], 3.0);
        assert_eq!(p.totals.len(), 14);
    }

    #[test]
    fn yearly_factor_follows_last_years_curve() {
        // Group demand 10 a day, doubling to 20 from day 400 on (last year's December).
        let g: Vec<f64> = (0..800)
            .map(|t| if t >= 400 { 20.0 } else { 10.0 })
            .collect();
        let p = fit_profile([(0, g.as_slice())]);
        // Origin 750: base = days 372..386 last year (10 a day); target 780 → day 416: 20.
        assert!((p.yearly_factor(750, 780) - 2.0).abs() < 1e-9);
        // Target before the jump last year: 1.
        assert!((p.yearly_factor(750, 755) - 1.0).abs() < 1e-9);
        // Not covered last year: 1.
        assert_eq!(p.yearly_factor(300, 320), 1.0);
    }

    #[test]
    fn item_level_pools_the_same_item_across_stores() {
        assert_eq!(item_key("s01/food/sku7"), "food/sku7");
        assert_eq!(item_key("sku7"), "sku7");
        // Two stores sell the item at 1 and 3 a day, flat: chain-wide 4 a day.
        let a = vec![1.0; 56];
        let b = vec![3.0; 56];
        let item = fit_item_level([(0, a.as_slice()), (0, b.as_slice())]);
        assert_eq!(item.members, 2);
        assert!((item.level_before(30).expect("covered") - 4.0).abs() < 1e-9);
        assert!((item.demand_between(0, 10) - 40.0).abs() < 1e-9);
        assert!(
            (item.demand_between(50, 100) - 24.0).abs() < 1e-9,
            "clipped at the end"
        );
        assert_eq!(item.level_before(-1), None);
        // Store b's share 3/4 × level 4 = its own 3 a day.
        let share = b.iter().sum::<f64>() / item.demand_between(0, 56);
        assert!((share * item.level_before(56).expect("end") - 3.0).abs() < 1e-9);
    }

    #[test]
    fn day_numbers_count_from_1970() {
        let d = chrono::NaiveDate::from_ymd_opt(1970, 1, 8).expect("date");
        assert_eq!(day_number(d), 7);
    }
}
