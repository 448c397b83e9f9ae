//! `bazaar-hub`: the chain's central service (DESIGN §7).
//!
//! Layout: `plan` (pure per-store decisions: apply, hold, park, skip), `ingest` (Kafka
//! consumer group → one MySQL transaction per batch), `stores` (registration, credentials,
//! sync state, stock reads), `api` (thin warp routes), `audit`, `config`, `db`,
//! `redis_link` (the one Redis connection, with its fallback), `cache` (stock in Redis),
//! `ratelimit` (GCRA per client IP), `metrics` (`/metrics`), and `startup` (the builder
//! `main` and the tests share).

pub mod alerting;
pub mod api;
pub mod audit;
pub mod cache;
pub mod config;
pub mod db;
pub mod forecast_job;
pub mod hub_movements;
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
