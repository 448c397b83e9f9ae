//! A synthetic retail panel with a fixed seed, for benchmarks and tests: no package in the
//! registries this project can reach ships a retail data set with thousands of store × sku
//! daily series (see the README), so this generates one.
//!
//! 10 stores × 6 categories × 50 skus = 3,000 daily series, 2023-01-02 .. 2024-12-01
//! (700 days). Demand of sku `k` in store `s` on day `t`:
//!
//! ```text
//! λ = base_k · size_s · weekday_{c,s}(t) · season_c(t) · holiday(t) · promo_k(t) · drift_k(t)
//! y ~ Poisson(λ · G),  G ~ Gamma(shape 2, mean 1)        (negative binomial, overdispersed)
//! ```
//!
//! * `base_k`: log-uniform over 0.02 … 25 units a day (chain-wide popularity), so about
//!   half the series are intermittent (ADI > 1.32);
//! * `size_s`: store size, 0.5 … 2;
//! * `weekday_{c,s}`: a weekly profile per category (food peaks on Saturday, household on
//!   Saturday/Sunday, …) with a store-specific tilt (office-district stores sell more on
//!   weekdays);
//! * `season_c`: yearly cycle per category (toys and gifts rise into December, garden
//!   peaks in May, drinks in July);
//! * `holiday`: Christmas week ×1.8 for gifts/food, December 25 and January 1 closed;
//! * `promo_k`: chain-wide promotions of 7 days, about 5 a year per sku, ×2.5, with a
//!   one-week dip ×0.8 after (not announced to the forecaster: they are noise to it);
//! * `drift_k`: a slow random walk on the log rate (sd 0.01 a day, mean-reverting).
//!
//! Series ids are `sNN/category/skuNNNN`, so a pooled model can group by store or by store
//! and category.

use chrono::NaiveDate;

/// Stores in the panel.
pub const STORES: usize = 10;
/// Categories and their names.
pub const CATEGORIES: [&str; 6] = ["food", "drinks", "household", "toys", "garden", "personal"];
/// Skus per category.
pub const SKUS_PER_CATEGORY: usize = 50;
/// Days of history.
pub const DAYS: usize = 700;

/// One generated series.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSeries {
    pub id: String,
    pub first_date: NaiveDate,
    pub history: Vec<f64>,
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Gamma(2, 1/2): mean 1, variance 1/2 (sum of two exponentials / 2).
    fn gamma2(&mut self) -> f64 {
        -(self.uniform().ln() + self.uniform().ln()) / 2.0
    }
    fn poisson(&mut self, mean: f64) -> f64 {
        if mean <= 0.0 {
            return 0.0;
        }
        if mean > 40.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0);
        }
        let limit = (-mean).exp();
        let mut product = self.uniform();
        let mut k = 0.0;
        while product > limit {
            product *= self.uniform();
            k += 1.0;
        }
        k
    }
}

/// First day of every series.
pub fn first_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2023, 1, 2).unwrap_or_default()
}

/// Weekly profile (Monday first) of a category.
fn category_week(category: usize) -> [f64; 7] {
    match category {
        0 => [0.8, 0.8, 0.85, 0.9, 1.15, 1.6, 0.9],
        1 => [0.7, 0.7, 0.8, 0.9, 1.3, 1.7, 0.9],
        2 => [0.8, 0.85, 0.85, 0.9, 1.0, 1.4, 1.2],
        3 => [0.7, 0.7, 0.7, 0.8, 1.0, 1.8, 1.3],
        4 => [0.6, 0.7, 0.7, 0.8, 1.0, 1.7, 1.5],
        _ => [1.0, 1.0, 1.0, 1.0, 1.05, 1.1, 0.85],
    }
}

/// Yearly factor of a category on day-of-year `doy` (0-based).
fn category_season(category: usize, doy: f64) -> f64 {
    let angle = |peak: f64| (std::f64::consts::TAU * (doy - peak) / 365.25).cos();
    match category {
        0 => 1.0 + 0.08 * angle(355.0),
        1 => 1.0 + 0.35 * angle(195.0),
        2 => 1.0 + 0.05 * angle(80.0),
        3 => {
            // Low all year, rising steeply into December.
            let december_ramp = ((doy - 305.0) / 50.0).clamp(0.0, 1.0);
            0.8 + 1.6 * december_ramp * december_ramp
        }
        4 => (1.0 + 0.7 * angle(135.0)).max(0.2),
        _ => 1.0,
    }
}

/// The panel, in id order.
pub fn retail_panel() -> Vec<SyntheticSeries> {
    let start = first_date();
    let mut setup = Rng(0x00BA_2AA2_2026);
    let sizes: Vec<f64> = (0..STORES)
        .map(|_| 0.5 * 4f64.powf(setup.uniform()))
        .collect();
    // Office stores (every third) sell relatively more on weekdays.
    let tilt: Vec<f64> = (0..STORES)
        .map(|s| if s % 3 == 0 { 0.25 } else { 0.0 })
        .collect();
    let skus = CATEGORIES.len() * SKUS_PER_CATEGORY;
    // Chain-wide sku properties: base rate, promotions, drift.
    let mut base = Vec::with_capacity(skus);
    let mut promo = Vec::with_capacity(skus);
    let mut drift = Vec::with_capacity(skus);
    for _ in 0..skus {
        base.push(0.02 * 1250f64.powf(setup.uniform()));
        let mut factor = vec![1.0; DAYS];
        let mut t = (setup.uniform() * 60.0) as usize;
        while t < DAYS {
            factor[t..(t + 7).min(DAYS)].fill(2.5);
            factor[(t + 7).min(DAYS)..(t + 14).min(DAYS)].fill(0.8);
            t += 40 + (setup.uniform() * 60.0) as usize;
        }
        promo.push(factor);
        let mut walk = vec![1.0; DAYS];
        let mut x: f64 = 0.0;
        for w in &mut walk {
            x = 0.995 * x + 0.01 * setup.normal();
            *w = x.exp();
        }
        drift.push(walk);
    }
    let mut panel = Vec::with_capacity(STORES * skus);
    for store in 0..STORES {
        for (category, name) in CATEGORIES.iter().enumerate() {
            let mut week = category_week(category);
            for (d, w) in week.iter_mut().enumerate() {
                *w *= if d < 5 {
                    1.0 + tilt[store]
                } else {
                    1.0 - tilt[store]
                };
            }
            for item in 0..SKUS_PER_CATEGORY {
                let k = category * SKUS_PER_CATEGORY + item;
                let mut rng = Rng((store as u64) << 32 ^ k as u64 ^ 0x5EED_2026);
                let history = (0..DAYS)
                    .map(|t| {
                        let date = start + chrono::Days::new(t as u64);
                        let doy = f64::from(chrono::Datelike::ordinal0(&date));
                        let (month, day) =
                            (chrono::Datelike::month(&date), chrono::Datelike::day(&date));
                        if (month == 12 && day == 25) || (month == 1 && day == 1) {
                            return 0.0;
                        }
                        let holiday = if month == 12 && (18..=24).contains(&day) && category != 4 {
                            1.8
                        } else {
                            1.0
                        };
                        let rate = base[k]
                            * sizes[store]
                            * week[t % 7]
                            * category_season(category, doy)
                            * holiday
                            * promo[k][t]
                            * drift[k][t];
                        let mixed = rate * rng.gamma2();
                        rng.poisson(mixed)
                    })
                    .collect();
                panel.push(SyntheticSeries {
                    id: format!("s{store:02}/{name}/sku{k:04}"),
                    first_date: start,
                    history,
                });
            }
        }
    }
    panel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_is_deterministic_and_has_an_intermittent_tail() {
        let panel = retail_panel();
        assert_eq!(panel.len(), STORES * CATEGORIES.len() * SKUS_PER_CATEGORY);
        assert_eq!(panel, retail_panel(), "fixed seed");
        assert!(panel.iter().all(|s| s.history.len() == DAYS));
        assert_eq!(panel[0].id, "s00/food/sku0000");
        let intermittent = panel
            .iter()
            .filter(|s| {
                let sales = s.history.iter().filter(|&&y| y > 0.0).count().max(1);
                DAYS as f64 / sales as f64 > 1.32
            })
            .count();
        assert!(
            intermittent > panel.len() / 3 && intermittent < panel.len() * 3 / 4,
            "{intermittent}"
        );
        // Saturday (t % 7 == 5, since day 0 is a Monday) sells more than Monday chain-wide.
        let weekday_total = |d: usize| -> f64 {
            panel
                .iter()
                .map(|s| s.history.iter().skip(d).step_by(7).sum::<f64>())
                .sum()
        };
        assert!(weekday_total(5) > 1.3 * weekday_total(0));
        // Closed on Christmas day 2023 (day 357).
        assert!(panel.iter().all(|s| s.history[357] == 0.0));
    }
}
