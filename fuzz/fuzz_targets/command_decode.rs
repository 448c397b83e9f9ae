//! `HubMessage::decode` on arbitrary bytes (anything on `store-commands`, DESIGN §5).
#![no_main]

use bazaar_shared::{HubMessage, SigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = HubMessage::decode(data) else {
        return;
    };
    let key = SigningKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
    let _ = message.is_authentic(&key);
    let _ = message.store();
    let _ = message.hub_seq();
    if let HubMessage::Command(received) = &message {
        let _ = received.verify(&key);
        let _ = received.command.body.type_name();
    }
});
