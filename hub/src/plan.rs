//! Deciding what happens to each message of a store in a batch: a pure function of the
//! store's watermark, its key, what the ledger already holds and the hub's clock, so every
//! rule of DESIGN §7 is unit-tested without a database.
//!
//! Rules, in seq order (messages held from earlier batches take part like new ones):
//! - a bad signature is parked and does not use up its seq;
//! - a seq at or below the watermark is a duplicate when its id is the one applied, else a
//!   conflict (parked, never dropped silently);
//! - the next seq is applied and moves the watermark — unless it cannot be: its id is
//!   already in the ledger at another position, or applying it failed on its own (found by
//!   isolating it, see `ingest`). Then it is parked and its seq is consumed by a void (no
//!   stock moves), so one bad message never stalls the store's later ones (promise 5); the
//!   agent learns of it from `GET /v1/parked` (`consumed`) and parks its own copy;
//! - a seq beyond the next is held until the gap fills, up to `max_ahead` past the
//!   watermark; further ahead it is parked (held rows are bounded per store);
//! - an `occurred_at` outside [2000-01-01, the hub's now + 1 day] is applied at the hub's
//!   now and flagged with the time the till reported: a till with a wrong clock keeps its
//!   sales, and no sale lands on a day that has not happened (nor on year −1).

use std::collections::{HashMap, HashSet};

use bazaar_shared::envelope::Received;
use bazaar_shared::{Envelope, Origin, SigningKey};
use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// The message's id is already in the ledger at another (store, origin, seq).
    IdReused,
    /// Further ahead of the store's watermark than the hub holds.
    TooFarAhead,
    /// Applying the message failed on its own (e.g. on-hand past its bound).
    ApplyFailed,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Malformed => "malformed",
            ParkReason::UnknownStore => "unknown_store",
            ParkReason::BadSignature => "bad_signature",
            ParkReason::UnexpectedOrigin => "unexpected_origin",
            ParkReason::Conflict => "conflict",
            ParkReason::IdReused => "id_reused",
            ParkReason::TooFarAhead => "too_far_ahead",
            ParkReason::ApplyFailed => "apply_failed",
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
    /// Its seq was consumed by a void (the store's later messages flow on).
    pub consumed: bool,
}

#[derive(Debug, Clone)]
pub struct Decoded {
    pub position: Position,
    pub payload: Vec<u8>,
    pub received: Received,
    /// Read back from `held_events` rather than from this batch.
    pub held: bool,
}

/// A movement the ledger takes: its time within the window, and the reported time when
/// that had to be corrected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub envelope: Envelope,
    pub reported_occurred_at: Option<String>,
}

#[derive(Debug, Default)]
pub struct StorePlan {
    pub apply: Vec<Admitted>,
    /// New messages to hold (those already held stay where they are).
    pub hold: Vec<(Envelope, Vec<u8>)>,
    pub park: Vec<Parked>,
    pub duplicates: usize,
    /// The watermark after `apply`.
    pub last_seq: u64,
}

/// What the plan of one store needs besides its messages.
pub struct StoreInput<'a> {
    pub last_seq: u64,
    pub key: &'a SigningKey,
    /// Every seq at or below `last_seq` that the messages mention, with the id the ledger
    /// holds for it.
    pub applied_ids: &'a HashMap<u64, Uuid>,
    pub now: DateTime<Utc>,
    pub max_ahead: u64,
    /// Messages found to fail on their own, with why: parked (consuming their seq when it
    /// is the next one).
    pub refused: &'a HashMap<Position, String>,
}

/// The earliest `occurred_at` the ledger takes as reported.
pub fn earliest_occurred_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The time the ledger records for a movement reported at `occurred_at`, and the reported
/// time when it was outside the window.
pub fn admitted_time(
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, Option<String>) {
    let latest = now + chrono::Duration::days(1);
    if occurred_at < earliest_occurred_at() || occurred_at > latest {
        (now, Some(occurred_at.to_rfc3339()))
    } else {
        (occurred_at, None)
    }
}

/// `taken` holds every id already in the ledger among the messages' ids, and collects the
/// ids this batch applies, across stores.
pub fn plan_store(
    input: &StoreInput<'_>,
    mut messages: Vec<Decoded>,
    taken: &mut HashSet<Uuid>,
) -> StorePlan {
    // Held copies first at equal seq: a re-delivered held message is then a duplicate.
    messages.sort_by_key(|m| (m.received.envelope.seq, !m.held));
    let mut plan = StorePlan {
        last_seq: input.last_seq,
        ..StorePlan::default()
    };
    let mut applied_here: HashMap<u64, Uuid> = HashMap::new();
    let mut held_here: HashMap<u64, Uuid> = HashMap::new();
    for message in messages {
        let envelope = &message.received.envelope;
        let park = |reason: ParkReason, detail: String, consumed: bool| Parked {
            position: message.position.clone(),
            payload: message.payload.clone(),
            reason,
            detail,
            envelope: Some(envelope.clone()),
            consumed,
        };
        if !message.received.verify(input.key) {
            plan.park.push(park(
                ParkReason::BadSignature,
                format!(
                    "seq {} of store {} does not carry a valid signature for that store's key",
                    envelope.seq, envelope.store
                ),
                false,
            ));
            continue;
        }
        if envelope.origin != Origin::Store {
            plan.park.push(park(
                ParkReason::UnexpectedOrigin,
                "hub-origin movement on the store movements topic".into(),
                false,
            ));
            continue;
        }
        let seq = envelope.seq;
        let refusal = input.refused.get(&message.position);
        if seq <= plan.last_seq {
            let known = applied_here
                .get(&seq)
                .or_else(|| input.applied_ids.get(&seq));
            match known {
                Some(id) if *id == envelope.id => plan.duplicates += 1,
                Some(id) => plan.park.push(park(ParkReason::Conflict, format!(
                    "seq {seq} was already applied with id {id}; this message carries id {}", envelope.id
                ), false)),
                None => plan.park.push(park(ParkReason::Conflict, format!(
                    "seq {seq} is at or below the applied watermark but the ledger has no row for it"
                ), false)),
            }
        } else if seq == plan.last_seq + 1 {
            let refused = match refusal {
                Some(why) => Some((ParkReason::ApplyFailed, format!("seq {seq} could not be applied: {why}"))),
                None if taken.contains(&envelope.id) => Some((
                    ParkReason::IdReused,
                    format!("seq {seq} carries id {}, which the ledger already holds for another movement", envelope.id),
                )),
                None => None,
            };
            let admitted = match refused {
                Some((reason, detail)) => {
                    let void = Envelope::void_of(envelope);
                    plan.park.push(park(
                        reason,
                        format!("{detail}; its seq is consumed by void {}", void.id),
                        true,
                    ));
                    void
                }
                None => envelope.clone(),
            };
            let (occurred_at, reported) = admitted_time(admitted.occurred_at, input.now);
            taken.insert(admitted.id);
            applied_here.insert(seq, admitted.id);
            plan.last_seq = seq;
            plan.apply.push(Admitted {
                envelope: Envelope {
                    occurred_at,
                    ..admitted
                },
                reported_occurred_at: reported,
            });
        } else if let Some(why) = refusal {
            plan.park.push(park(
                ParkReason::ApplyFailed,
                format!("seq {seq} could not be held: {why}"),
                false,
            ));
        } else if seq - plan.last_seq > input.max_ahead {
            plan.park.push(park(
                ParkReason::TooFarAhead,
                format!(
                    "seq {seq} is {} ahead of the applied seq {}; the hub holds at most {} ahead (the agent sends it again once the gap fills)",
                    seq - plan.last_seq,
                    plan.last_seq,
                    input.max_ahead
                ),
                false,
            ));
        } else {
            match held_here.get(&seq) {
                Some(id) if *id == envelope.id => plan.duplicates += 1,
                Some(id) => plan.park.push(park(
                    ParkReason::Conflict,
                    format!(
                        "seq {seq} arrived twice ahead of a gap with ids {id} and {}",
                        envelope.id
                    ),
                    false,
                )),
                None => {
                    held_here.insert(seq, envelope.id);
                    if !message.held {
                        plan.hold.push((envelope.clone(), message.payload.clone()));
                    }
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
            held: false,
        }
    }

    fn plan(
        last_seq: u64,
        key: &SigningKey,
        batch: Vec<Decoded>,
        known: &HashMap<u64, Uuid>,
    ) -> StorePlan {
        let refused = HashMap::new();
        let input = StoreInput {
            last_seq,
            key,
            applied_ids: known,
            now: Utc::now(),
            max_ahead: 100,
            refused: &refused,
        };
        plan_store(&input, batch, &mut HashSet::new())
    }

    fn seqs(plan: &StorePlan) -> Vec<u64> {
        plan.apply.iter().map(|a| a.envelope.seq).collect()
    }

    #[test]
    fn applies_in_order_whatever_the_arrival_order() {
        let key = SigningKey::generate();
        let batch = vec![
            message(&key, 3, Uuid::now_v7()),
            message(&key, 1, Uuid::now_v7()),
            message(&key, 2, Uuid::now_v7()),
        ];
        let plan = plan(0, &key, batch, &HashMap::new());
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
        let plan = plan(5, &key, batch, &known);
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
        let plan = plan(0, &key, batch, &HashMap::new());
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
        let plan = plan(0, &key, vec![forged, genuine], &HashMap::new());
        assert_eq!(seqs(&plan), [1]);
        assert_eq!(plan.park.len(), 1);
        assert_eq!(plan.park[0].reason, ParkReason::BadSignature);
    }

    /// `occurred_at` as a producer wrote it, signed over those very bytes.
    fn with_time(key: &SigningKey, seq: u64, at: &str) -> Decoded {
        let mut m = message(key, seq, Uuid::now_v7());
        let mut value = serde_json::to_value(&m.received.envelope).unwrap();
        value["occurred_at"] = serde_json::Value::String(at.into());
        let sig = key.sign(&bazaar_shared::canonical::canonical_bytes(&value).unwrap());
        value["sig"] = serde_json::Value::String(sig);
        m.payload = value.to_string().into_bytes();
        m.received = Envelope::decode(&m.payload).unwrap();
        m
    }

    #[test]
    fn a_time_outside_the_window_is_applied_at_the_hubs_now_and_flagged() {
        let key = SigningKey::generate();
        let now = Utc::now();
        let refused = HashMap::new();
        let known = HashMap::new();
        let input = StoreInput {
            last_seq: 0,
            key: &key,
            applied_ids: &known,
            now,
            max_ahead: 100,
            refused: &refused,
        };
        let batch = vec![
            with_time(&key, 1, "0000-01-01T00:00:00+00:01"),
            with_time(&key, 2, "2999-01-01T00:00:00Z"),
            with_time(&key, 3, "2026-11-26T10:00:00Z"),
        ];
        let plan = plan_store(&input, batch, &mut HashSet::new());
        assert_eq!(seqs(&plan), [1, 2, 3]);
        assert_eq!(plan.apply[0].envelope.occurred_at, now);
        assert!(
            plan.apply[0]
                .reported_occurred_at
                .as_deref()
                .unwrap()
                .starts_with("-0001-12-31T23:59:00"),
            "{:?}",
            plan.apply[0].reported_occurred_at
        );
        assert_eq!(plan.apply[1].envelope.occurred_at, now);
        assert!(plan.apply[1]
            .reported_occurred_at
            .as_deref()
            .unwrap()
            .starts_with("2999-01-01"));
        assert_eq!(plan.apply[2].reported_occurred_at, None);
        assert_eq!(
            admitted_time(now + chrono::Duration::hours(23), now).1,
            None,
            "a day ahead is a clock, not an error"
        );
    }

    #[test]
    fn a_reused_id_or_a_refused_message_is_parked_and_its_seq_consumed_by_a_void() {
        let key = SigningKey::generate();
        let reused = Uuid::now_v7();
        let first = message(&key, 1, reused);
        let second = message(&key, 2, Uuid::now_v7());
        let third = message(&key, 3, Uuid::now_v7());
        let refused = HashMap::from([(
            second.position.clone(),
            "on-hand past its bound".to_string(),
        )]);
        let known = HashMap::new();
        let input = StoreInput {
            last_seq: 0,
            key: &key,
            applied_ids: &known,
            now: Utc::now(),
            max_ahead: 100,
            refused: &refused,
        };
        let mut taken = HashSet::from([reused]);
        let plan = plan_store(&input, vec![first, second, third], &mut taken);
        assert_eq!(
            seqs(&plan),
            [1, 2, 3],
            "the store's later movement flows on"
        );
        assert_eq!(plan.apply[0].envelope.kind, bazaar_shared::Kind::Void);
        assert_eq!(plan.apply[0].envelope.voids, Some(reused));
        assert_eq!(plan.apply[1].envelope.kind, bazaar_shared::Kind::Void);
        assert_eq!(plan.apply[2].envelope.kind, Kind::Sale);
        let reasons: Vec<_> = plan.park.iter().map(|p| (p.reason, p.consumed)).collect();
        assert_eq!(
            reasons,
            [
                (ParkReason::IdReused, true),
                (ParkReason::ApplyFailed, true)
            ]
        );
        assert!(taken.contains(&plan.apply[2].envelope.id));
    }

    #[test]
    fn held_messages_apply_when_the_gap_fills_and_far_ahead_ones_are_parked() {
        let key = SigningKey::generate();
        let mut held = message(&key, 3, Uuid::now_v7());
        held.held = true;
        let again = Decoded {
            held: false,
            ..held.clone()
        };
        let batch = vec![
            message(&key, 2, Uuid::now_v7()),
            held,
            again,
            message(&key, 1000, Uuid::now_v7()),
            message(&key, 50, Uuid::now_v7()),
        ];
        let plan = plan(1, &key, batch, &HashMap::from([]));
        assert_eq!(seqs(&plan), [2, 3]);
        assert_eq!(plan.duplicates, 1, "the re-delivered held message");
        assert_eq!(
            plan.hold.iter().map(|(e, _)| e.seq).collect::<Vec<_>>(),
            [50]
        );
        assert_eq!(plan.park.len(), 1);
        assert_eq!(plan.park[0].reason, ParkReason::TooFarAhead);
        assert!(!plan.park[0].consumed);
    }
}
