//! Deciding what happens to each message of a store in a batch: a pure function of the
//! store's watermark, its key and what the ledger already holds, so every rule of
//! DESIGN §7 is unit-tested without a database.
//!
//! Rules, in seq order:
//! - a bad signature is parked and does not use up its seq;
//! - a seq at or below the watermark is a duplicate when its id is the one applied, else a
//!   conflict (parked, never dropped silently);
//! - the next seq is applied and moves the watermark;
//! - a seq beyond the next is held until the gap fills.

use std::collections::HashMap;

use bazaar_shared::envelope::Received;
use bazaar_shared::{Envelope, Origin, SigningKey};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    Malformed,
    UnknownStore,
    BadSignature,
    UnexpectedOrigin,
    Conflict,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Malformed => "malformed",
            ParkReason::UnknownStore => "unknown_store",
            ParkReason::BadSignature => "bad_signature",
            ParkReason::UnexpectedOrigin => "unexpected_origin",
            ParkReason::Conflict => "conflict",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Parked {
    pub position: Position,
    pub payload: Vec<u8>,
    pub reason: ParkReason,
    pub detail: String,
    pub envelope: Option<Envelope>,
}

#[derive(Debug, Clone)]
pub struct Decoded {
    pub position: Position,
    pub payload: Vec<u8>,
    pub received: Received,
}

#[derive(Debug, Default)]
pub struct StorePlan {
    pub apply: Vec<Envelope>,
    pub hold: Vec<(Envelope, Vec<u8>)>,
    pub park: Vec<Parked>,
    pub duplicates: usize,
    /// The watermark after `apply`.
    pub last_seq: u64,
}

/// `applied_ids` maps every seq at or below `last_seq` that this batch mentions to the id
/// the ledger holds for it.
pub fn plan_store(
    last_seq: u64,
    key: &SigningKey,
    mut messages: Vec<Decoded>,
    applied_ids: &HashMap<u64, Uuid>,
) -> StorePlan {
    messages.sort_by_key(|m| m.received.envelope.seq);
    let mut plan = StorePlan {
        last_seq,
        ..StorePlan::default()
    };
    let mut applied_here: HashMap<u64, Uuid> = HashMap::new();
    let mut held_here: HashMap<u64, Uuid> = HashMap::new();
    for message in messages {
        let envelope = &message.received.envelope;
        let park = |reason: ParkReason, detail: String| Parked {
            position: message.position.clone(),
            payload: message.payload.clone(),
            reason,
            detail,
            envelope: Some(envelope.clone()),
        };
        if !message.received.verify(key) {
            plan.park.push(park(
                ParkReason::BadSignature,
                format!(
                    "seq {} of store {} does not carry a valid signature for that store's key",
                    envelope.seq, envelope.store
                ),
            ));
            continue;
        }
        if envelope.origin != Origin::Store {
            plan.park.push(park(
                ParkReason::UnexpectedOrigin,
                "hub-origin movement on the store movements topic".into(),
            ));
            continue;
        }
        let seq = envelope.seq;
        if seq <= plan.last_seq {
            let known = applied_here.get(&seq).or_else(|| applied_ids.get(&seq));
            match known {
                Some(id) if *id == envelope.id => plan.duplicates += 1,
                Some(id) => plan.park.push(park(ParkReason::Conflict, format!(
                    "seq {seq} was already applied with id {id}; this message carries id {}", envelope.id
                ))),
                None => plan.park.push(park(ParkReason::Conflict, format!(
                    "seq {seq} is at or below the applied watermark but the ledger has no row for it"
                ))),
            }
        } else if seq == plan.last_seq + 1 {
            applied_here.insert(seq, envelope.id);
            plan.last_seq = seq;
            plan.apply.push(envelope.clone());
        } else {
            match held_here.get(&seq) {
                Some(id) if *id == envelope.id => plan.duplicates += 1,
                Some(id) => plan.park.push(park(
                    ParkReason::Conflict,
                    format!(
                        "seq {seq} arrived twice ahead of a gap with ids {id} and {}",
                        envelope.id
                    ),
                )),
                None => {
                    held_here.insert(seq, envelope.id);
                    plan.hold.push((envelope.clone(), message.payload.clone()));
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazaar_shared::{Kind, Sku, StoreId};

    fn message(key: &SigningKey, seq: u64, id: Uuid) -> Decoded {
        let envelope = Envelope {
            id,
            ..Envelope::movement(
                StoreId::parse("S1").unwrap(),
                Origin::Store,
                seq,
                Kind::Sale,
                Sku::parse("A").unwrap(),
                -1,
            )
        };
        let payload = envelope.to_signed_bytes(key).unwrap();
        Decoded {
            position: Position {
                topic: "t".into(),
                partition: 0,
                offset: seq as i64,
            },
            received: Envelope::decode(&payload).unwrap(),
            payload,
        }
    }

    fn seqs(plan: &StorePlan) -> Vec<u64> {
        plan.apply.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn applies_in_order_whatever_the_arrival_order() {
        let key = SigningKey::generate();
        let batch = vec![
            message(&key, 3, Uuid::now_v7()),
            message(&key, 1, Uuid::now_v7()),
            message(&key, 2, Uuid::now_v7()),
        ];
        let plan = plan_store(0, &key, batch, &HashMap::new());
        assert_eq!(seqs(&plan), [1, 2, 3]);
        assert_eq!(plan.last_seq, 3);
    }

    #[test]
    fn duplicates_are_skipped_and_conflicts_parked() {
        let key = SigningKey::generate();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let known = HashMap::from([(5, a)]);
        let batch = vec![
            message(&key, 5, a), // redelivery of an applied message
            message(&key, 5, b), // same seq, another id: conflict
            message(&key, 6, b),
            message(&key, 6, b), // the same message twice in one batch
        ];
        let plan = plan_store(5, &key, batch, &known);
        assert_eq!(seqs(&plan), [6]);
        assert_eq!(plan.duplicates, 2);
        assert_eq!(plan.park.len(), 1);
        assert_eq!(plan.park[0].reason, ParkReason::Conflict);
    }

    #[test]
    fn a_gap_holds_what_is_ahead() {
        let key = SigningKey::generate();
        let batch = vec![
            message(&key, 1, Uuid::now_v7()),
            message(&key, 3, Uuid::now_v7()),
            message(&key, 4, Uuid::now_v7()),
        ];
        let plan = plan_store(0, &key, batch, &HashMap::new());
        assert_eq!(seqs(&plan), [1]);
        assert_eq!(
            plan.hold.iter().map(|(e, _)| e.seq).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn a_bad_signature_is_parked_without_using_up_its_seq() {
        let key = SigningKey::generate();
        let forged = message(&SigningKey::generate(), 1, Uuid::now_v7());
        let genuine = message(&key, 1, Uuid::now_v7());
        let plan = plan_store(0, &key, vec![forged, genuine], &HashMap::new());
        assert_eq!(seqs(&plan), [1]);
        assert_eq!(plan.park.len(), 1);
        assert_eq!(plan.park[0].reason, ParkReason::BadSignature);
    }
}
