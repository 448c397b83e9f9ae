//! Speed of forecasting with model selection (`select::forecast_series`, default config,
//! horizon 28) on synthetic daily series: a deterministic mix of smooth, weekly-seasonal
//! and intermittent demand. Series are generated in chunks outside the timed section and
//! forecast in parallel with rayon on all cores.
//!
//! Prints wall and CPU (user + system) time for 10k and 100k series × 730 days — and with
//! `SPEED_FULL=1` for the full 1,000,000 × 730 — how time grows with history length (365,
//! 730, 1460 days), and the projection to 1,000,000 × 730 from the largest size run.
//!
//! Run: `cargo bench -p bazaar-intelligence --bench forecast_speed`
//! (`SPEED_QUICK=1` for a small smoke run, `SPEED_FULL=1` to include the 1M run.)

use std::time::{Duration, Instant};

use bazaar_intelligence::pooled::{fit_item_level, fit_profile, GroupProfile, ItemLevel};
use bazaar_intelligence::select::{
    forecast_series, forecast_series_pooled, PooledContext, SelectConfig,
};
use rayon::prelude::*;

const HORIZON: usize = 28;
const CHUNK: usize = 10_000;

/// SplitMix64: tiny, deterministic, good enough for synthetic data.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Poisson by inversion (fine for the small means used here).
    fn poisson(&mut self, mean: f64) -> f64 {
        let limit = (-mean).exp();
        let mut product = self.uniform();
        let mut k = 0.0;
        while product > limit && k < 1000.0 {
            product *= self.uniform();
            k += 1.0;
        }
        k
    }
}

/// Series `index` of length `days`: one in three smooth, seasonal, intermittent.
fn synthetic_series(index: u64, days: usize, out: &mut Vec<f64>) {
    let mut rng = SplitMix(index.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5EED);
    out.clear();
    let level = 1.0 + 30.0 * rng.uniform();
    let weekly = [0.8, 0.9, 0.9, 1.0, 1.2, 1.6, 1.4];
    match index % 3 {
        0 => out.extend((0..days).map(|_| rng.poisson(level))),
        1 => {
            let trend = (rng.uniform() - 0.5) * level / days as f64;
            out.extend(
                (0..days).map(|t| rng.poisson((level + trend * t as f64).max(0.1) * weekly[t % 7])),
            );
        }
        _ => {
            let probability = 0.02 + 0.3 * rng.uniform();
            out.extend((0..days).map(|_| {
                if rng.uniform() < probability {
                    1.0 + rng.poisson(level / 5.0)
                } else {
                    0.0
                }
            }));
        }
    }
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat
/// (Linux; clock ticks of 1/100 s). None elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; after the name they are at 11, 12.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Stores per item in the synthetic panel: series `i` is item `i / STORES_PER_ITEM`.
const STORES_PER_ITEM: usize = 10;
/// Absolute day of every synthetic series' first day (2023-01-02).
const START_DAY: i64 = 19_359;

/// The pooled profile, fitted once on a sample of `sample` series (untimed here; the
/// caller times it).
fn fit_sample_profile(sample: usize, days: usize) -> GroupProfile {
    let histories: Vec<Vec<f64>> = (0..sample)
        .into_par_iter()
        .map(|i| {
            let mut h = Vec::with_capacity(days);
            synthetic_series(i as u64, days, &mut h);
            h
        })
        .collect();
    let timer = Instant::now();
    let profile = fit_profile(histories.iter().map(|h| (START_DAY, h.as_slice())));
    println!(
        "pooled profile fitted on a {sample}-series sample × {days} days: {:.1} ms wall (once per night, reused for every series)",
        1e3 * timer.elapsed().as_secs_f64()
    );
    profile
}

/// Forecasts `series` synthetic series of `days` days; returns the wall time and the CPU
/// time of the forecasting only. With `pooled`, every series is forecast with the pooled
/// model available (`forecast_series_pooled`): the sample profile, and top-down item
/// levels fitted per chunk from the chunk's series (inside the timed section).
fn run(
    series: usize,
    days: usize,
    cfg: &SelectConfig,
    pooled: Option<&GroupProfile>,
) -> (Duration, f64) {
    let mut elapsed = Duration::ZERO;
    let mut cpu = 0.0;
    let mut checksum = 0.0;
    let mut start_index = 0;
    while start_index < series {
        let count = CHUNK.min(series - start_index);
        let histories: Vec<Vec<f64>> = (0..count)
            .into_par_iter()
            .map(|i| {
                let mut h = Vec::with_capacity(days);
                synthetic_series((start_index + i) as u64, days, &mut h);
                h
            })
            .collect();
        let timer = Instant::now();
        let cpu_before = cpu_seconds().unwrap_or(0.0);
        checksum += match pooled {
            None => histories
                .par_iter()
                .map(|h| forecast_series(h, HORIZON, cfg).mean[0])
                .sum::<f64>(),
            Some(profile) => {
                let items: Vec<ItemLevel> = histories
                    .par_chunks(STORES_PER_ITEM)
                    .map(|members| {
                        fit_item_level(members.iter().map(|h| (START_DAY, h.as_slice())))
                    })
                    .collect();
                histories
                    .par_iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let ctx = PooledContext {
                            profile,
                            start_day: START_DAY,
                            item: items.get(i / STORES_PER_ITEM),
                        };
                        forecast_series_pooled(h, HORIZON, cfg, Some(&ctx)).mean[0]
                    })
                    .sum::<f64>()
            }
        };
        elapsed += timer.elapsed();
        cpu += cpu_seconds().unwrap_or(0.0) - cpu_before;
        start_index += count;
    }
    std::hint::black_box(checksum);
    (elapsed, cpu)
}

fn main() {
    let quick = std::env::var("SPEED_QUICK").is_ok();
    let full = std::env::var("SPEED_FULL").is_ok();
    let cfg = SelectConfig::default();
    let threads = rayon::current_num_threads();
    println!("forecast_speed: horizon {HORIZON}, default SelectConfig, {threads} rayon threads");
    println!("CPU = user + system time of this process during the forecasting (all threads)");
    // Warm-up (page faults, thread pool).
    run(1_000, 730, &cfg, None);
    let profile = fit_sample_profile(10_000, 730);

    let sizes: &[usize] = if quick {
        &[2_000]
    } else if full {
        &[10_000, 100_000, 1_000_000]
    } else {
        &[10_000, 100_000]
    };
    println!(
        "load average before: {} (other processes share the {threads} cores)",
        load_average()
    );
    println!(
        "\n{:>10} {:>6} {:>9} {:>10} {:>12} {:>12} {:>10} {:>14}",
        "series", "days", "pooled", "wall (s)", "series/s", "µs/series", "CPU (s)", "CPU µs/series"
    );
    let mut wall_per_series = 0.0;
    let mut cpu_per_series = 0.0;
    for &n in sizes {
        // The 1M run only with the pooled model (what the nightly job would run); the
        // smaller sizes both ways, to show the pooled model's cost.
        let modes: &[bool] = if n >= 1_000_000 {
            &[true]
        } else {
            &[false, true]
        };
        for &with_pool in modes {
            let (wall, cpu) = run(n, 730, &cfg, with_pool.then_some(&profile));
            let t = wall.as_secs_f64();
            wall_per_series = t / n as f64;
            cpu_per_series = cpu / n as f64;
            println!(
                "{:>10} {:>6} {:>9} {:>10.2} {:>12.0} {:>12.1} {:>10.2} {:>14.1}",
                n,
                730,
                if with_pool { "yes" } else { "no" },
                t,
                n as f64 / t,
                1e6 * t / n as f64,
                cpu,
                1e6 * cpu / n as f64
            );
        }
    }

    let growth_series = if quick { 2_000 } else { 10_000 };
    println!("\nhistory length ({growth_series} series, pooled):");
    println!(
        "{:>6} {:>10} {:>12} {:>16} {:>14}",
        "days", "wall (s)", "µs/series", "µs/series/day", "CPU µs/series"
    );
    for days in [365, 730, 1460] {
        let (wall, cpu) = run(growth_series, days, &cfg, Some(&profile));
        let per = 1e6 * wall.as_secs_f64() / growth_series as f64;
        println!(
            "{:>6} {:>10.3} {:>12.1} {:>16.4} {:>14.1}",
            days,
            wall.as_secs_f64(),
            per,
            per / days as f64,
            1e6 * cpu / growth_series as f64
        );
    }

    let projected_wall = wall_per_series * 1_000_000.0;
    let projected_idle = cpu_per_series * 1_000_000.0 / threads as f64;
    println!("load average after: {}", load_average());
    let basis = if full { "measured" } else { "extrapolated" };
    println!(
        "\n{basis} 1,000,000 series × 730 days with the pooled model: {:.1} s wall as measured; {:.1} s on {threads} idle cores (CPU time / {threads}); target ≤ 60 s: {}",
        projected_wall,
        projected_idle,
        if projected_wall <= 60.0 { "met as measured" } else if projected_idle <= 60.0 { "met on idle cores only" } else { "missed" }
    );
}
