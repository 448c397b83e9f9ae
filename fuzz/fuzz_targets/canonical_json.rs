//! RFC 8785 canonical bytes of arbitrary JSON: they parse back to the same value, and
//! canonicalising them again changes nothing.
#![no_main]

use bazaar_shared::canonical::canonical_bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(canonical) = canonical_bytes(&value) else {
        return;
    };
    let back: Value = serde_json::from_slice(&canonical).expect("canonical bytes are JSON");
    assert_eq!(back, value, "canonical bytes parse back to the same value");
    let twice = canonical_bytes(&back).expect("canonical of canonical succeeds");
    assert_eq!(twice, canonical, "canonicalisation is idempotent");
});
