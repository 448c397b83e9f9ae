//! What the request targets share: the identifier pattern checked by hand, and the wire
//! check that everything an API accepts can be sent as one signed movement.
#![allow(dead_code)] // each target uses its own part

use bazaar_shared::envelope::{MAX_QUANTITY, MAX_REF_LEN};
use bazaar_shared::{Envelope, Kind, Origin, Reason, SigningKey, Sku, StoreId};

/// `^[A-Za-z0-9_-]{1,64}$` (DESIGN §3), by hand.
pub fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn key() -> SigningKey {
    SigningKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("a valid key")
}

/// The delta an accepted request may carry: non-zero (a count's may be 0), within
/// ±MAX_QUANTITY, with the kind's sign.
pub fn assert_delta_bounds(kind: Kind, delta: i64) {
    assert!(
        delta.unsigned_abs() <= MAX_QUANTITY.unsigned_abs(),
        "accepted {} delta {delta} is outside ±{MAX_QUANTITY}",
        kind.as_str()
    );
    assert_ne!(delta, 0, "accepted {} with delta 0", kind.as_str());
    if let Some(sign) = kind.sign_of_quantity() {
        assert_eq!(
            delta.signum(),
            sign,
            "accepted {} with delta {delta}",
            kind.as_str()
        );
    }
}

pub fn assert_ref_bounds(reference: Option<&str>) {
    if let Some(r) = reference {
        assert!(
            r.chars().count() <= MAX_REF_LEN,
            "accepted a ref of {} chars",
            r.chars().count()
        );
    }
}

/// What was accepted, as one signed movement: it validates, encodes, decodes to the same
/// envelope and its signature verifies (the promise "never accept what cannot be sent").
#[allow(clippy::too_many_arguments)]
pub fn assert_sendable(
    store: &StoreId,
    origin: Origin,
    kind: Kind,
    sku: &Sku,
    delta: i64,
    counted: Option<i64>,
    reason: Option<Reason>,
    reference: Option<&str>,
    to_store: Option<&StoreId>,
    from_store: Option<&StoreId>,
) {
    let mut e = Envelope::movement(store.clone(), origin, 1, kind, sku.clone(), delta);
    e.counted = counted;
    e.reason = reason;
    e.reference = reference.map(str::to_owned);
    e.to_store = to_store.cloned();
    e.from_store = from_store.cloned();
    if let Err(err) = e.validate() {
        panic!("accepted, but not a valid movement: {err} ({e:?})");
    }
    let key = key();
    let bytes = match e.to_signed_bytes(&key) {
        Ok(b) => b,
        Err(err) => panic!("accepted, but cannot be encoded: {err} ({e:?})"),
    };
    let back = Envelope::decode(&bytes).expect("an encoded movement decodes");
    assert_eq!(back.envelope, e, "the movement survives the wire");
    assert!(back.verify(&key), "its signature verifies");
}
