//! `bazaar-agent`: the store server's side of Bazaar (DESIGN §6).
//!
//! Layout: `ledger` (SQLite ledger and outbox, plain functions over a connection),
//! `writer` (the single group-committing writer), `api` (thin warp handlers), `bootstrap`
//! (the store's snapshot before the first send), `sync` (outbox → Kafka, acknowledgements
//! from the hub), `hub_client` (HTTP to the hub),
//! `config`, and `startup` (the builder `main` and the tests share).

// Tests state their expectations with unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod bootstrap;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod enroll;
pub mod housekeeping;
pub mod hub_client;
pub mod ledger;
pub mod startup;
pub mod stock_alerts;
pub mod sync;
pub mod writer;
