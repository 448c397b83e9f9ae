//! The CSV interface of DESIGN §8 (`bazaar-hub forecast`).
//!
//! Input: a header naming the columns `series,date,qty` (any order, extra columns ignored,
//! surrounding spaces trimmed), then one row per series and day: `series` a non-empty id,
//! `date` ISO `YYYY-MM-DD`, `qty` a finite number ≥ 0. Rows may come in any order. Days
//! missing inside a series' first..last date range are zero demand. A repeated
//! (series, date) is an error.
//!
//! Output: header `series,date,forecast,lo,hi,model`, then `horizon` rows per series for the
//! days after its last date, series in ascending id order, numbers with 4 decimals; `lo`/`hi`
//! bound the [`SelectConfig::interval_level`] prediction interval (80% by default).
//!
//! Every bad row yields an error naming its line number (1-based, the header is line 1)
//! and what is wrong; nothing is written when the input is invalid. Series are forecast in
//! parallel (rayon), in chunks, calling `progress(done, total)` after each chunk.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use chrono::{Days, NaiveDate};
use rayon::prelude::*;

use crate::models::ModelKind;
use crate::select::{forecast_series, Forecast, SelectConfig};

/// Longest date range accepted for one series (guards against a mistyped year).
pub const MAX_SERIES_DAYS: i64 = 20 * 366;
const CHUNK: usize = 2048;

/// Why a CSV could not be forecast.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("input is empty: expected a header line `series,date,qty`")]
    EmptyInput,
    #[error("line 1: missing column `{0}` (the header must name series, date and qty)")]
    MissingColumn(&'static str),
    #[error("line {line}: malformed CSV: {source}")]
    Malformed { line: u64, source: csv::Error },
    #[error("line {line}: missing field `{column}`")]
    MissingField { line: u64, column: &'static str },
    #[error("line {line}: empty series id")]
    EmptySeries { line: u64 },
    #[error("line {line}: bad date {value:?}, expected YYYY-MM-DD")]
    BadDate { line: u64, value: String },
    #[error("line {line}: qty {value:?} is not a number")]
    BadQuantity { line: u64, value: String },
    #[error("line {line}: qty {value} is negative or not finite; demand must be ≥ 0")]
    InvalidQuantity { line: u64, value: f64 },
    #[error("line {line}: duplicate row for series {series:?} on {date} (first given on line {first_line})")]
    Duplicate {
        line: u64,
        series: String,
        date: NaiveDate,
        first_line: u64,
    },
    #[error("series {series:?} spans {days} days (lines {first_line} and {last_line}); at most {MAX_SERIES_DAYS} allowed")]
    SpanTooLong {
        series: String,
        days: i64,
        first_line: u64,
        last_line: u64,
    },
    #[error("series {series:?}: the forecast would run past the last representable date")]
    DateOverflow { series: String },
    #[error("writing output: {0}")]
    Write(#[source] csv::Error),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`forecast_csv`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub series: usize,
    pub input_rows: usize,
    pub output_rows: usize,
    /// How many series each model was chosen for.
    pub models: BTreeMap<ModelKind, usize>,
}

/// Reads `series,date,qty`, forecasts `horizon` days per series with the default
/// [`SelectConfig`], writes `series,date,forecast,lo,hi,model`.
pub fn forecast_csv(
    input: impl Read,
    output: impl Write,
    horizon: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Summary, CsvError> {
    forecast_csv_with(input, output, horizon, &SelectConfig::default(), progress)
}

/// [`forecast_csv`] with an explicit selection configuration.
pub fn forecast_csv_with(
    input: impl Read,
    output: impl Write,
    horizon: usize,
    cfg: &SelectConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Summary, CsvError> {
    let (series, input_rows) = read_series(input)?;
    let total = series.len();
    let mut writer = csv::Writer::from_writer(output);
    writer
        .write_record(["series", "date", "forecast", "lo", "hi", "model"])
        .map_err(CsvError::Write)?;
    let mut summary = Summary {
        series: total,
        input_rows,
        ..Summary::default()
    };
    progress(0, total);
    for (chunk_index, chunk) in series.chunks(CHUNK).enumerate() {
        let forecasts: Vec<Forecast> = chunk
            .par_iter()
            .map(|s| forecast_series(&s.history, horizon, cfg))
            .collect();
        for (s, forecast) in chunk.iter().zip(&forecasts) {
            *summary.models.entry(forecast.model).or_default() += 1;
            let mut date = s.last_date;
            for h in 0..horizon {
                date =
                    date.checked_add_days(Days::new(1))
                        .ok_or_else(|| CsvError::DateOverflow {
                            series: s.id.clone(),
                        })?;
                writer
                    .write_record([
                        s.id.as_str(),
                        &date.format("%Y-%m-%d").to_string(),
                        &format!("{:.4}", forecast.mean[h]),
                        &format!("{:.4}", forecast.lo[h]),
                        &format!("{:.4}", forecast.hi[h]),
                        forecast.model.as_str(),
                    ])
                    .map_err(CsvError::Write)?;
                summary.output_rows += 1;
            }
        }
        progress((chunk_index * CHUNK + chunk.len()).min(total), total);
    }
    writer.flush()?;
    Ok(summary)
}

/// One input series as a dense daily history.
#[derive(Debug, Clone, PartialEq)]
pub struct DailySeries {
    pub id: String,
    pub first_date: NaiveDate,
    pub last_date: NaiveDate,
    /// Demand per day from `first_date` to `last_date` inclusive (missing days are 0).
    pub history: Vec<f64>,
}

/// Parses and validates `series,date,qty` input (same rules and errors as
/// [`forecast_csv`]) into dense daily series sorted by id.
pub fn read_daily_series(input: impl Read) -> Result<Vec<DailySeries>, CsvError> {
    read_series(input).map(|(series, _)| series)
}

struct Row {
    date: NaiveDate,
    qty: f64,
    line: u64,
}

/// Parses and validates the whole input, returning dense daily series sorted by id.
fn read_series(input: impl Read) -> Result<(Vec<DailySeries>, usize), CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let mut records = reader.records();
    let header = match records.next() {
        None => return Err(CsvError::EmptyInput),
        Some(Err(source)) => return Err(CsvError::Malformed { line: 1, source }),
        Some(Ok(header)) => header,
    };
    let column = |name: &'static str| {
        header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
            .ok_or(CsvError::MissingColumn(name))
    };
    let (series_col, date_col, qty_col) = (column("series")?, column("date")?, column("qty")?);

    let mut by_series: HashMap<String, Vec<Row>> = HashMap::new();
    let mut input_rows = 0;
    for record in records {
        let record = record.map_err(|source| {
            let line = source.position().map_or(0, |p| p.line());
            CsvError::Malformed { line, source }
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue; // blank line
        }
        let field = |col: usize, column: &'static str| {
            record
                .get(col)
                .ok_or(CsvError::MissingField { line, column })
        };
        let id = field(series_col, "series")?;
        if id.is_empty() {
            return Err(CsvError::EmptySeries { line });
        }
        let date_text = field(date_col, "date")?;
        let date =
            NaiveDate::parse_from_str(date_text, "%Y-%m-%d").map_err(|_| CsvError::BadDate {
                line,
                value: date_text.to_owned(),
            })?;
        let qty_text = field(qty_col, "qty")?;
        let qty: f64 = qty_text.parse().map_err(|_| CsvError::BadQuantity {
            line,
            value: qty_text.to_owned(),
        })?;
        if !qty.is_finite() || qty < 0.0 {
            return Err(CsvError::InvalidQuantity { line, value: qty });
        }
        input_rows += 1;
        match by_series.get_mut(id) {
            Some(rows) => rows.push(Row { date, qty, line }),
            None => {
                by_series.insert(id.to_owned(), vec![Row { date, qty, line }]);
            }
        }
    }

    let mut ids: Vec<String> = by_series.keys().cloned().collect();
    ids.sort_unstable();
    let mut series = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(mut rows) = by_series.remove(&id) else {
            continue;
        };
        rows.sort_by_key(|r| (r.date, r.line));
        // `rows` is non-empty: every entry was created with one row.
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            continue;
        };
        let days = (last.date - first.date).num_days();
        if days >= MAX_SERIES_DAYS {
            return Err(CsvError::SpanTooLong {
                series: id,
                days: days + 1,
                first_line: first.line,
                last_line: last.line,
            });
        }
        if let Some(pair) = rows.windows(2).find(|w| w[0].date == w[1].date) {
            let (first_line, line) = (
                pair[0].line.min(pair[1].line),
                pair[0].line.max(pair[1].line),
            );
            return Err(CsvError::Duplicate {
                line,
                series: id,
                date: pair[0].date,
                first_line,
            });
        }
        let start = first.date;
        let last_date = last.date;
        let mut history = vec![0.0; days as usize + 1];
        for row in &rows {
            history[(row.date - start).num_days() as usize] = row.qty;
        }
        series.push(DailySeries {
            id,
            first_date: start,
            last_date,
            history,
        });
    }
    Ok((series, input_rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, horizon: usize) -> Result<(String, Summary), CsvError> {
        let mut out = Vec::new();
        let summary = forecast_csv(input.as_bytes(), &mut out, horizon, |_, _| {})?;
        Ok((String::from_utf8(out).expect("utf8"), summary))
    }

    fn error_text(input: &str) -> String {
        match run(input, 3) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn writes_the_documented_columns_and_dates() {
        let input =
            "series,date,qty\nb,2024-01-01,1\na,2024-02-27,2\na,2024-02-28,4\nb,2024-01-03,3\n";
        let (out, summary) = run(input, 3).expect("valid input");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "series,date,forecast,lo,hi,model");
        assert_eq!(lines.len(), 1 + 6);
        // Series sorted; dates continue after each series' last day (2024 is a leap year).
        let dates: Vec<(&str, &str)> = lines[1..]
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0], f[1])
            })
            .collect();
        assert_eq!(
            dates,
            vec![
                ("a", "2024-02-29"),
                ("a", "2024-03-01"),
                ("a", "2024-03-02"),
                ("b", "2024-01-04"),
                ("b", "2024-01-05"),
                ("b", "2024-01-06")
            ]
        );
        assert_eq!(summary.series, 2);
        assert_eq!(summary.input_rows, 4);
        assert_eq!(summary.output_rows, 6);
        for line in &lines[1..] {
            let f: Vec<&str> = line.split(',').collect();
            let (mean, lo, hi): (f64, f64, f64) = (
                f[2].parse().expect("n"),
                f[3].parse().expect("n"),
                f[4].parse().expect("n"),
            );
            assert!(lo <= mean && mean <= hi);
            assert!(f[5].parse::<ModelKind>().is_ok());
        }
    }

    #[test]
    fn missing_days_are_zero_demand() {
        // b: 1 on Jan 1, nothing Jan 2, 3 on Jan 3 → history [1, 0, 3]: SES level from the
        // mean of the first days, so the forecast is positive but below 3.
        let input = "date,qty,series,extra\n2024-01-01,1,b,x\n2024-01-03,3,b,y\n";
        let (out, _) = run(input, 1).expect("valid");
        let row: Vec<&str> = out.lines().nth(1).expect("row").split(',').collect();
        let mean: f64 = row[2].parse().expect("number");
        assert!(mean > 0.0 && mean < 3.0, "{row:?}");
    }

    #[test]
    fn bad_rows_name_their_line() {
        assert_eq!(
            error_text(""),
            "input is empty: expected a header line `series,date,qty`"
        );
        assert!(error_text("series,day,qty\n").contains("missing column `date`"));
        assert_eq!(
            error_text("series,date,qty\na,2024-01-01,1\na,2024-13-01,1\n"),
            "line 3: bad date \"2024-13-01\", expected YYYY-MM-DD"
        );
        assert_eq!(
            error_text("series,date,qty\na,2024-01-01,many\n"),
            "line 2: qty \"many\" is not a number"
        );
        assert!(error_text("series,date,qty\na,2024-01-01,-2\n")
            .starts_with("line 2: qty -2 is negative"));
        assert_eq!(
            error_text("series,date,qty\n,2024-01-01,1\n"),
            "line 2: empty series id"
        );
        assert_eq!(
            error_text("series,date,qty\na,2024-01-01,1\nb,2024-01-01,1\na,2024-01-01,2\n"),
            "line 4: duplicate row for series \"a\" on 2024-01-01 (first given on line 2)"
        );
        assert_eq!(
            error_text("series,date,qty\na,2024-01-01\n"),
            "line 2: missing field `qty`"
        );
        assert!(error_text("series,date,qty\na,1024-01-01,1\na,2024-01-01,1\n").contains("spans"));
    }

    #[test]
    fn header_only_gives_no_rows_and_progress_reaches_total() {
        let mut calls = Vec::new();
        let mut out = Vec::new();
        let summary = forecast_csv("series,date,qty\n".as_bytes(), &mut out, 5, |d, t| {
            calls.push((d, t))
        })
        .expect("ok");
        assert_eq!(summary.series, 0);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "series,date,forecast,lo,hi,model\n"
        );
        assert_eq!(calls, vec![(0, 0)]);

        let input: String = std::iter::once("series,date,qty\n".to_owned())
            .chain((0..3000).map(|i| format!("s{i},2024-01-01,1\n")))
            .collect();
        let mut calls = Vec::new();
        let summary = forecast_csv(input.as_bytes(), std::io::sink(), 1, |d, t| {
            calls.push((d, t))
        })
        .expect("ok");
        assert_eq!(summary.output_rows, 3000);
        assert_eq!(calls, vec![(0, 3000), (2048, 3000), (3000, 3000)]);
    }
}
