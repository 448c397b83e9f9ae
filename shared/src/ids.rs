//! Store and SKU identifiers: `^[A-Za-z0-9_-]{1,64}$` (DESIGN §3).
//!
//! Parse, don't validate: a `StoreId` or `Sku` that exists is well-formed, so nothing
//! downstream checks again.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} contains {found:?}; only letters A-Z a-z, digits, '_' and '-' are allowed")]
    BadCharacter { what: &'static str, found: char },
}

fn check(what: &'static str, raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = raw.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong { what, len });
    }
    if let Some(found) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadCharacter { what, found });
    }
    Ok(())
}

macro_rules! identifier {
    ($name:ident, $what:literal) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                check($what, &raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(StoreId, "store id");
identifier!(Sku, "sku");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(StoreId::parse("S042").is_ok());
        assert!(Sku::parse("MILK-1L_x").is_ok());
        assert!(Sku::parse("a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(StoreId::parse(""), Err(IdError::Empty { what: "store id" }));
        assert_eq!(
            Sku::parse("a".repeat(65)),
            Err(IdError::TooLong {
                what: "sku",
                len: 65
            })
        );
        assert_eq!(
            Sku::parse("MILK 1L"),
            Err(IdError::BadCharacter {
                what: "sku",
                found: ' '
            })
        );
        assert!(Sku::parse("é").is_err());
        assert!(Sku::parse("../etc").is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<Sku>("\"ok-1\"").is_ok());
        let err = serde_json::from_str::<Sku>("\"no/slash\"").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    proptest! {
        #[test]
        fn valid_ids_round_trip(raw in "[A-Za-z0-9_-]{1,64}") {
            let id = StoreId::parse(raw.clone()).unwrap();
            prop_assert_eq!(id.as_str(), raw.as_str());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<StoreId>(&json).unwrap(), id);
        }

        #[test]
        fn anything_outside_the_alphabet_is_rejected(
            prefix in "[A-Za-z0-9_-]{0,10}",
            bad in "[^A-Za-z0-9_-]",
        ) {
            let candidate = format!("{prefix}{bad}");
            prop_assert!(Sku::parse(candidate).is_err());
        }

        #[test]
        fn overlong_ids_are_rejected(raw in "[A-Za-z0-9_-]{65,100}") {
            let rejected = matches!(Sku::parse(raw), Err(IdError::TooLong { .. }));
            prop_assert!(rejected);
        }
    }
}
