//! What reorder rules deliver: held-out demand replayed through the replenishment policy
//! of `reorder.rs`, beside a min/max rule of the Odoo kind.
//!
//! Per series the last `SIM_DAYS` = 112 days are replayed day by day (lost sales: demand
//! beyond the stock on hand is not served). Every `R` = 7 days (the review), the series is
//! forecast from the days before it (`select::forecast_series`, default config, horizon
//! L + R) and an order is placed, arriving `L` = 7 days later:
//!
//! * **normal**: `reorder::reorder_plan` — order up to `S = D_{L+R} + z·σ_{L+R}`, rounded up
//!   to the pack;
//! * **auto**: `reorder::reorder_plan_with(.., SafetyStock::Auto)` — intermittent series
//!   (ADI > 1.32) take their safety stock from the empirical (L+R)-day demand of their last
//!   364 days, the others keep the normal rule;
//! * **empirical**: `SafetyStock::Empirical` for every series;
//! * **cumul**: `reorder::reorder_plan_cumulative` — σ of the (L+R)-day total from the
//!   forecast's `cumulative_sd` (RMS of the backtest's cumulative errors, so correlated
//!   daily errors count); **cumul+emp**: the same, empirical for intermittent series;
//! * **min/max** (Odoo-style reordering rule): with `m` the mean daily demand of the last 28
//!   days, `min = f · m · (L + R)`, `max = min + m · R`; when the position (on hand + on
//!   order) is at or below `min`, order up to `max`. `f` sweeps 0.5 … 4, and min/max's stock
//!   at the service level the forecast rule achieved is interpolated from the sweep.
//!
//! Figures: **cycle service level** (share of replenishment cycles — the R days from one
//! arrival to the next — without a lost sale; cycles without demand count as served),
//! **fill rate** (served / demanded units) and **mean stock on hand** (units at the end of
//! each day, mean over series and days). Each series starts with its policy's order-up-to
//! level on hand and nothing on order; the first L days (before the first order arrives)
//! are not scored as a cycle.
//!
//! Protocol: the rules are first replayed on the *validation* window (the 112 days before
//! the test window, the test days cut off) and the one closest to all three targets there
//! is named; the test window (the last 112 days) then shows every rule. Sets shorter than
//! 424 days have no validation window.
//!
//! Run: `cargo bench -p bazaar-intelligence --bench service_level`.

use std::fs::File;
use std::path::Path;

use bazaar_intelligence::csv_io::read_daily_series;
use bazaar_intelligence::reorder::{
    reorder_plan, reorder_plan_cumulative, reorder_plan_with, round_up_to_pack, ReorderPolicy,
    SafetyStock,
};
use bazaar_intelligence::select::{forecast_series, SelectConfig};
use bazaar_intelligence::synthetic::retail_panel;
use rayon::prelude::*;

const SIM_DAYS: usize = 112;
const LEAD: usize = 7;
const REVIEW: usize = 7;
/// Fewest training days before the replay starts.
const MIN_TRAIN: usize = 200;
const MINMAX_FACTORS: [f64; 12] = [
    0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0,
];

/// One series prepared for the replay: its history and the forecast made at each review.
struct Prepared {
    history: Vec<f64>,
    /// Index of the first replayed day.
    start: usize,
    /// (mean, sd, cumulative sd) for days review..review + L + R, per review.
    forecasts: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)>,
}

#[derive(Clone, Copy)]
enum Rule {
    Forecast(SafetyStock),
    /// `reorder_plan_cumulative`: σ of the (L+R)-day total from the backtest's cumulative
    /// errors; with `true`, intermittent series use the empirical rule instead (as `Auto`).
    Cumulative(bool),
    MinMax(f64),
}

fn intermittent(h: &[f64]) -> bool {
    bazaar_intelligence::reorder::average_demand_interval(h) > 1.32
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    cycles: usize,
    served_cycles: usize,
    demand: f64,
    served: f64,
    stock_days: f64,
    days: usize,
}

impl Outcome {
    fn add(&mut self, o: &Outcome) {
        self.cycles += o.cycles;
        self.served_cycles += o.served_cycles;
        self.demand += o.demand;
        self.served += o.served;
        self.stock_days += o.stock_days;
        self.days += o.days;
    }
    fn csl(&self) -> f64 {
        self.served_cycles as f64 / self.cycles.max(1) as f64
    }
    fn fill(&self) -> f64 {
        if self.demand > 0.0 {
            self.served / self.demand
        } else {
            1.0
        }
    }
    fn stock(&self) -> f64 {
        self.stock_days / self.days.max(1) as f64
    }
}

/// The series with the replay window ending `offset` days before its end (offset 0: the
/// test window; `SIM_DAYS`: the validation window before it, the test days cut off).
fn prepare(history: &[f64], offset: usize) -> Option<Prepared> {
    if history.len() < SIM_DAYS + MIN_TRAIN + offset {
        return None;
    }
    let history = history[..history.len() - offset].to_vec();
    let start = history.len() - SIM_DAYS;
    if history[start..].iter().all(|&y| y <= 0.0) && history[..start].iter().all(|&y| y <= 0.0) {
        return None;
    }
    let cfg = SelectConfig::default();
    let forecasts = (0..SIM_DAYS)
        .step_by(REVIEW)
        .map(|r| {
            let f = forecast_series(&history[..start + r], LEAD + REVIEW, &cfg);
            (f.mean, f.sd, f.cumulative_sd)
        })
        .collect();
    Some(Prepared {
        history,
        start,
        forecasts,
    })
}

/// Order-up-to / trigger level of `rule` at review `r` (day `day` of the history) for
/// a position: returns the units to order.
fn order(
    p: &Prepared,
    rule: Rule,
    policy: &ReorderPolicy,
    r: usize,
    day: usize,
    position: f64,
) -> f64 {
    match rule {
        Rule::Forecast(method) => {
            let (mean, sd, _) = &p.forecasts[r];
            let plan =
                reorder_plan_with(mean, sd, &p.history[..day], position, 0.0, policy, method);
            plan.suggested_order as f64
        }
        Rule::Cumulative(auto) => {
            let (mean, sd, cumulative) = &p.forecasts[r];
            let history = &p.history[..day];
            if auto && intermittent(history) {
                let plan = reorder_plan_with(
                    mean,
                    sd,
                    history,
                    position,
                    0.0,
                    policy,
                    SafetyStock::Empirical,
                );
                return plan.suggested_order as f64;
            }
            reorder_plan_cumulative(mean, cumulative, position, 0.0, policy).suggested_order as f64
        }
        Rule::MinMax(f) => {
            let recent = &p.history[day.saturating_sub(28)..day];
            let m = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
            let min = f * m * (LEAD + REVIEW) as f64;
            let max = min + m * REVIEW as f64;
            if position <= min {
                round_up_to_pack(max - position, policy.pack_size) as f64
            } else {
                0.0
            }
        }
    }
}

fn initial_stock(p: &Prepared, rule: Rule, policy: &ReorderPolicy) -> f64 {
    match rule {
        Rule::Forecast(SafetyStock::Normal) => {
            let (mean, sd, _) = &p.forecasts[0];
            reorder_plan(mean, sd, 0.0, 0.0, policy).order_up_to.ceil()
        }
        Rule::Cumulative(auto) => {
            let (mean, sd, cumulative) = &p.forecasts[0];
            let history = &p.history[..p.start];
            if auto && intermittent(history) {
                reorder_plan_with(mean, sd, history, 0.0, 0.0, policy, SafetyStock::Empirical)
                    .order_up_to
                    .ceil()
            } else {
                reorder_plan_cumulative(mean, cumulative, 0.0, 0.0, policy)
                    .order_up_to
                    .ceil()
            }
        }
        Rule::Forecast(method) => {
            let (mean, sd, _) = &p.forecasts[0];
            reorder_plan_with(mean, sd, &p.history[..p.start], 0.0, 0.0, policy, method)
                .order_up_to
                .ceil()
        }
        Rule::MinMax(_) => order(p, rule, policy, 0, p.start, 0.0),
    }
}

fn replay(p: &Prepared, rule: Rule, policy: &ReorderPolicy) -> Outcome {
    let mut on_hand = initial_stock(p, rule, policy);
    let mut pipeline: Vec<(usize, f64)> = Vec::new();
    let mut out = Outcome::default();
    let cycles = (SIM_DAYS - LEAD) / REVIEW;
    let mut cycle_short = vec![false; cycles];
    for t in 0..SIM_DAYS {
        let arrived: f64 = pipeline.iter().filter(|o| o.0 == t).map(|o| o.1).sum();
        pipeline.retain(|o| o.0 != t);
        on_hand += arrived;
        if t % REVIEW == 0 {
            let on_order: f64 = pipeline.iter().map(|o| o.1).sum();
            let q = order(p, rule, policy, t / REVIEW, p.start + t, on_hand + on_order);
            if q > 0.0 {
                pipeline.push((t + LEAD, q));
            }
        }
        let demand = p.history[p.start + t].max(0.0);
        let served = demand.min(on_hand);
        on_hand -= served;
        out.demand += demand;
        out.served += served;
        out.stock_days += on_hand;
        out.days += 1;
        if t >= LEAD && (t - LEAD) / REVIEW < cycles && served < demand {
            cycle_short[(t - LEAD) / REVIEW] = true;
        }
    }
    out.cycles = cycles;
    out.served_cycles = cycle_short.iter().filter(|s| !**s).count();
    out
}

fn total(prepared: &[Prepared], rule: Rule, policy: &ReorderPolicy) -> Outcome {
    prepared
        .par_iter()
        .map(|p| replay(p, rule, policy))
        .reduce(Outcome::default, |mut a, b| {
            a.add(&b);
            a
        })
}

/// Min/max's mean stock at cycle service level `csl`, interpolated along its sweep
/// (None if the sweep does not reach it).
fn minmax_stock_at(sweep: &[Outcome], csl: f64) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = sweep.iter().map(|o| (o.csl(), o.stock())).collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points.windows(2).find_map(|w| {
        let ((c0, s0), (c1, s1)) = (w[0], w[1]);
        (c0 <= csl && csl <= c1).then(|| {
            if c1 > c0 {
                s0 + (s1 - s0) * (csl - c0) / (c1 - c0)
            } else {
                s0.min(s1)
            }
        })
    })
}

const RULES: [(&str, Rule); 5] = [
    ("normal", Rule::Forecast(SafetyStock::Normal)),
    ("auto", Rule::Forecast(SafetyStock::Auto)),
    ("empirical", Rule::Forecast(SafetyStock::Empirical)),
    ("cumul", Rule::Cumulative(false)),
    ("cumul+emp", Rule::Cumulative(true)),
];
const TARGETS: [f64; 3] = [0.90, 0.95, 0.99];

fn policy(level: f64, pack: u32) -> ReorderPolicy {
    ReorderPolicy {
        lead_time_days: LEAD as u32,
        review_period_days: REVIEW as u32,
        service_level: level,
        pack_size: pack,
    }
}

/// Validation: the rules' achieved CSL on the 112 days before the test window; returns
/// each rule's worst distance to the targets (the choice is the smallest).
fn validate(histories: &[Vec<f64>], pack: u32) -> Vec<f64> {
    let prepared: Vec<Prepared> = histories
        .par_iter()
        .filter_map(|h| prepare(h, SIM_DAYS))
        .collect();
    if prepared.is_empty() {
        println!(
            "validation: no series is long enough ({} days needed for a validation window)",
            2 * SIM_DAYS + MIN_TRAIN
        );
        return vec![f64::NAN; RULES.len()];
    }
    RULES
        .iter()
        .map(|(label, rule)| {
            let csl: Vec<f64> = TARGETS
                .iter()
                .map(|&t| total(&prepared, *rule, &policy(t, pack)).csl())
                .collect();
            let worst = TARGETS
                .iter()
                .zip(&csl)
                .map(|(t, c)| (c - t).abs())
                .fold(0.0, f64::max);
            println!(
                "validation {label:<10} CSL at 90/95/99%: {:.1}% {:.1}% {:.1}%  worst distance {:.1} points",
                100.0 * csl[0],
                100.0 * csl[1],
                100.0 * csl[2],
                100.0 * worst
            );
            worst
        })
        .collect()
}

fn report(name: &str, histories: Vec<Vec<f64>>, pack: u32) {
    let prepared: Vec<Prepared> = histories.par_iter().filter_map(|h| prepare(h, 0)).collect();
    let n_int = prepared
        .iter()
        .filter(|p| intermittent(&p.history[..p.start]))
        .count();
    println!();
    println!(
        "== {name}: {} series ({n_int} intermittent), {SIM_DAYS} days replayed, L = {LEAD}, R = {REVIEW}, pack {pack} ==",
        prepared.len()
    );
    let distances = validate(&histories, pack);
    let chosen = distances
        .iter()
        .enumerate()
        .filter(|d| d.1.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map_or("none (no validation window)", |(i, _)| RULES[i].0);
    println!("chosen on validation (closest to all three targets): {chosen}");
    let sweep: Vec<Outcome> = MINMAX_FACTORS
        .iter()
        .map(|&f| total(&prepared, Rule::MinMax(f), &policy(0.95, pack)))
        .collect();
    println!("test window (last {SIM_DAYS} days):");
    println!(
        "{:<8} {:<10} {:>8} {:>8} {:>10} {:>16} {:>10}",
        "target", "rule", "CSL", "fill", "mean stock", "min/max same CSL", "stock vs"
    );
    for target in TARGETS {
        for (label, rule) in RULES {
            let o = total(&prepared, rule, &policy(target, pack));
            let same = minmax_stock_at(&sweep, o.csl());
            println!(
                "{:<8} {:<10} {:>7.1}% {:>7.1}% {:>10.2} {:>16} {:>10}",
                format!("{:.0}%", 100.0 * target),
                label,
                100.0 * o.csl(),
                100.0 * o.fill(),
                o.stock(),
                same.map_or("out of range".to_owned(), |s| format!("{s:.2}")),
                same.map_or("-".to_owned(), |s| format!(
                    "{:+.1}%",
                    100.0 * (o.stock() / s - 1.0)
                ))
            );
        }
    }
    println!("min/max sweep (min = f · mean of last 28 days · (L+R), max = min + mean · R):");
    for (f, o) in MINMAX_FACTORS.iter().zip(&sweep) {
        println!(
            "  f {:<5} CSL {:>5.1}%  fill {:>5.1}%  mean stock {:>8.2}",
            f,
            100.0 * o.csl(),
            100.0 * o.fill(),
            o.stock()
        );
    }
}

fn load(name: &str) -> Vec<Vec<f64>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name);
    match File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|f| read_daily_series(f).map_err(|e| e.to_string()))
    {
        Ok(series) => series.into_iter().map(|s| s.history).collect(),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Vec::new()
        }
    }
}

fn main() {
    let synthetic: Vec<Vec<f64>> = retail_panel().into_iter().map(|s| s.history).collect();
    report("synthetic retail panel", synthetic.clone(), 1);
    report("bike sales", load("bike_sales_daily.csv"), 1);
    report("pizza sales", load("pizza_daily.csv"), 1);
    report("expedia events", load("expedia_daily.csv"), 1);
    report("synthetic retail panel", synthetic, 6);
}
