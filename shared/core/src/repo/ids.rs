//! Newtype ids. All are 32 bytes, written as 64 lowercase hex digits.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn random() -> Self {
                Self(rand::random())
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn parse(s: &str) -> crate::Result<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| {
                    Error::Invalid(format!("{}: not 64 hex digits: {s:?}", stringify!($name)))
                })?;
                Ok(Self(out))
            }
            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext: equal content, equal id, within one repository.
    BlobId
);
id_type!(
    /// Random id of a pack object.
    PackId
);
id_type!(
    /// Random id of a snapshot record.
    SnapshotId
);
id_type!(
    /// Random id of an index object.
    IndexId
);
id_type!(
    /// Random id of a key object.
    KeyId
);
id_type!(
    /// Random id of the repository, fixed at `init`.
    RepoId
);

/// The short form of an id already rendered as hex (the first 8 digits, what
/// [`SnapshotId::short`] gives), for reports that carry ids as strings. Never panics.
pub fn short_id(hex: &str) -> &str {
    hex.get(..8).unwrap_or(hex)
}
