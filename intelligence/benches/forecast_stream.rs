//! Streaming `csv_io::forecast_csv` over a multi-GB `series,date,qty` input generated on the
//! fly (a `Read` impl that formats rows as they are read, so nothing is stored on disk or
//! in memory): prints rows/s, input and output bytes, and the peak resident set size of the
//! process (VmHWM of /proc/self/status) against a fixed bound that does not depend on the
//! input size.
//!
//! Run: `cargo bench -p bazaar-intelligence --bench forecast_stream`
//! (`STREAM_SERIES=n` sets the number of series, default 100,000 × 730 days ≈ 1.8 GB;
//! `STREAM_QUICK=1` is a 5,000-series smoke run.)

use std::io::{Read, Write};
use std::time::Instant;

use bazaar_intelligence::csv_io::forecast_csv;

const DAYS: usize = 730;
const HORIZON: usize = 28;
/// Peak RSS bound, MiB: two batches of ≤ 2048 series in flight plus the forecasting
/// buffers, and 16–32 bytes per finished series id — independent of the file size.
const RSS_BOUND_MIB: f64 = 256.0;

/// SplitMix64.
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
}

/// Generates `series,date,qty` rows series after series: one row per day (zeros included,
/// as a daily_sales export writes them), quantities from a weekly pattern with noise, one
/// series in three intermittent.
struct Generator {
    series: usize,
    next_series: usize,
    dates: Vec<String>,
    buffer: Vec<u8>,
    position: usize,
    header_done: bool,
    rows: u64,
    bytes: u64,
}

impl Generator {
    fn new(series: usize) -> Self {
        let start = chrono::NaiveDate::from_ymd_opt(2023, 1, 2).expect("date");
        let dates = (0..DAYS as u64)
            .map(|d| {
                (start + chrono::Days::new(d))
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect();
        Generator {
            series,
            next_series: 0,
            dates,
            buffer: Vec::with_capacity(64 * DAYS),
            position: 0,
            header_done: false,
            rows: 0,
            bytes: 0,
        }
    }

    /// Refills the buffer with the next series; false at the end.
    fn refill(&mut self) -> bool {
        self.buffer.clear();
        self.position = 0;
        if !self.header_done {
            self.header_done = true;
            self.buffer.extend_from_slice(b"series,date,qty\n");
            return true;
        }
        if self.next_series >= self.series {
            return false;
        }
        let i = self.next_series;
        self.next_series += 1;
        let mut rng = SplitMix(i as u64 ^ 0xFEED);
        let level = 0.5 + 12.0 * rng.uniform();
        let weekly = [0.8, 0.9, 0.9, 1.0, 1.2, 1.6, 1.4];
        let sale_probability = if i % 3 == 2 { 0.1 } else { 1.0 };
        let id = format!("store{:03}-sku{:06}", i % 500, i);
        for (d, date) in self.dates.iter().enumerate() {
            let qty = if rng.uniform() < sale_probability {
                (level * weekly[d % 7] * (0.5 + rng.uniform())).round() as u64
            } else {
                0
            };
            // write! into a Vec cannot fail.
            let _ = writeln!(self.buffer, "{id},{date},{qty}");
            self.rows += 1;
        }
        true
    }
}

impl Read for Generator {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.position >= self.buffer.len() {
            if !self.refill() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buffer.len() - self.position);
        out[..n].copy_from_slice(&self.buffer[self.position..self.position + n]);
        self.position += n;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Counts what is written and drops it.
struct CountingSink(u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A field of /proc/self/status in MiB (Linux; None elsewhere).
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let series: usize = if std::env::var("STREAM_QUICK").is_ok() {
        5_000
    } else {
        std::env::var("STREAM_SERIES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(100_000)
    };
    let threads = rayon::current_num_threads();
    println!(
        "forecast_stream: {series} series × {DAYS} days generated on the fly, horizon {HORIZON}, default SelectConfig, {threads} rayon threads"
    );
    println!(
        "peak RSS before: {:.1} MiB",
        status_mib("VmHWM:").unwrap_or(f64::NAN)
    );
    let mut generator = Generator::new(series);
    let mut sink = CountingSink(0);
    let started = Instant::now();
    let summary = forecast_csv(&mut generator, &mut sink, HORIZON, |_, _| {});
    let elapsed = started.elapsed().as_secs_f64();
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("forecast_csv failed: {e}");
            std::process::exit(1);
        }
    };
    let peak = status_mib("VmHWM:").unwrap_or(f64::NAN);
    println!(
        "input: {} rows, {:.2} GB; output: {} rows, {:.2} GB; {} series",
        generator.rows,
        generator.bytes as f64 / 1e9,
        summary.output_rows,
        sink.0 as f64 / 1e9,
        summary.series
    );
    println!(
        "wall {:.1} s: {:.2} M input rows/s, {:.0} series/s, {:.0} MB/s in",
        elapsed,
        generator.rows as f64 / elapsed / 1e6,
        summary.series as f64 / elapsed,
        generator.bytes as f64 / elapsed / 1e6
    );
    println!(
        "peak RSS (VmHWM): {peak:.1} MiB; bound {RSS_BOUND_MIB:.0} MiB: {} (input {:.0}× the bound)",
        if peak <= RSS_BOUND_MIB { "met" } else { "MISSED" },
        generator.bytes as f64 / (RSS_BOUND_MIB * 1024.0 * 1024.0)
    );
    assert_eq!(summary.series, series);
    assert_eq!(summary.input_rows as u64, generator.rows);
}
