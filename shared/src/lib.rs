//! Vocabulary shared by `bazaar-agent` and `bazaar-hub`: validated identifiers, the
//! movement envelope (wire format v1, DESIGN §5), its canonical bytes and HMAC
//! signature, Kafka topic names and Kafka's murmur2 key partitioner.
//!
//! Everything here is pure: no I/O, no clocks except where a caller asks for "now".

pub mod canonical;
pub mod command;
pub mod envelope;
#[cfg(feature = "http")]
pub mod http;
pub mod ids;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod partition;
pub mod secret;
#[cfg(feature = "service")]
pub mod service;
pub mod signing;
#[cfg(feature = "service")]
pub mod systemd;
pub mod topics;

pub use command::{Command, CommandBody, Document, HubMessage};
pub use envelope::{Envelope, EnvelopeError, Kind, Origin, Reason, MAX_MESSAGE_BYTES};
pub use ids::{IdError, Sku, StoreId};
pub use secret::Secret;
pub use signing::{SigningKey, SigningKeyError};
pub use topics::Topics;
