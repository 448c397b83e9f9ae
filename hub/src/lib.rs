//! `bazaar-hub`: the chain's central service (DESIGN §7).
//!
//! Layout:
//! - store → hub: `plan` (pure per-store decisions: apply, hold, park, skip), `ingest`
//!   (Kafka consumer group → one MySQL transaction per batch);
//! - hub → stores: `hub_movements` (HQ's movements, applied at once), `outbox` (the
//!   gapless hub_seq counter and signed rows, in the change's transaction), `relay` (one
//!   leased publisher), `snapshot` (bootstrap);
//! - reads: `stores`, `queries` (keyset-paged lists), `replica` (read routing), `cache` and
//!   `redis_link` (stock in Redis);
//! - intelligence: `thresholds`, `alerting`, `forecast_job`, `lease`;
//! - HTTP: `api` (thin warp routes and the dashboard), `openapi`, `readiness`, `ratelimit`,
//!   `metrics`, `audit`;
//! - `config`, `db`, and `startup` (the builder `main` and the tests share).

pub mod alerting;
pub mod api;
pub mod audit;
pub mod cache;
pub mod config;
pub mod dashboard_data;
pub mod db;
pub mod enrolment;
pub mod forecast_job;
pub mod hub_movements;
pub mod import_sales;
pub mod ingest;
pub mod lease;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod plan;
pub mod queries;
pub mod ratelimit;
pub mod readiness;
pub mod redis_link;
pub mod relay;
pub mod replica;
pub mod snapshot;
pub mod startup;
pub mod stores;
pub mod thresholds;
