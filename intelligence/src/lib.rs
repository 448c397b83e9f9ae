//! # bazaar-intelligence
//!
//! Pure demand intelligence for Bazaar (DESIGN §8): forecasting models, per-series model
//! selection by rolling-origin backtest, reorder points and order-up-to levels, chain-wide
//! transfer suggestions, alert rules, and the `series,date,qty` CSV interface.
//!
//! Everything here is a pure function of its inputs: no clocks, no files, no network. The
//! only I/O is in [`csv_io`], which reads from any [`std::io::Read`] and writes to any
//! [`std::io::Write`] handed to it.
//!
//! Entry points the hub calls:
//! - [`select::forecast_series`] — forecast one daily series with automatic model choice
//!   ([`select::forecast_series_pooled`] with a pooled profile of its group, [`pooled`]);
//! - [`reorder::reorder_plan`] and [`reorder::transfer_suggestions`];
//! - [`alerts::evaluate`];
//! - [`csv_io::forecast_csv`].

pub mod alerts;
pub mod csv_io;
pub mod models;
pub mod pooled;
pub mod reorder;
pub mod select;
pub mod stats;
pub mod synthetic;

pub use models::ModelKind;
pub use select::{forecast_series, Forecast, SelectConfig};
