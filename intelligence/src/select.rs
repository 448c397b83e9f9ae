//! Per-series model selection by rolling-origin backtest, with prediction intervals.
//!
//! # Method
//! 1. The history is cleaned (non-finite and negative values become 0) and leading zeros
//!    (days before the item's first sale) are dropped. No sale at all → [`ModelKind::Zero`].
//! 2. Backtest: `b = min(horizon, max_backtest_horizon, n/2)` days are forecast from each of
//!    `backtest_origins` origins `n−b, n−b−step, …` (origins leaving fewer than 7 training
//!    days are skipped). Each candidate's parameters are chosen once on the data before the
//!    earliest origin, then its filter runs through the series once, forecasting at every
//!    origin — so the whole backtest costs one grid pass plus one filter pass per model.
//! 3. Intermittent series (average inter-demand interval ADI = days / days with a sale
//!    above [`INTERMITTENT_ADI`] = 1.32, Syntetos–Boylan) are forecast by the per-day
//!    *median of every candidate* (`intermittent_combination`): on such series the models
//!    are near-equal on average, which one wins a series' backtest is mostly luck, and the
//!    median of all of them beat every single model on the validation windows.
//!    Other series: the candidate with the smallest mean squared backtest error wins
//!    (equivalently the smallest RMSSE, since the scale is common). With `combine_top = k ≥
//!    2`, the combination of the k best candidates ([`Combination`]: mean, per-day median —
//!    the default — or inverse-MSE weights) also competes, or always wins with
//!    `always_combine`. Every single model (including ADIDA/IMAPA and the intermittent
//!    models) competes on every series, with 20 origins. The defaults were chosen on
//!    validation windows only (see `benches/accuracy.rs`).
//!    `rmsse = sqrt(MSE / scale)`, scale = mean squared one-step naive difference of the
//!    in-sample before the last origin (the M5 measure).
//! 4. The winner forecasts from the end of that same filter pass (same parameters, state
//!    after the last day), so selection costs one grid pass and one filter pass per model.
//! 5. With a [`PooledContext`] ([`forecast_series_pooled`]; `forecast_series` has none) the
//!    pooled model of [`crate::pooled`] is backtested on the same origins, and by default
//!    ([`PooledUse::Blend`]) the forecast is whichever of the per-series choice, the pooled
//!    model and their equal-weight mean has the smallest backtest error (`model` =
//!    `pooled` / `pooled_blend` for the last two). Chosen on validation windows only (see
//!    `benches/accuracy.rs` and the README).
//!
//! # Prediction intervals
//! Normal approximation: `mean ± z·sd(h)`, `z = Φ⁻¹((1+level)/2)`, with
//! `sd(h) = c · σ₁ · growth(h)`, σ₁ the in-sample one-step residual sd and `growth` the
//! model's h-step variance growth (see [`crate::models`]). The calibration factor
//! `c = sqrt(backtest SSE / Σ model-implied variances)` makes the implied variance match the
//! out-of-sample errors of the backtest, in both directions (`narrow_intervals`, default; with
//! it off, `c ≥ 1` only widens — on the validation windows that over-covered: 89.9% for a
//! nominal 80% on wikipedia, against 82.5% two-sided). A perfect backtest (`c = 0`) keeps
//! the model's sd. Demand cannot be negative, so `mean` and `lo` are clamped at 0. For
//! intermittent demand the central interval is mostly `[0, below one unit]`: it covers the
//! many zero days and few sale days, as a central interval of such a distribution should.
//!
//! # Invariants
//! `mean`, `lo`, `hi`, `sd` all have `horizon` elements; every number is finite;
//! `0 ≤ lo ≤ mean ≤ hi`; the function never panics.

use serde::{Deserialize, Serialize};

use crate::models::{
    Adida, Croston, DampedHoltWinters, Fitted, HoltWinters, Imapa, Model, ModelKind, Sba,
    SeasonalNaive, Ses, Tsb, WEEK,
};
use crate::pooled::{GroupProfile, ItemLevel};
use crate::stats::{naive_mse_scale, two_sided_z};

/// ADI cut-off between smooth/erratic and intermittent/lumpy demand (Syntetos, Boylan &
/// Croston 2005).
pub const INTERMITTENT_ADI: f64 = 1.32;

/// Fewest training days before a backtest origin.
const MIN_TRAINING_DAYS: usize = WEEK;

/// How the best candidates of the backtest are combined into one forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combination {
    /// Equal-weight mean.
    Mean,
    /// Per-day median (interval sd: equal-weight mean of the members').
    Median,
    /// Mean weighted by 1 / backtest MSE.
    InverseMse,
}

/// How [`forecast_series_pooled`] uses the pooled model ([`crate::pooled`]) when it is
/// given a [`PooledContext`] (without one, or with `Off`, the forecast is the per-series one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PooledUse {
    /// Ignore the pooled model.
    Off,
    /// The pooled model is one more candidate: it competes in selection and joins the
    /// intermittent median.
    Candidate,
    /// Always the pooled model (still backtested for its RMSSE and interval calibration).
    Only,
    /// Of the per-series choice, the pooled model and their equal-weight mean, the one with
    /// the smallest backtest error.
    Blend,
    /// Always the equal-weight mean of the per-series choice and the pooled model.
    Mean,
}

/// The pooled profile of a series' group and where the series sits in time.
#[derive(Debug, Clone, Copy)]
pub struct PooledContext<'a> {
    pub profile: &'a GroupProfile,
    /// Absolute day ([`crate::pooled::day_number`]) of `history[0]`.
    pub start_day: i64,
    /// The series' item across stores: with it (fitted from ≥ 2 stores), the pooled model's
    /// level is top-down (the series' share of the item over the last 364 days times the
    /// item's chain-wide level) instead of its own.
    pub item: Option<&'a ItemLevel>,
}

/// How [`forecast_series`] selects and scores models. Deserializing fills missing fields
/// from [`SelectConfig::default`], so a stored configuration keeps working when fields are
/// added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectConfig {
    /// Central coverage of the prediction interval, e.g. 0.8 for an 80% interval.
    pub interval_level: f64,
    /// Number of rolling backtest origins.
    pub backtest_origins: usize,
    /// Days between consecutive origins.
    pub origin_step: usize,
    /// Longest horizon scored in the backtest.
    pub max_backtest_horizon: usize,
    /// Models that compete (order breaks ties: earlier wins).
    pub candidates: Vec<ModelKind>,
    /// If ≥ 2, the `combination` of the best `combine_top` candidates competes too (on series
    /// that the intermittent rule does not take).
    pub combine_top: usize,
    /// How the `combine_top` best candidates are combined.
    pub combination: Combination,
    /// Use the combination even when the best single model backtests better (forecast
    /// combinations are more robust out of sample than the backtest winner).
    pub always_combine: bool,
    /// Parameters are searched on at most this many of the most recent training days (keeps
    /// the grid search O(1) per series for long histories; 0 = all).
    pub param_search_days: usize,
    /// Let the backtest calibration narrow the intervals as well as widen them (the sd then
    /// matches the backtest error exactly); `false` only widens.
    pub narrow_intervals: bool,
    /// Syntetos–Boylan demand classification: series whose average inter-demand interval
    /// (ADI) exceeds this compete only among the intermittent-demand models (SES, Croston,
    /// SBA, TSB); the others only among the continuous ones (seasonal naive, SES,
    /// Holt-Winters). `None` lets every candidate compete on every series. When set, it is
    /// also the cut-off of `intermittent_combination`.
    pub intermittent_adi: Option<f64>,
    /// Intermittent series (ADI above `intermittent_adi`, or [`INTERMITTENT_ADI`] when that
    /// is `None`) are forecast by this combination of every candidate that could be
    /// backtested on them, instead of by selection. `None`: selection for every series.
    pub intermittent_combination: Option<Combination>,
    /// How the pooled model is used when a [`PooledContext`] is given.
    pub pooled: PooledUse,
    /// Exponent β of the pooled yearly factor `Y^β` (0: weekday profile only).
    pub pooled_yearly: f64,
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            interval_level: 0.8,
            backtest_origins: 20,
            origin_step: WEEK,
            max_backtest_horizon: 28,
            candidates: ModelKind::SINGLE_MODELS.to_vec(),
            combine_top: 3,
            combination: Combination::Median,
            always_combine: false,
            intermittent_adi: None,
            intermittent_combination: Some(Combination::Median),
            param_search_days: 364,
            narrow_intervals: true,
            pooled: PooledUse::Blend,
            pooled_yearly: 1.0,
        }
    }
}

impl SelectConfig {
    /// A configuration that always uses one model (still backtested for its RMSSE).
    pub fn single(model: ModelKind) -> Self {
        SelectConfig {
            candidates: vec![model],
            combine_top: 0,
            always_combine: false,
            intermittent_adi: None,
            intermittent_combination: None,
            pooled: PooledUse::Off,
            ..SelectConfig::default()
        }
    }

    /// Only the pooled model (with a [`PooledContext`]; without one, like `single(Ses)`).
    pub fn pooled_only() -> Self {
        SelectConfig {
            pooled: PooledUse::Only,
            ..SelectConfig::single(ModelKind::Ses)
        }
    }
}

/// A forecast of daily demand with its prediction interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub model: ModelKind,
    /// Daily mean demand for days 1..=horizon after the history.
    pub mean: Vec<f64>,
    /// Lower interval bound per day (≥ 0).
    pub lo: Vec<f64>,
    /// Upper interval bound per day.
    pub hi: Vec<f64>,
    /// Standard deviation of the forecast error per day (used by [`crate::reorder`]).
    pub sd: Vec<f64>,
    /// Coverage of `lo..=hi`.
    pub level: f64,
    /// Backtest RMSSE of the chosen model; when `backtest_days` is 0 it is the in-sample
    /// one-step RMSSE instead (0 when even that is undefined: empty or constant history).
    pub rmsse: f64,
    /// Held-out days scored per origin (0: history too short to backtest).
    pub backtest_days: usize,
    /// Standard deviation of the error of the *total* over days 1..=h (index h − 1): for
    /// h up to the backtest horizon the root mean square of the backtest's cumulative
    /// errors over its origins (so the correlation of daily errors — a level that is off
    /// stays off — is in it); beyond it, and without a backtest, the daily variances are
    /// added as if independent. Used by [`crate::reorder::reorder_plan_cumulative`].
    #[serde(default)]
    pub cumulative_sd: Vec<f64>,
}

/// `cumulative_sd` of [`Forecast`]: `empirical[h]` (RMS cumulative backtest error) where
/// given, then daily variances added on.
fn cumulative_sd(sd: &[f64], empirical: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(sd.len());
    let mut variance = 0.0;
    for (h, s) in sd.iter().enumerate() {
        variance = match empirical.get(h) {
            Some(e) => e * e,
            None => variance + s * s,
        };
        out.push(finite_or_zero(variance.sqrt()));
    }
    out
}

impl Forecast {
    fn zero(horizon: usize, level: f64) -> Self {
        Forecast {
            model: ModelKind::Zero,
            mean: vec![0.0; horizon],
            lo: vec![0.0; horizon],
            hi: vec![0.0; horizon],
            sd: vec![0.0; horizon],
            level,
            rmsse: 0.0,
            backtest_days: 0,
            cumulative_sd: vec![0.0; horizon],
        }
    }
}

/// Forecasts `horizon` days of `history` (daily demand, oldest first) with the model (or
/// combination) that backtests best on this series; intermittent series get the per-day
/// combination of every candidate instead. See the module docs for the method.
pub fn forecast_series(history: &[f64], horizon: usize, cfg: &SelectConfig) -> Forecast {
    forecast_series_pooled(history, horizon, cfg, None)
}

/// [`forecast_series`] with the pooled model of the series' group available
/// ([`SelectConfig::pooled`] says how it is used; `None` is exactly [`forecast_series`]).
pub fn forecast_series_pooled(
    history: &[f64],
    horizon: usize,
    cfg: &SelectConfig,
    pooled: Option<&PooledContext>,
) -> Forecast {
    let level = interval_level(cfg);
    let pooled = pooled.filter(|_| cfg.pooled != PooledUse::Off);
    let run = match run_backtests(history, horizon, cfg, pooled) {
        Ok(run) => run,
        Err(Unscored::NoSale) => return Forecast::zero(horizon, level),
        Err(Unscored::Short(y)) => return short_history_forecast(&y, horizon, level),
    };
    let scored = &run.scored;

    let b = run.b;
    let span = horizon.max(b);
    let cutoff = cfg.intermittent_adi.unwrap_or(INTERMITTENT_ADI);
    let choice = match cfg.intermittent_combination {
        // Intermittent demand: the candidates are near-equal on average and which one wins
        // a series' backtest is mostly luck, so the robust per-day combination of all of
        // them beats selecting one (chosen on validation windows only, see
        // benches/accuracy.rs).
        Some(method) if run.adi > cutoff && scored.len() >= 2 => {
            Choice::combined(method, (0..scored.len()).collect(), scored, &run.actuals)
        }
        // Otherwise the series' own choice: its best single model, or (k ≥ 2) the
        // combination of its k best when that backtests better.
        _ => {
            let best = Choice::single(0, scored[0].sse);
            let k = cfg.combine_top.min(scored.len());
            if k >= 2 {
                let combo =
                    Choice::combined(cfg.combination, (0..k).collect(), scored, &run.actuals);
                if cfg.always_combine || combo.sse < best.sse {
                    combo
                } else {
                    best
                }
            } else {
                best
            }
        }
    };
    let local = choice.materialize(scored, span);

    let chosen = match &run.pooled {
        None => local,
        Some(pool) => {
            let pool = Candidate {
                model: ModelKind::Pooled,
                sse: pool.sse,
                points: pool.forecasts.clone(),
                mean: pool.mean.clone(),
                base_sd: pool.base_sd.clone(),
            };
            match cfg.pooled {
                PooledUse::Off | PooledUse::Candidate => local,
                PooledUse::Only => pool,
                PooledUse::Mean => Candidate::mean_of(&local, &pool, &run.actuals),
                PooledUse::Blend => {
                    let blend = Candidate::mean_of(&local, &pool, &run.actuals);
                    [local, pool, blend]
                        .into_iter()
                        .min_by(|a, b| a.sse.total_cmp(&b.sse))
                        .unwrap_or_else(|| unreachable!("three candidates"))
                }
            }
        }
    };

    let origins = run.actuals.len() / b;
    let scored_points = run.actuals.len() as f64;
    let base_sd = chosen.base_sd;
    let implied: f64 = origins as f64 * base_sd[..b].iter().map(|s| s * s).sum::<f64>();
    let sd: Vec<f64> = if implied > 0.0 {
        let ratio = (chosen.sse / implied).sqrt();
        // A perfect backtest (ratio 0) says nothing about the spread: keep the model's sd.
        let calibration = if cfg.narrow_intervals && ratio > 0.0 {
            ratio
        } else {
            ratio.max(1.0)
        };
        base_sd.iter().map(|s| s * calibration).collect()
    } else {
        vec![(chosen.sse / scored_points).sqrt(); span]
    };

    let rmsse = finite_or_zero((chosen.sse / scored_points / run.scale).sqrt());
    // RMS over origins of the backtest's cumulative errors, per horizon.
    let mut cumulative = vec![0.0; b];
    for r in 0..origins {
        let mut total = 0.0;
        for (h, c) in cumulative.iter_mut().enumerate() {
            let i = r * b + h;
            total += run.actuals[i] - chosen.points[i];
            *c += total * total;
        }
    }
    for c in &mut cumulative {
        *c = (*c / origins.max(1) as f64).sqrt();
    }
    let mut forecast = assemble(chosen.model, chosen.mean, sd, horizon, level, rmsse, b);
    forecast.cumulative_sd = cumulative_sd(&forecast.sd, &cumulative);
    forecast
}

/// A forecast with its backtest: what the final choice is made among.
struct Candidate {
    model: ModelKind,
    sse: f64,
    /// Backtest forecasts aligned with [`Run::actuals`].
    points: Vec<f64>,
    mean: Vec<f64>,
    base_sd: Vec<f64>,
}

impl Candidate {
    /// The equal-weight mean of two candidates, scored on `actuals`.
    fn mean_of(a: &Candidate, b: &Candidate, actuals: &[f64]) -> Candidate {
        let avg = |x: &[f64], y: &[f64]| -> Vec<f64> {
            x.iter().zip(y).map(|(p, q)| 0.5 * (p + q)).collect()
        };
        let points = avg(&a.points, &b.points);
        let sse = points
            .iter()
            .zip(actuals)
            .map(|(f, y)| (y - f) * (y - f))
            .sum();
        Candidate {
            model: ModelKind::PooledBlend,
            sse,
            points,
            mean: avg(&a.mean, &b.mean),
            base_sd: avg(&a.base_sd, &b.base_sd),
        }
    }
}

/// A forecast assembled from backtested candidates: one model, or a combination.
struct Choice {
    /// (index into the scored candidates, weight).
    members: Vec<(usize, f64)>,
    method: Combination,
    /// Backtest SSE of this forecast.
    sse: f64,
    /// Backtest forecasts of a combination (aligned with [`Run::actuals`]); empty for a
    /// single model (its own `forecasts` are used).
    points: Vec<f64>,
}

impl Choice {
    fn single(index: usize, sse: f64) -> Self {
        Choice {
            members: vec![(index, 1.0)],
            method: Combination::Mean,
            sse,
            points: Vec::new(),
        }
    }

    /// The combination of `scored[i]` for `i` in `indices`, with its backtest SSE.
    fn combined(
        method: Combination,
        indices: Vec<usize>,
        scored: &[Backtest],
        actuals: &[f64],
    ) -> Self {
        let sses: Vec<f64> = indices.iter().map(|&i| scored[i].sse).collect();
        let weights = combination_weights(method, &sses);
        let mut point = vec![0.0; indices.len()];
        let points: Vec<f64> = (0..actuals.len())
            .map(|t| {
                for (p, &i) in point.iter_mut().zip(&indices) {
                    *p = scored[i].forecasts[t];
                }
                combine(method, &weights, &mut point)
            })
            .collect();
        let sse = actuals
            .iter()
            .zip(&points)
            .map(|(actual, f)| (actual - f) * (actual - f))
            .sum();
        Choice {
            members: indices.into_iter().zip(weights).collect(),
            method,
            sse,
            points,
        }
    }
}

impl Choice {
    /// The choice's backtest forecasts (`points` of them), final mean and base sd.
    fn materialize(self, scored: &[Backtest], span: usize) -> Candidate {
        if self.members.len() == 1 {
            let only = &scored[self.members[0].0];
            return Candidate {
                model: only.kind,
                sse: self.sse,
                points: only.forecasts.clone(),
                mean: only.mean.clone(),
                base_sd: only.base_sd.clone(),
            };
        }
        let weights: Vec<f64> = self.members.iter().map(|m| m.1).collect();
        let mut point = vec![0.0; self.members.len()];
        let mut at = |get: &dyn Fn(&Backtest) -> f64| {
            for (p, m) in point.iter_mut().zip(&self.members) {
                *p = get(&scored[m.0]);
            }
            combine(self.method, &weights, &mut point)
        };
        let mean = (0..span).map(|h| at(&|s| s.mean[h])).collect();
        let base_sd = (0..span)
            .map(|h| {
                self.members
                    .iter()
                    .map(|&(i, w)| w * scored[i].base_sd[h])
                    .sum()
            })
            .collect();
        Candidate {
            model: ModelKind::Combination,
            sse: self.sse,
            points: self.points,
            mean,
            base_sd,
        }
    }
}

/// Why a series has no backtest.
enum Unscored {
    /// No sale at all: the forecast is zero.
    NoSale,
    /// Too short to backtest; the cleaned history from the first sale.
    Short(Vec<f64>),
}

/// Every candidate backtested on one series.
struct Run {
    /// Candidates sorted by backtest SSE, best first (stable: ties keep the configured order).
    scored: Vec<Backtest>,
    /// The held-out actuals, origin-major (`actuals[r·b + h]`), aligned with
    /// [`Backtest::forecasts`].
    actuals: Vec<f64>,
    /// Days scored per origin.
    b: usize,
    /// RMSSE scale of the series.
    scale: f64,
    /// Average inter-demand interval: days from the first sale per day with a sale.
    adi: f64,
    /// The pooled model's backtest, when it is used apart from the candidates.
    pooled: Option<Backtest>,
}

fn interval_level(cfg: &SelectConfig) -> f64 {
    if cfg.interval_level.is_finite() {
        cfg.interval_level.clamp(0.0, 0.999_999)
    } else {
        0.8
    }
}

/// Cleans the history (steps 1–2 of the module docs) and backtests every candidate.
fn run_backtests(
    history: &[f64],
    horizon: usize,
    cfg: &SelectConfig,
    pooled: Option<&PooledContext>,
) -> Result<Run, Unscored> {
    let cleaned: Vec<f64> = history
        .iter()
        .map(|&y| if y.is_finite() && y > 0.0 { y } else { 0.0 })
        .collect();
    let Some(first_sale) = cleaned.iter().position(|&y| y > 0.0) else {
        return Err(Unscored::NoSale);
    };
    let y = &cleaned[first_sale..];
    let n = y.len();

    let b = horizon
        .max(1)
        .min(cfg.max_backtest_horizon.max(1))
        .min(n / 2);
    let step = cfg.origin_step.max(1);
    let mut origins: Vec<usize> = (0..cfg.backtest_origins)
        .filter_map(|k| n.checked_sub(b + k * step))
        .filter(|&o| o >= MIN_TRAINING_DAYS)
        .collect();
    origins.reverse();
    if b == 0 || origins.is_empty() {
        return Err(Unscored::Short(y.to_vec()));
    }
    let earliest = origins[0];
    let scale = rmsse_scale(&y[..n - b]);

    let demand_class = cfg.intermittent_adi.map(|cutoff| {
        let demand_days = y.iter().filter(|&&v| v > 0.0).count().max(1);
        n as f64 / demand_days as f64 > cutoff
    });
    let mut scored: Vec<Backtest> = cfg
        .candidates
        .iter()
        .filter(|kind| min_history(**kind).is_some_and(|m| m <= earliest))
        .filter(|kind| demand_class.is_none_or(|intermittent| suits(**kind, intermittent)))
        .filter_map(|&kind| {
            backtest_kind(kind, y, &origins, b, horizon.max(b), cfg.param_search_days)
        })
        .collect();
    if scored.is_empty() {
        return Err(Unscored::Short(y.to_vec()));
    }
    let mut pooled_run = pooled.and_then(|ctx| {
        let day0 = ctx.start_day + first_sale as i64;
        backtest_pooled(
            y,
            day0,
            ctx.profile,
            ctx.item,
            cfg.pooled_yearly,
            &origins,
            b,
            horizon.max(b),
            cfg.param_search_days,
        )
    });
    if cfg.pooled == PooledUse::Candidate {
        scored.extend(pooled_run.take());
    }
    // Stable sort: ties keep the configured candidate order.
    scored.sort_by(|a, b| a.sse.total_cmp(&b.sse));
    let actuals = origins
        .iter()
        .flat_map(|&o| y[o..o + b].iter().copied())
        .collect();
    let demand_days = y.iter().filter(|&&v| v > 0.0).count().max(1);
    Ok(Run {
        scored,
        actuals,
        b,
        scale,
        adi: n as f64 / demand_days as f64,
        pooled: pooled_run,
    })
}

/// Weights of candidates with backtest SSEs `sses` in a combination; they sum to 1.
/// For [`Combination::Median`] they weight only the interval sd.
fn combination_weights(method: Combination, sses: &[f64]) -> Vec<f64> {
    let raw: Vec<f64> = match method {
        Combination::Mean | Combination::Median => vec![1.0; sses.len()],
        Combination::InverseMse => {
            let floor = sses
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
                .max(1e-12);
            sses.iter().map(|s| 1.0 / s.max(floor)).collect()
        }
    };
    let total: f64 = raw.iter().sum();
    raw.iter().map(|w| w / total).collect()
}

/// One combined point forecast from the members' `point` forecasts (reordered in place).
fn combine(method: Combination, weights: &[f64], point: &mut [f64]) -> f64 {
    match method {
        Combination::Mean | Combination::InverseMse => {
            point.iter().zip(weights).map(|(p, w)| p * w).sum()
        }
        Combination::Median => {
            point.sort_unstable_by(f64::total_cmp);
            let n = point.len();
            if n % 2 == 1 {
                point[n / 2]
            } else {
                (point[n / 2 - 1] + point[n / 2]) / 2.0
            }
        }
    }
}

/// Whether a model belongs to the candidate pool of intermittent (or of continuous) demand.
fn suits(kind: ModelKind, intermittent: bool) -> bool {
    match kind {
        ModelKind::Ses => true,
        ModelKind::Croston
        | ModelKind::Sba
        | ModelKind::Tsb
        | ModelKind::Adida
        | ModelKind::Imapa => intermittent,
        ModelKind::SeasonalNaive | ModelKind::HoltWinters | ModelKind::DampedHoltWinters => {
            !intermittent
        }
        ModelKind::Zero | ModelKind::Combination | ModelKind::Pooled | ModelKind::PooledBlend => {
            false
        }
    }
}

/// Smallest history (from the first sale) a model kind needs, `None` if not a single model.
fn min_history(kind: ModelKind) -> Option<usize> {
    Some(match kind {
        ModelKind::SeasonalNaive => SeasonalNaive::MIN_HISTORY,
        ModelKind::Ses => Ses::MIN_HISTORY,
        ModelKind::HoltWinters => HoltWinters::MIN_HISTORY,
        ModelKind::DampedHoltWinters => DampedHoltWinters::MIN_HISTORY,
        ModelKind::Croston => Croston::MIN_HISTORY,
        ModelKind::Sba => Sba::MIN_HISTORY,
        ModelKind::Tsb => Tsb::MIN_HISTORY,
        ModelKind::Adida => Adida::MIN_HISTORY,
        ModelKind::Imapa => Imapa::MIN_HISTORY,
        ModelKind::Zero | ModelKind::Combination | ModelKind::Pooled | ModelKind::PooledBlend => {
            return None
        }
    })
}

/// The scale of RMSSE; falls back to the mean square of the data (then 1) when the
/// naive differences vanish, so the figure stays finite.
fn rmsse_scale(in_sample: &[f64]) -> f64 {
    naive_mse_scale(in_sample).unwrap_or_else(|| {
        let mean_square =
            in_sample.iter().map(|y| y * y).sum::<f64>() / in_sample.len().max(1) as f64;
        if mean_square > 0.0 && mean_square.is_finite() {
            mean_square
        } else {
            1.0
        }
    })
}

struct Backtest {
    kind: ModelKind,
    sse: f64,
    /// Clamped forecasts, origin-major: `forecasts[r·b + h]`.
    forecasts: Vec<f64>,
    /// Final forecast (clamped) for `span` days after the history.
    mean: Vec<f64>,
    /// Model-implied error sd per day of `mean` (before calibration).
    base_sd: Vec<f64>,
}

fn backtest_kind(
    kind: ModelKind,
    y: &[f64],
    origins: &[usize],
    b: usize,
    span: usize,
    search_days: usize,
) -> Option<Backtest> {
    let run = match kind {
        ModelKind::SeasonalNaive => backtest::<SeasonalNaive>(y, origins, b, span, search_days),
        ModelKind::Ses => backtest::<Ses>(y, origins, b, span, search_days),
        ModelKind::HoltWinters => backtest::<HoltWinters>(y, origins, b, span, search_days),
        ModelKind::DampedHoltWinters => {
            backtest::<DampedHoltWinters>(y, origins, b, span, search_days)
        }
        ModelKind::Croston => backtest::<Croston>(y, origins, b, span, search_days),
        ModelKind::Sba => backtest::<Sba>(y, origins, b, span, search_days),
        ModelKind::Tsb => backtest::<Tsb>(y, origins, b, span, search_days),
        ModelKind::Adida => backtest::<Adida>(y, origins, b, span, search_days),
        ModelKind::Imapa => backtest::<Imapa>(y, origins, b, span, search_days),
        ModelKind::Zero | ModelKind::Combination | ModelKind::Pooled | ModelKind::PooledBlend => {
            return None
        }
    };
    let (forecasts, mean, base_sd) = run;
    let sse = origins
        .iter()
        .enumerate()
        .flat_map(|(r, &o)| forecasts[r * b..(r + 1) * b].iter().zip(&y[o..o + b]))
        .map(|(f, actual)| (actual - f) * (actual - f))
        .sum::<f64>();
    sse.is_finite().then_some(Backtest {
        kind,
        sse,
        forecasts,
        mean,
        base_sd,
    })
}

/// One pass per model: parameters are chosen (grid search) on the data before the earliest
/// origin only (its last `search_days` days); the filter then runs once through the whole series with them, forecasting
/// `b` days at each origin and collecting the one-step residuals, and finally forecasts
/// `span` days from the end. The final forecast therefore uses the backtested parameters
/// (no refit), which halves the cost of selection.
///
/// Requires `origins` ascending, all `< y.len()`, and `origins[0] ≥ M::MIN_HISTORY`.
/// Returns (backtest forecasts, final mean, final base sd).
fn backtest<M: Model>(
    y: &[f64],
    origins: &[usize],
    b: usize,
    span: usize,
    search_days: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut forecasts = vec![0.0; origins.len() * b];
    let training = &y[..origins[0]];
    let recent = if search_days == 0 {
        0
    } else {
        training
            .len()
            .saturating_sub(search_days.max(M::MIN_HISTORY))
    };
    let params = M::choose_params(&training[recent..]);
    // The filter starts where the parameter search starts: older days would barely move
    // the state (exponential forgetting) and would make the cost grow with the history.
    let (mut state, start) = M::init(&training[recent..]);
    let start = recent + start;
    let mut next = 0;
    let mut sse = 0.0;
    for (t, &value) in y.iter().enumerate().skip(start) {
        while next < origins.len() && origins[next] == t {
            M::forecast_into(&state, &params, &mut forecasts[next * b..(next + 1) * b]);
            next += 1;
        }
        let e = value - M::predict(&state, &params);
        sse += e * e;
        M::update(&mut state, &params, value);
    }
    for f in &mut forecasts {
        *f = f.max(0.0);
    }
    let residual_count = y.len().saturating_sub(start);
    let residual_sd = if residual_count == 0 {
        0.0
    } else {
        (sse / residual_count as f64).sqrt()
    };
    let mut mean = vec![0.0; span];
    M::forecast_into(&state, &params, &mut mean);
    for m in &mut mean {
        *m = finite_or_zero(*m).max(0.0);
    }
    let base_sd = (1..=span)
        .map(|h| finite_or_zero(residual_sd * M::growth(&params, h)))
        .collect();
    (forecasts, mean, base_sd)
}

/// The pooled model's backtest (see [`crate::pooled`]): α from the SES grid by one-step
/// SSE on the search window before the earliest origin, then one filter pass forecasting at
/// every origin and from the end. `day0` is the absolute day of `y[0]`.
#[allow(clippy::too_many_arguments)]
fn backtest_pooled(
    y: &[f64],
    day0: i64,
    profile: &GroupProfile,
    item: Option<&ItemLevel>,
    yearly: f64,
    origins: &[usize],
    b: usize,
    span: usize,
    search_days: usize,
) -> Option<Backtest> {
    let n = y.len();
    // Weekday factors rotated so that index t % 7 is day t of the series.
    let w: [f64; 7] = std::array::from_fn(|k| profile.weekday_factor(day0 + k as i64));
    let inv_w: [f64; 7] = std::array::from_fn(|k| 1.0 / w[k]);
    let power = |f: f64| if yearly == 1.0 { f } else { f.powf(yearly) };
    let earliest = origins[0];
    let recent = if search_days == 0 {
        0
    } else {
        earliest.saturating_sub(search_days.max(2 * WEEK))
    };
    let warm = (recent + WEEK).min(earliest);
    let init = y[recent..warm]
        .iter()
        .enumerate()
        .map(|(i, v)| v * inv_w[(recent + i) % 7])
        .sum::<f64>()
        / (warm - recent).max(1) as f64;
    // Grid search, all α side by side in one pass over the search window.
    const GRID: usize = crate::models::SES_ALPHAS.len();
    let mut levels = [init; GRID];
    let mut sses = [0.0; GRID];
    for (t, &v) in y.iter().enumerate().take(earliest).skip(warm) {
        let (wt, z) = (w[t % 7], v * inv_w[t % 7]);
        for g in 0..GRID {
            let e = v - levels[g] * wt;
            sses[g] += e * e;
            levels[g] += crate::models::SES_ALPHAS[g] * (z - levels[g]);
        }
    }
    let best = (0..GRID)
        .min_by(|&a, &b| sses[a].total_cmp(&sses[b]))
        .unwrap_or(0);
    let alpha = crate::models::SES_ALPHAS[best];
    let factor = |origin: usize, h: usize| -> f64 {
        if yearly == 0.0 {
            return 1.0;
        }
        let o = day0 + origin as i64;
        power(profile.yearly_factor(o, o + h as i64))
    };
    // Top-down: the series' share of its item over the 364 days before day t, times the
    // item's chain-wide level before t; the own level where the item is not covered.
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for &v in y {
        prefix.push(prefix[prefix.len() - 1] + v);
    }
    // An item sold in one store only has nothing to pool: its own level is used.
    let item = item.filter(|i| i.members >= 2);
    let top_down = |t: usize, own: f64| -> f64 {
        let Some(item) = item else {
            return own;
        };
        let from = t.saturating_sub(364);
        let chain = item.demand_between(day0 + from as i64, day0 + t as i64);
        match item.level_before(day0 + t as i64) {
            Some(level) if chain > 0.0 && t > from => (prefix[t] - prefix[from]) / chain * level,
            _ => own,
        }
    };
    let mut forecasts = vec![0.0; origins.len() * b];
    let mut level = init;
    let mut next = 0;
    let mut sse = 0.0;
    for (t, &v) in y.iter().enumerate().skip(warm) {
        while next < origins.len() && origins[next] == t {
            let level = top_down(t, level);
            let base = (yearly != 0.0).then(|| profile.yearly_base(day0 + t as i64));
            for h in 0..b {
                let y_factor = match base {
                    Some(base) => power(profile.yearly_factor_from(base, day0 + (t + h) as i64)),
                    None => 1.0,
                };
                forecasts[next * b + h] = (level * w[(t + h) % 7] * y_factor).max(0.0);
            }
            next += 1;
        }
        // One-step residuals of the own level: they only shape the interval sd, whose
        // scale the backtest calibration sets (and the top-down level per day costs more).
        let e = v - level * w[t % 7];
        sse += e * e;
        level += alpha * (v * inv_w[t % 7] - level);
    }
    let residual_sd = (sse / n.saturating_sub(warm).max(1) as f64).sqrt();
    let level = top_down(n, level);
    let mean: Vec<f64> = (0..span)
        .map(|h| finite_or_zero(level * w[(n + h) % 7] * factor(n, h)).max(0.0))
        .collect();
    let base_sd = (1..=span)
        .map(|h| finite_or_zero(residual_sd * (1.0 + (h - 1) as f64 * alpha * alpha).sqrt()))
        .collect();
    let sse = origins
        .iter()
        .enumerate()
        .flat_map(|(r, &o)| forecasts[r * b..(r + 1) * b].iter().zip(&y[o..o + b]))
        .map(|(f, actual)| (actual - f) * (actual - f))
        .sum::<f64>();
    sse.is_finite().then_some(Backtest {
        kind: ModelKind::Pooled,
        sse,
        forecasts,
        mean,
        base_sd,
    })
}

/// Too little history to backtest: SES on what there is, with a Poisson floor on the
/// residual sd (count demand has variance ≥ its mean) and the in-sample RMSSE.
fn short_history_forecast(y: &[f64], horizon: usize, level: f64) -> Forecast {
    let Ok(fitted) = Fitted::<Ses>::fit(y) else {
        return Forecast::zero(horizon, level);
    };
    let mean_demand = y.iter().sum::<f64>() / y.len().max(1) as f64;
    let sigma = fitted.residual_sd().max(mean_demand.max(0.0).sqrt());
    let level_forecast = finite_or_zero(fitted.state.level).max(0.0);
    let mean = vec![level_forecast; horizon];
    let sd = (1..=horizon)
        .map(|h| finite_or_zero(sigma * Ses::growth(&fitted.params, h)))
        .collect();
    let rmsse = match (naive_mse_scale(y), fitted.residual_count) {
        (Some(scale), count) if count > 0 => {
            finite_or_zero((fitted.sse / count as f64 / scale).sqrt())
        }
        _ => 0.0,
    };
    assemble(ModelKind::Ses, mean, sd, horizon, level, rmsse, 0)
}

fn assemble(
    model: ModelKind,
    mut mean: Vec<f64>,
    mut sd: Vec<f64>,
    horizon: usize,
    level: f64,
    rmsse: f64,
    backtest_days: usize,
) -> Forecast {
    mean.truncate(horizon);
    sd.truncate(horizon);
    let z = two_sided_z(level);
    let lo = mean
        .iter()
        .zip(&sd)
        .map(|(m, s)| (m - z * s).max(0.0))
        .collect();
    let hi = mean.iter().zip(&sd).map(|(m, s)| m + z * s).collect();
    let cumulative_sd = cumulative_sd(&sd, &[]);
    Forecast {
        model,
        mean,
        lo,
        hi,
        sd,
        level,
        rmsse,
        backtest_days,
        cumulative_sd,
    }
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_invariants(f: &Forecast, horizon: usize) {
        assert_eq!(f.mean.len(), horizon);
        assert_eq!(f.lo.len(), horizon);
        assert_eq!(f.hi.len(), horizon);
        assert_eq!(f.sd.len(), horizon);
        assert!(f.rmsse.is_finite() && f.rmsse >= 0.0);
        for h in 0..horizon {
            assert!(f.lo[h].is_finite() && f.mean[h].is_finite() && f.hi[h].is_finite());
            assert!(
                0.0 <= f.lo[h] && f.lo[h] <= f.mean[h] + 1e-12 && f.mean[h] <= f.hi[h] + 1e-12,
                "{f:?}"
            );
        }
    }

    /// A deterministic weekly pattern with a little pseudo-random noise.
    fn weekly(days: usize) -> Vec<f64> {
        let pattern = [20.0, 22.0, 21.0, 25.0, 35.0, 60.0, 50.0];
        let mut seed = 12_345u64;
        (0..days)
            .map(|t| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 4.0;
                pattern[t % 7] + noise
            })
            .collect()
    }

    #[test]
    fn empty_and_all_zero_histories_forecast_zero() {
        let cfg = SelectConfig::default();
        for history in [&[][..], &[0.0; 100][..]] {
            let f = forecast_series(history, 14, &cfg);
            assert_eq!(f.model, ModelKind::Zero);
            assert!(f.mean.iter().chain(&f.hi).all(|&v| v == 0.0));
            check_invariants(&f, 14);
        }
    }

    #[test]
    fn short_histories_use_ses_without_nan() {
        let cfg = SelectConfig::default();
        for history in [
            &[3.0][..],
            &[1.0, 2.0][..],
            &[0.0, 0.0, 5.0, 0.0, 1.0][..],
            &[4.0; 10][..],
        ] {
            let f = forecast_series(history, 7, &cfg);
            check_invariants(&f, 7);
            assert_eq!(f.model, ModelKind::Ses);
            assert_eq!(f.backtest_days, 0);
            assert!(
                f.hi[0] > 0.0,
                "a series with sales gets a non-degenerate interval"
            );
        }
    }

    #[test]
    fn non_finite_and_negative_values_are_treated_as_no_sale() {
        let mut history = weekly(70);
        history[10] = f64::NAN;
        history[20] = f64::INFINITY;
        history[30] = -5.0;
        let f = forecast_series(&history, 28, &SelectConfig::default());
        check_invariants(&f, 28);
    }

    #[test]
    fn weekly_pattern_selects_a_seasonal_model_and_beats_naive() {
        let history = weekly(365);
        let f = forecast_series(&history, 28, &SelectConfig::default());
        check_invariants(&f, 28);
        assert!(
            matches!(
                f.model,
                ModelKind::HoltWinters
                    | ModelKind::DampedHoltWinters
                    | ModelKind::SeasonalNaive
                    | ModelKind::Combination
            ),
            "{:?}",
            f.model
        );
        // Saturday (index 5 of the pattern) is the peak: 365 = 52·7 + 1, so day 1 of the
        // forecast is pattern index 1 and Saturday is forecast day 5.
        assert!(f.mean[4] > f.mean[0] + 20.0, "{:?}", &f.mean[..7]);
        assert!(f.rmsse < 0.5, "rmsse {}", f.rmsse);
    }

    #[test]
    fn intervals_cover_most_of_a_held_out_month() {
        let history = weekly(400);
        let (train, test) = history.split_at(372);
        let f = forecast_series(train, 28, &SelectConfig::default());
        let covered = test
            .iter()
            .zip(f.lo.iter().zip(&f.hi))
            .filter(|(y, (lo, hi))| *lo <= *y && *y <= *hi)
            .count();
        assert!(covered >= 18, "80% interval covered only {covered}/28");
    }

    #[test]
    fn single_model_config_uses_that_model() {
        // Smooth and intermittent: `single` is not overridden by the intermittent rule.
        for history in [weekly(200), intermittent(200)] {
            for kind in ModelKind::SINGLE_MODELS {
                let f = forecast_series(&history, 10, &SelectConfig::single(kind));
                assert_eq!(f.model, kind);
                check_invariants(&f, 10);
                assert_eq!(f.backtest_days, 10);
            }
        }
    }

    #[test]
    fn leading_zeros_before_launch_are_ignored() {
        let mut history = vec![0.0; 300];
        history.extend(weekly(100));
        let with_zeros = forecast_series(&history, 14, &SelectConfig::default());
        let without = forecast_series(&weekly(100), 14, &SelectConfig::default());
        assert_eq!(with_zeros, without);
    }

    #[test]
    fn intermittent_series_forecast_their_mean_demand() {
        // One sale every ~5 days: ADI ≈ 5 > 1.32.
        let history: Vec<f64> = (0..300)
            .map(|t| {
                if t % 5 == 0 {
                    2.0 + (t % 3) as f64
                } else {
                    0.0
                }
            })
            .collect();
        let f = forecast_series(&history, 28, &SelectConfig::default());
        check_invariants(&f, 28);
        assert_eq!(f.model, ModelKind::Combination);
        // Mean demand is 3/5 per day; the forecast should be close to it.
        assert!((f.mean[0] - 0.6).abs() < 0.2, "{}", f.mean[0]);
        assert!(
            f.lo.iter().all(|&lo| lo == 0.0),
            "the lower bound of sparse demand is 0"
        );
    }

    /// One sale every ~3 days with varying sizes: ADI ≈ 3 > 1.32.
    fn intermittent(days: usize) -> Vec<f64> {
        (0..days)
            .map(|t| {
                if t % 3 == 1 {
                    1.0 + ((t * 7) % 5) as f64
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn intermittent_series_get_the_per_day_median_of_every_candidate() {
        let history = intermittent(200);
        let candidates = vec![ModelKind::Ses, ModelKind::Croston, ModelKind::Tsb];
        let cfg = SelectConfig {
            candidates: candidates.clone(),
            ..SelectConfig::default()
        };
        let f = forecast_series(&history, 14, &cfg);
        check_invariants(&f, 14);
        assert_eq!(f.model, ModelKind::Combination);
        // Each member forecast alone, through the same backtest pass (same parameters).
        let alone: Vec<Forecast> = candidates
            .iter()
            .map(|&k| forecast_series(&history, 14, &SelectConfig::single(k)))
            .collect();
        for h in 0..14 {
            let mut day: Vec<f64> = alone.iter().map(|a| a.mean[h]).collect();
            day.sort_by(f64::total_cmp);
            assert!(
                (f.mean[h] - day[1]).abs() < 1e-12,
                "day {h}: {} vs {day:?}",
                f.mean[h]
            );
        }
        // Switched off, the same series goes by selection again.
        let selected = forecast_series(
            &history,
            14,
            &SelectConfig {
                intermittent_combination: None,
                combine_top: 0,
                ..cfg
            },
        );
        assert!(candidates.contains(&selected.model), "{:?}", selected.model);
    }

    #[test]
    fn smooth_series_are_not_combined_by_the_intermittent_rule() {
        // Sales every day: ADI = 1, so selection decides, and without `combine_top` it
        // picks one model.
        let cfg = SelectConfig {
            combine_top: 0,
            ..SelectConfig::default()
        };
        let f = forecast_series(&weekly(300), 14, &cfg);
        assert_ne!(f.model, ModelKind::Combination);
        // The same series made intermittent (every other day zero) is combined.
        let sparse: Vec<f64> = weekly(300)
            .iter()
            .enumerate()
            .map(|(t, y)| if t % 2 == 0 { 0.0 } else { *y })
            .collect();
        assert_eq!(
            forecast_series(&sparse, 14, &cfg).model,
            ModelKind::Combination
        );
    }

    #[test]
    fn constant_demand_is_forecast_exactly_with_a_zero_width_interval() {
        // The hub's reorder figures for a steady seller rely on this (σ = 0).
        let f = forecast_series(&[10.0; 56], 28, &SelectConfig::default());
        check_invariants(&f, 28);
        for h in 0..28 {
            assert!((f.mean[h] - 10.0).abs() < 1e-9, "{f:?}");
            assert!(
                f.sd[h].abs() < 1e-9 && (f.hi[h] - f.lo[h]).abs() < 1e-9,
                "{f:?}"
            );
        }
    }

    #[test]
    fn combinations_by_hand() {
        assert_eq!(
            combine(Combination::Median, &[1.0 / 3.0; 3], &mut [3.0, 1.0, 2.0]),
            2.0
        );
        assert_eq!(
            combine(Combination::Median, &[0.25; 4], &mut [4.0, 1.0, 3.0, 2.0]),
            2.5
        );
        assert_eq!(
            combine(Combination::Mean, &[0.5, 0.5], &mut [1.0, 4.0]),
            2.5
        );
        // Inverse-MSE: SSEs 1 and 4 → raw weights 1 and 1/4 → 0.8 and 0.2.
        let w = combination_weights(Combination::InverseMse, &[1.0, 4.0]);
        assert!(
            (w[0] - 0.8).abs() < 1e-12 && (w[1] - 0.2).abs() < 1e-12,
            "{w:?}"
        );
        assert_eq!(
            combine(Combination::InverseMse, &w, &mut [10.0, 20.0]),
            12.0
        );
    }

    #[test]
    fn narrowing_calibration_never_widens_beyond_the_widen_only_interval() {
        let history = weekly(300);
        let narrow = forecast_series(&history, 28, &SelectConfig::default());
        let wide = forecast_series(
            &history,
            28,
            &SelectConfig {
                narrow_intervals: false,
                ..SelectConfig::default()
            },
        );
        assert_eq!(narrow.mean, wide.mean);
        for h in 0..28 {
            assert!(narrow.sd[h] <= wide.sd[h] + 1e-12);
        }
    }

    #[test]
    fn zero_horizon_gives_empty_vectors() {
        let f = forecast_series(&weekly(100), 0, &SelectConfig::default());
        check_invariants(&f, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn forecasts_are_always_well_formed(
            history in proptest::collection::vec(proptest::prop_oneof![Just(0.0), 0.0..50.0f64, Just(f64::NAN)], 0..120),
            horizon in 0usize..40,
        ) {
            let f = forecast_series(&history, horizon, &SelectConfig::default());
            check_invariants(&f, horizon);
        }
    }

    /// A group of 20 series with a strong Saturday peak (index 5 of the week from day 0),
    /// its profile, and one slow member of it.
    fn saturday_group() -> (GroupProfile, Vec<f64>) {
        let mut seed = 7u64;
        let mut uniform = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let peak = |t: usize| if t % 7 == 5 { 3.0 } else { 0.6 };
        let members: Vec<Vec<f64>> = (0..20)
            .map(|_| {
                (0..400)
                    .map(|t| (10.0 * peak(t) * (0.5 + uniform())).round())
                    .collect()
            })
            .collect();
        let profile = crate::pooled::fit_profile(members.iter().map(|m| (0, m.as_slice())));
        // A slow series: a sale of 1 with probability 0.1 · peak.
        let slow: Vec<f64> = (0..400)
            .map(|t| if uniform() < 0.1 * peak(t) { 1.0 } else { 0.0 })
            .collect();
        (profile, slow)
    }

    #[test]
    fn without_a_context_the_pooled_entry_point_is_forecast_series() {
        let (profile, slow) = saturday_group();
        let cfg = SelectConfig::default();
        assert_eq!(
            forecast_series_pooled(&slow, 14, &cfg, None),
            forecast_series(&slow, 14, &cfg)
        );
        // PooledUse::Off ignores a context too.
        let ctx = PooledContext {
            profile: &profile,
            start_day: 0,
            item: None,
        };
        let off = SelectConfig {
            pooled: PooledUse::Off,
            ..SelectConfig::default()
        };
        assert_eq!(
            forecast_series_pooled(&slow, 14, &off, Some(&ctx)),
            forecast_series(&slow, 14, &off)
        );
    }

    #[test]
    fn the_pooled_model_gives_a_slow_series_its_groups_weekday_shape() {
        let (profile, slow) = saturday_group();
        // Mean peak factor (3 + 6 · 0.6) / 7 ≈ 0.943: the profile is ≈ 3.18 on the peak,
        // ≈ 0.64 on the other days.
        assert!(
            profile.weekday[5] > 2.9 && profile.weekday[0] < 0.7,
            "{:?}",
            profile.weekday
        );
        let ctx = PooledContext {
            profile: &profile,
            start_day: 0,
            item: None,
        };
        // β = 0: the weekday profile only (400 days already give a yearly factor).
        let weekday_only = SelectConfig {
            pooled_yearly: 0.0,
            ..SelectConfig::pooled_only()
        };
        let f = forecast_series_pooled(&slow, 14, &weekday_only, Some(&ctx));
        assert_eq!(f.model, ModelKind::Pooled);
        check_invariants(&f, 14);
        // The history is days 0..400, so forecast day h is absolute day 400 + h, of weekday
        // index (400 + h) % 7: h = 0 is index 1, the peak (index 5) is h = 4 and h = 11.
        let ratio = f.mean[4] / f.mean[0];
        let expected = profile.weekday[5] / profile.weekday[1];
        assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
        assert!((f.mean[4] - f.mean[11]).abs() < 1e-12);
        // Mean demand over a week matches the series' own rate (≈ 0.1 · mean peak factor).
        let week: f64 = f.mean[..7].iter().sum::<f64>() / 7.0;
        let own: f64 = slow[slow.len() - 182..].iter().sum::<f64>() / 182.0;
        assert!((week - own).abs() < 0.5 * own, "{week} vs {own}");
        // The default blend takes the pooled model, the local choice or their mean.
        let blend_cfg = SelectConfig {
            pooled_yearly: 0.0,
            ..SelectConfig::default()
        };
        let blend = forecast_series_pooled(&slow, 14, &blend_cfg, Some(&ctx));
        check_invariants(&blend, 14);
        let local = forecast_series(&slow, 14, &blend_cfg);
        let mean: Vec<f64> = local
            .mean
            .iter()
            .zip(&f.mean)
            .map(|(a, b)| 0.5 * (a + b))
            .collect();
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        match blend.model {
            ModelKind::Pooled => assert!(close(&blend.mean, &f.mean)),
            ModelKind::PooledBlend => assert!(close(&blend.mean, &mean)),
            _ => assert!(close(&blend.mean, &local.mean)),
        }
    }

    #[test]
    fn top_down_level_uses_the_series_share_of_its_item() {
        // Item sold in two stores: this one sells 1 a day, the other 3 — but this store's
        // last 10 days are 4 a day (noise for a slow mover); top-down keeps the long-run
        // share (≈ 1/4 of the item's level) instead of chasing its own jump.
        let own: Vec<f64> = (0..400).map(|t| if t >= 390 { 4.0 } else { 1.0 }).collect();
        let other = vec![3.0; 400];
        let item = crate::pooled::fit_item_level([(0, own.as_slice()), (0, other.as_slice())]);
        let flat = GroupProfile::flat();
        let pooled_only = SelectConfig {
            pooled_yearly: 0.0,
            ..SelectConfig::pooled_only()
        };
        let with_item = PooledContext {
            profile: &flat,
            start_day: 0,
            item: Some(&item),
        };
        let without = PooledContext {
            item: None,
            ..with_item
        };
        let top = forecast_series_pooled(&own, 7, &pooled_only, Some(&with_item));
        let alone = forecast_series_pooled(&own, 7, &pooled_only, Some(&without));
        let share = own[400 - 364..].iter().sum::<f64>() / item.demand_between(36, 400);
        let expected = share * item.level_before(400).expect("covered");
        assert!(
            (top.mean[0] - expected).abs() < 1e-9,
            "{} vs {expected}",
            top.mean[0]
        );
        assert!(
            top.mean[0] < alone.mean[0],
            "{} vs {}",
            top.mean[0],
            alone.mean[0]
        );
        // An item in one store only is not pooled: the own level.
        let single = crate::pooled::fit_item_level([(0, own.as_slice())]);
        let one = PooledContext {
            item: Some(&single),
            ..with_item
        };
        assert_eq!(
            forecast_series_pooled(&own, 7, &pooled_only, Some(&one)),
            alone
        );
    }

    #[test]
    fn cumulative_sd_comes_from_the_backtest_then_adds_daily_variances() {
        let y = weekly(200);
        let f = forecast_series(&y, 40, &SelectConfig::default());
        assert_eq!(f.backtest_days, 28);
        assert_eq!(f.cumulative_sd.len(), 40);
        assert!(f.cumulative_sd.iter().all(|s| s.is_finite() && *s >= 0.0));
        assert!(f.cumulative_sd[27] > 0.0);
        // Past the 28 backtested days the daily variances are added.
        for h in 28..40 {
            let step = f.cumulative_sd[h].powi(2) - f.cumulative_sd[h - 1].powi(2);
            assert!(
                (step - f.sd[h].powi(2)).abs() < 1e-9 * (1.0 + step.abs()),
                "{h}"
            );
        }
        // Too short to backtest: root sum of the daily variances throughout.
        let short = forecast_series(&y[..10], 5, &SelectConfig::default());
        assert_eq!(short.backtest_days, 0);
        let mut total = 0.0;
        for h in 0..5 {
            total += short.sd[h].powi(2);
            assert!((short.cumulative_sd[h] - total.sqrt()).abs() < 1e-9);
        }
    }
    use proptest::strategy::Just;
}
