//! `StoreId::parse` / `Sku::parse` accept exactly `^[A-Za-z0-9_-]{1,64}$` (DESIGN §3).
#![no_main]

use bazaar_shared::{Sku, StoreId};
use libfuzzer_sys::fuzz_target;

fn matches_pattern(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let expected = matches_pattern(s);
    let store = StoreId::parse(s);
    let sku = Sku::parse(s);
    assert_eq!(store.is_ok(), expected, "StoreId::parse({s:?})");
    assert_eq!(sku.is_ok(), expected, "Sku::parse({s:?})");
    if let Ok(id) = store {
        assert_eq!(id.as_str(), s);
    }
    if let Ok(id) = sku {
        assert_eq!(id.as_str(), s);
    }
});
