//! Hub commands other than movements, wire format v1 (DESIGN §5): what the hub tells one
//! store on `{prefix}store-commands` besides hub-origin movements.
//!
//! Invariants:
//! - Every message on `store-commands` for a store — a hub-origin movement ([`Envelope`]
//!   v1, unchanged) or a command here — carries `origin: "hub"` and `seq`, the store's
//!   `hub_seq`, taken from ONE gapless per-store counter. An agent applies `seq = last + 1`
//!   only, whatever the message is, so commands and movements keep one order.
//! - A command is told apart from a movement by its `type` field (a movement has `kind`
//!   and never `type`); [`HubMessage::decode`] does the dispatch.
//! - `sig` is HMAC-SHA256 over the RFC 8785 canonical bytes of the message without `sig`,
//!   keyed by the store's secret, in standard base64: exactly as for movements, so any
//!   Kafka client in any language verifies both the same way.
//! - A command whose `type` this build does not know still decodes (as
//!   [`CommandBody::Unsupported`]) so that its signature can be checked and its `seq`
//!   consumed: an old agent never stalls on a newer hub's command.
//!
//! ```json
//! {"v":1,"type":"bulk_state","store":"S042","origin":"hub","seq":18,
//!  "id":"0192f0c4-...","issued_at":"2026-11-26T10:00:00Z","document":"thresholds","sig":"..."}
//! {"v":1,"type":"expected_transfer","store":"S043","origin":"hub","seq":7,"id":"...",
//!  "issued_at":"...","transfer_id":"<id of the transfer_out at from_store>",
//!  "from_store":"S042","sku":"MILK-1L","qty":12,"ref":"van 4","sent_at":"..."}
//! {"v":1,"type":"resnapshot","store":"S042","origin":"hub","seq":19,"id":"...",
//!  "issued_at":"...","reason":"ledger repaired by support"}
//! ```

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::canonical::{canonical_bytes, MAX_SAFE_INTEGER};
use crate::envelope::{EnvelopeError, Received, MAX_QUANTITY, MAX_REF_LEN};
use crate::ids::{Sku, StoreId};
use crate::signing::SigningKey;
use crate::{Envelope, Origin, MAX_MESSAGE_BYTES};

pub const COMMAND_VERSION: u32 = 1;
pub const MAX_REASON_LEN: usize = 200;

/// A store's bulk-state documents: each is one versioned document fetched over HTTP, never
/// a stream of small messages (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Document {
    Thresholds,
    Catalogue,
    Forecasts,
}

impl Document {
    pub const ALL: [Document; 3] = [
        Document::Thresholds,
        Document::Catalogue,
        Document::Forecasts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Document::Thresholds => "thresholds",
            Document::Catalogue => "catalogue",
            Document::Forecasts => "forecasts",
        }
    }

    pub fn parse(raw: &str) -> Option<Document> {
        Document::ALL.into_iter().find(|d| d.as_str() == raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    /// A new version of `document` exists for the store; fetch it over HTTP.
    BulkState { document: Document },
    /// Goods are on their way from `from_store`: the receiving store records
    /// `transfer_in` itself when they arrive (DESIGN §5).
    ExpectedTransfer {
        transfer_id: Uuid,
        from_store: StoreId,
        sku: Sku,
        qty: i64,
        reference: Option<String>,
        sent_at: DateTime<Utc>,
    },
    /// The store should download its snapshot and positions again.
    Resnapshot { reason: String },
    /// A command type newer than this build, with its fields as received (signature
    /// still checkable, seq still consumable).
    Unsupported {
        kind: String,
        fields: Map<String, Value>,
    },
}

impl CommandBody {
    pub fn type_name(&self) -> &str {
        match self {
            CommandBody::BulkState { .. } => "bulk_state",
            CommandBody::ExpectedTransfer { .. } => "expected_transfer",
            CommandBody::Resnapshot { .. } => "resnapshot",
            CommandBody::Unsupported { kind, .. } => kind,
        }
    }
}

/// A command as it travels (everything but `sig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub v: u32,
    pub store: StoreId,
    /// The store's hub_seq.
    pub seq: u64,
    pub id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub body: CommandBody,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn bad(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid(msg.into())
}

fn check_reference(reference: &Option<String>) -> Result<(), EnvelopeError> {
    if let Some(r) = reference {
        if r.chars().count() > MAX_REF_LEN {
            return Err(bad(format!("ref is longer than {MAX_REF_LEN} characters")));
        }
        if r.chars().any(char::is_control) {
            return Err(bad("ref contains control characters"));
        }
    }
    Ok(())
}

impl Command {
    /// A command for `store` at `seq`, issued now, with a fresh UUIDv7.
    pub fn new(store: StoreId, seq: u64, body: CommandBody) -> Command {
        Command {
            v: COMMAND_VERSION,
            store,
            seq,
            id: Uuid::now_v7(),
            issued_at: Utc::now(),
            body,
        }
    }

    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.v != COMMAND_VERSION {
            return Err(EnvelopeError::Version(self.v));
        }
        if self.seq == 0 || self.seq > MAX_SAFE_INTEGER as u64 {
            return Err(bad(format!(
                "seq {} is out of range (1 to 2^53-1)",
                self.seq
            )));
        }
        match &self.body {
            CommandBody::BulkState { .. } => Ok(()),
            CommandBody::ExpectedTransfer {
                from_store,
                qty,
                reference,
                ..
            } => {
                if *from_store == self.store {
                    return Err(bad("an expected transfer comes from another store"));
                }
                if !(1..=MAX_QUANTITY).contains(qty) {
                    return Err(bad(format!(
                        "qty {qty} must be between 1 and {MAX_QUANTITY}"
                    )));
                }
                check_reference(reference)
            }
            CommandBody::Resnapshot { reason } => {
                if reason.chars().count() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
                    return Err(bad(format!(
                        "reason must be at most {MAX_REASON_LEN} printable characters"
                    )));
                }
                Ok(())
            }
            CommandBody::Unsupported { .. } => Ok(()),
        }
    }

    fn unsigned_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("v".into(), self.v.into());
        map.insert("type".into(), self.body.type_name().into());
        map.insert("store".into(), self.store.as_str().into());
        map.insert("origin".into(), Origin::Hub.as_str().into());
        map.insert("seq".into(), self.seq.into());
        map.insert("id".into(), self.id.to_string().into());
        map.insert("issued_at".into(), rfc3339(self.issued_at).into());
        match &self.body {
            CommandBody::BulkState { document } => {
                map.insert("document".into(), document.as_str().into());
            }
            CommandBody::ExpectedTransfer {
                transfer_id,
                from_store,
                sku,
                qty,
                reference,
                sent_at,
            } => {
                map.insert("transfer_id".into(), transfer_id.to_string().into());
                map.insert("from_store".into(), from_store.as_str().into());
                map.insert("sku".into(), sku.as_str().into());
                map.insert("qty".into(), (*qty).into());
                map.insert(
                    "ref".into(),
                    reference.clone().map(Value::String).unwrap_or(Value::Null),
                );
                map.insert("sent_at".into(), rfc3339(*sent_at).into());
            }
            CommandBody::Resnapshot { reason } => {
                map.insert("reason".into(), reason.as_str().into());
            }
            CommandBody::Unsupported { fields, .. } => {
                for (k, v) in fields {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        Value::Object(map)
    }

    /// The canonical bytes a signature covers.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(canonical_bytes(&self.unsigned_value())?)
    }

    /// Validates, signs and encodes the command as it goes on the wire (its canonical form
    /// with `sig` added).
    pub fn to_signed_bytes(&self, key: &SigningKey) -> Result<Vec<u8>, EnvelopeError> {
        self.validate()?;
        if matches!(self.body, CommandBody::Unsupported { .. }) {
            return Err(bad("this build does not produce commands it cannot read"));
        }
        let mut value = self.unsigned_value();
        let sig = key.sign(&canonical_bytes(&value)?);
        if let Value::Object(map) = &mut value {
            map.insert("sig".into(), Value::String(sig));
        }
        let bytes = canonical_bytes(&value)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes and validates an object already known to be a command (it has `type`).
    fn from_value(mut map: Map<String, Value>) -> Result<Command, EnvelopeError> {
        let field = |e: String| EnvelopeError::Field(e);
        let mut take = |name: &str| map.remove(name);
        let v = take("v")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| field("`v` must be a positive integer".into()))?;
        let v = u32::try_from(v).map_err(|_| EnvelopeError::Version(u32::MAX))?;
        if v != COMMAND_VERSION {
            return Err(EnvelopeError::Version(v));
        }
        let text = |value: Option<Value>, name: &str| -> Result<String, EnvelopeError> {
            match value {
                Some(Value::String(s)) => Ok(s),
                _ => Err(field(format!("`{name}` must be a string"))),
            }
        };
        let kind = text(take("type"), "type")?;
        let store = StoreId::parse(text(take("store"), "store")?)
            .map_err(|e| field(format!("store: {e}")))?;
        if text(take("origin"), "origin")? != Origin::Hub.as_str() {
            return Err(bad("a command comes from the hub: origin must be \"hub\""));
        }
        let seq = take("seq")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| field("`seq` must be a positive integer".into()))?;
        let id =
            Uuid::parse_str(&text(take("id"), "id")?).map_err(|e| field(format!("id: {e}")))?;
        let time = |raw: String, name: &str| {
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| field(format!("{name} {raw:?}: {e}")))
        };
        let issued_at = time(text(take("issued_at"), "issued_at")?, "issued_at")?;
        let body = match kind.as_str() {
            "bulk_state" => {
                let raw = text(take("document"), "document")?;
                let document = Document::parse(&raw)
                    .ok_or_else(|| field(format!("unknown document {raw:?}")))?;
                CommandBody::BulkState { document }
            }
            "expected_transfer" => {
                let transfer_id = Uuid::parse_str(&text(take("transfer_id"), "transfer_id")?)
                    .map_err(|e| field(format!("transfer_id: {e}")))?;
                let from_store = StoreId::parse(text(take("from_store"), "from_store")?)
                    .map_err(|e| field(format!("from_store: {e}")))?;
                let sku = Sku::parse(text(take("sku"), "sku")?)
                    .map_err(|e| field(format!("sku: {e}")))?;
                let qty = take("qty")
                    .and_then(|v| v.as_i64())
                    .ok_or_else(|| field("`qty` must be an integer".into()))?;
                let reference = match take("ref") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s),
                    Some(_) => return Err(field("`ref` must be a string or null".into())),
                };
                let sent_at = time(text(take("sent_at"), "sent_at")?, "sent_at")?;
                CommandBody::ExpectedTransfer {
                    transfer_id,
                    from_store,
                    sku,
                    qty,
                    reference,
                    sent_at,
                }
            }
            "resnapshot" => CommandBody::Resnapshot {
                reason: text(take("reason"), "reason")?,
            },
            _ => CommandBody::Unsupported {
                kind,
                fields: std::mem::take(&mut map),
            },
        };
        let command = Command {
            v,
            store,
            seq,
            id,
            issued_at,
            body,
        };
        command.validate()?;
        Ok(command)
    }
}

/// A decoded command, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct ReceivedCommand {
    pub command: Command,
    canonical: Vec<u8>,
    sig: String,
}

impl ReceivedCommand {
    pub fn verify(&self, key: &SigningKey) -> bool {
        key.verify(&self.canonical, &self.sig)
    }
}

/// Anything the hub puts on `store-commands`.
#[derive(Debug, Clone)]
pub enum HubMessage {
    Movement(Received),
    Command(ReceivedCommand),
}

impl HubMessage {
    /// Decodes a message from `store-commands`: a command if it has `type`, else a
    /// movement envelope. The signature is checked by the caller, who knows the key.
    pub fn decode(bytes: &[u8]) -> Result<HubMessage, EnvelopeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(EnvelopeError::NotAnObject);
        };
        if !map.contains_key("type") {
            return Envelope::decode(bytes).map(HubMessage::Movement);
        }
        let Some(Value::String(sig)) = map.remove("sig") else {
            return Err(EnvelopeError::MissingSignature);
        };
        let canonical = canonical_bytes(&Value::Object(map.clone()))?;
        let command = Command::from_value(map)?;
        Ok(HubMessage::Command(ReceivedCommand {
            command,
            canonical,
            sig,
        }))
    }

    pub fn store(&self) -> &StoreId {
        match self {
            HubMessage::Movement(r) => &r.envelope.store,
            HubMessage::Command(c) => &c.command.store,
        }
    }

    /// The store's hub_seq this message carries.
    pub fn hub_seq(&self) -> u64 {
        match self {
            HubMessage::Movement(r) => r.envelope.seq,
            HubMessage::Command(c) => c.command.seq,
        }
    }

    /// From the hub, and signed with `key`.
    pub fn is_authentic(&self, key: &SigningKey) -> bool {
        match self {
            HubMessage::Movement(r) => r.envelope.origin == Origin::Hub && r.verify(key),
            HubMessage::Command(c) => c.verify(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    fn store(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    fn transfer() -> Command {
        Command {
            v: 1,
            store: store("S043"),
            seq: 7,
            id: Uuid::parse_str("0192f0c4-0000-7000-8000-000000000001").unwrap(),
            issued_at: "2026-11-26T10:00:00Z".parse().unwrap(),
            body: CommandBody::ExpectedTransfer {
                transfer_id: Uuid::parse_str("0192f0c4-0000-7000-8000-000000000002").unwrap(),
                from_store: store("S042"),
                sku: Sku::parse("MILK-1L").unwrap(),
                qty: 12,
                reference: Some("van 4".into()),
                sent_at: "2026-11-26T09:30:00Z".parse().unwrap(),
            },
        }
    }

    fn decode_command(bytes: &[u8]) -> ReceivedCommand {
        match HubMessage::decode(bytes).unwrap() {
            HubMessage::Command(c) => c,
            HubMessage::Movement(_) => panic!("decoded as a movement"),
        }
    }

    #[test]
    fn wire_form_is_canonical_and_verifiable_by_any_client() {
        let key = SigningKey::generate();
        let bytes = transfer().to_signed_bytes(&key).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let expected_unsigned = concat!(
            r#"{"from_store":"S042","id":"0192f0c4-0000-7000-8000-000000000001","#,
            r#""issued_at":"2026-11-26T10:00:00Z","origin":"hub","qty":12,"ref":"van 4","#,
            r#""sent_at":"2026-11-26T09:30:00Z","seq":7,"#,
        );
        assert!(text.starts_with(expected_unsigned), "{text}");
        assert!(
            text.ends_with(r#""sku":"MILK-1L","store":"S043","transfer_id":"0192f0c4-0000-7000-8000-000000000002","type":"expected_transfer","v":1}"#),
            "{text}"
        );
        // What a client in another language does: drop `sig`, canonicalise, HMAC.
        let mut value: Value = serde_json::from_slice(&bytes).unwrap();
        let sig = value
            .as_object_mut()
            .unwrap()
            .remove("sig")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        assert!(key.verify(&canonical_bytes(&value).unwrap(), &sig));
        let received = decode_command(&bytes);
        assert!(received.verify(&key));
        assert_eq!(received.command, transfer());
    }

    #[test]
    fn every_command_type_round_trips() {
        let key = SigningKey::generate();
        let commands = [
            Command::new(
                store("S1"),
                1,
                CommandBody::BulkState {
                    document: Document::Thresholds,
                },
            ),
            Command::new(
                store("S1"),
                2,
                CommandBody::Resnapshot {
                    reason: "ledger repaired".into(),
                },
            ),
            transfer(),
        ];
        for command in commands {
            let bytes = command.to_signed_bytes(&key).unwrap();
            let message = HubMessage::decode(&bytes).unwrap();
            assert!(message.is_authentic(&key));
            assert!(!message.is_authentic(&SigningKey::generate()));
            assert_eq!(message.hub_seq(), command.seq);
            assert_eq!(message.store(), &command.store);
            let HubMessage::Command(received) = message else {
                panic!("not a command")
            };
            assert_eq!(received.command, command);
        }
    }

    #[test]
    fn movements_still_decode_as_envelopes() {
        let key = SigningKey::generate();
        let bytes = Envelope::movement(
            store("S1"),
            Origin::Hub,
            3,
            Kind::Receipt,
            Sku::parse("A").unwrap(),
            5,
        )
        .to_signed_bytes(&key)
        .unwrap();
        let message = HubMessage::decode(&bytes).unwrap();
        assert!(matches!(message, HubMessage::Movement(_)));
        assert!(message.is_authentic(&key));
        assert_eq!(message.hub_seq(), 3);
        // A store-origin movement on the command topic is never authentic as a command.
        let store_origin = Envelope::movement(
            store("S1"),
            Origin::Store,
            3,
            Kind::Receipt,
            Sku::parse("A").unwrap(),
            5,
        )
        .to_signed_bytes(&key)
        .unwrap();
        assert!(!HubMessage::decode(&store_origin)
            .unwrap()
            .is_authentic(&key));
    }

    #[test]
    fn tampering_and_bad_fields_are_caught() {
        let key = SigningKey::generate();
        let text = String::from_utf8(transfer().to_signed_bytes(&key).unwrap()).unwrap();
        let forged = text.replace(r#""qty":12"#, r#""qty":120"#);
        assert!(!decode_command(forged.as_bytes()).verify(&key));
        let cases = [
            (text.replace(r#""qty":12"#, r#""qty":0"#), "qty 0"),
            (text.replace(r#""qty":12"#, r#""qty":-3"#), "qty -3"),
            (
                text.replace(r#""from_store":"S042""#, r#""from_store":"S043""#),
                "another store",
            ),
            (
                text.replace(r#""origin":"hub""#, r#""origin":"store""#),
                "origin",
            ),
            (text.replace(r#""v":1"#, r#""v":2"#), "version 2"),
            (text.replace(r#""seq":7"#, r#""seq":0"#), "seq 0"),
            (text.replace("2026-11-26T09:30:00Z", "soon"), "sent_at"),
            (
                text.replace(r#""sku":"MILK-1L""#, r#""sku":"MILK 1L""#),
                "sku",
            ),
            (text.replace(r#","sig":""#, r#","gis":""#), "sig"),
        ];
        for (bytes, expected) in cases {
            let err = HubMessage::decode(bytes.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        let bulk = Command::new(
            store("S1"),
            1,
            CommandBody::BulkState {
                document: Document::Catalogue,
            },
        );
        let text = String::from_utf8(bulk.to_signed_bytes(&key).unwrap()).unwrap();
        let err = HubMessage::decode(text.replace("catalogue", "weather").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown document"), "{err}");
        let long = Command::new(
            store("S1"),
            1,
            CommandBody::Resnapshot {
                reason: "x".repeat(MAX_REASON_LEN + 1),
            },
        );
        assert!(long.to_signed_bytes(&key).is_err());
    }

    #[test]
    fn a_newer_command_type_decodes_as_unsupported_and_still_verifies() {
        let key = SigningKey::generate();
        let value = serde_json::json!({
            "v": 1, "type": "price_change", "store": "S1", "origin": "hub", "seq": 4,
            "id": Uuid::now_v7().to_string(), "issued_at": "2026-11-26T10:00:00Z",
            "sku": "A", "price": 250,
        });
        let sig = key.sign(&canonical_bytes(&value).unwrap());
        let mut signed = value.clone();
        signed["sig"] = Value::String(sig);
        let message = HubMessage::decode(signed.to_string().as_bytes()).unwrap();
        assert!(message.is_authentic(&key));
        assert_eq!(message.hub_seq(), 4);
        let HubMessage::Command(received) = message else {
            panic!("not a command")
        };
        assert_eq!(received.command.body.type_name(), "price_change");
        assert!(received.command.to_signed_bytes(&key).is_err());
    }
}
