//! RFC 8785 (JSON Canonicalization Scheme) for the JSON this system exchanges.
//!
//! Object keys are sorted here, explicitly, by their UTF-16 code units as RFC 8785 §3.2.3
//! requires: the output never depends on the order a map happened to keep. Numbers are
//! limited to integers of magnitude below 2^53, whose RFC 8785 form is their plain decimal
//! digits; anything else is refused rather than canonicalised differently from other
//! implementations.

use serde_json::Value;

/// Largest integer magnitude every JSON implementation represents exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("number {0} is not an integer of magnitude below 2^53")]
    UnsupportedNumber(String),
}

pub fn canonical_bytes(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let fits = n
                .as_i64()
                .map(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER as u64)
                .unwrap_or(false);
            if !fits {
                return Err(CanonicalError::UnsupportedNumber(n.to_string()));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// RFC 8785 §3.2.2.2: escape `"` and `\`, the five short control escapes, other control
/// characters as `\u00xx` in lowercase hex; everything else verbatim UTF-8.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{09}' => out.extend_from_slice(b"\\t"),
            '\u{0a}' => out.extend_from_slice(b"\\n"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            '\u{0d}' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        String::from_utf8(canonical_bytes(&v).unwrap()).unwrap()
    }

    #[test]
    fn keys_are_sorted_and_whitespace_dropped() {
        let v = json!({"sku": "A", "delta": -2, "counted": null, "b": [1, true, "x"]});
        assert_eq!(
            canon(v),
            r#"{"b":[1,true,"x"],"counted":null,"delta":-2,"sku":"A"}"#
        );
    }

    #[test]
    fn sorting_uses_utf16_code_units() {
        // RFC 8785 §3.2.3 example: U+20AC (0x20AC) sorts before U+1F600 (0xD83D 0xDE00)
        // by UTF-16 although its UTF-8 bytes sort after... and "\r" (0x0D) before "1".
        let v = json!({"\u{1F600}": 1, "\u{20AC}": 2, "1": 3, "\r": 4});
        assert_eq!(
            canon(v),
            "{\"\\r\":4,\"1\":3,\"\u{20AC}\":2,\"\u{1F600}\":1}"
        );
    }

    #[test]
    fn strings_escape_as_rfc8785_says() {
        let v = json!("a\"b\\c\u{0001}\u{001f}\t\n/é");
        assert_eq!(canon(v), "\"a\\\"b\\\\c\\u0001\\u001f\\t\\n/é\"");
    }

    #[test]
    fn floats_and_huge_integers_are_refused() {
        assert!(canonical_bytes(&json!(1.5)).is_err());
        assert!(canonical_bytes(&json!(1u64 << 53)).is_err());
        assert!(canonical_bytes(&json!(MAX_SAFE_INTEGER)).is_ok());
        assert!(canonical_bytes(&json!(-MAX_SAFE_INTEGER)).is_ok());
    }

    proptest! {
        #[test]
        fn canonical_form_is_stable_under_reparsing(
            entries in proptest::collection::btree_map("[a-z\u{e9}\u{1F600}]{1,6}", -1000i64..1000, 0..8),
            text in ".{0,20}",
        ) {
            let mut obj = serde_json::Map::new();
            for (k, v) in &entries {
                obj.insert(k.clone(), json!(v));
            }
            obj.insert("text".into(), json!(text));
            let first = canonical_bytes(&Value::Object(obj)).unwrap();
            let reparsed: Value = serde_json::from_slice(&first).unwrap();
            prop_assert_eq!(canonical_bytes(&reparsed).unwrap(), first);
        }
    }
}
