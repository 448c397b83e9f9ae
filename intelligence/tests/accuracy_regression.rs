//! Accuracy regression guard on the public data sets of `data/` (see `data/convert.py`):
//! the last 28 days of every series are held out and forecast from the rest, as in
//! `benches/accuracy.rs`. The bounds are loose on purpose — they catch a broken selection,
//! combination or model (which moves RMSSE by tens of percent), not the noise of one month.

use std::fs::File;
use std::path::Path;

use bazaar_intelligence::csv_io::read_daily_series;
use bazaar_intelligence::models::ModelKind;
use bazaar_intelligence::select::{forecast_series, SelectConfig};

const HOLDOUT: usize = 28;

fn load(name: &str) -> Vec<Vec<f64>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name);
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    read_daily_series(file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|s| s.history)
        .filter(|h| h.len() > 2 * HOLDOUT)
        .collect()
}

/// Mean RMSSE over the series whose training part has a defined scale (as in M5).
fn mean_rmsse(series: &[Vec<f64>], cfg: &SelectConfig) -> f64 {
    let mut total = 0.0;
    let mut count = 0;
    for history in series {
        let (train, test) = history.split_at(history.len() - HOLDOUT);
        let Some(first) = train.iter().position(|&y| y > 0.0) else {
            continue;
        };
        let active = &train[first..];
        let scale = active
            .windows(2)
            .map(|w| (w[1] - w[0]).powi(2))
            .sum::<f64>()
            / (active.len().max(2) - 1) as f64;
        if scale <= 0.0 {
            continue;
        }
        let f = forecast_series(train, HOLDOUT, cfg);
        let mse = test
            .iter()
            .zip(&f.mean)
            .map(|(y, m)| (y - m).powi(2))
            .sum::<f64>()
            / HOLDOUT as f64;
        total += (mse / scale).sqrt();
        count += 1;
    }
    assert!(count > 0, "no series scored");
    total / count as f64
}

fn check(name: &str, beat_naive_by: f64) {
    let series = load(name);
    assert!(series.len() >= 10, "{name}: {} series", series.len());
    let auto = mean_rmsse(&series, &SelectConfig::default());
    let singles: Vec<(ModelKind, f64)> = ModelKind::SINGLE_MODELS
        .iter()
        .map(|&k| (k, mean_rmsse(&series, &SelectConfig::single(k))))
        .collect();
    let naive = singles
        .iter()
        .find(|s| s.0 == ModelKind::SeasonalNaive)
        .map(|s| s.1)
        .expect("seasonal naive is a single model");
    let best = singles.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    assert!(
        auto < (1.0 - beat_naive_by) * naive,
        "{name}: auto {auto:.4} vs seasonal naive {naive:.4}"
    );
    assert!(
        auto < 1.02 * best,
        "{name}: auto {auto:.4} vs best single {best:.4} ({singles:?})"
    );
}

#[test]
fn auto_beats_seasonal_naive_and_stays_near_the_best_model_on_bike_sales() {
    // Test window: auto 0.446, seasonal naive 0.670, best single (SBA) 0.445.
    check("bike_sales_daily.csv", 0.25);
}

#[test]
fn auto_beats_seasonal_naive_and_stays_near_the_best_model_on_pizza_sales() {
    // Test window: auto 0.680, seasonal naive 1.006, best single (SES) 0.678.
    check("pizza_daily.csv", 0.25);
}

#[test]
fn auto_beats_seasonal_naive_and_stays_near_the_best_model_on_expedia_events() {
    // Test window: auto 0.972, seasonal naive 1.364, best single (IMAPA) 0.972.
    check("expedia_daily.csv", 0.2);
}

/// The pooled model on the synthetic retail panel (stores 0–2, 900 series, test window):
/// blending it in beats the per-series choice and SES, the best single model there. The
/// data are generated with a fixed seed, so the figures are exact, not noisy.
#[test]
fn pooled_blend_beats_per_series_selection_on_the_synthetic_retail_panel() {
    use bazaar_intelligence::pooled::{
        day_number, fit_item_level, fit_profile, group_key, item_key, Pooling,
    };
    use bazaar_intelligence::select::{forecast_series_pooled, PooledContext};
    use bazaar_intelligence::synthetic::retail_panel;
    use std::collections::HashMap;

    let panel: Vec<_> = retail_panel()
        .into_iter()
        .filter(|s| ["s00/", "s01/", "s02/"].iter().any(|p| s.id.starts_with(p)))
        .collect();
    assert_eq!(panel.len(), 900);
    let train = |h: &[f64]| h.len() - HOLDOUT;
    let mut groups: HashMap<&str, Vec<(i64, &[f64])>> = HashMap::new();
    let mut items: HashMap<&str, Vec<(i64, &[f64])>> = HashMap::new();
    for s in &panel {
        let member = (day_number(s.first_date), &s.history[..train(&s.history)]);
        groups
            .entry(group_key(&s.id, Pooling::StoreCategory))
            .or_default()
            .push(member);
        items.entry(item_key(&s.id)).or_default().push(member);
    }
    let profiles: HashMap<&str, _> = groups
        .into_iter()
        .map(|(k, m)| (k, fit_profile(m)))
        .collect();
    let items: HashMap<&str, _> = items
        .into_iter()
        .map(|(k, m)| (k, fit_item_level(m)))
        .collect();
    let score = |cfg: &SelectConfig, pooled: bool| -> f64 {
        let mut total = 0.0;
        let mut count = 0;
        for s in &panel {
            let (train, test) = s.history.split_at(train(&s.history));
            let Some(first) = train.iter().position(|&y| y > 0.0) else {
                continue;
            };
            let active = &train[first..];
            let scale = active
                .windows(2)
                .map(|w| (w[1] - w[0]).powi(2))
                .sum::<f64>()
                / (active.len().max(2) - 1) as f64;
            if scale <= 0.0 {
                continue;
            }
            let ctx = PooledContext {
                profile: &profiles[group_key(&s.id, Pooling::StoreCategory)],
                start_day: day_number(s.first_date),
                item: items.get(item_key(&s.id)),
            };
            let f = forecast_series_pooled(train, HOLDOUT, cfg, pooled.then_some(&ctx));
            let mse = test
                .iter()
                .zip(&f.mean)
                .map(|(y, m)| (y - m).powi(2))
                .sum::<f64>()
                / HOLDOUT as f64;
            total += (mse / scale).sqrt();
            count += 1;
        }
        total / count as f64
    };
    let blend = score(&SelectConfig::default(), true);
    let local = score(&SelectConfig::default(), false);
    let ses = score(&SelectConfig::single(ModelKind::Ses), false);
    assert!(blend < local, "blend {blend:.4} vs per-series {local:.4}");
    assert!(blend < ses, "blend {blend:.4} vs SES {ses:.4}");
}
