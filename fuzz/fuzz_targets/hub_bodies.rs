//! The hub's JSON request bodies, parsed and checked exactly as their handlers do before
//! anything touches the database: `POST /v1/stores/{store}/movements` (`MovementRequest`,
//! `hub_movements::plan`), `PUT /v1/thresholds` (`PutThreshold`, `scope_of`,
//! `Levels::validate`), `POST /v1/stores/{store}/enrolment` (`IssueRequest`), `POST
//! /v1/enrol` (`EnrolRequest`, `enrolment::normalise`) and `POST /v1/stores`
//! (`RegisterRequest`). Every body is tried against every route.
#![no_main]

mod common;

use bazaar_hub::api::enrolment::{EnrolRequest, IssueRequest};
use bazaar_hub::api::intelligence::{scope_of, PutThreshold};
use bazaar_hub::api::{store_param, RegisterRequest};
use bazaar_hub::enrolment::{code_hash, normalise, DEFAULT_VALID_HOURS, MAX_VALID_HOURS};
use bazaar_hub::hub_movements::{plan, request_hash, MovementRequest, Quantity};
use bazaar_hub::thresholds::{Levels, MAX_VALUE};
use bazaar_shared::envelope::MAX_QUANTITY;
use bazaar_shared::http::parse_json;
use bazaar_shared::{Kind, Origin, StoreId};
use common::{assert_delta_bounds, assert_ref_bounds, assert_sendable, is_identifier};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    movement(body);
    thresholds(body);
    issue(body);
    enrol(body);
    register(body);
});

/// `post_movement`: JSON, then the struct, then `plan`; an accepted request is one the
/// hub can sign and send.
fn movement(body: &[u8]) {
    let Ok(value) = parse_json::<Value>(body) else {
        return;
    };
    let Ok(request) = serde_json::from_value::<MovementRequest>(value.clone()) else {
        return;
    };
    let store = StoreId::parse("S1").expect("a valid id");
    let _ = request_hash("movements", &value);
    let Ok(planned) = plan(&store, &request) else {
        return;
    };
    let kind = planned.kind;
    assert!(
        !matches!(kind, Kind::Sale | Kind::Return | Kind::Void),
        "the hub accepted a {}",
        kind.as_str()
    );
    assert_eq!(kind.as_str(), request.kind);
    assert_eq!(planned.sku.as_str(), request.sku);
    assert!(is_identifier(planned.sku.as_str()));
    let (delta, counted) = match planned.quantity {
        Quantity::Counted(c) => {
            assert_eq!(kind, Kind::Count);
            assert!((0..=MAX_QUANTITY).contains(&c), "accepted counted {c}");
            assert_eq!(request.counted, Some(c));
            assert_eq!(request.qty, None);
            (c, Some(c))
        }
        Quantity::Delta(d) => {
            assert_ne!(kind, Kind::Count);
            assert_delta_bounds(kind, d);
            assert_eq!(request.counted, None);
            (d, None)
        }
    };
    assert_eq!(
        planned.reason.is_some(),
        kind == Kind::Adjustment,
        "a reason on a {}",
        kind.as_str()
    );
    assert_ref_bounds(planned.reference.as_deref());
    for other in [&planned.to_store, &planned.from_store]
        .into_iter()
        .flatten()
    {
        assert!(is_identifier(other.as_str()));
    }
    assert_sendable(
        &store,
        Origin::Hub,
        kind,
        &planned.sku,
        delta,
        counted,
        planned.reason,
        planned.reference.as_deref(),
        planned.to_store.as_ref(),
        planned.from_store.as_ref(),
    );
}

/// `put_thresholds`: the struct, the scope, then the levels `thresholds::put` checks.
fn thresholds(body: &[u8]) {
    let Ok(request) = parse_json::<PutThreshold>(body) else {
        return;
    };
    let (store, sku) = (request.store.clone(), request.sku.clone());
    let Ok(scope) = scope_of(request.store, request.sku) else {
        return;
    };
    let (s, k) = scope.key();
    assert!(
        !(s.is_empty() && k.is_empty()),
        "a scope names a store or a sku"
    );
    for (id, asked) in [(s, store), (k, sku)] {
        assert!(id.is_empty() || is_identifier(id), "scope id {id:?}");
        assert_eq!(
            id,
            asked.unwrap_or_default(),
            "the scope keeps what was asked"
        );
    }
    let _ = (scope.name(), scope.target());
    let levels = Levels {
        reorder_point: request.reorder_point,
        max_stock: request.max_stock,
    };
    if levels.validate().is_err() {
        return;
    }
    assert!(!levels.is_empty());
    for v in [levels.reorder_point, levels.max_stock]
        .into_iter()
        .flatten()
    {
        assert!((0..=MAX_VALUE).contains(&v), "accepted level {v}");
    }
    if let (Some(rop), Some(max)) = (levels.reorder_point, levels.max_stock) {
        assert!(rop <= max, "accepted reorder_point {rop} > max_stock {max}");
    }
    let json = serde_json::to_vec(&levels).expect("levels serialize");
    let back: Levels = serde_json::from_slice(&json).expect("levels parse back");
    assert_eq!(back, levels, "levels round trip");
}

/// `issue_route`: an all-whitespace body is `{}`, anything else the struct (no panic is
/// the property: the validity check is `enrolment::issue`'s first line, before a query).
fn issue(body: &[u8]) {
    let request: IssueRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IssueRequest::default()
    } else {
        match parse_json(body) {
            Ok(r) => r,
            Err(_) => return,
        }
    };
    let hours = request.valid_hours.unwrap_or(DEFAULT_VALID_HOURS);
    let _accepted = (1..=MAX_VALID_HOURS).contains(&hours);
}

/// `enrol_route`: the struct, the store id, then the code as `enrolment::redeem` hashes it.
fn enrol(body: &[u8]) {
    let Ok(request) = parse_json::<EnrolRequest>(body) else {
        return;
    };
    if let Ok(store) = store_param(request.store.clone()) {
        assert_eq!(store.as_str(), request.store);
        assert!(is_identifier(store.as_str()));
    }
    let n = normalise(&request.code);
    assert!(
        !n.chars()
            .any(|c| matches!(c, '-' | ' ' | '\t' | 'O' | 'I' | 'L') || c.is_ascii_lowercase()),
        "normalised code {n:?}"
    );
    assert_eq!(normalise(&n), n, "normalising is idempotent");
    assert_eq!(code_hash(&request.code), code_hash(&n));
}

/// `register_store`: the struct, the store id, the name's length.
fn register(body: &[u8]) {
    let Ok(request) = parse_json::<RegisterRequest>(body) else {
        return;
    };
    if let Ok(store) = store_param(request.store.clone()) {
        assert_eq!(store.as_str(), request.store);
        assert!(is_identifier(store.as_str()));
    }
    let _ = request
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 200);
}
