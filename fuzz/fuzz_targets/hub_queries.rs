//! The hub's query strings, parsed with `serde_urlencoded` (what `warp::query` and the
//! strict `query()` filters of `api::reads` and `api::charts` use) into each route's struct,
//! then checked by the same functions the handlers call: limits, ids, filters, and the
//! cursors (keyset JSON in base64, snapshot and `store:sku` cursors). Every query string
//! is tried against every route. Accepted values satisfy the documented bounds; a decoded
//! keyset cursor re-encodes to one that decodes the same.
#![no_main]

mod common;

use std::collections::HashMap;

use bazaar_hub::api::{bootstrap, charts, intelligence, reads, sku_param, store_param};
use bazaar_hub::dashboard_data::DASHBOARD_STORES_ROUTE;
use bazaar_hub::queries::{
    decode_cursor, encode_cursor, AUDIT_ROUTE, MOVEMENTS_ROUTE, PARKED_ROUTE, STOCK_ROUTE,
    STORES_ROUTE,
};
use bazaar_hub::snapshot::{self, Cursor};
use bazaar_shared::envelope::MAX_QUANTITY;
use chrono::{DateTime, Datelike, Utc};
use common::is_identifier;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn parse<Q: DeserializeOwned>(raw: &str) -> Option<Q> {
    serde_urlencoded::from_str::<Q>(raw).ok()
}

/// A keyset cursor: decoded, re-encoded, decoded again to the same key.
fn keyset<K: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(route: &str, raw: &str) {
    if let Ok(key) = decode_cursor::<K>(route, raw) {
        let again = encode_cursor(route, &key);
        let back = decode_cursor::<K>(route, &again).expect("a re-encoded cursor decodes");
        assert_eq!(back, key, "cursor key round trip");
    }
}

fn page_limit(accepted: Option<u32>) {
    if let Some(n) = accepted {
        assert!((1..=1000).contains(&n), "accepted limit {n}");
    }
}

fn id_ok(id: &str, raw: &str) {
    assert_eq!(id, raw, "an id keeps its text");
    assert!(is_identifier(id), "accepted id {id:?}");
}

fn since_ok(since: Option<DateTime<Utc>>) {
    // Years outside 1..=9999 are the known chrono gap (fuzz/README.md).
    if let Some(t) = since.filter(|t| (1..=9999).contains(&t.year())) {
        let text = t.to_rfc3339();
        let back: DateTime<Utc> = text.parse().expect("an RFC 3339 rendering parses");
        assert_eq!(back, t);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    reads_routes(raw);
    charts_routes(raw);
    intelligence_routes(raw);
    snapshot_route(raw);
    command_routes(raw);
});

/// `api::reads`: stores, stock, movements, audit, parked, recent.
fn reads_routes(raw: &str) {
    if let Some(q) = parse::<reads::PageQuery>(raw) {
        page_limit(reads::limit(q.limit).ok());
        if let Some(c) = q.cursor.as_deref() {
            keyset::<(String,)>(STORES_ROUTE, c);
            keyset::<(String,)>(STOCK_ROUTE, c);
        }
    }
    if let Some(q) = parse::<reads::MovementsQuery>(raw) {
        if let Some(s) = q.store.clone() {
            if let Ok(Some(store)) = reads::optional_store(Some(s.clone())) {
                id_ok(store.as_str(), &s);
            }
        }
        if let Some(s) = q.sku.clone() {
            if let Ok(sku) = sku_param(s.clone()) {
                id_ok(sku.as_str(), &s);
            }
        }
        page_limit(reads::limit(q.limit).ok());
        since_ok(q.since);
        if let Some(c) = q.cursor.as_deref() {
            keyset::<(DateTime<Utc>, String, u8, u64)>(MOVEMENTS_ROUTE, c);
        }
    }
    if let Some(q) = parse::<reads::AuditQuery>(raw) {
        page_limit(reads::limit(q.limit).ok());
        since_ok(q.since);
        if let Some(c) = q.cursor.as_deref() {
            keyset::<(i64,)>(AUDIT_ROUTE, c);
        }
    }
    if let Some(q) = parse::<reads::ParkedQuery>(raw) {
        if let Some(s) = q.store.clone() {
            if let Ok(Some(store)) = reads::optional_store(Some(s.clone())) {
                id_ok(store.as_str(), &s);
            }
        }
        page_limit(reads::limit(q.limit).ok());
        if let Some(c) = q.cursor.as_deref() {
            keyset::<(i64,)>(PARKED_ROUTE, c);
        }
    }
    if let Some(q) = parse::<reads::RecentQuery>(raw) {
        page_limit(reads::limit(q.limit).ok());
    }
}

/// `api::charts`: the dashboard's store list, alerts and sync history.
fn charts_routes(raw: &str) {
    if let Some(q) = parse::<charts::StoresQuery>(raw) {
        page_limit(charts::limit_of(q.limit).ok());
        if let Some(health) = q.health {
            let text = serde_json::to_string(&health).expect("a health serializes");
            let back: bazaar_hub::dashboard_data::Health =
                serde_json::from_str(&text).expect("and parses back");
            assert_eq!(back, health);
        }
        if let Some(c) = q.cursor.as_deref() {
            keyset::<(String,)>(DASHBOARD_STORES_ROUTE, c);
        }
    }
    if let Some(q) = parse::<charts::AlertsQuery>(raw) {
        if let Some(s) = q.store.clone().filter(|s| !s.is_empty()) {
            if let Ok(store) = store_param(s.clone()) {
                id_ok(store.as_str(), &s);
            }
        }
        if let Ok(Some(kind)) = charts::one_of("kind", q.kind, &charts::ALERT_KINDS) {
            assert!(
                charts::ALERT_KINDS.contains(&kind.as_str()),
                "accepted kind {kind:?}"
            );
        }
        if let Ok(Some(s)) = charts::one_of("severity", q.severity, &charts::SEVERITIES) {
            assert!(
                charts::SEVERITIES.contains(&s.as_str()),
                "accepted severity {s:?}"
            );
        }
        page_limit(charts::limit_of(q.limit).ok());
    }
    let _ = parse::<charts::HistoryQuery>(raw);
}

/// `api::intelligence`: thresholds (GET and DELETE), alerts, reorders, transfer suggestions.
fn intelligence_routes(raw: &str) {
    let opt_id = |q: Option<String>, store: bool| {
        let asked = q.clone();
        let parsed = if store {
            intelligence::opt_store(q).map(|s| s.map(|s| s.as_str().to_owned()))
        } else {
            intelligence::opt_sku(q).map(|s| s.map(|s| s.as_str().to_owned()))
        };
        match parsed {
            Ok(Some(id)) => id_ok(&id, asked.as_deref().unwrap_or_default()),
            Ok(None) => assert!(asked.is_none_or(|s| s.is_empty()), "an id was dropped"),
            Err(_) => {}
        }
    };
    let pair = |c: Option<&str>| {
        if let Some(Ok((store, sku))) = c.map(intelligence::pair_cursor) {
            for id in [&store, &sku] {
                assert!(id.is_empty() || is_identifier(id), "cursor part {id:?}");
            }
        }
    };
    if let Some(q) = parse::<intelligence::ThresholdQuery>(raw) {
        opt_id(q.store, true);
        opt_id(q.sku, false);
        page_limit(intelligence::limit_of(q.limit).ok());
        pair(q.cursor.as_deref());
    }
    if let Some(q) = parse::<intelligence::ScopeQuery>(raw) {
        if let Ok(scope) = intelligence::scope_of(q.store, q.sku) {
            let (s, k) = scope.key();
            assert!(!(s.is_empty() && k.is_empty()));
            assert!(s.is_empty() || is_identifier(s));
            assert!(k.is_empty() || is_identifier(k));
        }
    }
    if let Some(q) = parse::<intelligence::AlertQuery>(raw) {
        opt_id(q.store, true);
        page_limit(intelligence::limit_of(q.limit).ok());
        let _ = q
            .kind
            .as_deref()
            .map(|k| intelligence::ALERT_KINDS.contains(&k));
        let _ = q
            .cursor
            .as_deref()
            .map(|c| c.parse::<i64>().ok().filter(|c| *c > 0));
    }
    if let Some(q) = parse::<intelligence::ReorderQuery>(raw) {
        opt_id(q.store, true);
        page_limit(intelligence::limit_of(q.limit).ok());
        pair(q.cursor.as_deref());
    }
    if let Some(q) = parse::<intelligence::TransferQuery>(raw) {
        opt_id(q.sku, false);
        page_limit(intelligence::limit_of(q.limit).ok());
        if let Some(c) = q.cursor {
            if let Ok(sku) = sku_param(c.clone()) {
                id_ok(sku.as_str(), &c);
            }
        }
    }
}

/// `GET /v1/stores/{store}/snapshot`: the `last_seq:last_hub_seq:sku` cursor.
fn snapshot_route(raw: &str) {
    let Some(q) = parse::<bootstrap::SnapshotQuery>(raw) else {
        return;
    };
    if let Some(c) = q.cursor.as_deref().and_then(Cursor::parse) {
        assert!(is_identifier(c.after.as_str()));
        let again = Cursor::parse(&c.encode()).expect("an encoded cursor parses");
        assert_eq!(again, c, "snapshot cursor round trip");
    }
    let _ = q.limit.map(|l| (1..=snapshot::MAX_PAGE).contains(&l));
}

/// `update-stock` (`?quantity=`) and the agents' command range (`?after=&limit=`): a
/// plain map, read as their handlers read it.
fn command_routes(raw: &str) {
    let Some(q) = parse::<HashMap<String, String>>(raw) else {
        return;
    };
    if let Some(Ok(n)) = q.get("quantity").map(|v| v.trim().parse::<i64>()) {
        let _ = (0..=MAX_QUANTITY).contains(&n);
    }
    for name in ["after", "limit"] {
        let _ = q.get(name).map(|v| v.parse::<u64>());
    }
}
