//! The CSV interface of DESIGN §8 (`bazaar-hub forecast`).
//!
//! Input: a header naming the columns `series,date,qty` (any order, extra columns ignored,
//! surrounding spaces trimmed), then one row per series and day: `series` a non-empty id,
//! `date` ISO `YYYY-MM-DD`, `qty` a finite number ≥ 0. Days missing inside a series'
//! first..last date range are zero demand. A repeated (series, date) is an error.
//!
//! # Streaming ([`forecast_csv`], [`stream_daily_series`])
//! The input should be **grouped by series** (as a `GROUP BY`/`ORDER BY series` export
//! writes it); within a series the dates may come in any order. Up to
//! [`INTERLEAVE_SERIES`] series may interleave (e.g. a day-by-day export of a few series):
//! the reader keeps the most recently seen series open (at most that many, holding at most
//! [`INTERLEAVE_ROWS`] rows) and completes the least recently seen one when the window is
//! full or the input ends. Completed series are forecast in parallel batches of at most
//! [`BATCH_SERIES`] series / [`BATCH_DAYS`] days while the next batch is being read, and
//! written in the order they were completed (input order for grouped input). Memory is
//! bounded by the series in flight (the window and two batches) plus a 64-bit hash of
//! every id already completed (about 16–32 bytes per series), never by the file. A series
//! whose rows reappear after it was completed (more than [`INTERLEAVE_SERIES`] other
//! series came between) is an error naming the line where it reappears
//! ([`CsvError::NotContiguous`]); the input is *not* buffered to regroup it. (With a
//! 64-bit hash of the ids, two different ids are mistaken for one with a probability of
//! about n²/2⁶⁵ — 3·10⁻⁸ for a million series.)
//!
//! [`read_daily_series`] parses everything into memory instead and accepts rows in any
//! order (it returns the series sorted by id); it is for tests, benchmarks and small files.
//!
//! Output: header `series,date,forecast,lo,hi,model`, then `horizon` rows per series for the
//! days after its last date, series in the order completed (input order for grouped input),
//! numbers with 4 decimals; `lo`/`hi`
//! bound the [`SelectConfig::interval_level`] prediction interval (80% by default).
//!
//! Every bad row yields an error naming its line number (1-based, the header is line 1)
//! and what is wrong. A header error stops before anything is written; an error further
//! down stops the run with the series before it already written (whole series only), so a
//! caller that must not leave partial output writes to a staging file and removes it on
//! error (the hub does). `progress(done, seen)` is called after each batch with the series
//! forecast so far and the series read so far (the total is unknown until the end).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Write};

use chrono::{Days, NaiveDate};
use rayon::prelude::*;

use crate::models::ModelKind;
use crate::select::{forecast_series, Forecast, SelectConfig};

/// Longest date range accepted for one series (guards against a mistyped year).
pub const MAX_SERIES_DAYS: i64 = 20 * 366;
/// Most series forecast in one parallel batch.
pub const BATCH_SERIES: usize = 2048;
/// Most days of history (summed over its series) in one batch: 8 bytes each, so a batch
/// holds at most about 32 MB of history however long the series are.
pub const BATCH_DAYS: usize = 4 << 20;
/// Series whose rows may interleave: the streaming reader keeps this many recently seen
/// series open besides the current one (and at most [`INTERLEAVE_ROWS`] of their rows),
/// completing the least recently seen first.
pub const INTERLEAVE_SERIES: usize = 1024;
/// Most rows held by the open series of the interleaving window (24 bytes each).
pub const INTERLEAVE_ROWS: usize = 1 << 20;

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
    #[error("line {line}: rows of series {series:?} appear again after more than {window} other series came between (it was already forecast); group the input by series (at most {window} series may interleave)")]
    NotContiguous {
        line: u64,
        series: String,
        window: usize,
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

/// Reads `series,date,qty` (rows grouped by series), forecasts `horizon` days per series
/// with the default [`SelectConfig`], writes `series,date,forecast,lo,hi,model`, streaming
/// (see the module docs).
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
    let mut stream = stream_daily_series(input)?;
    let mut writer = csv::Writer::from_writer(output);
    writer
        .write_record(["series", "date", "forecast", "lo", "hi", "model"])
        .map_err(CsvError::Write)?;
    let mut summary = Summary::default();
    progress(0, 0);
    let mut batch = read_batch(&mut stream)?;
    while !batch.is_empty() {
        // Forecast this batch on the rayon pool while this thread parses the next one.
        let (forecasts, next) = std::thread::scope(|scope| {
            let current = &batch;
            let worker = scope.spawn(move || {
                current
                    .par_iter()
                    .map(|s| forecast_series(&s.history, horizon, cfg))
                    .collect::<Vec<Forecast>>()
            });
            let next = read_batch(&mut stream);
            let forecasts = worker.join();
            (forecasts, next)
        });
        let forecasts = match forecasts {
            Ok(f) => f,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        for (s, forecast) in batch.iter().zip(&forecasts) {
            write_forecast(&mut writer, s, forecast, horizon, &mut summary)?;
        }
        summary.series += batch.len();
        progress(summary.series, stream.series_read());
        batch = next?;
    }
    summary.input_rows = stream.input_rows();
    writer.flush()?;
    Ok(summary)
}

/// The next batch: up to [`BATCH_SERIES`] series or [`BATCH_DAYS`] days; empty at the end.
fn read_batch<R: Read>(stream: &mut SeriesStream<R>) -> Result<Vec<DailySeries>, CsvError> {
    let mut batch = Vec::new();
    let mut days = 0;
    while batch.len() < BATCH_SERIES && days < BATCH_DAYS {
        match stream.next() {
            Some(Ok(s)) => {
                days += s.history.len();
                batch.push(s);
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(batch)
}

fn write_forecast<W: Write>(
    writer: &mut csv::Writer<W>,
    s: &DailySeries,
    forecast: &Forecast,
    horizon: usize,
    summary: &mut Summary,
) -> Result<(), CsvError> {
    *summary.models.entry(forecast.model).or_default() += 1;
    let mut date = s.last_date;
    for h in 0..horizon {
        date = date
            .checked_add_days(Days::new(1))
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
    Ok(())
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
/// [`forecast_csv`], except that rows may come in any order) into dense daily series sorted
/// by id. Holds the whole input in memory; [`stream_daily_series`] does not.
pub fn read_daily_series(input: impl Read) -> Result<Vec<DailySeries>, CsvError> {
    read_series(input).map(|(series, _)| series)
}

/// Reads the header of `series,date,qty` input whose rows are grouped by series and
/// returns an iterator over its series, one at a time, in the order they are completed
/// (see the module docs). After the first `Err` the iterator ends.
pub fn stream_daily_series<R: Read>(input: R) -> Result<SeriesStream<R>, CsvError> {
    stream_with_window(input, INTERLEAVE_SERIES, INTERLEAVE_ROWS)
}

/// [`stream_daily_series`] with an explicit interleaving window.
fn stream_with_window<R: Read>(
    input: R,
    window: usize,
    window_rows: usize,
) -> Result<SeriesStream<R>, CsvError> {
    let (reader, columns) = open(input)?;
    Ok(SeriesStream {
        reader,
        record: csv::StringRecord::new(),
        columns,
        current: None,
        parked: HashMap::new(),
        order: BTreeMap::new(),
        parked_rows: 0,
        clock: 0,
        window,
        window_rows,
        ready: VecDeque::new(),
        finished: HashSet::new(),
        input_rows: 0,
        series_read: 0,
        done: false,
    })
}

/// Iterator of [`stream_daily_series`].
pub struct SeriesStream<R: Read> {
    reader: csv::Reader<R>,
    record: csv::StringRecord,
    columns: Columns,
    /// The series of the last row read: id and its rows so far.
    current: Option<(String, Vec<Row>)>,
    /// Series seen recently but not the current one: id → (stamp, rows). At most `window`
    /// of them (and `window_rows` rows); the least recently seen is completed first.
    parked: HashMap<String, (u64, Vec<Row>)>,
    /// Stamp → id of the parked series, oldest first.
    order: BTreeMap<u64, String>,
    parked_rows: usize,
    clock: u64,
    window: usize,
    window_rows: usize,
    /// Completed series (or the error that ends the stream) not yet returned.
    ready: VecDeque<Result<DailySeries, CsvError>>,
    /// Hashes of the ids of the series already completed.
    finished: HashSet<u64>,
    input_rows: usize,
    series_read: usize,
    done: bool,
}

impl<R: Read> SeriesStream<R> {
    /// Data rows read so far.
    pub fn input_rows(&self) -> usize {
        self.input_rows
    }

    /// Series completed (returned or about to be) so far.
    pub fn series_read(&self) -> usize {
        self.series_read
    }

    /// Reads rows until a series is completed or the input ends.
    fn fill(&mut self) -> Result<(), CsvError> {
        while self.ready.is_empty() {
            let more = self
                .reader
                .read_record(&mut self.record)
                .map_err(|source| {
                    let line = source.position().map_or(0, |p| p.line());
                    CsvError::Malformed { line, source }
                })?;
            if !more {
                self.park_current();
                while let Some((_, id)) = self.order.pop_first() {
                    self.complete(id);
                }
                return Ok(());
            }
            let Some((id, row)) = parse_record(&self.record, &self.columns)? else {
                continue;
            };
            self.input_rows += 1;
            if let Some((current, rows)) = &mut self.current {
                if current.as_str() == id {
                    rows.push(row);
                    continue;
                }
            }
            let line = row.line;
            let id = id.to_owned();
            self.park_current();
            let rows = match self.parked.remove(&id) {
                Some((stamp, mut rows)) => {
                    self.order.remove(&stamp);
                    self.parked_rows -= rows.len();
                    rows.push(row);
                    rows
                }
                None if self.finished.contains(&id_hash(&id)) => {
                    return Err(CsvError::NotContiguous {
                        line,
                        series: id,
                        window: self.window,
                    });
                }
                None => vec![row],
            };
            self.current = Some((id, rows));
            while self.order.len() > self.window || self.parked_rows > self.window_rows {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.complete(oldest);
            }
        }
        Ok(())
    }

    fn park_current(&mut self) {
        if let Some((id, rows)) = self.current.take() {
            self.clock += 1;
            self.parked_rows += rows.len();
            self.order.insert(self.clock, id.clone());
            self.parked.insert(id, (self.clock, rows));
        }
    }

    /// Completes a parked series: validated and queued.
    fn complete(&mut self, id: String) {
        if let Some((_, rows)) = self.parked.remove(&id) {
            self.parked_rows -= rows.len();
            self.finished.insert(id_hash(&id));
            self.series_read += 1;
            self.ready.push_back(build_series(id, rows));
        }
    }
}

impl<R: Read> Iterator for SeriesStream<R> {
    type Item = Result<DailySeries, CsvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Err(e) = self.fill() {
            self.done = true;
            return Some(Err(e));
        }
        match self.ready.pop_front() {
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Some(ok) => Some(ok),
            None => {
                self.done = true;
                None
            }
        }
    }
}

/// Deterministic 64-bit hash of a series id (SipHash with fixed keys).
fn id_hash(id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

struct Row {
    date: NaiveDate,
    qty: f64,
    line: u64,
}

struct Columns {
    series: usize,
    date: usize,
    qty: usize,
}

/// A CSV reader positioned after the header, and the positions of the three columns.
fn open<R: Read>(input: R) -> Result<(csv::Reader<R>, Columns), CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let mut header = csv::StringRecord::new();
    match reader.read_record(&mut header) {
        Ok(false) => return Err(CsvError::EmptyInput),
        Err(source) => return Err(CsvError::Malformed { line: 1, source }),
        Ok(true) => {}
    }
    let column = |name: &'static str| {
        header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
            .ok_or(CsvError::MissingColumn(name))
    };
    let columns = Columns {
        series: column("series")?,
        date: column("date")?,
        qty: column("qty")?,
    };
    Ok((reader, columns))
}

/// One data row: its series id and day, or `None` for a blank line.
fn parse_record<'r>(
    record: &'r csv::StringRecord,
    columns: &Columns,
) -> Result<Option<(&'r str, Row)>, CsvError> {
    let line = record.position().map_or(0, |p| p.line());
    if record.iter().all(str::is_empty) {
        return Ok(None);
    }
    let field = |col: usize, column: &'static str| {
        record
            .get(col)
            .ok_or(CsvError::MissingField { line, column })
    };
    let id = field(columns.series, "series")?;
    if id.is_empty() {
        return Err(CsvError::EmptySeries { line });
    }
    let date_text = field(columns.date, "date")?;
    let date = parse_date(date_text).ok_or_else(|| CsvError::BadDate {
        line,
        value: date_text.to_owned(),
    })?;
    let qty_text = field(columns.qty, "qty")?;
    let qty: f64 = qty_text.parse().map_err(|_| CsvError::BadQuantity {
        line,
        value: qty_text.to_owned(),
    })?;
    if !qty.is_finite() || qty < 0.0 {
        return Err(CsvError::InvalidQuantity { line, value: qty });
    }
    Ok(Some((id, Row { date, qty, line })))
}

/// `YYYY-MM-DD`: a fast path for the canonical 10-character form, else chrono's parser
/// (which accepts the same dates, e.g. also `2024-1-5`).
fn parse_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b[range].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        if let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10)) {
            return NaiveDate::from_ymd_opt(y as i32, m, d);
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Validates one series' rows (span, duplicates) and makes its dense daily history.
fn build_series(id: String, mut rows: Vec<Row>) -> Result<DailySeries, CsvError> {
    rows.sort_by_key(|r| (r.date, r.line));
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        // Every series is created with one row; an empty one is a logic error upstream.
        return Err(CsvError::EmptyInput);
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
    Ok(DailySeries {
        id,
        first_date: start,
        last_date,
        history,
    })
}

/// Parses and validates the whole input (rows in any order), returning dense daily series
/// sorted by id.
fn read_series(input: impl Read) -> Result<(Vec<DailySeries>, usize), CsvError> {
    let (mut reader, columns) = open(input)?;
    let mut by_series: HashMap<String, Vec<Row>> = HashMap::new();
    let mut input_rows = 0;
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut record).map_err(|source| {
            let line = source.position().map_or(0, |p| p.line());
            CsvError::Malformed { line, source }
        })?;
        if !more {
            break;
        }
        let Some((id, row)) = parse_record(&record, &columns)? else {
            continue;
        };
        input_rows += 1;
        match by_series.get_mut(id) {
            Some(rows) => rows.push(row),
            None => {
                by_series.insert(id.to_owned(), vec![row]);
            }
        }
    }
    let mut ids: Vec<String> = by_series.keys().cloned().collect();
    ids.sort_unstable();
    let mut series = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(rows) = by_series.remove(&id) {
            series.push(build_series(id, rows)?);
        }
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
            "series,date,qty\nb,2024-01-03,3\nb,2024-01-01,1\na,2024-02-28,4\na,2024-02-27,2\n";
        let (out, summary) = run(input, 3).expect("valid input");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "series,date,forecast,lo,hi,model");
        assert_eq!(lines.len(), 1 + 6);
        // Series in input order (dates within a series in any order); dates continue after
        // each series' last day (2024 is a leap year).
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
                ("b", "2024-01-04"),
                ("b", "2024-01-05"),
                ("b", "2024-01-06"),
                ("a", "2024-02-29"),
                ("a", "2024-03-01"),
                ("a", "2024-03-02")
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
            error_text("series,date,qty\na,2024-01-01,1\na,2024-01-02,1\na,2024-01-01,2\n"),
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
        // (forecast, read): the next batch is read while the current one is forecast.
        assert_eq!(calls, vec![(0, 0), (2048, 3000), (3000, 3000)]);
    }

    #[test]
    fn series_that_reappear_after_the_window_are_an_error_naming_the_line() {
        // Window of 1: a, then b, then c pushes a out (completed); a again is an error.
        let input =
            "series,date,qty\na,2024-01-01,1\nb,2024-01-01,1\nc,2024-01-01,1\na,2024-01-03,2\n";
        let mut stream = stream_with_window(input.as_bytes(), 1, 100).expect("header");
        let a = stream.next().expect("a").expect("valid");
        assert_eq!(a.id, "a");
        match stream.next() {
            Some(Err(e)) => assert_eq!(
                e.to_string(),
                "line 5: rows of series \"a\" appear again after more than 1 other series came between (it was already forecast); group the input by series (at most 1 series may interleave)"
            ),
            other => panic!("expected the reappearing row, got {other:?}"),
        }
        assert!(stream.next().is_none());
        // The row bound completes series too: at most 2 parked rows; when c begins, a (2
        // rows) and b (1) are parked, 3 > 2, so a is completed and its reappearance fails.
        let rows = "series,date,qty\na,2024-01-01,1\na,2024-01-02,1\nb,2024-01-01,1\nc,2024-01-01,1\na,2024-01-05,1\n";
        let results: Vec<_> = stream_with_window(rows.as_bytes(), 10, 2)
            .expect("header")
            .collect();
        assert!(matches!(
            results.last(),
            Some(Err(CsvError::NotContiguous { line: 6, .. }))
        ));
        // The in-memory reader accepts any order and sorts by id.
        let series = read_daily_series(input.as_bytes()).expect("any order");
        assert_eq!(series.len(), 3);
        assert_eq!(series[0].id, "a");
        assert_eq!(series[0].history, vec![1.0, 0.0, 2.0]);
    }

    #[test]
    fn a_few_interleaved_series_stream_within_the_window() {
        // A day-by-day export of three series: all stay open, complete at the end.
        let mut input = String::from("series,date,qty\n");
        for day in 1..=5 {
            for (id, qty) in [("milk", day), ("bread", 2 * day), ("caviar", 0)] {
                input.push_str(&format!("{id},2024-01-0{day},{qty}\n"));
            }
        }
        let series: Vec<DailySeries> = stream_daily_series(input.as_bytes())
            .expect("header")
            .collect::<Result<_, _>>()
            .expect("interleaving of 3 series is within the window");
        let ids: Vec<&str> = series.iter().map(|s| s.id.as_str()).collect();
        // Completed least recently seen first: the order of the last day's rows.
        assert_eq!(ids, vec!["milk", "bread", "caviar"]);
        assert_eq!(series[1].history, vec![2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(series[2].history, vec![0.0; 5]);
        let (out, summary) = run(&input, 2).expect("forecast_csv streams it too");
        assert_eq!(summary.series, 3);
        assert_eq!(summary.input_rows, 15);
        assert_eq!(out.lines().count(), 1 + 3 * 2);
    }

    #[test]
    fn stream_yields_series_in_input_order_and_stops_at_the_first_bad_row() {
        // Window 0: a series is complete as soon as another begins (grouped input).
        let input = "series,date,qty\nz,2024-03-02,5\nz,2024-03-01,1\n\ny,2024-01-01,2\nx,2024-01-01,oops\nw,2024-01-01,1\n";
        let mut stream = stream_with_window(input.as_bytes(), 0, 0).expect("header");
        let z = stream.next().expect("z").expect("valid");
        assert_eq!(z.id, "z");
        assert_eq!(
            z.first_date,
            NaiveDate::from_ymd_opt(2024, 3, 1).expect("date")
        );
        assert_eq!(z.history, vec![1.0, 5.0]);
        // y is complete only once x's first row is read, and that row is bad (line 6: the
        // blank line 4 counts).
        match stream.next() {
            Some(Err(e)) => assert_eq!(e.to_string(), "line 6: qty \"oops\" is not a number"),
            other => panic!("expected the bad row, got {other:?}"),
        }
        assert!(stream.next().is_none(), "the stream ends after an error");
        assert_eq!(stream.series_read(), 1);
        assert_eq!(stream.input_rows(), 3);
        // With the default window z and y are still open when the bad row comes.
        let mut stream = stream_daily_series(input.as_bytes()).expect("header");
        assert!(matches!(
            stream.next(),
            Some(Err(CsvError::BadQuantity { line: 6, .. }))
        ));
        assert!(stream.next().is_none());
    }

    #[test]
    fn stream_reports_errors_of_the_last_series_and_a_bad_header() {
        let input = "qty,series,date\n1,a,2024-01-01\n2,b,2024-01-01\n3,b,2024-01-01\n";
        let results: Vec<Result<DailySeries, CsvError>> = stream_daily_series(input.as_bytes())
            .expect("header")
            .collect();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().expect("a").id, "a");
        assert_eq!(
            results[1]
                .as_ref()
                .map(|_| ())
                .expect_err("dup")
                .to_string(),
            "line 4: duplicate row for series \"b\" on 2024-01-01 (first given on line 3)"
        );
        assert!(matches!(
            stream_daily_series("series,qty\n".as_bytes()),
            Err(CsvError::MissingColumn("date"))
        ));
        assert!(matches!(
            stream_daily_series("".as_bytes()),
            Err(CsvError::EmptyInput)
        ));
    }

    #[test]
    fn an_error_after_the_first_batch_leaves_only_whole_series_written() {
        let mut input: String = std::iter::once("series,date,qty\n".to_owned())
            .chain((0..BATCH_SERIES + 10).map(|i| format!("s{i},2024-01-01,1\n")))
            .collect();
        input.push_str("s0,2024-01-02,1\n");
        let mut out = Vec::new();
        let err = forecast_csv(input.as_bytes(), &mut out, 2, |_, _| {}).expect_err("reappears");
        assert_eq!(
            err.to_string().split(';').next(),
            Some(
                format!(
                    "line {}: rows of series \"s0\" appear again after more than {INTERLEAVE_SERIES} other series came between (it was already forecast)",
                    BATCH_SERIES + 12
                )
                .as_str()
            )
        );
        let text = String::from_utf8(out).expect("utf8");
        // Header, then 2 rows for each series of the first batch, nothing of a partial one.
        assert_eq!((text.lines().count() - 1) % 2, 0);
        assert!(text.lines().count() - 1 <= 2 * BATCH_SERIES);
    }

    #[test]
    fn dates_parse_like_chrono() {
        for text in [
            "2024-02-29",
            "2023-02-29",
            "2024-1-5",
            "2024-01-0a",
            "24-01-01",
            "2024-13-01",
            "+2024-01-01",
            "2024/01/01",
        ] {
            assert_eq!(
                parse_date(text),
                NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
                "{text}"
            );
        }
    }
}
