//! The agent's local API, as its handlers read a request: the `POST /v1/movements` body
//! (`MovementRequest::into_new_movement`, parse-don't-validate), the `Idempotency-Key`
//! header, the query strings of `/v1/stock`, `/v1/alerts`, `/v1/transfers/expected` and
//! `/v1/parked`, and the Host/Origin/Content-Type gate every request passes
//! (`check_local`). The input is tried as a body, as a query string, and (split on
//! newlines) as the three headers.
#![no_main]

mod common;

use std::net::SocketAddr;

use bazaar_agent::api::{
    check_local, idempotency_key, AlertsQuery, MovementRequest, ParkedQuery, StockQuery,
};
use bazaar_agent::ledger::Quantity;
use bazaar_shared::envelope::{count_delta, MAX_QUANTITY};
use bazaar_shared::http::parse_json;
use bazaar_shared::{Kind, Origin, StoreId};
use common::{assert_delta_bounds, assert_ref_bounds, assert_sendable, is_identifier};
use libfuzzer_sys::fuzz_target;
use warp::http::Method;

fuzz_target!(|data: &[u8]| {
    body(data);
    if let Ok(text) = std::str::from_utf8(data) {
        queries(text);
        headers(text);
    }
});

/// `record_movement`: JSON into the struct, then `into_new_movement`. What it accepts is
/// recorded as is, so it must be a movement the pump can sign and send.
fn body(data: &[u8]) {
    let Ok(request) = parse_json::<MovementRequest>(data) else {
        return;
    };
    let own = StoreId::parse("S1").expect("a valid id");
    let (kind_raw, sku_raw) = (request.kind.clone(), request.sku.clone());
    let (qty, counted_raw) = (request.qty, request.counted);
    let Ok(new) = request.into_new_movement(&own) else {
        return;
    };
    let kind = new.kind;
    assert_eq!(kind.as_str(), kind_raw);
    assert_ne!(kind, Kind::Void, "a till cannot send a void");
    assert_eq!(new.sku.as_str(), sku_raw);
    assert!(is_identifier(new.sku.as_str()));
    let (delta, counted) = match new.quantity {
        Quantity::Counted(c) => {
            assert_eq!(kind, Kind::Count);
            assert!((0..=MAX_QUANTITY).contains(&c), "accepted counted {c}");
            assert_eq!((qty, counted_raw), (None, Some(c)));
            // The delta depends on the store's on-hand; 0 on hand is one case.
            (count_delta(c, 0), Some(c))
        }
        Quantity::Delta(d) => {
            assert_ne!(kind, Kind::Count);
            assert_delta_bounds(kind, d);
            assert_eq!(counted_raw, None);
            (d, None)
        }
    };
    assert_eq!(new.reason.is_some(), kind == Kind::Adjustment);
    assert_ref_bounds(new.reference.as_deref());
    if let Some(r) = &new.reference {
        assert!(
            !r.chars().any(char::is_control),
            "accepted a ref with control characters"
        );
    }
    for other in [&new.to_store, &new.from_store].into_iter().flatten() {
        assert!(is_identifier(other.as_str()));
        assert_ne!(other, &own, "a transfer with its own store");
    }
    assert_eq!(new.to_store.is_some(), kind == Kind::TransferOut);
    assert_eq!(new.from_store.is_some(), kind == Kind::TransferIn);
    serde_json::to_vec(&new).expect("a new movement serializes (its request hash)");
    assert_sendable(
        &own,
        Origin::Store,
        kind,
        &new.sku,
        delta,
        counted,
        new.reason,
        new.reference.as_deref(),
        new.to_store.as_ref(),
        new.from_store.as_ref(),
    );
}

/// The GET routes' query structs and the clamps their handlers apply.
fn queries(raw: &str) {
    if let Ok(q) = serde_urlencoded::from_str::<StockQuery>(raw) {
        let limit = q.limit.unwrap_or(500).clamp(1, 5000);
        assert!((1..=5000).contains(&limit));
    }
    if let Ok(q) = serde_urlencoded::from_str::<AlertsQuery>(raw) {
        let _ = (q.all, q.limit.unwrap_or(100).clamp(1, 1000));
    }
    if let Ok(q) = serde_urlencoded::from_str::<ParkedQuery>(raw) {
        let _ = (q.after.unwrap_or(0), q.limit.unwrap_or(100).clamp(1, 1000));
    }
}

/// `Idempotency-Key` and `local_only`'s checks, for a loopback, a LAN and an all-interfaces
/// listener. Lines: Host, Origin, Content-Type (an absent line is an absent header; a
/// leading `POST ` on the first line makes it a POST).
fn headers(text: &str) {
    if let Ok(Some(k)) = idempotency_key(Some(text.to_owned())) {
        assert!(
            (1..=200).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()),
            "accepted key {k:?}"
        );
    }
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default();
    let (method, host) = match first.strip_prefix("POST ") {
        Some(rest) => (Method::POST, rest),
        None => (Method::GET, first),
    };
    let host = (!host.is_empty()).then_some(host);
    let origin = lines.next();
    let content_type = lines.next();
    for listen in [
        "127.0.0.1:7070",
        "192.168.1.20:7070",
        "0.0.0.0:7070",
        "[::1]:7070",
    ] {
        let listen: SocketAddr = listen.parse().expect("a socket address");
        if check_local(listen, &method, host, origin, content_type).is_err() {
            continue;
        }
        let h = host.unwrap_or_default().trim().to_ascii_lowercase();
        if listen.ip().is_loopback() {
            let port = format!(":{}", listen.port());
            let name = h.strip_suffix(port.as_str()).unwrap_or(&h);
            assert!(
                ["127.0.0.1", "localhost", "[::1]"].contains(&name),
                "loopback served Host {h:?}"
            );
        } else if !listen.ip().is_unspecified() {
            let ip = listen.ip().to_string();
            assert!(
                h == ip || h == listen.to_string(),
                "{listen} served Host {h:?}"
            );
        }
        if let Some(o) = origin {
            let o = o.trim().to_ascii_lowercase();
            assert!(o.starts_with("http://"), "served Origin {o:?}");
            if listen.ip().is_unspecified() {
                assert_eq!(o, format!("http://{h}"), "served a foreign Origin");
            }
        }
        if method == Method::POST {
            let essence = content_type
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default();
            assert!(
                essence.trim().eq_ignore_ascii_case("application/json"),
                "POST with {content_type:?}"
            );
        }
    }
}
