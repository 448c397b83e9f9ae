//! The movement envelope, wire format v1 (DESIGN §5): one JSON message per movement.
//!
//! An `Envelope` that exists is consistent: its kind agrees with the sign of its delta,
//! counts carry `counted`, adjustments a reason, transfers their other store, and every
//! field is within its bounds. `sig` is HMAC-SHA256 over the RFC 8785 canonical bytes of
//! the message without `sig`, computed over the message *as received*, so fields a newer
//! producer adds are covered by the signature too.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::canonical::{canonical_bytes, CanonicalError};
use crate::ids::{Sku, StoreId};
use crate::signing::SigningKey;

pub const WIRE_VERSION: u32 = 1;
/// A v1 message is a few hundred bytes; anything far larger is not one of ours.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// One million tonnes in grams: a bound that no real movement reaches, chosen so that sums
/// of millions of movements stay far from `i64` overflow.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000;
pub const MAX_REF_LEN: usize = 128;

/// DESIGN §4's count rule, the one place it is written: a count's delta is what was
/// counted less the on-hand the counting side saw (`view`). Both sides bound their
/// figures by [`MAX_QUANTITY`], so this never overflows; saturating all the same.
pub fn count_delta(counted: i64, view: i64) -> i64 {
    counted.saturating_sub(view)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Store,
    Hub,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Store => "store",
            Origin::Hub => "hub",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sale,
    Return,
    Receipt,
    Adjustment,
    Count,
    TransferOut,
    TransferIn,
    /// Consumes a seq whose original movement could not be delivered or was refused (it
    /// is parked, named by `voids`); moves no stock. Never posted by a client.
    Void,
}

impl Kind {
    /// The kinds a till or HQ records; `Void` is only ever made by the agent's outbox.
    pub const ALL: [Kind; 7] = [
        Kind::Sale,
        Kind::Return,
        Kind::Receipt,
        Kind::Adjustment,
        Kind::Count,
        Kind::TransferOut,
        Kind::TransferIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sale => "sale",
            Kind::Return => "return",
            Kind::Receipt => "receipt",
            Kind::Adjustment => "adjustment",
            Kind::Count => "count",
            Kind::TransferOut => "transfer_out",
            Kind::TransferIn => "transfer_in",
            Kind::Void => "void",
        }
    }

    /// A recordable kind by its wire name; `void` is not one.
    pub fn parse(raw: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The sign a positive quantity of this kind takes: -1 for stock leaving, +1 for stock
    /// arriving, `None` where the caller gives the signed delta (adjustment), a count or a
    /// void.
    pub fn sign_of_quantity(self) -> Option<i64> {
        match self {
            Kind::Sale | Kind::TransferOut => Some(-1),
            Kind::Return | Kind::Receipt | Kind::TransferIn => Some(1),
            Kind::Adjustment | Kind::Count | Kind::Void => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Damage,
    Theft,
    Expiry,
    Correction,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Damage => "damage",
            Reason::Theft => "theft",
            Reason::Expiry => "expiry",
            Reason::Correction => "correction",
        }
    }

    pub fn parse(raw: &str) -> Option<Reason> {
        [
            Reason::Damage,
            Reason::Theft,
            Reason::Expiry,
            Reason::Correction,
        ]
        .into_iter()
        .find(|r| r.as_str() == raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message is {0} bytes; at most {MAX_MESSAGE_BYTES} are allowed")]
    TooLarge(usize),
    #[error("message is not valid JSON: {0}")]
    NotJson(String),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("message has no string field `sig`")]
    MissingSignature,
    #[error("field error: {0}")]
    Field(String),
    #[error("unsupported wire version {0}; this build speaks v{WIRE_VERSION}")]
    Version(u32),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
}

/// A movement as it travels between agent and hub (everything but `sig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub store: StoreId,
    pub origin: Origin,
    pub seq: u64,
    pub id: Uuid,
    pub kind: Kind,
    pub sku: Sku,
    pub delta: i64,
    pub counted: Option<i64>,
    pub hub_watermark: u64,
    #[serde(with = "rfc3339")]
    pub occurred_at: DateTime<Utc>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_store: Option<StoreId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_store: Option<StoreId>,
    /// On a `void` only: the id of the parked movement whose seq it consumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voids: Option<Uuid>,
}

mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("occurred_at {raw:?}: {e}")))
    }
}

/// A decoded message, its signature not yet checked: the hub needs `store` to find the key.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope: Envelope,
    canonical: Vec<u8>,
    sig: String,
}

impl Received {
    pub fn verify(&self, key: &SigningKey) -> bool {
        key.verify(&self.canonical, &self.sig)
    }
}

impl Envelope {
    /// A plain movement of `delta` for `sku`, now, with a fresh UUIDv7 and nothing
    /// optional set: the start from which counts, adjustments and transfers add their
    /// fields. Not validated until signed.
    pub fn movement(
        store: StoreId,
        origin: Origin,
        seq: u64,
        kind: Kind,
        sku: Sku,
        delta: i64,
    ) -> Envelope {
        Envelope {
            v: WIRE_VERSION,
            store,
            origin,
            seq,
            id: Uuid::now_v7(),
            kind,
            sku,
            delta,
            counted: None,
            hub_watermark: 0,
            occurred_at: Utc::now(),
            reference: None,
            reason: None,
            to_store: None,
            from_store: None,
            voids: None,
        }
    }

    /// The void that consumes `original`'s seq: same store, seq and sku, a fresh id, no
    /// stock moved.
    pub fn void_of(original: &Envelope) -> Envelope {
        Envelope {
            voids: Some(original.id),
            hub_watermark: original.hub_watermark,
            occurred_at: original.occurred_at,
            ..Envelope::movement(
                original.store.clone(),
                original.origin,
                original.seq,
                Kind::Void,
                original.sku.clone(),
                0,
            )
        }
    }

    /// Checks the rules of DESIGN §3–§4 that a single message can be held to.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        let bad = |msg: String| Err(EnvelopeError::Invalid(msg));
        if self.v != WIRE_VERSION {
            return Err(EnvelopeError::Version(self.v));
        }
        if self.seq == 0 || self.seq > crate::canonical::MAX_SAFE_INTEGER as u64 {
            return bad(format!("seq {} is out of range (1 to 2^53-1)", self.seq));
        }
        if self.hub_watermark > crate::canonical::MAX_SAFE_INTEGER as u64 {
            return bad("hub_watermark is out of range".into());
        }
        // unsigned_abs: i64::MIN has no i64 absolute value (abs() overflows, or wraps to
        // i64::MIN and passes the check in a release build).
        if self.delta.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
            return bad(format!("delta {} exceeds ±{MAX_QUANTITY}", self.delta));
        }
        if let Some(reference) = &self.reference {
            if reference.chars().count() > MAX_REF_LEN {
                return bad(format!("ref is longer than {MAX_REF_LEN} characters"));
            }
            if reference.chars().any(char::is_control) {
                return bad("ref contains control characters".into());
            }
        }
        let kind = self.kind.as_str();
        if self.kind == Kind::Void {
            return match (
                self.voids,
                self.delta,
                self.counted,
                self.reason,
                &self.to_store,
                &self.from_store,
            ) {
                (Some(_), 0, None, None, None, None) => Ok(()),
                (None, ..) => bad("a void names the parked movement in `voids`".into()),
                _ => bad(
                    "a void moves no stock: delta 0 and no counted, reason or other store".into(),
                ),
            };
        }
        if self.voids.is_some() {
            return bad(format!("a {kind} does not carry `voids`"));
        }
        match self.kind {
            Kind::Count => match self.counted {
                Some(c) if (0..=MAX_QUANTITY).contains(&c) => {}
                Some(c) => return bad(format!("counted {c} must be between 0 and {MAX_QUANTITY}")),
                None => return bad("a count carries `counted`".into()),
            },
            _ if self.counted.is_some() => {
                return bad(format!("a {kind} does not carry `counted`"));
            }
            _ => {}
        }
        match self.kind.sign_of_quantity() {
            Some(sign) if self.delta.signum() != sign => {
                let want = if sign < 0 { "negative" } else { "positive" };
                return bad(format!("a {kind} has a {want} delta, not {}", self.delta));
            }
            None if self.kind == Kind::Adjustment && self.delta == 0 => {
                return bad("an adjustment moves stock: its delta cannot be 0".into());
            }
            _ => {}
        }
        match (self.kind, self.reason) {
            (Kind::Adjustment, None) => {
                return bad(
                    "an adjustment needs a reason: damage, theft, expiry or correction".into(),
                )
            }
            (Kind::Adjustment, Some(_)) | (_, None) => {}
            (_, Some(_)) => return bad(format!("a {kind} does not carry a reason")),
        }
        match (self.kind, &self.to_store, &self.from_store) {
            (Kind::TransferOut, Some(to), None) if *to != self.store => {}
            (Kind::TransferOut, _, _) => {
                return bad(
                    "a transfer_out names another store in `to_store` (and no `from_store`)".into(),
                )
            }
            (Kind::TransferIn, None, Some(from)) if *from != self.store => {}
            (Kind::TransferIn, _, _) => {
                return bad(
                    "a transfer_in names another store in `from_store` (and no `to_store`)".into(),
                )
            }
            (_, None, None) => {}
            _ => return bad(format!("a {kind} names no other store")),
        }
        Ok(())
    }

    fn unsigned_value(&self) -> Result<Value, EnvelopeError> {
        serde_json::to_value(self).map_err(|e| EnvelopeError::Field(e.to_string()))
    }

    /// The canonical bytes a signature covers.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(canonical_bytes(&self.unsigned_value()?)?)
    }

    /// Validates, signs and encodes the message as it goes on the wire.
    pub fn to_signed_bytes(&self, key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
        self.validate()?;
        let mut value = self.unsigned_value()?;
        let sig = key.sign(&canonical_bytes(&value)?);
        if let Value::Object(map) = &mut value {
            map.insert("sig".into(), Value::String(sig));
        }
        // The canonical form is also a fine wire form: compact and deterministic.
        Ok(canonical_bytes(&value)?)
    }

    /// Decodes and validates a message; the caller then checks its signature.
    pub fn decode(bytes: &[u8]) -> Result<Received, EnvelopeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let mut value: Value =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let Value::Object(map) = &mut value else {
            return Err(EnvelopeError::NotAnObject);
        };
        let Some(Value::String(sig)) = map.remove("sig") else {
            return Err(EnvelopeError::MissingSignature);
        };
        let canonical = canonical_bytes(&value)?;
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| EnvelopeError::Field(e.to_string()))?;
        envelope.validate()?;
        Ok(Received {
            envelope,
            canonical,
            sig,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sale() -> Envelope {
        Envelope {
            v: 1,
            store: StoreId::parse("S042").unwrap(),
            origin: Origin::Store,
            seq: 1234,
            id: Uuid::now_v7(),
            kind: Kind::Sale,
            sku: Sku::parse("MILK-1L").unwrap(),
            delta: -2,
            counted: None,
            hub_watermark: 17,
            occurred_at: "2026-11-26T10:00:00Z".parse().unwrap(),
            reference: Some("till3/r991".into()),
            reason: None,
            to_store: None,
            from_store: None,
            voids: None,
        }
    }

    #[test]
    fn a_void_consumes_the_seq_and_names_the_original() {
        let key = SigningKey::generate();
        let original = sale();
        let void = Envelope::void_of(&original);
        assert_eq!((void.seq, void.kind, void.delta), (1234, Kind::Void, 0));
        assert_eq!(void.voids, Some(original.id));
        assert_ne!(void.id, original.id);
        let bytes = void.to_signed_bytes(&key).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(&format!(r#""voids":"{}""#, original.id)),
            "{text}"
        );
        let received = Envelope::decode(&bytes).unwrap();
        assert!(received.verify(&key));
        assert_eq!(received.envelope, void);
        // A movement never carries `voids`, and a void moves nothing.
        assert!(!String::from_utf8(original.to_signed_bytes(&key).unwrap())
            .unwrap()
            .contains("voids"));
        for bad in [
            Envelope {
                voids: None,
                ..void.clone()
            },
            Envelope {
                delta: -1,
                ..void.clone()
            },
            Envelope {
                counted: Some(1),
                ..void.clone()
            },
            Envelope {
                voids: Some(original.id),
                ..sale()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(Kind::parse("void"), None, "no client records a void");
    }

    /// Found by fuzz/hub_bodies: `i64::MIN.abs()` overflowed in `validate`.
    #[test]
    fn a_delta_of_i64_min_is_invalid_not_a_panic() {
        for delta in [i64::MIN, i64::MIN + 1, -MAX_QUANTITY - 1] {
            let e = Envelope {
                kind: Kind::Adjustment,
                reason: Some(Reason::Damage),
                delta,
                ..sale()
            };
            assert!(
                matches!(e.validate(), Err(EnvelopeError::Invalid(_))),
                "{delta}"
            );
        }
        let edge = Envelope {
            kind: Kind::Adjustment,
            reason: Some(Reason::Damage),
            delta: -MAX_QUANTITY,
            ..sale()
        };
        assert!(edge.validate().is_ok());
    }

    #[test]
    fn wire_form_matches_the_design_example() {
        let key = SigningKey::generate();
        let original = sale();
        let bytes = original.to_signed_bytes(&key).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"counted":null,"delta":-2,"hub_watermark":17,"id":""#),
            "{text}"
        );
        assert!(
            text.contains(
                r#""occurred_at":"2026-11-26T10:00:00Z","origin":"store","ref":"till3/r991","#
            ),
            "{text}"
        );
        let received = Envelope::decode(&bytes).unwrap();
        assert!(received.verify(&key));
        assert_eq!(received.envelope, original);
    }

    #[test]
    fn signature_is_over_the_message_as_received_in_any_key_order() {
        let key = SigningKey::generate();
        let bytes = sale().to_signed_bytes(&key).unwrap();
        // Another producer may lay keys out in any order and add whitespace.
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let Value::Object(map) = value else {
            unreachable!()
        };
        let mut pairs: Vec<_> = map.into_iter().collect();
        pairs.reverse();
        let body = pairs
            .iter()
            .map(|(k, v)| format!("{k:?} : {v}"))
            .collect::<Vec<_>>()
            .join(" ,\n ");
        let received = Envelope::decode(format!("{{ {body} }}").as_bytes()).unwrap();
        assert!(received.verify(&key));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = SigningKey::generate();
        let text = String::from_utf8(sale().to_signed_bytes(&key).unwrap()).unwrap();
        let forged = text.replace(r#""delta":-2"#, r#""delta":-1"#);
        assert!(!Envelope::decode(forged.as_bytes()).unwrap().verify(&key));
        let other_key = SigningKey::generate();
        assert!(!Envelope::decode(text.as_bytes())
            .unwrap()
            .verify(&other_key));
    }

    #[test]
    fn kind_and_sign_must_agree() {
        let cases: Vec<(Envelope, &str)> = vec![
            (Envelope { delta: 2, ..sale() }, "negative delta"),
            (
                Envelope {
                    kind: Kind::Receipt,
                    delta: -1,
                    ..sale()
                },
                "positive delta",
            ),
            (
                Envelope {
                    kind: Kind::Return,
                    delta: 0,
                    ..sale()
                },
                "positive delta",
            ),
            (
                Envelope {
                    kind: Kind::Adjustment,
                    reason: Some(Reason::Damage),
                    delta: 0,
                    ..sale()
                },
                "cannot be 0",
            ),
            (
                Envelope {
                    kind: Kind::Adjustment,
                    delta: -3,
                    ..sale()
                },
                "needs a reason",
            ),
            (
                Envelope {
                    reason: Some(Reason::Theft),
                    ..sale()
                },
                "does not carry a reason",
            ),
            (
                Envelope {
                    kind: Kind::Count,
                    ..sale()
                },
                "carries `counted`",
            ),
            (
                Envelope {
                    counted: Some(3),
                    ..sale()
                },
                "does not carry `counted`",
            ),
            (
                Envelope {
                    kind: Kind::Count,
                    counted: Some(-1),
                    ..sale()
                },
                "between 0",
            ),
            (
                Envelope {
                    kind: Kind::TransferOut,
                    ..sale()
                },
                "to_store",
            ),
            (
                Envelope {
                    kind: Kind::TransferOut,
                    to_store: Some(StoreId::parse("S042").unwrap()),
                    ..sale()
                },
                "to_store",
            ),
            (
                Envelope {
                    kind: Kind::TransferIn,
                    delta: 4,
                    ..sale()
                },
                "from_store",
            ),
            (
                Envelope {
                    to_store: Some(StoreId::parse("S1").unwrap()),
                    ..sale()
                },
                "names no other store",
            ),
            (Envelope { seq: 0, ..sale() }, "seq 0"),
            (
                Envelope {
                    delta: -MAX_QUANTITY - 1,
                    ..sale()
                },
                "exceeds",
            ),
            (
                Envelope {
                    reference: Some("x".repeat(129)),
                    ..sale()
                },
                "longer than",
            ),
            (
                Envelope {
                    reference: Some("a\nb".into()),
                    ..sale()
                },
                "control",
            ),
            (Envelope { v: 2, ..sale() }, "version 2"),
        ];
        for (envelope, expected) in cases {
            let err = envelope.validate().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        let ok = [
            Envelope {
                kind: Kind::Count,
                counted: Some(0),
                delta: -5,
                ..sale()
            },
            Envelope {
                kind: Kind::Count,
                counted: Some(7),
                delta: 0,
                ..sale()
            },
            Envelope {
                kind: Kind::Adjustment,
                reason: Some(Reason::Correction),
                delta: 9,
                ..sale()
            },
            Envelope {
                kind: Kind::TransferOut,
                to_store: Some(StoreId::parse("S7").unwrap()),
                ..sale()
            },
            Envelope {
                kind: Kind::TransferIn,
                delta: 3,
                from_store: Some(StoreId::parse("S7").unwrap()),
                ..sale()
            },
        ];
        for envelope in ok {
            envelope.validate().unwrap();
        }
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        assert!(matches!(
            Envelope::decode(b"nope"),
            Err(EnvelopeError::NotJson(_))
        ));
        assert!(matches!(
            Envelope::decode(b"[1]"),
            Err(EnvelopeError::NotAnObject)
        ));
        assert!(matches!(
            Envelope::decode(b"{}"),
            Err(EnvelopeError::MissingSignature)
        ));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Envelope::decode(&huge),
            Err(EnvelopeError::TooLarge(_))
        ));
        let key = SigningKey::generate();
        let text = String::from_utf8(sale().to_signed_bytes(&key).unwrap()).unwrap();
        let bad_sku = text.replace("MILK-1L", "MILK 1L");
        assert!(matches!(
            Envelope::decode(bad_sku.as_bytes()),
            Err(EnvelopeError::Field(_))
        ));
        let bad_time = text.replace("2026-11-26T10:00:00Z", "yesterday");
        let err = Envelope::decode(bad_time.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("occurred_at"), "{err}");
        let float = text.replace(r#""delta":-2"#, r#""delta":-2.5"#);
        assert!(Envelope::decode(float.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn every_valid_movement_round_trips(
            seq in 1u64..1_000_000_000,
            qty in 1i64..MAX_QUANTITY,
            kind_index in 0usize..7,
            watermark in 0u64..1_000_000,
            reference in proptest::option::of("[ -~]{0,128}"),
        ) {
            let kind = Kind::ALL[kind_index];
            let other = StoreId::parse("S9").unwrap();
            let mut envelope = Envelope { seq, kind, hub_watermark: watermark, reference, ..sale() };
            envelope.delta = kind.sign_of_quantity().unwrap_or(1) * qty;
            match kind {
                Kind::Adjustment => envelope.reason = Some(Reason::Expiry),
                Kind::Count => envelope.counted = Some(qty),
                Kind::TransferOut => envelope.to_store = Some(other),
                Kind::TransferIn => envelope.from_store = Some(other),
                _ => {}
            }
            let key = SigningKey::generate();
            let bytes = envelope.to_signed_bytes(&key).unwrap();
            let received = Envelope::decode(&bytes).unwrap();
            prop_assert!(received.verify(&key));
            prop_assert_eq!(received.envelope, envelope);
        }
    }
}
