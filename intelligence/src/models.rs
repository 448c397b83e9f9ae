//! Forecasting models for daily demand (DESIGN §8).
//!
//! Every model is a *recursive filter*: a small state, a one-step prediction from it, and an
//! update with each new observation. That shape gives all models the same O(n) fitting cost
//! and lets [`crate::select`] backtest at several origins in a single pass.
//!
//! | kind | published definition |
//! |---|---|
//! | [`SeasonalNaive`] | ŷ(t+h) = y(t+h−7k), the same weekday last week |
//! | [`Ses`] | Brown / ETS(A,N,N): ℓ ← ℓ + α(y − ℓ) |
//! | [`HoltWinters`] | additive Holt-Winters, weekly season, no trend (ETS(A,N,A)) |
//! | [`DampedHoltWinters`] | additive Holt-Winters with damped trend (ETS(A,Ad,A)), Hyndman & Athanasopoulos, *FPP* §8.3 |
//! | [`Croston`] | Croston (1972): sizes and intervals smoothed at demand occurrences, ŷ = z/p |
//! | [`Sba`] | Syntetos & Boylan (2005): Croston × (1 − α/2) |
//! | [`Tsb`] | Teunter, Syntetos & Babai (2011): probability smoothed every period, ŷ = d·z |
//! | [`Adida`] | Nikolopoulos et al. (2011): SES on k-day bucket totals, ŷ = SES/k |
//! | [`Imapa`] | Petropoulos & Kourentzes (2015): mean of ADIDA over levels k = 1..K |
//!
//! Invariants:
//! - Fitting is O(n · |grid|) with no allocation per step; the parameter grid is searched in
//!   one pass that advances every candidate state side by side ([`grid_search`]).
//! - Parameters are chosen by the smallest in-sample one-step sum of squared errors.
//! - Forecasts are daily means; they are *not* clamped here (callers clamp at zero).
//! - `interval_sd(h) = residual_sd · growth(h)`, with `growth(1) = 1` and the model's
//!   h-step variance growth (exact for the ETS models, an SES-style approximation for the
//!   intermittent ones).
//! - Nothing panics on any finite input long enough for the model ([`Model::MIN_HISTORY`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Days in the weekly season.
pub const WEEK: usize = 7;

/// Which model produced a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// No demand ever observed: forecast zero.
    Zero,
    SeasonalNaive,
    Ses,
    HoltWinters,
    DampedHoltWinters,
    Croston,
    Sba,
    Tsb,
    Adida,
    Imapa,
    /// A per-day combination of several models' forecasts: of every candidate for
    /// intermittent series, else of the backtest's best few (see [`crate::select`]).
    Combination,
    /// The pooled model: the series' SES level on weekday and yearly profiles pooled over
    /// its group ([`crate::pooled`]).
    Pooled,
    /// Equal-weight mean of the per-series choice and the pooled model.
    PooledBlend,
}

impl ModelKind {
    /// The single models that selection considers by default.
    pub const SINGLE_MODELS: [ModelKind; 9] = [
        ModelKind::SeasonalNaive,
        ModelKind::Ses,
        ModelKind::HoltWinters,
        ModelKind::DampedHoltWinters,
        ModelKind::Croston,
        ModelKind::Sba,
        ModelKind::Tsb,
        ModelKind::Adida,
        ModelKind::Imapa,
    ];

    /// Stable snake_case name used in CSV output and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Zero => "zero",
            ModelKind::SeasonalNaive => "seasonal_naive",
            ModelKind::Ses => "ses",
            ModelKind::HoltWinters => "holt_winters",
            ModelKind::DampedHoltWinters => "damped_holt_winters",
            ModelKind::Croston => "croston",
            ModelKind::Sba => "sba",
            ModelKind::Tsb => "tsb",
            ModelKind::Adida => "adida",
            ModelKind::Imapa => "imapa",
            ModelKind::Combination => "combination",
            ModelKind::Pooled => "pooled",
            ModelKind::PooledBlend => "pooled_blend",
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model name that is not one of [`ModelKind`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model kind {0:?}")]
pub struct UnknownModelKind(pub String);

impl FromStr for ModelKind {
    type Err = UnknownModelKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ModelKind::Zero,
            ModelKind::Combination,
            ModelKind::Pooled,
            ModelKind::PooledBlend,
        ]
        .into_iter()
        .chain(ModelKind::SINGLE_MODELS)
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownModelKind(s.to_owned()))
    }
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{model} needs at least {needed} days of history, got {got}")]
    TooShort {
        model: ModelKind,
        needed: usize,
        got: usize,
    },
}

/// A recursive forecasting model. Implementors are zero-sized markers; all data lives in
/// `Params` and `State`.
pub trait Model {
    type Params: Copy + fmt::Debug + PartialEq;
    type State: Clone + fmt::Debug;
    const KIND: ModelKind;
    /// Fewest observations [`Model::init`] accepts.
    const MIN_HISTORY: usize;

    /// Initial state from the start of `history` (len ≥ `MIN_HISTORY`) and the index of
    /// the first observation to filter (observations before it were consumed by `init`).
    fn init(history: &[f64]) -> (Self::State, usize);
    /// One-step-ahead forecast from the state.
    fn predict(state: &Self::State, params: &Self::Params) -> f64;
    /// Absorbs the next observation.
    fn update(state: &mut Self::State, params: &Self::Params, y: f64);
    /// Forecasts `out.len()` days ahead (out[0] is one step ahead).
    fn forecast_into(state: &Self::State, params: &Self::Params, out: &mut [f64]);
    /// Parameters minimising the in-sample one-step SSE over a fixed grid.
    fn choose_params(history: &[f64]) -> Self::Params;
    /// Standard deviation of the h-step error relative to the one-step one (h ≥ 1).
    fn growth(params: &Self::Params, h: usize) -> f64;
}

/// Runs every parameter set of `grid` side by side over `history` (one pass, K
/// independent recurrences that the CPU overlaps) and returns the one with the smallest
/// one-step SSE; ties go to the earlier grid entry.
pub fn grid_search<M: Model, const K: usize>(history: &[f64], grid: &[M::Params; K]) -> M::Params {
    let (init, start) = M::init(history);
    let mut states: [M::State; K] = std::array::from_fn(|_| init.clone());
    let mut sse = [0.0_f64; K];
    for &y in history.get(start..).unwrap_or(&[]) {
        for k in 0..K {
            let e = y - M::predict(&states[k], &grid[k]);
            sse[k] += e * e;
            M::update(&mut states[k], &grid[k], y);
        }
    }
    let mut best = 0;
    for k in 1..K {
        // `<` keeps the earlier (smoother) entry on ties; NaN never wins.
        if sse[k] < sse[best] || sse[best].is_nan() {
            best = k;
        }
    }
    grid[best]
}

/// A model fitted to a history: parameters, the state after the last observation, and the
/// in-sample one-step residuals' sum of squares.
#[derive(Debug, Clone)]
pub struct Fitted<M: Model> {
    pub params: M::Params,
    pub state: M::State,
    /// Sum of squared one-step in-sample errors.
    pub sse: f64,
    /// Number of one-step errors in `sse`.
    pub residual_count: usize,
}

impl<M: Model> Fitted<M> {
    /// Chooses parameters by grid search and filters the whole history.
    pub fn fit(history: &[f64]) -> Result<Self, ModelError> {
        check_length::<M>(history)?;
        Self::with_params(history, M::choose_params(history))
    }

    /// Filters the whole history with the given parameters.
    pub fn with_params(history: &[f64], params: M::Params) -> Result<Self, ModelError> {
        check_length::<M>(history)?;
        let (mut state, start) = M::init(history);
        let mut sse = 0.0;
        let rest = history.get(start..).unwrap_or(&[]);
        for &y in rest {
            let e = y - M::predict(&state, &params);
            sse += e * e;
            M::update(&mut state, &params, y);
        }
        Ok(Fitted {
            params,
            state,
            sse,
            residual_count: rest.len(),
        })
    }

    /// Daily mean forecasts for the next `horizon` days.
    pub fn forecast(&self, horizon: usize) -> Vec<f64> {
        let mut out = vec![0.0; horizon];
        M::forecast_into(&self.state, &self.params, &mut out);
        out
    }

    /// Root mean square of the in-sample one-step errors (0 when there are none).
    pub fn residual_sd(&self) -> f64 {
        if self.residual_count == 0 {
            0.0
        } else {
            (self.sse / self.residual_count as f64).sqrt()
        }
    }

    /// Standard deviation of the h-step-ahead error (h ≥ 1).
    pub fn interval_sd(&self, h: usize) -> f64 {
        self.residual_sd() * M::growth(&self.params, h.max(1))
    }
}

fn check_length<M: Model>(history: &[f64]) -> Result<(), ModelError> {
    if history.len() < M::MIN_HISTORY.max(1) {
        return Err(ModelError::TooShort {
            model: M::KIND,
            needed: M::MIN_HISTORY.max(1),
            got: history.len(),
        });
    }
    Ok(())
}

fn ses_growth(alpha: f64, h: usize) -> f64 {
    // ETS(A,N,N): Var(e_h) = σ²(1 + (h−1)α²).
    (1.0 + (h.saturating_sub(1)) as f64 * alpha * alpha).sqrt()
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

// ---------------------------------------------------------------------------------------
// Seasonal naive
// ---------------------------------------------------------------------------------------

/// Seasonal naive with a weekly period: tomorrow = the same weekday last week.
#[derive(Debug, Clone, Copy)]
pub struct SeasonalNaive;

/// The last seven observations; `last_week[pos]` is the value seven days before the next day.
#[derive(Debug, Clone)]
pub struct LastWeek {
    pub last_week: [f64; WEEK],
    pub pos: usize,
}

impl Model for SeasonalNaive {
    type Params = ();
    type State = LastWeek;
    const KIND: ModelKind = ModelKind::SeasonalNaive;
    const MIN_HISTORY: usize = WEEK;

    fn init(history: &[f64]) -> (LastWeek, usize) {
        let mut last_week = [0.0; WEEK];
        for (slot, &y) in last_week.iter_mut().zip(history) {
            *slot = y;
        }
        (LastWeek { last_week, pos: 0 }, WEEK)
    }
    fn predict(state: &LastWeek, _: &()) -> f64 {
        state.last_week[state.pos]
    }
    fn update(state: &mut LastWeek, _: &(), y: f64) {
        state.last_week[state.pos] = y;
        state.pos = if state.pos + 1 == WEEK {
            0
        } else {
            state.pos + 1
        };
    }
    fn forecast_into(state: &LastWeek, _: &(), out: &mut [f64]) {
        for (i, f) in out.iter_mut().enumerate() {
            *f = state.last_week[(state.pos + i) % WEEK];
        }
    }
    fn choose_params(_: &[f64]) {}
    fn growth(_: &(), h: usize) -> f64 {
        // Seasonal random walk: the h-step error sums ⌈h/7⌉ one-step (weekly) errors.
        (((h.max(1) - 1) / WEEK + 1) as f64).sqrt()
    }
}

// ---------------------------------------------------------------------------------------
// Simple exponential smoothing
// ---------------------------------------------------------------------------------------

/// Simple exponential smoothing, ℓ(t) = ℓ(t−1) + α(y(t) − ℓ(t−1)), ŷ = ℓ.
/// The initial level is the mean of the first (up to) seven days.
#[derive(Debug, Clone, Copy)]
pub struct Ses;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SesParams {
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub level: f64,
}

/// α grid for SES (in-sample one-step SSE picks one).
pub const SES_ALPHAS: [f64; 10] = [0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7];

impl Model for Ses {
    type Params = SesParams;
    type State = Level;
    const KIND: ModelKind = ModelKind::Ses;
    const MIN_HISTORY: usize = 1;

    fn init(history: &[f64]) -> (Level, usize) {
        (
            Level {
                level: mean(&history[..history.len().min(WEEK)]),
            },
            0,
        )
    }
    fn predict(state: &Level, _: &SesParams) -> f64 {
        state.level
    }
    fn update(state: &mut Level, p: &SesParams, y: f64) {
        state.level += p.alpha * (y - state.level);
    }
    fn forecast_into(state: &Level, _: &SesParams, out: &mut [f64]) {
        out.fill(state.level);
    }
    fn choose_params(history: &[f64]) -> SesParams {
        grid_search::<Ses, 10>(history, &SES_ALPHAS.map(|alpha| SesParams { alpha }))
    }
    fn growth(p: &SesParams, h: usize) -> f64 {
        ses_growth(p.alpha, h)
    }
}

// ---------------------------------------------------------------------------------------
// Holt-Winters (additive, weekly)
// ---------------------------------------------------------------------------------------

/// Smoothing parameters of additive Holt-Winters (Hyndman & Athanasopoulos, FPP §8.3):
///
/// ```text
/// ŷ(t+h|t) = ℓ(t) + (φ + … + φ^h)·b(t) + s(t+h−7(k+1))
/// ℓ(t) = α(y(t) − s(t−7)) + (1−α)(ℓ(t−1) + φ·b(t−1))
/// b(t) = β(ℓ(t) − ℓ(t−1)) + (1−β)·φ·b(t−1)
/// s(t) = γ(y(t) − ℓ(t−1) − φ·b(t−1)) + (1−γ)·s(t−7)
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HwParams {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub phi: f64,
}

/// Level, trend and the last seven seasonal terms; `season[pos]` is s(t−7) for the next t.
#[derive(Debug, Clone)]
pub struct HwState {
    pub level: f64,
    pub trend: f64,
    pub season: [f64; WEEK],
    pub pos: usize,
}

/// Holt-Winters additive with weekly seasonality and no trend (ETS(A,N,A); β = 0, b ≡ 0).
#[derive(Debug, Clone, Copy)]
pub struct HoltWinters;

/// Holt-Winters additive with weekly seasonality and a damped trend (ETS(A,Ad,A)).
#[derive(Debug, Clone, Copy)]
pub struct DampedHoltWinters;

const HW_ALPHAS: [f64; 5] = [0.02, 0.05, 0.1, 0.2, 0.35];
const HW_GAMMAS: [f64; 3] = [0.01, 0.05, 0.15];
const DAMPED_ALPHAS: [f64; 3] = [0.05, 0.1, 0.2];
const DAMPED_BETAS: [f64; 2] = [0.01, 0.05];
const DAMPED_GAMMAS: [f64; 2] = [0.02, 0.1];
/// Damping factor of the damped trend (FPP recommends 0.8–0.98).
pub const DAMPING: f64 = 0.9;

/// Initial state from up to four whole weeks: level = their mean, season(j) = mean of
/// weekday j − level, trend = (last week's mean − first week's mean) / days between them
/// (only when `with_trend`). Filtering then starts again at day 0.
fn hw_init(history: &[f64], with_trend: bool) -> (HwState, usize) {
    let weeks = (history.len() / WEEK).clamp(1, 4);
    let window = &history[..(weeks * WEEK).min(history.len())];
    let level = mean(window);
    let mut season = [0.0; WEEK];
    for (j, s) in season.iter_mut().enumerate() {
        let (sum, count) = window
            .iter()
            .skip(j)
            .step_by(WEEK)
            .fold((0.0, 0usize), |(sum, count), &y| (sum + y, count + 1));
        *s = if count == 0 { 0.0 } else { sum / count as f64 } - level;
    }
    let trend = if with_trend && weeks >= 2 {
        let first = mean(&window[..WEEK]);
        let last = mean(&window[(weeks - 1) * WEEK..weeks * WEEK]);
        (last - first) / ((weeks - 1) * WEEK) as f64
    } else {
        0.0
    };
    (
        HwState {
            level,
            trend,
            season,
            pos: 0,
        },
        0,
    )
}

#[inline]
fn hw_predict(s: &HwState, p: &HwParams) -> f64 {
    s.level + p.phi * s.trend + s.season[s.pos]
}

#[inline]
fn hw_update(s: &mut HwState, p: &HwParams, y: f64) {
    let old_season = s.season[s.pos];
    let anchor = s.level + p.phi * s.trend; // ℓ(t−1) + φ·b(t−1)
    let level = p.alpha * (y - old_season) + (1.0 - p.alpha) * anchor;
    s.trend = p.beta * (level - s.level) + (1.0 - p.beta) * p.phi * s.trend;
    s.season[s.pos] = p.gamma * (y - anchor) + (1.0 - p.gamma) * old_season;
    s.level = level;
    s.pos = if s.pos + 1 == WEEK { 0 } else { s.pos + 1 };
}

fn hw_forecast(s: &HwState, p: &HwParams, out: &mut [f64]) {
    let mut damped_sum = 0.0;
    let mut phi_power = 1.0;
    for (i, f) in out.iter_mut().enumerate() {
        phi_power *= p.phi;
        damped_sum += phi_power;
        *f = s.level + damped_sum * s.trend + s.season[(s.pos + i) % WEEK];
    }
}

/// h-step sd multiplier of ETS(A,N,A) (Hyndman et al. 2008, Table 6.1):
/// Var = σ²[1 + (h−1)α² + k·γ(2α + γ)], k = ⌊(h−1)/7⌋. Used for the damped variant too
/// (its trend term is small for β ≤ 0.05 and is absorbed by the backtest calibration).
fn hw_growth(p: &HwParams, h: usize) -> f64 {
    let h = h.max(1);
    let k = ((h - 1) / WEEK) as f64;
    (1.0 + (h - 1) as f64 * p.alpha * p.alpha + k * p.gamma * (2.0 * p.alpha + p.gamma)).sqrt()
}

/// [`grid_search`] for the Holt-Winters models with the K states laid out column-wise
/// (all grid points share the season position), so that the inner loop over K vectorises.
/// Same arithmetic, in the same order, as [`hw_predict`] / [`hw_update`]: it returns exactly
/// what `grid_search` would.
fn hw_grid_search<const K: usize>(
    history: &[f64],
    grid: &[HwParams; K],
    with_trend: bool,
) -> HwParams {
    let (init, start) = hw_init(history, with_trend);
    let alpha = grid.map(|p| p.alpha);
    let beta = grid.map(|p| p.beta);
    let gamma = grid.map(|p| p.gamma);
    let phi = grid.map(|p| p.phi);
    let mut level = [init.level; K];
    let mut trend = [init.trend; K];
    let mut season: [[f64; K]; WEEK] = std::array::from_fn(|j| [init.season[j]; K]);
    let mut sse = [0.0_f64; K];
    let mut pos = init.pos;
    let rest = history.get(start..).unwrap_or(&[]);
    if !with_trend
        && init.trend == 0.0
        && phi.iter().all(|&p| p == 1.0)
        && beta.iter().all(|&b| b == 0.0)
    {
        // No trend: b stays exactly 0 and ℓ + φ·b = ℓ, so the trend terms can be dropped
        // without changing a single bit of the result (for finite data).
        for &y in rest {
            let s = &mut season[pos];
            for k in 0..K {
                let old = s[k];
                let anchor = level[k];
                let e = y - (anchor + old);
                sse[k] += e * e;
                level[k] = alpha[k] * (y - old) + (1.0 - alpha[k]) * anchor;
                s[k] = gamma[k] * (y - anchor) + (1.0 - gamma[k]) * old;
            }
            pos = if pos + 1 == WEEK { 0 } else { pos + 1 };
        }
        return grid[argmin(&sse)];
    }
    for &y in rest {
        let s = &mut season[pos];
        for k in 0..K {
            let old = s[k];
            let anchor = level[k] + phi[k] * trend[k];
            let e = y - (anchor + old);
            sse[k] += e * e;
            let new_level = alpha[k] * (y - old) + (1.0 - alpha[k]) * anchor;
            trend[k] = beta[k] * (new_level - level[k]) + (1.0 - beta[k]) * phi[k] * trend[k];
            s[k] = gamma[k] * (y - anchor) + (1.0 - gamma[k]) * old;
            level[k] = new_level;
        }
        pos = if pos + 1 == WEEK { 0 } else { pos + 1 };
    }
    grid[argmin(&sse)]
}

/// Index of the smallest SSE; ties go to the earlier entry, NaN never wins.
fn argmin(sse: &[f64]) -> usize {
    let mut best = 0;
    for k in 1..sse.len() {
        if sse[k] < sse[best] || sse[best].is_nan() {
            best = k;
        }
    }
    best
}

impl Model for HoltWinters {
    type Params = HwParams;
    type State = HwState;
    const KIND: ModelKind = ModelKind::HoltWinters;
    const MIN_HISTORY: usize = 2 * WEEK;

    fn init(history: &[f64]) -> (HwState, usize) {
        hw_init(history, false)
    }
    fn predict(state: &HwState, p: &HwParams) -> f64 {
        hw_predict(state, p)
    }
    fn update(state: &mut HwState, p: &HwParams, y: f64) {
        hw_update(state, p, y)
    }
    fn forecast_into(state: &HwState, p: &HwParams, out: &mut [f64]) {
        hw_forecast(state, p, out)
    }
    fn choose_params(history: &[f64]) -> HwParams {
        let grid: [HwParams; 15] = std::array::from_fn(|i| HwParams {
            alpha: HW_ALPHAS[i / HW_GAMMAS.len()],
            beta: 0.0,
            gamma: HW_GAMMAS[i % HW_GAMMAS.len()],
            phi: 1.0,
        });
        hw_grid_search(history, &grid, false)
    }
    fn growth(p: &HwParams, h: usize) -> f64 {
        hw_growth(p, h)
    }
}

impl Model for DampedHoltWinters {
    type Params = HwParams;
    type State = HwState;
    const KIND: ModelKind = ModelKind::DampedHoltWinters;
    const MIN_HISTORY: usize = 2 * WEEK;

    fn init(history: &[f64]) -> (HwState, usize) {
        hw_init(history, true)
    }
    fn predict(state: &HwState, p: &HwParams) -> f64 {
        hw_predict(state, p)
    }
    fn update(state: &mut HwState, p: &HwParams, y: f64) {
        hw_update(state, p, y)
    }
    fn forecast_into(state: &HwState, p: &HwParams, out: &mut [f64]) {
        hw_forecast(state, p, out)
    }
    fn choose_params(history: &[f64]) -> HwParams {
        let (nb, ng) = (DAMPED_BETAS.len(), DAMPED_GAMMAS.len());
        let grid: [HwParams; 12] = std::array::from_fn(|i| HwParams {
            alpha: DAMPED_ALPHAS[i / (nb * ng)],
            beta: DAMPED_BETAS[(i / ng) % nb],
            gamma: DAMPED_GAMMAS[i % ng],
            phi: DAMPING,
        });
        hw_grid_search(history, &grid, true)
    }
    fn growth(p: &HwParams, h: usize) -> f64 {
        hw_growth(p, h)
    }
}

// ---------------------------------------------------------------------------------------
// Croston and SBA
// ---------------------------------------------------------------------------------------

/// Croston's method: at each demand occurrence, size z ← z + α(y − z) and inter-demand
/// interval p ← p + α(q − p), where q is the number of days since the previous demand;
/// between demands nothing changes. ŷ = z / p. Initialised with the first demand's size and
/// the days up to it (counting the first day as one).
#[derive(Debug, Clone, Copy)]
pub struct Croston;

/// Syntetos–Boylan approximation: Croston's forecast × (1 − α/2), removing its bias.
#[derive(Debug, Clone, Copy)]
pub struct Sba;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrostonParams {
    pub alpha: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct CrostonState {
    /// Smoothed non-zero demand size z.
    pub size: f64,
    /// Smoothed inter-demand interval p (days, ≥ 1).
    pub interval: f64,
    /// Days since the last demand, counting the current day (q).
    pub since_last: f64,
}

/// α grid for Croston and SBA (the literature's 0.05–0.3 range).
pub const CROSTON_ALPHAS: [f64; 6] = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3];

fn croston_init(history: &[f64]) -> (CrostonState, usize) {
    match history.iter().position(|&y| y > 0.0) {
        Some(first) => (
            CrostonState {
                size: history[first],
                interval: (first + 1) as f64,
                since_last: 1.0,
            },
            first + 1,
        ),
        None => (
            CrostonState {
                size: 0.0,
                interval: 1.0,
                since_last: history.len() as f64 + 1.0,
            },
            history.len(),
        ),
    }
}

#[inline]
fn croston_update(s: &mut CrostonState, p: &CrostonParams, y: f64) {
    if y > 0.0 {
        s.size += p.alpha * (y - s.size);
        s.interval += p.alpha * (s.since_last - s.interval);
        s.since_last = 1.0;
    } else {
        s.since_last += 1.0;
    }
}

#[inline]
fn croston_rate(s: &CrostonState) -> f64 {
    s.size / s.interval.max(1.0)
}

/// [`grid_search`] for Croston (`sba = false`) and SBA over [`CROSTON_ALPHAS`]. Between
/// demands the state does not move, so a run of r zero days adds r·ŷ² to the SSE at once:
/// O(n + demands·|grid|) instead of O(n·|grid|).
fn croston_grid_search(history: &[f64], sba: bool) -> CrostonParams {
    const G: usize = CROSTON_ALPHAS.len();
    let factor = CROSTON_ALPHAS.map(|alpha| if sba { 1.0 - alpha / 2.0 } else { 1.0 });
    let (init, start) = croston_init(history);
    let mut size = [init.size; G];
    let mut interval = [init.interval; G];
    let mut since_last = init.since_last;
    let mut zeros = 0.0;
    let mut sse = [0.0_f64; G];
    for &y in history.get(start..).unwrap_or(&[]) {
        if y > 0.0 {
            for g in 0..G {
                let prediction = size[g] / interval[g].max(1.0) * factor[g];
                let e = y - prediction;
                sse[g] += zeros * prediction * prediction + e * e;
                size[g] += CROSTON_ALPHAS[g] * (y - size[g]);
                interval[g] += CROSTON_ALPHAS[g] * (since_last - interval[g]);
            }
            since_last = 1.0;
            zeros = 0.0;
        } else {
            since_last += 1.0;
            zeros += 1.0;
        }
    }
    for g in 0..G {
        let prediction = size[g] / interval[g].max(1.0) * factor[g];
        sse[g] += zeros * prediction * prediction;
    }
    CrostonParams {
        alpha: CROSTON_ALPHAS[argmin(&sse)],
    }
}

impl Model for Croston {
    type Params = CrostonParams;
    type State = CrostonState;
    const KIND: ModelKind = ModelKind::Croston;
    const MIN_HISTORY: usize = 1;

    fn init(history: &[f64]) -> (CrostonState, usize) {
        croston_init(history)
    }
    fn predict(state: &CrostonState, _: &CrostonParams) -> f64 {
        croston_rate(state)
    }
    fn update(state: &mut CrostonState, p: &CrostonParams, y: f64) {
        croston_update(state, p, y)
    }
    fn forecast_into(state: &CrostonState, _: &CrostonParams, out: &mut [f64]) {
        out.fill(croston_rate(state));
    }
    fn choose_params(history: &[f64]) -> CrostonParams {
        croston_grid_search(history, false)
    }
    fn growth(p: &CrostonParams, h: usize) -> f64 {
        ses_growth(p.alpha, h)
    }
}

impl Model for Sba {
    type Params = CrostonParams;
    type State = CrostonState;
    const KIND: ModelKind = ModelKind::Sba;
    const MIN_HISTORY: usize = 1;

    fn init(history: &[f64]) -> (CrostonState, usize) {
        croston_init(history)
    }
    fn predict(state: &CrostonState, p: &CrostonParams) -> f64 {
        croston_rate(state) * (1.0 - p.alpha / 2.0)
    }
    fn update(state: &mut CrostonState, p: &CrostonParams, y: f64) {
        croston_update(state, p, y)
    }
    fn forecast_into(state: &CrostonState, p: &CrostonParams, out: &mut [f64]) {
        out.fill(Self::predict(state, p));
    }
    fn choose_params(history: &[f64]) -> CrostonParams {
        croston_grid_search(history, true)
    }
    fn growth(p: &CrostonParams, h: usize) -> f64 {
        ses_growth(p.alpha, h)
    }
}

// ---------------------------------------------------------------------------------------
// TSB
// ---------------------------------------------------------------------------------------

/// Teunter–Syntetos–Babai: every day the demand probability d ← d + β(1{y>0} − d); on
/// demand days the size z ← z + α(y − z). ŷ = d·z, so the forecast decays towards zero
/// while no demand occurs (obsolescence). Initialised from the first 28 days (extended to
/// the first demand): d = share of days with demand, z = mean non-zero size.
#[derive(Debug, Clone, Copy)]
pub struct Tsb;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TsbParams {
    pub alpha: f64,
    pub beta: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct TsbState {
    /// Smoothed probability of a demand day.
    pub probability: f64,
    /// Smoothed non-zero demand size.
    pub size: f64,
}

const TSB_ALPHAS: [f64; 4] = [0.05, 0.1, 0.2, 0.3];
const TSB_BETAS: [f64; 5] = [0.01, 0.02, 0.05, 0.1, 0.2];
const TSB_INIT_DAYS: usize = 28;

/// [`grid_search`] for TSB: the grid is α × β, the probability recursion depends only on β
/// and the size recursion only on α, so 9 recursions (not 20) are advanced per day and the
/// 20 one-step errors are formed from them. Same arithmetic as [`Tsb::predict`] /
/// [`Tsb::update`]: it returns exactly what `grid_search` would.
fn tsb_grid_search(history: &[f64], grid: &[TsbParams; 20]) -> TsbParams {
    const NA: usize = TSB_ALPHAS.len();
    const NB: usize = TSB_BETAS.len();
    let (init, start) = Tsb::init(history);
    let mut probability = [init.probability; NB];
    let mut size = [init.size; NA];
    let mut sse = [0.0_f64; NA * NB];
    for &y in history.get(start..).unwrap_or(&[]) {
        for a in 0..NA {
            for b in 0..NB {
                let e = y - probability[b] * size[a];
                sse[a * NB + b] += e * e;
            }
        }
        if y > 0.0 {
            for b in 0..NB {
                probability[b] += TSB_BETAS[b] * (1.0 - probability[b]);
            }
            for a in 0..NA {
                size[a] += TSB_ALPHAS[a] * (y - size[a]);
            }
        } else {
            for b in 0..NB {
                probability[b] -= TSB_BETAS[b] * probability[b];
            }
        }
    }
    grid[argmin(&sse)]
}

impl Model for Tsb {
    type Params = TsbParams;
    type State = TsbState;
    const KIND: ModelKind = ModelKind::Tsb;
    const MIN_HISTORY: usize = 1;

    fn init(history: &[f64]) -> (TsbState, usize) {
        let first_demand = history.iter().position(|&y| y > 0.0).unwrap_or(0);
        let window = &history[..TSB_INIT_DAYS.max(first_demand + 1).min(history.len())];
        let (count, total) = window
            .iter()
            .filter(|&&y| y > 0.0)
            .fold((0usize, 0.0), |(c, s), &y| (c + 1, s + y));
        let state = if count == 0 {
            TsbState {
                probability: 0.0,
                size: 0.0,
            }
        } else {
            TsbState {
                probability: count as f64 / window.len() as f64,
                size: total / count as f64,
            }
        };
        (state, 0)
    }
    fn predict(state: &TsbState, _: &TsbParams) -> f64 {
        state.probability * state.size
    }
    fn update(state: &mut TsbState, p: &TsbParams, y: f64) {
        if y > 0.0 {
            state.probability += p.beta * (1.0 - state.probability);
            state.size += p.alpha * (y - state.size);
        } else {
            state.probability -= p.beta * state.probability;
        }
    }
    fn forecast_into(state: &TsbState, p: &TsbParams, out: &mut [f64]) {
        out.fill(Self::predict(state, p));
    }
    fn choose_params(history: &[f64]) -> TsbParams {
        let nb = TSB_BETAS.len();
        let grid: [TsbParams; 20] = std::array::from_fn(|i| TsbParams {
            alpha: TSB_ALPHAS[i / nb],
            beta: TSB_BETAS[i % nb],
        });
        tsb_grid_search(history, &grid)
    }
    fn growth(p: &TsbParams, h: usize) -> f64 {
        ses_growth(p.beta, h)
    }
}

// ---------------------------------------------------------------------------------------
// ADIDA and IMAPA (temporal aggregation)
// ---------------------------------------------------------------------------------------

/// Largest temporal aggregation level (days per bucket) of [`Adida`] and [`Imapa`].
pub const MAX_AGGREGATION: usize = 12;
/// α grid of the SES run on the aggregated series (the intermittent-demand literature's
/// 0.05–0.3 range; statsforecast searches 0.1–0.3).
pub const AGGREGATE_ALPHAS: [f64; 5] = [0.05, 0.1, 0.15, 0.2, 0.3];
/// Days whose mean initialises the aggregated SES level.
const AGGREGATE_INIT_DAYS: usize = 28;

/// The aggregation level of ADIDA (and the highest level of IMAPA): the mean inter-demand
/// interval rounded to the nearest integer (Nikolopoulos et al. 2011; statsforecast computes
/// it as `(index of the last demand + 1) / number of demand days`), clamped to
/// `1..=MAX_AGGREGATION`. A history without demand gives 1.
pub fn aggregation_level(history: &[f64]) -> usize {
    let (count, last) = history
        .iter()
        .enumerate()
        .filter(|(_, &y)| y > 0.0)
        .fold((0usize, 0usize), |(c, _), (i, _)| (c + 1, i));
    if count == 0 {
        return 1;
    }
    let interval = (last + 1) as f64 / count as f64;
    (interval.round() as usize).clamp(1, MAX_AGGREGATION)
}

/// One temporal-aggregation filter: days are summed into non-overlapping buckets of `k`
/// days (aligned to the first filtered day); when a bucket is complete, the daily rate (the
/// SES level of the bucket means) moves towards it: `rate ← rate + α(sum/k − rate)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    /// Smoothed demand per day (the aggregated SES level divided by `k`).
    pub rate: f64,
    /// Sum of the days of the bucket in progress.
    pub bucket_sum: f64,
    /// Days in the bucket in progress (< k).
    pub bucket_days: usize,
}

impl BucketState {
    fn new(rate: f64) -> Self {
        BucketState {
            rate,
            bucket_sum: 0.0,
            bucket_days: 0,
        }
    }

    #[inline]
    fn update(&mut self, k: usize, alpha: f64, y: f64) {
        self.bucket_sum += y;
        self.bucket_days += 1;
        if self.bucket_days >= k {
            self.rate += alpha * (self.bucket_sum / k as f64 - self.rate);
            self.bucket_sum = 0.0;
            self.bucket_days = 0;
        }
    }
}

/// Initial daily rate of the aggregated filters: mean of the first (up to) 28 days.
fn aggregate_init(history: &[f64]) -> f64 {
    mean(&history[..history.len().min(AGGREGATE_INIT_DAYS)])
}

/// The α of [`AGGREGATE_ALPHAS`] with the smallest daily one-step SSE of the level-`k`
/// filter, computed on the bucket means: within a bucket the prediction is constant, so the
/// daily SSE is `Σ (y − m)² + Σ_b w_b (m_b − rate_b)²` with `m_b` the bucket mean and
/// `w_b` its days; the first sum does not depend on α. Costs `n + |grid|·n/k`.
fn aggregate_alpha(history: &[f64], k: usize) -> f64 {
    const G: usize = AGGREGATE_ALPHAS.len();
    let k = k.max(1);
    let mut rates = [aggregate_init(history); G];
    let mut sse = [0.0_f64; G];
    for chunk in history.chunks(k) {
        let w = chunk.len() as f64;
        let m = chunk.iter().sum::<f64>() / w;
        let complete = chunk.len() == k;
        for g in 0..G {
            let e = m - rates[g];
            sse[g] += w * e * e;
            if complete {
                rates[g] += AGGREGATE_ALPHAS[g] * e;
            }
        }
    }
    let mut best = 0;
    for g in 1..G {
        if sse[g] < sse[best] || sse[best].is_nan() {
            best = g;
        }
    }
    AGGREGATE_ALPHAS[best]
}

/// h-step growth of an aggregated SES: the level moves once per `k` days.
fn aggregate_growth(k: usize, alpha: f64, h: usize) -> f64 {
    ses_growth(alpha, (h.max(1) - 1) / k.max(1) + 1)
}

/// ADIDA, the Aggregate–Disaggregate Intermittent Demand Approach (Nikolopoulos, Syntetos,
/// Boylan, Petropoulos & Assimakopoulos 2011): sum the daily series into non-overlapping
/// buckets of `k` days (k = the rounded mean inter-demand interval), forecast the bucket
/// totals with SES, and spread the forecast equally over the `k` days: ŷ = SES(buckets)/k.
/// Recursive form: see [`BucketState`]. The initial level is the mean of the first (up to)
/// 28 days; a bucket still in progress does not move the forecast.
#[derive(Debug, Clone, Copy)]
pub struct Adida;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdidaParams {
    /// Days per bucket (k ≥ 1).
    pub aggregation: usize,
    pub alpha: f64,
}

impl Model for Adida {
    type Params = AdidaParams;
    type State = BucketState;
    const KIND: ModelKind = ModelKind::Adida;
    const MIN_HISTORY: usize = 1;

    fn init(history: &[f64]) -> (BucketState, usize) {
        (BucketState::new(aggregate_init(history)), 0)
    }
    fn predict(state: &BucketState, _: &AdidaParams) -> f64 {
        state.rate
    }
    fn update(state: &mut BucketState, p: &AdidaParams, y: f64) {
        state.update(p.aggregation.max(1), p.alpha, y)
    }
    fn forecast_into(state: &BucketState, _: &AdidaParams, out: &mut [f64]) {
        out.fill(state.rate);
    }
    fn choose_params(history: &[f64]) -> AdidaParams {
        let aggregation = aggregation_level(history);
        AdidaParams {
            aggregation,
            alpha: aggregate_alpha(history, aggregation),
        }
    }
    fn growth(p: &AdidaParams, h: usize) -> f64 {
        aggregate_growth(p.aggregation, p.alpha, h)
    }
}

/// IMAPA, the Intermittent Multiple Aggregation Prediction Algorithm (Petropoulos &
/// Kourentzes 2015): ADIDA at every aggregation level `k = 1..=K` (K = the rounded mean
/// inter-demand interval), each level with its own SES α, and the equal-weight mean of the
/// per-day forecasts. (As in statsforecast, SES is used at every level.)
#[derive(Debug, Clone, Copy)]
pub struct Imapa;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImapaParams {
    /// Highest aggregation level K (levels 1..=K are combined).
    pub levels: usize,
    /// α of level k at index k − 1 (entries ≥ `levels` are unused).
    pub alphas: [f64; MAX_AGGREGATION],
}

/// One [`BucketState`] per aggregation level; level k at index k − 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImapaState {
    pub buckets: [BucketState; MAX_AGGREGATION],
}

impl Model for Imapa {
    type Params = ImapaParams;
    type State = ImapaState;
    const KIND: ModelKind = ModelKind::Imapa;
    const MIN_HISTORY: usize = 1;

    fn init(history: &[f64]) -> (ImapaState, usize) {
        (
            ImapaState {
                buckets: [BucketState::new(aggregate_init(history)); MAX_AGGREGATION],
            },
            0,
        )
    }
    fn predict(state: &ImapaState, p: &ImapaParams) -> f64 {
        let levels = p.levels.clamp(1, MAX_AGGREGATION);
        state.buckets[..levels].iter().map(|b| b.rate).sum::<f64>() / levels as f64
    }
    fn update(state: &mut ImapaState, p: &ImapaParams, y: f64) {
        let levels = p.levels.clamp(1, MAX_AGGREGATION);
        for (i, bucket) in state.buckets[..levels].iter_mut().enumerate() {
            bucket.update(i + 1, p.alphas[i], y);
        }
    }
    fn forecast_into(state: &ImapaState, p: &ImapaParams, out: &mut [f64]) {
        out.fill(Self::predict(state, p));
    }
    fn choose_params(history: &[f64]) -> ImapaParams {
        let levels = aggregation_level(history);
        let mut alphas = [AGGREGATE_ALPHAS[0]; MAX_AGGREGATION];
        for (i, alpha) in alphas[..levels].iter_mut().enumerate() {
            *alpha = aggregate_alpha(history, i + 1);
        }
        ImapaParams { levels, alphas }
    }
    fn growth(p: &ImapaParams, h: usize) -> f64 {
        // Mean of the levels' variance growth (the levels' errors are strongly correlated).
        let levels = p.levels.clamp(1, MAX_AGGREGATION);
        let steps = h.max(1) - 1;
        let sum: f64 = (0..levels)
            .map(|i| 1.0 + (steps / (i + 1)) as f64 * p.alphas[i] * p.alphas[i])
            .sum();
        (sum / levels as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    fn assert_all_close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert_close(*a, *e);
        }
    }

    #[test]
    fn model_kind_round_trips_through_its_name() {
        for kind in ModelKind::SINGLE_MODELS.into_iter().chain([
            ModelKind::Zero,
            ModelKind::Combination,
            ModelKind::Pooled,
            ModelKind::PooledBlend,
        ]) {
            assert_eq!(kind.as_str().parse::<ModelKind>(), Ok(kind));
        }
        assert!("arima".parse::<ModelKind>().is_err());
    }

    #[test]
    fn seasonal_naive_by_hand() {
        // history 1..=10. Init: last week = [1..7], filtering starts at day 7 (value 8).
        // Day 7 predicts 1 (err 7), day 8 predicts 2 (err 7), day 9 predicts 3 (err 7):
        // residual sd = sqrt((49·3)/3) = 7. Last week becomes [8,9,10,4,5,6,7], pos 3, so
        // the next 8 days are 4,5,6,7,8,9,10,4.
        let history: Vec<f64> = (1..=10).map(f64::from).collect();
        let fitted = Fitted::<SeasonalNaive>::fit(&history).expect("long enough");
        assert_all_close(
            &fitted.forecast(8),
            &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 4.0],
        );
        assert_close(fitted.residual_sd(), 7.0);
        // h = 8 spans two weeks: sd × sqrt(2).
        assert_close(fitted.interval_sd(8), 7.0 * 2f64.sqrt());
        assert_close(fitted.interval_sd(7), 7.0);
    }

    #[test]
    fn seasonal_naive_rejects_short_history() {
        let err = Fitted::<SeasonalNaive>::fit(&[1.0; 6]).expect_err("too short");
        assert_eq!(
            err,
            ModelError::TooShort {
                model: ModelKind::SeasonalNaive,
                needed: 7,
                got: 6
            }
        );
    }

    #[test]
    fn ses_by_hand() {
        // [2,4,6], α = 0.5. ℓ0 = mean(2,4,6) = 4.
        // t0: ŷ 4, e −2, ℓ = 4 + 0.5·(−2) = 3
        // t1: ŷ 3, e  1, ℓ = 3.5
        // t2: ŷ 3.5, e 2.5, ℓ = 4.75
        // SSE = 4 + 1 + 6.25 = 11.25 → sd = sqrt(11.25/3) = sqrt(3.75)
        // growth(3) = sqrt(1 + 2·0.25) = sqrt(1.5)
        let fitted =
            Fitted::<Ses>::with_params(&[2.0, 4.0, 6.0], SesParams { alpha: 0.5 }).expect("ok");
        assert_all_close(&fitted.forecast(2), &[4.75, 4.75]);
        assert_close(fitted.sse, 11.25);
        assert_close(fitted.residual_sd(), 3.75f64.sqrt());
        assert_close(fitted.interval_sd(3), 3.75f64.sqrt() * 1.5f64.sqrt());
    }

    #[test]
    fn ses_grid_prefers_smooth_for_noise_and_fast_for_level_shifts() {
        // A constant series fits every α perfectly: the tie goes to the smoothest α.
        let flat = Fitted::<Ses>::fit(&[5.0; 30]).expect("ok");
        assert_eq!(flat.params.alpha, SES_ALPHAS[0]);
        // A permanent level shift after a zero week is tracked fastest by the largest α.
        let mut shift = vec![0.0; 7];
        shift.extend([10.0; 20]);
        let fitted = Fitted::<Ses>::fit(&shift).expect("ok");
        assert_eq!(fitted.params.alpha, SES_ALPHAS[SES_ALPHAS.len() - 1]);
    }

    #[test]
    fn holt_winters_reproduces_a_pure_weekly_pattern() {
        // Three identical weeks: init level = 140/7 = 20, seasons = pattern − 20, so every
        // one-step prediction is exact (SSE 0) whatever the parameters, and the forecast
        // continues the pattern from Monday again (21 days = 3 whole weeks).
        let pattern = [10.0, 12.0, 14.0, 16.0, 18.0, 30.0, 40.0];
        let history: Vec<f64> = pattern.iter().cycle().take(21).copied().collect();
        let fitted = Fitted::<HoltWinters>::fit(&history).expect("ok");
        assert_close(fitted.sse, 0.0);
        assert_all_close(&fitted.forecast(7), &pattern);
        let damped = Fitted::<DampedHoltWinters>::fit(&history).expect("ok");
        assert_all_close(&damped.forecast(7), &pattern);
    }

    #[test]
    fn holt_winters_init_by_hand() {
        // Two weeks 1..=14: level = mean 7.5; weekday j averages (j+1 + j+8)/2 = j + 4.5, so
        // its season is j − 3; the damped model's trend is (mean of week 2 − mean of week 1)
        // / 7 = (11 − 4)/7 = 1. Filtering restarts at day 0.
        let history: Vec<f64> = (1..=14).map(f64::from).collect();
        let (plain, start) = HoltWinters::init(&history);
        assert_eq!(start, 0);
        assert_close(plain.level, 7.5);
        assert_close(plain.trend, 0.0);
        assert_all_close(&plain.season, &[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]);
        let (damped, _) = DampedHoltWinters::init(&history);
        assert_close(damped.level, 7.5);
        assert_close(damped.trend, 1.0);
        assert_eq!(damped.pos, 0);
    }

    #[test]
    fn intermittent_growth_formulas() {
        // SES-style growth with the smoothing constant of the level that moves:
        // Croston/SBA α = 0.2, h = 2 → √(1 + 0.04); TSB uses β = 0.1, h = 3 → √(1 + 2·0.01).
        assert_close(
            Croston::growth(&CrostonParams { alpha: 0.2 }, 2),
            1.04f64.sqrt(),
        );
        assert_close(Sba::growth(&CrostonParams { alpha: 0.2 }, 1), 1.0);
        assert_close(
            Tsb::growth(
                &TsbParams {
                    alpha: 0.3,
                    beta: 0.1,
                },
                3,
            ),
            1.02f64.sqrt(),
        );
        // IMAPA, levels 1 and 2 with α = 0.5, h = 3 (2 steps): level 1 moves twice
        // (1 + 2·0.25), level 2 once (1 + 0.25); mean 1.375.
        let mut alphas = [0.0; MAX_AGGREGATION];
        alphas[0] = 0.5;
        alphas[1] = 0.5;
        assert_close(
            Imapa::growth(&ImapaParams { levels: 2, alphas }, 3),
            1.375f64.sqrt(),
        );
    }

    #[test]
    fn holt_winters_update_by_hand() {
        // State ℓ=10, b=0, season [2,0,0,0,0,0,−2], pos 0; α=0.5, γ=0.2, β=0, φ=1.
        // y=14: ŷ = 10 + 2 = 12. ℓ = 0.5·(14−2) + 0.5·10 = 11.
        //        s(Mon) = 0.2·(14 − 10) + 0.8·2 = 2.4; pos → 1.
        // y=11: ŷ = 11 + 0 = 11 (no error): ℓ = 0.5·11 + 0.5·11 = 11, s = 0.2·0 + 0 = 0.
        // Forecast 6 days from pos 2: 11,11,11,11,11−2=9, then Monday 11+2.4=13.4.
        let p = HwParams {
            alpha: 0.5,
            beta: 0.0,
            gamma: 0.2,
            phi: 1.0,
        };
        let mut s = HwState {
            level: 10.0,
            trend: 0.0,
            season: [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -2.0],
            pos: 0,
        };
        assert_close(HoltWinters::predict(&s, &p), 12.0);
        HoltWinters::update(&mut s, &p, 14.0);
        assert_close(s.level, 11.0);
        assert_close(s.season[0], 2.4);
        assert_close(HoltWinters::predict(&s, &p), 11.0);
        HoltWinters::update(&mut s, &p, 11.0);
        let mut out = [0.0; 6];
        HoltWinters::forecast_into(&s, &p, &mut out);
        assert_all_close(&out, &[11.0, 11.0, 11.0, 11.0, 9.0, 13.4]);
    }

    #[test]
    fn damped_trend_update_by_hand() {
        // ℓ=10, b=1, no season, α=0.5, β=0.1, γ=0, φ=0.9, y=12:
        // anchor = 10 + 0.9·1 = 10.9 = ŷ. ℓ = 0.5·12 + 0.5·10.9 = 11.45.
        // b = 0.1·(11.45 − 10) + 0.9·0.9·1 = 0.145 + 0.81 = 0.955.
        // Forecast h=1: 11.45 + 0.9·0.955 = 12.3095; h=2: 11.45 + (0.9 + 0.81)·0.955 = 13.08305.
        let p = HwParams {
            alpha: 0.5,
            beta: 0.1,
            gamma: 0.0,
            phi: 0.9,
        };
        let mut s = HwState {
            level: 10.0,
            trend: 1.0,
            season: [0.0; WEEK],
            pos: 3,
        };
        assert_close(DampedHoltWinters::predict(&s, &p), 10.9);
        DampedHoltWinters::update(&mut s, &p, 12.0);
        assert_close(s.level, 11.45);
        assert_close(s.trend, 0.955);
        let mut out = [0.0; 2];
        DampedHoltWinters::forecast_into(&s, &p, &mut out);
        assert_all_close(&out, &[12.3095, 13.08305]);
    }

    #[test]
    fn holt_winters_growth_formula() {
        // α=0.2, γ=0.1, h=8 → k=1: 1 + 7·0.04 + 1·0.1·(0.4+0.1) = 1.33.
        let p = HwParams {
            alpha: 0.2,
            beta: 0.0,
            gamma: 0.1,
            phi: 1.0,
        };
        assert_close(HoltWinters::growth(&p, 8), 1.33f64.sqrt());
        assert_close(HoltWinters::growth(&p, 1), 1.0);
    }

    const INTERMITTENT: [f64; 9] = [0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 4.0];

    #[test]
    fn croston_by_hand() {
        // First demand on day 2 (size 3): z=3, p=3 (days 0..=2), q=1, filtering from day 3.
        // α = 0.5.
        // d3 y=0: ŷ 3/3=1, e −1, q=2
        // d4 y=0: ŷ 1, e −1, q=3
        // d5 y=0: ŷ 1, e −1, q=4
        // d6 y=2: ŷ 1, e 1; z = 3 + 0.5(2−3) = 2.5; p = 3 + 0.5(4−3) = 3.5; q=1
        // d7 y=0: ŷ 2.5/3.5 = 5/7, e −5/7, q=2
        // d8 y=4: ŷ 5/7, e 23/7; z = 2.5 + 0.5·1.5 = 3.25; p = 3.5 + 0.5(2−3.5) = 2.75
        // forecast = 3.25/2.75 = 13/11; SSE = 4 + 25/49 + 529/49 = 4 + 554/49
        let fitted = Fitted::<Croston>::with_params(&INTERMITTENT, CrostonParams { alpha: 0.5 })
            .expect("ok");
        assert_all_close(&fitted.forecast(3), &[13.0 / 11.0; 3]);
        assert_close(fitted.sse, 4.0 + 554.0 / 49.0);
        assert_eq!(fitted.residual_count, 6);
    }

    #[test]
    fn sba_is_croston_times_one_minus_half_alpha() {
        // Same filter as Croston; forecast 13/11 · (1 − 0.25) = 39/44.
        let fitted =
            Fitted::<Sba>::with_params(&INTERMITTENT, CrostonParams { alpha: 0.5 }).expect("ok");
        assert_all_close(&fitted.forecast(2), &[39.0 / 44.0; 2]);
        // In-sample, every prediction is also scaled by 0.75: days 3–5 predict 0.75.
        assert_close(
            Sba::predict(
                &CrostonState {
                    size: 3.0,
                    interval: 3.0,
                    since_last: 1.0,
                },
                &CrostonParams { alpha: 0.5 },
            ),
            0.75,
        );
    }

    #[test]
    fn croston_without_demand_forecasts_zero() {
        let fitted = Fitted::<Croston>::fit(&[0.0; 10]).expect("ok");
        assert_all_close(&fitted.forecast(2), &[0.0, 0.0]);
        assert_eq!(fitted.residual_count, 0);
        assert_close(fitted.residual_sd(), 0.0);
    }

    #[test]
    fn tsb_by_hand() {
        // [0,3,0,0,5]: init window = all 5 days: d = 2/5 = 0.4, z = (3+5)/2 = 4.
        // α = β = 0.5, filtering from day 0:
        // d0 y=0: ŷ 1.6,  e −1.6;   d = 0.2
        // d1 y=3: ŷ 0.8,  e  2.2;   d = 0.2 + 0.5·0.8 = 0.6, z = 4 + 0.5(3−4) = 3.5
        // d2 y=0: ŷ 2.1,  e −2.1;   d = 0.3
        // d3 y=0: ŷ 1.05, e −1.05;  d = 0.15
        // d4 y=5: ŷ 0.525, e 4.475; d = 0.15 + 0.5·0.85 = 0.575, z = 3.5 + 0.5·1.5 = 4.25
        // forecast = 0.575 · 4.25 = 2.44375
        // SSE = 2.56 + 4.84 + 4.41 + 1.1025 + 20.025625 = 32.938125
        let fitted = Fitted::<Tsb>::with_params(
            &[0.0, 3.0, 0.0, 0.0, 5.0],
            TsbParams {
                alpha: 0.5,
                beta: 0.5,
            },
        )
        .expect("ok");
        assert_all_close(&fitted.forecast(2), &[2.44375, 2.44375]);
        assert_close(fitted.sse, 32.938125);
    }

    #[test]
    fn tsb_decays_during_obsolescence() {
        let mut history = vec![2.0; 28];
        history.extend([0.0; 60]);
        let fitted = Fitted::<Tsb>::fit(&history).expect("ok");
        assert!(
            fitted.forecast(1)[0] < 0.5,
            "forecast {:?}",
            fitted.forecast(1)
        );
    }

    /// Deterministic awkward test series: intermittent, seasonal, trending.
    fn test_series() -> Vec<Vec<f64>> {
        let mut seed = 99u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        vec![
            (0..300)
                .map(|_| {
                    if next() < 0.2 {
                        (1.0 + 5.0 * next()).floor()
                    } else {
                        0.0
                    }
                })
                .collect(),
            (0..200)
                .map(|t| {
                    10.0 + [0.0, 1.0, 2.0, 3.0, 5.0, 9.0, 4.0][t % 7]
                        + 3.0 * next()
                        + t as f64 * 0.05
                })
                .collect(),
            (0..60).map(|_| (3.0 * next()).floor()).collect(),
        ]
    }

    #[test]
    fn specialised_grid_searches_match_the_generic_one() {
        for history in test_series() {
            let grid: [HwParams; 15] = std::array::from_fn(|i| HwParams {
                alpha: HW_ALPHAS[i / HW_GAMMAS.len()],
                beta: 0.0,
                gamma: HW_GAMMAS[i % HW_GAMMAS.len()],
                phi: 1.0,
            });
            assert_eq!(
                HoltWinters::choose_params(&history),
                grid_search::<HoltWinters, 15>(&history, &grid)
            );
            let (nb, ng) = (DAMPED_BETAS.len(), DAMPED_GAMMAS.len());
            let grid: [HwParams; 12] = std::array::from_fn(|i| HwParams {
                alpha: DAMPED_ALPHAS[i / (nb * ng)],
                beta: DAMPED_BETAS[(i / ng) % nb],
                gamma: DAMPED_GAMMAS[i % ng],
                phi: DAMPING,
            });
            assert_eq!(
                DampedHoltWinters::choose_params(&history),
                grid_search::<DampedHoltWinters, 12>(&history, &grid)
            );
            let nb = TSB_BETAS.len();
            let grid: [TsbParams; 20] = std::array::from_fn(|i| TsbParams {
                alpha: TSB_ALPHAS[i / nb],
                beta: TSB_BETAS[i % nb],
            });
            assert_eq!(
                Tsb::choose_params(&history),
                grid_search::<Tsb, 20>(&history, &grid)
            );
            let grid = CROSTON_ALPHAS.map(|alpha| CrostonParams { alpha });
            assert_eq!(
                Croston::choose_params(&history),
                grid_search::<Croston, 6>(&history, &grid)
            );
            assert_eq!(
                Sba::choose_params(&history),
                grid_search::<Sba, 6>(&history, &grid)
            );
        }
    }

    #[test]
    fn adida_by_hand() {
        // [0,2,0,4,0,0,3,1], k = 2, α = 0.5. Initial rate = mean of the 8 days = 1.25.
        // Buckets (0,2) (0,4) (0,0) (3,1) have means 1, 2, 0, 2; the rate moves after each:
        //   1.25 → 1.125 → 1.5625 → 0.78125 → 1.390625 (the forecast).
        // Daily one-step errors (prediction constant within a bucket):
        //   −1.25, 0.75 | −1.125, 2.875 | −1.5625, −1.5625 | 2.21875, 0.21875
        // SSE = 1.5625 + 0.5625 + 1.265625 + 8.265625 + 2·2.44140625 + 4.9228515625
        //       + 0.0478515625 = 21.509765625
        let history = [0.0, 2.0, 0.0, 4.0, 0.0, 0.0, 3.0, 1.0];
        let fitted = Fitted::<Adida>::with_params(
            &history,
            AdidaParams {
                aggregation: 2,
                alpha: 0.5,
            },
        )
        .expect("ok");
        assert_all_close(&fitted.forecast(3), &[1.390625; 3]);
        assert_close(fitted.sse, 21.509765625);
        // A bucket in progress does not move the forecast until it is complete.
        let mut state = fitted.state;
        Adida::update(&mut state, &fitted.params, 5.0);
        assert_close(Adida::predict(&state, &fitted.params), 1.390625);
        Adida::update(&mut state, &fitted.params, 1.0);
        // Bucket mean 3: 1.390625 + 0.5·(3 − 1.390625) = 2.1953125.
        assert_close(Adida::predict(&state, &fitted.params), 2.1953125);
        // h-step growth: the level moves once per bucket, h = 3 → 2 buckets → √(1 + α²).
        assert_close(Adida::growth(&fitted.params, 3), 1.25f64.sqrt());
    }

    #[test]
    fn aggregation_level_is_the_rounded_mean_inter_demand_interval() {
        // Demands on days 2, 6, 8: intervals 3, 4, 2 → mean 3.
        assert_eq!(aggregation_level(&INTERMITTENT), 3);
        assert_eq!(aggregation_level(&[1.0; 10]), 1);
        assert_eq!(aggregation_level(&[0.0; 10]), 1);
        // One demand in 100 days is capped.
        let mut sparse = [0.0; 100];
        sparse[99] = 1.0;
        assert_eq!(aggregation_level(&sparse), MAX_AGGREGATION);
        let fitted = Fitted::<Adida>::fit(&INTERMITTENT).expect("ok");
        assert_eq!(fitted.params.aggregation, 3);
    }

    #[test]
    fn aggregate_alpha_matches_a_daily_grid_search() {
        // The bucket-level shortcut must pick the same α as searching the daily filter.
        let history: Vec<f64> = (0..200).map(|t| if t % 3 == 0 { ((t * 7) % 5) as f64 } else { 0.0 } + (t / 50) as f64).collect();
        for k in 1..=5 {
            let grid = AGGREGATE_ALPHAS.map(|alpha| AdidaParams {
                aggregation: k,
                alpha,
            });
            assert_eq!(
                aggregate_alpha(&history, k),
                grid_search::<Adida, 5>(&history, &grid).alpha,
                "k = {k}"
            );
        }
    }

    #[test]
    fn imapa_by_hand() {
        // [0,2,0,4], levels 1 and 2, α = 0.5 at both. Initial rate = 1.5 at both levels.
        // Level 1 (daily SES): 1.5 → 0.75 → 1.375 → 0.6875 → 2.34375.
        // Level 2: buckets (0,2), (0,4) → 1.5 → 1.25 → 1.625.
        // Predictions (mean of the levels): 1.5, 1.125, 1.3125, 0.96875; forecast
        // (2.34375 + 1.625)/2 = 1.984375.
        // SSE = 2.25 + 0.765625 + 1.72265625 + 9.1884765625 = 13.9267578125.
        let mut alphas = [0.0; MAX_AGGREGATION];
        alphas[0] = 0.5;
        alphas[1] = 0.5;
        let params = ImapaParams { levels: 2, alphas };
        let fitted = Fitted::<Imapa>::with_params(&[0.0, 2.0, 0.0, 4.0], params).expect("ok");
        assert_all_close(&fitted.forecast(2), &[1.984375; 2]);
        assert_close(fitted.sse, 13.9267578125);
    }

    #[test]
    fn imapa_with_one_level_is_adida_with_one_level() {
        let history = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let imapa = Fitted::<Imapa>::fit(&history).expect("ok");
        let adida = Fitted::<Adida>::fit(&history).expect("ok");
        assert_eq!(imapa.params.levels, 1);
        assert_eq!(adida.params.aggregation, 1);
        assert_close(imapa.forecast(1)[0], adida.forecast(1)[0]);
        assert_close(imapa.sse, adida.sse);
        // IMAPA's levels are 1..=K with K = ADIDA's level.
        let imapa = Fitted::<Imapa>::fit(&INTERMITTENT).expect("ok");
        assert_eq!(imapa.params.levels, 3);
    }

    #[test]
    fn every_model_is_finite_on_awkward_inputs() {
        let inputs: [&[f64]; 4] = [
            &[0.0; 14],
            &[1e9; 20],
            &[
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0,
            ],
            &[5.0; 14],
        ];
        for history in inputs {
            for f in [
                Fitted::<SeasonalNaive>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<Ses>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<HoltWinters>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<DampedHoltWinters>::fit(history)
                    .map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<Croston>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<Sba>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<Tsb>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<Adida>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
                Fitted::<Imapa>::fit(history).map(|m| (m.forecast(30), m.interval_sd(30))),
            ] {
                let (mean, sd) = f.expect("long enough");
                assert!(mean.iter().all(|v| v.is_finite()) && sd.is_finite());
            }
        }
    }
}
