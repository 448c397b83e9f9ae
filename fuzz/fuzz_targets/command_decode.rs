//! `HubMessage::decode` on arbitrary bytes (anything on `store-commands`, DESIGN §5).
#![no_main]

use bazaar_shared::{CommandBody, HubMessage, SigningKey};
use chrono::{DateTime, Datelike, Utc};
use libfuzzer_sys::fuzz_target;

fn in_range(t: &DateTime<Utc>) -> bool {
    (1..=9999).contains(&t.year())
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = HubMessage::decode(data) else {
        return;
    };
    let key = SigningKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let _ = message.is_authentic(&key);
    let _ = message.store();
    let _ = message.hub_seq();
    let HubMessage::Command(received) = &message else {
        return; // movements: see envelope_decode
    };
    let _ = received.verify(&key);
    let command = &received.command;
    let _ = command.body.type_name();
    // Round trip for the commands this build produces. Times outside years 1..=9999 are
    // the known chrono gap described in fuzz/README.md.
    let times_ok = in_range(&command.issued_at)
        && match &command.body {
            CommandBody::ExpectedTransfer { sent_at, .. } => in_range(sent_at),
            _ => true,
        };
    if matches!(command.body, CommandBody::Unsupported { .. }) || !times_ok {
        return;
    }
    let bytes = command
        .to_signed_bytes(&key)
        .expect("a decoded, validated command re-encodes");
    let again = HubMessage::decode(&bytes).expect("a re-encoded command decodes");
    let HubMessage::Command(again) = again else {
        panic!("a re-encoded command decodes as a movement");
    };
    assert_eq!(&again.command, command);
    assert!(again.verify(&key), "our own signature verifies");
});
