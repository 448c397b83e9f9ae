//! `bazaar-hub`: the chain's central service (DESIGN §7).
//!
//! Layout: `plan` (pure per-store decisions: apply, hold, park, skip), `ingest` (Kafka
//! consumer group → one MySQL transaction per batch), `stores` (registration, credentials,
//! sync state, stock reads), `api` (thin warp routes), `audit`, `config`, `db`, and
//! `startup` (the builder `main` and the tests share).

pub mod api;
pub mod audit;
pub mod config;
pub mod db;
pub mod ingest;
pub mod plan;
pub mod startup;
pub mod stores;
