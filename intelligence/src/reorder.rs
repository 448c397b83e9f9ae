//! Reorder points, order-up-to levels, purchase suggestions and chain-wide transfers
//! (DESIGN §8).
//!
//! # Definitions
//! With a lead time of L days, a review period of R days, daily forecast means μ(d) and
//! daily error sds σ(d) (daily errors taken as independent):
//!
//! ```text
//! demand over lead time   D_L = Σ_{d<L} μ(d)          σ_L = sqrt(Σ_{d<L} σ(d)²)
//! reorder point           ROP = D_L + z(service level)·σ_L
//! order-up-to             S   = D_{L+R} + z·σ_{L+R}
//! suggested purchase          = ⌈max(0, S − (on_hand + on_order)) / pack⌉ · pack
//! ```
//!
//! Days beyond the forecast horizon repeat its last day. z is the one-sided normal
//! quantile of the cycle service level ([`z_for_service_level`]).
//!
//! # Intermittent demand: empirical lead-time demand
//! For slow movers the demand over L (or L+R) days is a few units with a long right tail,
//! and the normal approximation misplaces its quantiles. [`reorder_plan_with`] can take the
//! safety stock from the series' own history instead: the `p`-quantile minus the mean of the
//! sums of every window of L (resp. L+R) consecutive days in the last
//! [`EMPIRICAL_WINDOW_DAYS`] days (a moving-block bootstrap with one block per window,
//! deterministic), added to the forecast demand: `S = D_{L+R} + (Q_p − mean)` of the
//! (L+R)-day sums ([`empirical_safety_stock`]). [`SafetyStock::Auto`] does this for
//! intermittent series (ADI > 1.32) and keeps the normal rule for the others; see
//! `benches/service_level.rs` for what each delivers on held-out demand.
//!
//! # Chain-wide
//! [`transfer_suggestions`] moves whole units from stores holding more than their
//! order-up-to level to stores whose stock will not cover demand over the lead time, most
//! urgent receiver first, largest surplus first, before anything is bought;
//! [`purchases_after_transfers`] then gives each store's purchase.
//!
//! Invariants: all functions are pure and deterministic (ties broken by store id), never
//! panic, never suggest negative quantities, and never move more than a donor's surplus.

use serde::{Deserialize, Serialize};

use crate::stats::inverse_normal_cdf;

/// Replenishment parameters of one product (or store × product).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReorderPolicy {
    /// Days from ordering to goods on the shelf.
    pub lead_time_days: u32,
    /// Days between two orders.
    pub review_period_days: u32,
    /// Target probability of not running out within a cycle, in (0, 1), e.g. 0.95.
    pub service_level: f64,
    /// Orders are whole multiples of this many units (0 is treated as 1).
    pub pack_size: u32,
}

impl Default for ReorderPolicy {
    fn default() -> Self {
        ReorderPolicy {
            lead_time_days: 7,
            review_period_days: 7,
            service_level: 0.95,
            pack_size: 1,
        }
    }
}

/// The reorder figures for one store and product.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReorderPlan {
    pub demand_over_lead_time: f64,
    pub sd_over_lead_time: f64,
    pub safety_stock: f64,
    pub reorder_point: f64,
    pub order_up_to: f64,
    /// on_hand + on_order.
    pub inventory_position: f64,
    /// True when the inventory position is at or below the reorder point.
    pub below_reorder_point: bool,
    /// Units to buy: a multiple of the pack size, never negative.
    pub suggested_order: u64,
}

/// One-sided z of a cycle service level: Φ⁻¹(service_level), e.g. 0.95 → 1.6449.
/// Levels are clamped to [0.5, 0.9999] (no negative safety stock, no infinite one).
pub fn z_for_service_level(service_level: f64) -> f64 {
    let level = if service_level.is_finite() {
        service_level.clamp(0.5, 0.9999)
    } else {
        0.95
    };
    inverse_normal_cdf(level)
}

/// Sum of means and root-sum-square of sds over the first `days` days; days past the end
/// repeat the last day (zero if there is no forecast at all).
pub fn demand_over(days: usize, mean: &[f64], sd: &[f64]) -> (f64, f64) {
    let last_mean = mean.last().copied().unwrap_or(0.0);
    let last_sd = sd.last().copied().unwrap_or(0.0);
    let mut total = 0.0;
    let mut variance = 0.0;
    for d in 0..days {
        let m = mean.get(d).copied().unwrap_or(last_mean);
        let s = sd.get(d).copied().unwrap_or(last_sd);
        total += clean(m);
        variance += clean(s) * clean(s);
    }
    (total, variance.sqrt())
}

/// Reorder point, order-up-to level and purchase suggestion from a daily forecast
/// (`mean`, `sd` per day, as in [`crate::select::Forecast`]).
pub fn reorder_plan(
    mean: &[f64],
    sd: &[f64],
    on_hand: f64,
    on_order: f64,
    policy: &ReorderPolicy,
) -> ReorderPlan {
    let z = z_for_service_level(policy.service_level);
    let lead = policy.lead_time_days as usize;
    let (demand_lt, sd_lt) = demand_over(lead, mean, sd);
    let (demand_cycle, sd_cycle) = demand_over(lead + policy.review_period_days as usize, mean, sd);
    let reorder_point = demand_lt + z * sd_lt;
    let order_up_to = demand_cycle + z * sd_cycle;
    let inventory_position = clean(on_hand) + clean(on_order);
    ReorderPlan {
        demand_over_lead_time: demand_lt,
        sd_over_lead_time: sd_lt,
        safety_stock: z * sd_lt,
        reorder_point,
        order_up_to,
        inventory_position,
        below_reorder_point: inventory_position <= reorder_point,
        suggested_order: round_up_to_pack(order_up_to - inventory_position, policy.pack_size),
    }
}

/// Days of history whose window sums give the empirical lead-time demand distribution.
pub const EMPIRICAL_WINDOW_DAYS: usize = 364;

/// Fewest windows for an empirical quantile; with fewer the normal rule is used.
pub const MIN_EMPIRICAL_WINDOWS: usize = 28;

/// How [`reorder_plan_with`] sets the safety stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SafetyStock {
    /// z(service level) · σ over the period: [`reorder_plan`].
    Normal,
    /// Quantile minus mean of the history's window sums ([`empirical_safety_stock`]) for
    /// every series with enough history.
    Empirical,
    /// Empirical for intermittent series (ADI of the history > 1.32), normal for the others.
    Auto,
}

/// Sums of every window of `days` consecutive days within the last `window` days of
/// `history` (non-finite and negative days count as 0). Empty when `days` is 0 or the
/// history is shorter than `days`.
pub fn window_sums(history: &[f64], days: usize, window: usize) -> Vec<f64> {
    let recent = &history[history.len().saturating_sub(window.max(days))..];
    if days == 0 || recent.len() < days {
        return Vec::new();
    }
    let mut sums = Vec::with_capacity(recent.len() - days + 1);
    let mut total: f64 = recent[..days].iter().map(|&y| clean(y).max(0.0)).sum();
    sums.push(total);
    for t in days..recent.len() {
        total += clean(recent[t]).max(0.0) - clean(recent[t - days]).max(0.0);
        sums.push(total.max(0.0));
    }
    sums
}

/// The `p`-quantile of `values` (linear interpolation between order statistics, R type 7);
/// sorts `values`. 0 for an empty slice.
pub fn quantile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by(f64::total_cmp);
    let p = if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let position = p * (values.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(values.len() - 1);
    let fraction = position - below as f64;
    values[below] + fraction * (values[above] - values[below])
}

/// Safety stock over `days` days at `service_level` from the history's own `days`-day
/// demand: `max(0, Q_p − mean)` of [`window_sums`] over the last [`EMPIRICAL_WINDOW_DAYS`]
/// days. `None` when there are fewer than [`MIN_EMPIRICAL_WINDOWS`] windows.
pub fn empirical_safety_stock(history: &[f64], days: usize, service_level: f64) -> Option<f64> {
    let mut sums = window_sums(history, days, EMPIRICAL_WINDOW_DAYS);
    if sums.len() < MIN_EMPIRICAL_WINDOWS {
        return None;
    }
    let mean = sums.iter().sum::<f64>() / sums.len() as f64;
    let level = if service_level.is_finite() {
        service_level.clamp(0.5, 0.9999)
    } else {
        0.95
    };
    Some((quantile(&mut sums, level) - mean).max(0.0))
}

/// Average inter-demand interval of a history from its first sale (days per day with a
/// sale); infinite without a sale.
pub fn average_demand_interval(history: &[f64]) -> f64 {
    let Some(first) = history.iter().position(|&y| clean(y) > 0.0) else {
        return f64::INFINITY;
    };
    let active = &history[first..];
    let sales = active.iter().filter(|&&y| clean(y) > 0.0).count();
    active.len() as f64 / sales as f64
}

/// [`reorder_plan`] with the safety stock set by `method` from the series' `history`
/// (daily demand, oldest first, the same history the forecast was made from). Falls back to
/// the normal rule where the history is too short for an empirical quantile.
pub fn reorder_plan_with(
    mean: &[f64],
    sd: &[f64],
    history: &[f64],
    on_hand: f64,
    on_order: f64,
    policy: &ReorderPolicy,
    method: SafetyStock,
) -> ReorderPlan {
    let normal = reorder_plan(mean, sd, on_hand, on_order, policy);
    let empirical = match method {
        SafetyStock::Normal => false,
        SafetyStock::Empirical => true,
        SafetyStock::Auto => average_demand_interval(history) > crate::select::INTERMITTENT_ADI,
    };
    if !empirical {
        return normal;
    }
    let lead = policy.lead_time_days as usize;
    let cycle = lead + policy.review_period_days as usize;
    let (Some(safety_lt), Some(safety_cycle)) = (
        empirical_safety_stock(history, lead, policy.service_level),
        empirical_safety_stock(history, cycle, policy.service_level),
    ) else {
        return normal;
    };
    let (demand_cycle, _) = demand_over(cycle, mean, sd);
    let reorder_point = normal.demand_over_lead_time + safety_lt;
    let order_up_to = demand_cycle + safety_cycle;
    ReorderPlan {
        safety_stock: safety_lt,
        reorder_point,
        order_up_to,
        below_reorder_point: normal.inventory_position <= reorder_point,
        suggested_order: round_up_to_pack(
            order_up_to - normal.inventory_position,
            policy.pack_size,
        ),
        ..normal
    }
}

/// [`reorder_plan`] with the sds over the lead time and over lead time + review taken from
/// `cumulative_sd` (the sd of the error of the total over days 1..=h at index h − 1, as in
/// [`crate::select::Forecast::cumulative_sd`]) instead of `sqrt(Σ σ(d)²)`: daily errors of
/// a forecast are correlated (a level that is off stays off), which the sum of daily
/// variances ignores. Periods past the end of `cumulative_sd` add its last step's
/// variance per day.
pub fn reorder_plan_cumulative(
    mean: &[f64],
    cumulative_sd: &[f64],
    on_hand: f64,
    on_order: f64,
    policy: &ReorderPolicy,
) -> ReorderPlan {
    let z = z_for_service_level(policy.service_level);
    let lead = policy.lead_time_days as usize;
    let cycle = lead + policy.review_period_days as usize;
    let sd_at = |days: usize| -> f64 {
        if days == 0 || cumulative_sd.is_empty() {
            return 0.0;
        }
        let n = cumulative_sd.len();
        let last = clean(cumulative_sd[n - 1]);
        if days <= n {
            return clean(cumulative_sd[days - 1]);
        }
        let before = if n >= 2 {
            clean(cumulative_sd[n - 2])
        } else {
            0.0
        };
        let step = (last * last - before * before).max(0.0);
        (last * last + step * (days - n) as f64).sqrt()
    };
    let (demand_lt, _) = demand_over(lead, mean, &[]);
    let (demand_cycle, _) = demand_over(cycle, mean, &[]);
    let (sd_lt, sd_cycle) = (sd_at(lead), sd_at(cycle));
    let reorder_point = demand_lt + z * sd_lt;
    let order_up_to = demand_cycle + z * sd_cycle;
    let inventory_position = clean(on_hand) + clean(on_order);
    ReorderPlan {
        demand_over_lead_time: demand_lt,
        sd_over_lead_time: sd_lt,
        safety_stock: z * sd_lt,
        reorder_point,
        order_up_to,
        inventory_position,
        below_reorder_point: inventory_position <= reorder_point,
        suggested_order: round_up_to_pack(order_up_to - inventory_position, policy.pack_size),
    }
}

/// Rounds a shortfall up to whole packs; nothing for a shortfall ≤ 0.
pub fn round_up_to_pack(shortfall: f64, pack_size: u32) -> u64 {
    let pack = u64::from(pack_size.max(1));
    if shortfall.is_nan() || shortfall <= 1e-9 {
        return 0;
    }
    // Guard against f64 noise such as 12.000000000001 → 13 units.
    let units = (shortfall - 1e-9).ceil();
    let units = if units >= u64::MAX as f64 {
        u64::MAX / 2
    } else {
        units as u64
    };
    units.div_ceil(pack).saturating_mul(pack)
}

/// One store's position for one sku, for chain-wide balancing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStock<S> {
    pub store: S,
    pub on_hand: f64,
    pub on_order: f64,
    /// Forecast demand over the replenishment lead time.
    pub demand_over_lead_time: f64,
    /// The store's order-up-to level ([`ReorderPlan::order_up_to`]).
    pub order_up_to: f64,
}

/// A suggested movement of stock between two stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer<S> {
    pub from: S,
    pub to: S,
    pub quantity: u64,
}

/// Moves surplus to stores that will run out within the lead time.
///
/// * Donor: `on_hand > order_up_to`; it gives at most `⌊on_hand − order_up_to⌋` units
///   (only stock on hand moves, never goods still on order).
/// * Receiver: `on_hand + on_order < demand_over_lead_time`; it asks for
///   `⌈order_up_to − (on_hand + on_order)⌉` units (up to its order-up-to level).
/// * Receivers are served in order of fewest days of cover (position ÷ daily demand), each
///   from the donors with the largest remaining surplus first; transfers below
///   `min_quantity` units are not suggested. Ties are broken by store id.
pub fn transfer_suggestions<S: Clone + Ord>(
    stores: &[StoreStock<S>],
    min_quantity: u64,
) -> Vec<Transfer<S>> {
    let mut donors: Vec<(S, u64)> = stores
        .iter()
        .filter_map(|s| {
            let surplus = (clean(s.on_hand) - clean(s.order_up_to)).floor();
            (surplus >= 1.0).then(|| (s.store.clone(), surplus as u64))
        })
        .collect();
    let mut receivers: Vec<(&StoreStock<S>, f64, u64)> = stores
        .iter()
        .filter_map(|s| {
            let position = clean(s.on_hand) + clean(s.on_order);
            let demand = clean(s.demand_over_lead_time);
            if position >= demand {
                return None;
            }
            let need = round_up_to_pack(clean(s.order_up_to).max(demand) - position, 1);
            let days_of_cover = position.max(0.0) / demand.max(f64::MIN_POSITIVE);
            (need > 0).then_some((s, days_of_cover, need))
        })
        .collect();
    receivers.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.store.cmp(&b.0.store)));

    let mut transfers = Vec::new();
    for (receiver, _, mut need) in receivers {
        while need > 0 {
            donors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let Some(donor) = donors.iter_mut().find(|d| d.1 > 0 && d.0 != receiver.store) else {
                break;
            };
            let quantity = need.min(donor.1);
            if quantity < min_quantity.max(1) {
                break;
            }
            donor.1 -= quantity;
            need -= quantity;
            transfers.push(Transfer {
                from: donor.0.clone(),
                to: receiver.store.clone(),
                quantity,
            });
        }
    }
    transfers
}

/// Purchase per store once the transfers are done: order-up-to minus the position after
/// transfers in and out, rounded up to the pack size. Same order as `stores`.
pub fn purchases_after_transfers<S: Clone + Ord>(
    stores: &[StoreStock<S>],
    transfers: &[Transfer<S>],
    pack_size: u32,
) -> Vec<(S, u64)> {
    stores
        .iter()
        .map(|s| {
            let incoming: u64 = transfers
                .iter()
                .filter(|t| t.to == s.store)
                .map(|t| t.quantity)
                .sum();
            let outgoing: u64 = transfers
                .iter()
                .filter(|t| t.from == s.store)
                .map(|t| t.quantity)
                .sum();
            let position = clean(s.on_hand) + clean(s.on_order) + incoming as f64 - outgoing as f64;
            (
                s.store.clone(),
                round_up_to_pack(clean(s.order_up_to) - position, pack_size),
            )
        })
        .collect()
}

fn clean(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn z_of_common_service_levels() {
        assert!(close(z_for_service_level(0.95), 1.6449));
        assert!(close(z_for_service_level(0.99), 2.3263));
        assert!(close(z_for_service_level(0.90), 1.2816));
        assert_eq!(
            z_for_service_level(0.3),
            0.0,
            "below 50% is clamped: no negative safety stock"
        );
    }

    #[test]
    fn reorder_plan_by_hand() {
        // Flat demand 10/day with sd 2/day, L = 4, R = 5, 95% service, pack 6.
        // D_L = 40, σ_L = sqrt(4·4) = 4, ROP = 40 + 1.64485·4 = 46.5794.
        // D_{L+R} = 90, σ = sqrt(9·4) = 6, S = 90 + 1.64485·6 = 99.8691.
        // Position = 30 + 12 = 42 ≤ ROP. Shortfall 57.869 → 58 units → 10 packs = 60.
        let policy = ReorderPolicy {
            lead_time_days: 4,
            review_period_days: 5,
            service_level: 0.95,
            pack_size: 6,
        };
        let plan = reorder_plan(&[10.0; 14], &[2.0; 14], 30.0, 12.0, &policy);
        assert!(close(plan.demand_over_lead_time, 40.0));
        assert!(close(plan.sd_over_lead_time, 4.0));
        assert!(close(plan.reorder_point, 46.5794));
        assert!(close(plan.order_up_to, 99.8691));
        assert!(plan.below_reorder_point);
        assert_eq!(plan.suggested_order, 60);
    }

    #[test]
    fn no_order_when_position_exceeds_order_up_to() {
        let plan = reorder_plan(&[1.0; 7], &[0.5; 7], 500.0, 0.0, &ReorderPolicy::default());
        assert_eq!(plan.suggested_order, 0);
        assert!(!plan.below_reorder_point);
    }

    #[test]
    fn horizon_shorter_than_cycle_repeats_last_day() {
        // Means [1,2,3], 5 days → 1+2+3+3+3 = 12.
        let (total, sd) = demand_over(5, &[1.0, 2.0, 3.0], &[0.0, 0.0, 1.0]);
        assert!(close(total, 12.0));
        assert!(close(sd, 3f64.sqrt()));
        assert_eq!(demand_over(3, &[], &[]), (0.0, 0.0));
    }

    #[test]
    fn cumulative_sd_replaces_the_root_sum_of_squares() {
        let policy = ReorderPolicy {
            lead_time_days: 4,
            review_period_days: 5,
            service_level: 0.95,
            pack_size: 1,
        };
        // Perfectly correlated daily errors of sd 2: the h-day total has sd 2h.
        let cumulative: Vec<f64> = (1..=14).map(|h| 2.0 * h as f64).collect();
        let plan = reorder_plan_cumulative(&[10.0; 14], &cumulative, 30.0, 12.0, &policy);
        assert!(close(plan.sd_over_lead_time, 8.0));
        assert!(close(plan.reorder_point, 40.0 + 1.644_853_6 * 8.0));
        assert!(close(plan.order_up_to, 90.0 + 1.644_853_6 * 18.0));
        assert_eq!(
            plan.suggested_order,
            round_up_to_pack(plan.order_up_to - 42.0, 1)
        );
        // Independent errors give back reorder_plan exactly.
        let independent: Vec<f64> = (1..=14).map(|h| 2.0 * (h as f64).sqrt()).collect();
        let a = reorder_plan_cumulative(&[10.0; 14], &independent, 30.0, 12.0, &policy);
        let b = reorder_plan(&[10.0; 14], &[2.0; 14], 30.0, 12.0, &policy);
        assert!(close(a.order_up_to, b.order_up_to) && close(a.reorder_point, b.reorder_point));
        // Past the end: the last step's variance per day (sd 2h up to 3 → 6, step 36 − 16).
        let short = reorder_plan_cumulative(&[10.0; 3], &[2.0, 4.0, 6.0], 0.0, 0.0, &policy);
        assert!(close(short.sd_over_lead_time, (36.0f64 + 20.0).sqrt()));
        assert_eq!(
            reorder_plan_cumulative(&[], &[], 0.0, 0.0, &policy).order_up_to,
            0.0
        );
    }

    #[test]
    fn window_sums_slide_over_the_recent_days() {
        let h = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0];
        assert_eq!(window_sums(&h, 2, 100), vec![1.0, 2.0, 2.0, 0.0, 3.0]);
        // Only the last 4 days: [2, 0, 0, 3] → windows of 3: 2, 3.
        assert_eq!(window_sums(&h, 3, 4), vec![2.0, 3.0]);
        assert!(window_sums(&h, 7, 100).is_empty());
        assert!(window_sums(&h, 0, 100).is_empty());
        assert_eq!(window_sums(&[f64::NAN, -1.0, 2.0], 2, 10), vec![0.0, 2.0]);
    }

    #[test]
    fn quantile_interpolates_like_r_type_7() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert!(close(quantile(&mut v, 0.0), 1.0));
        assert!(close(quantile(&mut v, 1.0), 4.0));
        assert!(close(quantile(&mut v, 0.5), 2.5));
        // position 0.9 · 3 = 2.7 → 3 + 0.7 · (4 − 3).
        assert!(close(quantile(&mut v, 0.9), 3.7));
        assert_eq!(quantile(&mut [], 0.9), 0.0);
    }

    #[test]
    fn empirical_safety_stock_follows_the_right_tail_of_intermittent_demand() {
        // One sale of 10 every 10th day: 7-day sums are 10 in 7 windows of 10 and 0 in
        // 3, mean 7; the 95% quantile is 10 → safety stock 3. The normal rule with the same
        // mean and sd (sd of the sums ≈ 4.6) would add 1.645 · 4.6 ≈ 7.5.
        let h: Vec<f64> = (0..364)
            .map(|t| if t % 10 == 0 { 10.0 } else { 0.0 })
            .collect();
        let safety = empirical_safety_stock(&h, 7, 0.95).expect("enough windows");
        let sums = window_sums(&h, 7, EMPIRICAL_WINDOW_DAYS);
        let mean = sums.iter().sum::<f64>() / sums.len() as f64;
        assert!((mean - 7.0).abs() < 0.1, "{mean}");
        assert!((safety - (10.0 - mean)).abs() < 1e-9, "{safety}");
        // Lumpy sales: one of 50 every 30 days → 7-day sums are 50 in 7 of 30 windows, else
        // 0: mean 11.7, 99% quantile 50 → safety 38.3 (the normal rule with the sums' sd
        // 21.1 would add 2.326 · 21.1 ≈ 49: more than one whole sale of stock too much).
        let lumpy: Vec<f64> = (0..364)
            .map(|t| if t % 30 == 0 { 50.0 } else { 0.0 })
            .collect();
        let safety = empirical_safety_stock(&lumpy, 7, 0.99).expect("enough windows");
        assert!(safety > 30.0 && safety < 45.0, "{safety}");
        // Too short a history: no empirical figure.
        assert_eq!(empirical_safety_stock(&h[..30], 7, 0.95), None);
        // Never negative, even where the quantile is below the mean.
        let rare: Vec<f64> = (0..364)
            .map(|t| if t == 100 { 500.0 } else { 0.0 })
            .collect();
        assert_eq!(empirical_safety_stock(&rare, 7, 0.9), Some(0.0));
    }

    #[test]
    fn reorder_plan_with_uses_the_empirical_rule_only_where_asked() {
        let policy = ReorderPolicy {
            lead_time_days: 7,
            review_period_days: 7,
            service_level: 0.95,
            pack_size: 1,
        };
        let intermittent: Vec<f64> = (0..364)
            .map(|t| if t % 10 == 0 { 10.0 } else { 0.0 })
            .collect();
        let mean = [1.0; 14];
        let sd = [3.0; 14];
        let normal = reorder_plan(&mean, &sd, 2.0, 0.0, &policy);
        assert_eq!(
            reorder_plan_with(
                &mean,
                &sd,
                &intermittent,
                2.0,
                0.0,
                &policy,
                SafetyStock::Normal
            ),
            normal
        );
        let auto = reorder_plan_with(
            &mean,
            &sd,
            &intermittent,
            2.0,
            0.0,
            &policy,
            SafetyStock::Auto,
        );
        // 14-day sums of the history are 10 or 20; the 95% quantile 20, mean 14 → S = 14 + 6.
        let safety_cycle = empirical_safety_stock(&intermittent, 14, 0.95).expect("windows");
        assert!(close(auto.order_up_to, 14.0 + safety_cycle), "{auto:?}");
        assert!(close(
            auto.safety_stock,
            empirical_safety_stock(&intermittent, 7, 0.95).expect("w")
        ));
        assert!(close(auto.reorder_point, 7.0 + auto.safety_stock));
        assert_eq!(
            auto.suggested_order,
            round_up_to_pack(auto.order_up_to - 2.0, 1)
        );
        assert!(auto.order_up_to < normal.order_up_to);
        // A smooth series keeps the normal rule under Auto, not under Empirical.
        let smooth: Vec<f64> = (0..364).map(|t| 5.0 + (t % 3) as f64).collect();
        assert_eq!(
            reorder_plan_with(&mean, &sd, &smooth, 2.0, 0.0, &policy, SafetyStock::Auto),
            normal
        );
        assert_ne!(
            reorder_plan_with(
                &mean,
                &sd,
                &smooth,
                2.0,
                0.0,
                &policy,
                SafetyStock::Empirical
            ),
            normal
        );
        // Short history: normal rule whatever is asked.
        assert_eq!(
            reorder_plan_with(
                &mean,
                &sd,
                &intermittent[..20],
                2.0,
                0.0,
                &policy,
                SafetyStock::Empirical
            ),
            normal
        );
    }

    #[test]
    fn average_demand_interval_counts_from_the_first_sale() {
        assert!(close(
            average_demand_interval(&[0.0, 0.0, 1.0, 0.0, 2.0, 0.0]),
            2.0
        ));
        assert!(average_demand_interval(&[0.0; 5]).is_infinite());
        assert!(close(average_demand_interval(&[3.0; 5]), 1.0));
    }

    #[test]
    fn pack_rounding() {
        assert_eq!(round_up_to_pack(0.0, 6), 0);
        assert_eq!(round_up_to_pack(-3.0, 6), 0);
        assert_eq!(round_up_to_pack(1.0, 6), 6);
        assert_eq!(round_up_to_pack(12.0, 6), 12);
        assert_eq!(round_up_to_pack(12.000_000_000_1, 6), 12);
        assert_eq!(round_up_to_pack(12.5, 6), 18);
        assert_eq!(
            round_up_to_pack(3.2, 0),
            4,
            "pack size 0 means single units"
        );
        assert_eq!(round_up_to_pack(f64::NAN, 6), 0);
    }

    fn stock(
        store: &str,
        on_hand: f64,
        on_order: f64,
        demand_lt: f64,
        order_up_to: f64,
    ) -> StoreStock<String> {
        StoreStock {
            store: store.to_owned(),
            on_hand,
            on_order,
            demand_over_lead_time: demand_lt,
            order_up_to,
        }
    }

    #[test]
    fn surplus_moves_to_stores_that_will_run_out() {
        // A: 50 on hand, up-to 20 → surplus 30. B: 2 on hand, needs 10 over lead time, up-to 18
        // → asks 16. C: 5 + 0 vs 8 over lead time, up-to 12 → asks 7; B has less cover
        // (0.2 vs 0.625) so it is served first. D is fine.
        let stores = vec![
            stock("A", 50.0, 0.0, 10.0, 20.0),
            stock("B", 2.0, 0.0, 10.0, 18.0),
            stock("C", 5.0, 0.0, 8.0, 12.0),
            stock("D", 15.0, 0.0, 10.0, 20.0),
        ];
        let transfers = transfer_suggestions(&stores, 1);
        assert_eq!(
            transfers,
            vec![
                Transfer {
                    from: "A".to_owned(),
                    to: "B".to_owned(),
                    quantity: 16
                },
                Transfer {
                    from: "A".to_owned(),
                    to: "C".to_owned(),
                    quantity: 7
                },
            ]
        );
        // After transfers: A 27 ≥ 20 → 0; B 18 → 0; C 12 → 0; D 15 → 5 → pack 6.
        let purchases = purchases_after_transfers(&stores, &transfers, 6);
        assert_eq!(
            purchases,
            vec![
                ("A".to_owned(), 0),
                ("B".to_owned(), 0),
                ("C".to_owned(), 0),
                ("D".to_owned(), 6)
            ]
        );
    }

    #[test]
    fn transfers_never_exceed_surplus_and_respect_minimum() {
        // Surplus 3 only; receiver needs 10 → moves 3. With a minimum of 5, moves nothing.
        let stores = vec![
            stock("A", 23.0, 0.0, 5.0, 20.0),
            stock("B", 0.0, 0.0, 5.0, 10.0),
        ];
        assert_eq!(
            transfer_suggestions(&stores, 1),
            vec![Transfer {
                from: "A".to_owned(),
                to: "B".to_owned(),
                quantity: 3
            }]
        );
        assert!(transfer_suggestions(&stores, 5).is_empty());
    }

    #[test]
    fn stock_on_order_counts_for_receivers_but_does_not_move() {
        // B's 6 on order cover its lead-time demand of 5: no transfer.
        let stores = vec![
            stock("A", 40.0, 0.0, 5.0, 20.0),
            stock("B", 0.0, 6.0, 5.0, 10.0),
        ];
        assert!(transfer_suggestions(&stores, 1).is_empty());
        // A's goods on order are not surplus: only on-hand moves.
        let stores = vec![
            stock("A", 10.0, 100.0, 5.0, 20.0),
            stock("B", 0.0, 0.0, 5.0, 10.0),
        ];
        assert!(transfer_suggestions(&stores, 1).is_empty());
    }

    #[test]
    fn transfers_are_deterministic_regardless_of_input_order() {
        let mut stores = vec![
            stock("A", 30.0, 0.0, 5.0, 20.0),
            stock("B", 30.0, 0.0, 5.0, 20.0),
            stock("C", 0.0, 0.0, 5.0, 12.0),
        ];
        let first = transfer_suggestions(&stores, 1);
        stores.reverse();
        assert_eq!(first, transfer_suggestions(&stores, 1));
        // Equal surplus: the lower id gives first (A → C 10, then B → C 2).
        assert_eq!(
            first[0],
            Transfer {
                from: "A".to_owned(),
                to: "C".to_owned(),
                quantity: 10
            }
        );
        assert_eq!(
            first[1],
            Transfer {
                from: "B".to_owned(),
                to: "C".to_owned(),
                quantity: 2
            }
        );
    }
}
